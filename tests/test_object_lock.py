"""--object-lock copy: each copy keeps its source's Object Lock retention and legal hold.

What a person relies on: the destination objects carry the source's retention mode, retain-until
date and legal hold (small objects and those copied in parts alike), objects without a lock stay
unlocked, and a destination bucket without Object Lock or source credentials that may not read
the locks are one sentence before anything is written. moto keeps Object Lock, through the fault
proxy, which answers GetObjectRetention as S3 does (moto answers it 500) and plays S3's refusal of
s3:GetObjectRetention, which moto does not enforce.
"""

from __future__ import annotations

import datetime
import uuid
from pathlib import Path

import pytest
import contextlib
from typing import Iterator

from aws_behaviour import ObjectRetentionAsS3Answers
from conftest import FAKE_KEYS
from fault_proxy import Answer, FaultProxy, Forward, Request
from s3servers import MotoBuckets, object_snapshot
from toolcli import CHUNK_SIZE, ToolJob, assert_usage_error, describe, write_source_credentials
from uploads import body

UNTIL = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)


def locked_buckets(buckets: MotoBuckets) -> tuple[str, str]:
    """A source and a destination bucket created with Object Lock (it can only be enabled so)."""
    suffix = uuid.uuid4().hex[:10]
    source, destination = f"lock-src-{suffix}", f"lock-dst-{suffix}"
    for name in (source, destination):
        buckets.client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    client = buckets.client
    client.put_object(Bucket=source, Key="retained.txt", Body=b"kept until 2030", ObjectLockMode="GOVERNANCE",
                      ObjectLockRetainUntilDate=UNTIL)
    client.put_object(Bucket=source, Key="held.txt", Body=b"on legal hold", ObjectLockLegalHoldStatus="ON")
    client.put_object(Bucket=source, Key="plain.txt", Body=b"no lock")
    client.put_object(Bucket=source, Key="big.bin", Body=body(2 * CHUNK_SIZE + 5, seed=8),
                      ObjectLockMode="GOVERNANCE", ObjectLockRetainUntilDate=UNTIL, ObjectLockLegalHoldStatus="ON")
    return source, destination


@contextlib.contextmanager
def through_s3(job: ToolJob, buckets: MotoBuckets, *behaviours: object) -> Iterator[FaultProxy]:
    """The job's requests, both sides, through a proxy that answers GetObjectRetention as S3 does."""
    with FaultProxy(buckets.endpoint_url) as proxy:
        proxy.behave(*behaviours, ObjectRetentionAsS3Answers())  # type: ignore[arg-type]
        write_source_credentials(job.credentials, FAKE_KEYS, proxy.endpoint_url)
        job.dest_endpoint_url = proxy.endpoint_url
        yield proxy


def lock_of(buckets: MotoBuckets, bucket: str, key: str) -> dict[str, object]:
    head = buckets.client.head_object(Bucket=bucket, Key=key)
    return {name: head.get(name) for name in ("ObjectLockMode", "ObjectLockRetainUntilDate",
                                              "ObjectLockLegalHoldStatus")}


