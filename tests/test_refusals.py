"""What S3 refuses for some objects only, or names another bucket for: the sentence must say what S3
said, about the right object, side and bucket, and fail only what it concerns.

* KMS denials: an object encrypted with a key the caller may not use is refused with S3's own
  message naming the kms: action and the key; other objects of the same bucket are readable, so
  only those objects fail (they are not a missing s3:GetObject or s3:PutObject, which would stop
  the run).
* A server-side copy whose source bucket is gone: S3's NoSuchBucket names the source in its
  BucketName, and so must the sentence, though the request was sent to the destination.
* Intelligent-Tiering archive tiers: an archived object is refused before any upload is created
  for it, and named as archived in its Intelligent-Tiering tier, with how to restore it.

moto has none of these behaviours: tests/aws_behaviour.py emulates S3's answers in front of it. The
unit tests at the end hold the rules that tell these answers apart.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
from aws_behaviour import CopySourceBucketGone, IntelligentTieringArchived, KmsDenied, kms_denial_message
from conftest import FAKE_KEYS
from fault_proxy import FaultProxy
from s3servers import MotoBuckets, incomplete_uploads, object_snapshot, put_objects
from toolcli import ToolJob, describe, error_lines, read_progress, write_source_credentials
from units import MIB
from uploads import body

import s3_bulk_transfer as tool  # (the pure rules)


def job_through(proxy: FaultProxy, tool_env: dict[str, str], tmp_path: Path, *, copy_mode: str = "stream") -> ToolJob:
    credentials = write_source_credentials(tmp_path / "source-credentials.json", FAKE_KEYS, proxy.endpoint_url)
    return ToolJob(workdir=tmp_path, env=tool_env, credentials=credentials, dest_endpoint_url=proxy.endpoint_url,
                   copy_mode=copy_mode)


def failures(result: Any) -> dict[str, str]:
    """The `error: FAILED "KEY": reason` lines of stderr, by key."""
    found = re.findall(r'^error: FAILED ("(?:[^"\\]|\\.)*"): (.*)$', result.stderr, flags=re.MULTILINE)
    return {json.loads(key): reason for key, reason in found}


# -- KMS denials ---------------------------------------------------------------------------------


def test_kms_denials_fail_only_their_objects_with_s3s_message(
        moto_buckets: MotoBuckets, tool_env: dict[str, str], tmp_path: Path) -> None:
    unreadable = {f"a/unreadable-{index}": body(500 + index, seed=index) for index in range(3)}
    unreadable["a/unreadable-large.bin"] = body(11 * MIB, seed=10)
    unwritable = {f"b/unwritable-{index}": body(700 + index, seed=20 + index) for index in range(2)}
    unwritable["b/unwritable-large.bin"] = body(11 * MIB, seed=30)
    fine = {f"c/fine-{index}": body(900 + index, seed=40 + index) for index in range(3)}
    put_objects(moto_buckets.client, moto_buckets.source, {**unreadable, **unwritable, **fine})
    with FaultProxy(moto_buckets.endpoint_url) as proxy:
        proxy.behave(KmsDenied(reads=frozenset((moto_buckets.source, key) for key in unreadable),
                               writes=frozenset((moto_buckets.dest, key) for key in unwritable)))
        job = job_through(proxy, tool_env, tmp_path)
        result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}")

    assert result.returncode == 1, describe(result)
    assert "Traceback" not in result.stderr
    failed = failures(result)
    assert set(failed) == set(unreadable) | set(unwritable), describe(result)
    for key in unreadable:
        assert "kms:Decrypt" in failed[key] and "source" in failed[key], failed[key]
        assert kms_denial_message("kms:Decrypt") in failed[key]  # S3's own words, kept
        assert "s3:GetObject" not in failed[key]
    for key in unwritable:
        assert "kms:GenerateDataKey" in failed[key] and "destination" in failed[key], failed[key]
        assert kms_denial_message("kms:GenerateDataKey") in failed[key]
        assert "s3:PutObject" not in failed[key]
    source = object_snapshot(moto_buckets.client, moto_buckets.source)
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == {key: source[key] for key in fine}
    assert incomplete_uploads(moto_buckets.client, moto_buckets.dest) == []
    assert set(read_progress(job.progress_file)["resume"]["failed"]) == set(failed)


# -- a server-side copy's source bucket gone mid-run --------------------------------------------


def test_a_vanished_copy_source_bucket_is_named_as_the_source(
        moto_buckets: MotoBuckets, tool_env: dict[str, str], tmp_path: Path) -> None:
    put_objects(moto_buckets.client, moto_buckets.source,
                {"small-0": b"zero", "small-1": b"one", "large.bin": body(11 * MIB, seed=1)})
    with FaultProxy(moto_buckets.endpoint_url) as proxy:
        proxy.behave(CopySourceBucketGone(moto_buckets.source))
        job = job_through(proxy, tool_env, tmp_path, copy_mode="server-side")
        result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}")

    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr
    last = error_lines(result.stderr)[-1]
    assert f"The source bucket {moto_buckets.source} does not exist" in last, describe(result)
    assert moto_buckets.dest not in last
    assert read_progress(job.progress_file)["resume"]["failed"] == {}  # no object is to blame
    assert incomplete_uploads(moto_buckets.client, moto_buckets.dest) == []


# -- Intelligent-Tiering archive tiers -----------------------------------------------------------


@pytest.fixture
def archived(moto_buckets: MotoBuckets) -> dict[str, str]:
    """Two archived Intelligent-Tiering objects (one above the multipart threshold), one in its
    Frequent Access tier, and two STANDARD objects; the archived ones' tiers."""
    put_objects(moto_buckets.client, moto_buckets.source,
                {"archived/large.bin": body(11 * MIB, seed=2), "archived/small.txt": b"deep",
                 "tiering/frequent.txt": b"readable"}, StorageClass="INTELLIGENT_TIERING")
    put_objects(moto_buckets.client, moto_buckets.source,
                {"standard/a.txt": b"a", "standard/b.bin": body(7 * MIB, seed=3)})
    return {"archived/large.bin": "ARCHIVE_ACCESS", "archived/small.txt": "DEEP_ARCHIVE_ACCESS"}


def test_intelligent_tiering_archived_objects_are_refused_before_any_upload(
        moto_buckets: MotoBuckets, archived: dict[str, str], tool_env: dict[str, str], tmp_path: Path) -> None:
    with FaultProxy(moto_buckets.endpoint_url) as proxy:
        proxy.behave(IntelligentTieringArchived({(moto_buckets.source, key): tier for key, tier in archived.items()}))
        job = job_through(proxy, tool_env, tmp_path)
        result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}")

    assert result.returncode == 1, describe(result)
    failed = failures(result)
    assert set(failed) == set(archived), describe(result)
    assert "Intelligent-Tiering Archive Access tier" in failed["archived/large.bin"]
    assert "Intelligent-Tiering Deep Archive Access tier" in failed["archived/small.txt"]
    for reason in failed.values():
        assert "restore-object" in reason and "GLACIER" not in reason, reason
    assert [seen.key for seen in proxy.counts.operations("CreateMultipartUpload")] == ["standard/b.bin"]
    source = object_snapshot(moto_buckets.client, moto_buckets.source)
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == {
        key: entry for key, entry in source.items() if key not in archived}
    assert incomplete_uploads(moto_buckets.client, moto_buckets.dest) == []


# -- the pure rules ------------------------------------------------------------------------------


def s3_error(code: str, message: str, status: int = 403, **elements: str) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": message, **elements}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject")


@pytest.mark.parametrize(("message", "permission"), [
    (kms_denial_message("kms:Decrypt"), "kms:Decrypt"),
    (kms_denial_message("kms:GenerateDataKey"), "kms:GenerateDataKey"),
    ("The ciphertext refers to a customer master key that does not exist, does not exist in this region, or you "
     "are not allowed to access.", "kms:Decrypt"),
    ("Access Denied", None),
    ("User: arn:aws:iam::111122223333:user/x is not authorized to perform: s3:GetObject", None),
])
def test_kms_denials_are_told_from_bucket_denials(message: str, permission: str | None) -> None:
    assert tool.kms_permission_denied(s3_error("AccessDenied", message)) == permission


def test_a_missing_bucket_is_the_one_s3_names() -> None:
    settings = tool.SideAccess(role="destination", origin="the default credential chain")
    named = s3_error("NoSuchBucket", "The specified bucket does not exist", 404, BucketName="src")
    assert tool.explain_error(named, access=settings, bucket="dst", action="s3:PutObject").startswith(
        "The bucket src does not exist")
    assert tool.explain_error(named, access=settings, bucket="src", action="s3:PutObject").startswith(
        "The destination bucket src does not exist")


@pytest.mark.parametrize(("head", "archived"), [
    ({"StorageClass": "INTELLIGENT_TIERING", "ArchiveStatus": "ARCHIVE_ACCESS"},
     "Intelligent-Tiering Archive Access tier"),
    ({"StorageClass": "INTELLIGENT_TIERING", "ArchiveStatus": "DEEP_ARCHIVE_ACCESS"},
     "Intelligent-Tiering Deep Archive Access tier"),
    ({"StorageClass": "GLACIER"}, "archived in GLACIER"),
    ({"StorageClass": "DEEP_ARCHIVE", "Restore": 'ongoing-request="true"'}, "archived in DEEP_ARCHIVE"),
    ({"StorageClass": "GLACIER", "Restore": 'ongoing-request="false", expiry-date="Fri, 21 Dec 2012 00:00:00 GMT"'},
     None),
    ({"StorageClass": "INTELLIGENT_TIERING"}, None),  # in a tier read at once
    ({}, None),
])
def test_archived_objects_are_known_by_their_head(head: dict[str, str], archived: str | None) -> None:
    found = tool.unrestored_archive(head)
    assert (found is None) if archived is None else (archived in found), found