def test_the_copies_keep_their_sources_retention_and_legal_hold(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    source, destination = locked_buckets(moto_buckets)
    with through_s3(job, moto_buckets) as proxy:
        result = job.run(f"s3://{source}", f"s3://{destination}", "--object-lock", "copy")
        (created,) = proxy.counts.operations("CreateMultipartUpload")

    assert result.returncode == 0, describe(result)
    for key in ("retained.txt", "held.txt", "plain.txt"):
        assert lock_of(moto_buckets, destination, key) == lock_of(moto_buckets, source, key), key
    assert lock_of(moto_buckets, destination, "plain.txt")["ObjectLockMode"] is None
    # moto drops the lock headers of CreateMultipartUpload (S3 keeps them: S3 API Reference,
    # CreateMultipartUpload, x-amz-object-lock-*): what the request carried is what S3 would keep.
    sent = {name.lower(): value for name, value in created.headers}
    assert (sent["x-amz-object-lock-mode"], sent["x-amz-object-lock-legal-hold"]) == ("GOVERNANCE", "ON")
    assert sent["x-amz-object-lock-retain-until-date"].startswith("2030-01-01T00:00:00")


def test_without_the_option_the_copies_are_not_locked(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    source, destination = locked_buckets(moto_buckets)

    result = job.run(f"s3://{source}", f"s3://{destination}")

    assert result.returncode == 0, describe(result)
    assert lock_of(moto_buckets, destination, "retained.txt")["ObjectLockMode"] is None


@pytest.mark.engine_independent  # refused (or decided) before any body moves
def test_a_destination_without_object_lock_is_one_sentence_before_anything_is_written(
        job: ToolJob, moto_buckets: MotoBuckets) -> None:
    source, _ = locked_buckets(moto_buckets)

    with through_s3(job, moto_buckets):
        result = job.run(f"s3://{source}", f"s3://{moto_buckets.dest}", "--object-lock", "copy")

    assert_usage_error(result, f"The destination bucket {moto_buckets.dest} does not have Object Lock enabled")
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == {}


class RetentionDenied:
    """S3's answer to GetObjectRetention for credentials without s3:GetObjectRetention."""

    def __call__(self, request: Request, forward: Forward) -> Answer:
        if request.method == "GET" and "retention" in request.query:
            return Answer.s3_error(403, "AccessDenied", "Access Denied")
        return forward(request)


@pytest.mark.parametrize("dry_run", [False, True])
@pytest.mark.engine_independent  # refused (or decided) before any body moves
def test_source_credentials_that_may_not_read_locks_are_one_sentence(job: ToolJob, moto_buckets: MotoBuckets,
                                                                     dry_run: bool) -> None:
    source, destination = locked_buckets(moto_buckets)
    with through_s3(job, moto_buckets, RetentionDenied()):
        result = job.run(f"s3://{source}", f"s3://{destination}", "--object-lock", "copy",
                         *(["--dry-run"] if dry_run else []))

    assert_usage_error(result, "may not read the Object Lock of objects (s3:GetObjectRetention")
    assert object_snapshot(moto_buckets.client, destination) == {}


@pytest.mark.engine_independent  # refused (or decided) before any body moves
def test_a_retention_that_ran_out_is_not_copied_and_a_hold_only_when_on() -> None:
    import s3_bulk_transfer as tool

    now = datetime.datetime(2026, 12, 6, tzinfo=datetime.timezone.utc)
    lock = {"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": UNTIL, "ObjectLockLegalHoldStatus": "OFF"}
    assert tool.lock_to_copy(lock, now) == {"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": UNTIL}
    ran_out = {**lock, "ObjectLockRetainUntilDate": now - datetime.timedelta(days=1), "ObjectLockLegalHoldStatus": "ON"}
    assert tool.lock_to_copy(ran_out, now) == {"ObjectLockLegalHoldStatus": "ON"}  # S3 refuses a date past


def test_verify_metadata_compares_the_locks_too(job: ToolJob, moto_buckets: MotoBuckets, tmp_path: Path) -> None:
    source, destination = locked_buckets(moto_buckets)
    with through_s3(job, moto_buckets):
        copied = job.run(f"s3://{source}", f"s3://{destination}", "--object-lock", "copy")
        moto_buckets.client.put_object_legal_hold(Bucket=destination, Key="held.txt", LegalHold={"Status": "OFF"})
        audit = job.run(f"s3://{source}", f"s3://{destination}", "--verify-only", "--verify-metadata",
                        "--object-lock", "copy")

    assert copied.returncode == 0, describe(copied)
    assert audit.returncode == 1, describe(audit)
    assert ("metadata mismatch: \"held.txt\" (ObjectLockLegalHoldStatus 'ON' in the source, None in the "
            "destination)") in audit.stdout, describe(audit)
    assert "headers and metadata: 2 mismatches" in audit.stderr  # big.bin: moto drops its multipart lock
