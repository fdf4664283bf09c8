"""Copying between two accounts, and what a person sees when one side's keys fall short.

SeaweedFS plays both accounts: its ``source`` identity may only read and list the
source bucket, its ``dest`` identity may only work in the destination bucket, so
nothing can be copied server-side and every byte must be read with one set of
keys and written with the other, as across AWS accounts. The tool gets the
source keys from the --source-credentials file and the destination keys from
the environment (the default credential chain), exactly as on EC2.

The SeaweedFS buckets are shared by the whole session, so every test works under
a key prefix of its own. Keys with ``//`` or a trailing ``/`` are not used here:
SeaweedFS folds ``//`` into ``/`` and turns a key ending in ``/`` into a
directory marker, so such keys would not survive even a direct PUT/GET; they are
covered against moto in test_copy.py.
"""

from __future__ import annotations

import datetime
import random
import re
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from s3servers import DEST_BUCKET, SOURCE_BUCKET, Identity, SeaweedServer, incomplete_uploads, object_snapshot
from toolcli import (
    CHUNK_SIZE,
    ToolJob,
    assert_usage_error,
    copied_keys,
    describe,
    error_lines,
    read_progress,
    write_source_credentials,
)


@dataclass
class CrossAccount:
    """One test's corner of the shared SeaweedFS: its key prefix and a way to run the tool
    with any pair of identities."""

    server: SeaweedServer
    prefix: str
    workdir: Path
    base_env: dict[str, str]

    @property
    def source_uri(self) -> str:
        return f"s3://{SOURCE_BUCKET}/{self.prefix}"

    @property
    def destination_uri(self) -> str:
        return f"s3://{DEST_BUCKET}/{self.prefix}"

    def job(self, source: Identity, destination: Identity, *, copy_mode: str = "stream") -> ToolJob:
        credentials = write_source_credentials(self.workdir / "source-credentials.json", source,
                                               self.server.endpoint_url)
        env = {**self.base_env, "AWS_ACCESS_KEY_ID": destination.access_key,
               "AWS_SECRET_ACCESS_KEY": destination.secret_key}
        return ToolJob(workdir=self.workdir, env=env, credentials=credentials,
                       dest_endpoint_url=self.server.endpoint_url, copy_mode=copy_mode)

    def put(self, name: str, body: bytes, **attributes: Any) -> None:
        self.server.client(self.server.admin).put_object(Bucket=SOURCE_BUCKET, Key=self.prefix + name, Body=body,
                                                         **attributes)

    def source_snapshot(self) -> dict[str, dict[str, Any]]:
        return self._relative(object_snapshot(self.server.client(self.server.admin), SOURCE_BUCKET, self.prefix))

    def destination_snapshot(self) -> dict[str, dict[str, Any]]:
        return self._relative(object_snapshot(self.server.client(self.server.admin), DEST_BUCKET, self.prefix))

    def destination_uploads(self) -> list[dict[str, Any]]:
        uploads = incomplete_uploads(self.server.client(self.server.admin), DEST_BUCKET)
        return [upload for upload in uploads if upload["Key"].startswith(self.prefix)]

    def _relative(self, snapshot: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {key[len(self.prefix):]: value for key, value in snapshot.items()}


@pytest.fixture
def accounts(seaweed: SeaweedServer, tool_env: dict[str, str], tmp_path: Path) -> CrossAccount:
    return CrossAccount(server=seaweed, prefix=f"xacct-{uuid.uuid4().hex[:10]}/", workdir=tmp_path,
                        base_env=tool_env)


def put_small_objects(accounts: CrossAccount, count: int) -> list[str]:
    names = [f"small/{index:02d}.txt" for index in range(count)]
    for name in names:
        accounts.put(name, f"body of {name}".encode(), Metadata={"n": name.replace("/", "-")}, Tagging="kind=small")
    return names


def assert_nothing_under_destination_prefix(accounts: CrossAccount) -> None:
    assert accounts.destination_snapshot() == {}
    assert accounts.destination_uploads() == []


def test_cross_account_copy_is_identical(accounts: CrossAccount) -> None:
    expires = datetime.datetime(2032, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    accounts.put("empty", b"")
    accounts.put("docs/report café 2024.txt", "Grüße aus Zürich\n".encode(), ContentType="text/plain; charset=utf-8",
                 ContentLanguage="de-CH", CacheControl="no-cache", Metadata={"author": "ops team"},
                 Tagging="team=data%20platform&confidential=no")
    accounts.put("site/index.html.gz", random.Random(1).randbytes(40_000), ContentType="text/html",
                 ContentEncoding="gzip", ContentDisposition='inline; filename="index.html"',
                 CacheControl="public, max-age=3600", Expires=expires, Metadata={"build": "1234"},
                 Tagging="env=prod")
    accounts.put("a+b=c & d?.bin", random.Random(2).randbytes(3_000), Metadata={"odd": "yes"})
    accounts.put("video/large.mp4", random.Random(3).randbytes(2 * CHUNK_SIZE + 12_345),  # 3 parts
                 ContentType="video/mp4", ContentDisposition="attachment", CacheControl="max-age=60",
                 Expires=expires, Metadata={"camera": "x100", "take": "7"}, Tagging="kind=video&size=large")
    job = accounts.job(accounts.server.source, accounts.server.dest)

    result = job.run(accounts.source_uri, accounts.destination_uri)

    assert result.returncode == 0, describe(result)
    source = accounts.source_snapshot()
    assert len(source) == 5
    assert accounts.destination_snapshot() == source
    assert accounts.destination_uploads() == []
    assert sorted(copied_keys(job.log_text())) == sorted(accounts.prefix + name for name in source)
    assert read_progress(job.progress_file)["summary"]["state"] == "complete"


# -- permission errors ------------------------------------------------------------------------
#
# A refusal that every request would meet must stop the run with one sentence that names the
# side whose keys fall short, the bucket and the permission to grant.


def test_source_keys_that_may_not_list(accounts: CrossAccount) -> None:
    put_small_objects(accounts, 2)
    job = accounts.job(accounts.server.source_no_list, accounts.server.dest)

    result = job.run(accounts.source_uri, accounts.destination_uri)

    # Found by the preflight ListObjectsV2, before anything is copied.
    assert_usage_error(result, "source", SOURCE_BUCKET, "s3:ListBucket")
    assert_nothing_under_destination_prefix(accounts)


def test_destination_keys_that_may_not_list(accounts: CrossAccount) -> None:
    put_small_objects(accounts, 2)
    job = accounts.job(accounts.server.source, accounts.server.dest_no_list)

    result = job.run(accounts.source_uri, accounts.destination_uri)

    # Listing the destination is needed to find multipart uploads a killed run left and for
    # --skip-existing; the preflight finds it refused before anything is copied.
    assert_usage_error(result, "destination", DEST_BUCKET, "s3:ListBucket")
    assert_nothing_under_destination_prefix(accounts)


def assert_run_stopped(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit 2 after the run began: the refused objects are listed as they fail, and the closing
    error line (not one of the FAILED lines) names the side, the bucket and the action."""
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr
    errors = error_lines(result.stderr)
    assert errors, describe(result)
    closing = errors[-1]
    assert "FAILED" not in closing, describe(result)
    for fragment in fragments:
        assert fragment in closing, closing


def test_source_keys_that_may_not_read_stop_the_run(accounts: CrossAccount) -> None:
    put_small_objects(accounts, 4)
    accounts.put("large.bin", random.Random(5).randbytes(2 * CHUNK_SIZE + 1))
    job = accounts.job(accounts.server.source_no_read, accounts.server.dest)

    result = job.run(accounts.source_uri, accounts.destination_uri)

    # The preflight (ListObjectsV2) passes: these keys may list. Reading is refused object by
    # object; once s3:GetObject has been denied three times and never allowed, no object could
    # succeed, so the run stops (exit 2) naming the source, its bucket and s3:GetObject.
    assert_run_stopped(result, "source", SOURCE_BUCKET, "s3:GetObject")
    assert_nothing_under_destination_prefix(accounts)
    progress = read_progress(job.progress_file)
    assert progress["summary"]["state"] != "complete"
    assert progress["resume"]["multipart_uploads"] == {}


def test_destination_keys_that_may_not_write_stop_the_run(accounts: CrossAccount) -> None:
    put_small_objects(accounts, 5)
    accounts.put("large.bin", random.Random(4).randbytes(2 * CHUNK_SIZE + 1))
    job = accounts.job(accounts.server.source, accounts.server.dest_no_write)

    result = job.run(accounts.source_uri, accounts.destination_uri)

    # The preflight cannot test a write without writing, so the first PUTs are refused; once
    # s3:PutObject has been denied three times and never allowed, the run stops (exit 2) with a
    # closing sentence naming the destination, its bucket and s3:PutObject.
    assert_run_stopped(result, "destination", DEST_BUCKET, "s3:PutObject")
    assert_nothing_under_destination_prefix(accounts)
    progress = read_progress(job.progress_file)
    assert progress["summary"]["state"] != "complete"
    assert progress["resume"]["multipart_uploads"] == {}


def test_destination_keys_that_may_not_write_with_two_objects_fail_them_one_by_one(
    accounts: CrossAccount,
) -> None:
    names = put_small_objects(accounts, 2)
    job = accounts.job(accounts.server.source, accounts.server.dest_no_write)

    result = job.run(accounts.source_uri, accounts.destination_uri)

    # Exit 1, not 2: the PermissionBreaker stops the run only after an action never yet allowed
    # has been denied DENIALS_BEFORE_STOP (3) times, because one AccessDenied can belong to one
    # object (a KMS key, an object ACL, a bucket policy condition on the key). Two refusals are
    # two object failures: the run finishes, lists both with the reason, and a rerun retries them.
    assert result.returncode == 1, describe(result)
    assert "Traceback" not in result.stderr
    for name in names:
        reported = [line for line in result.stderr.splitlines() if accounts.prefix + name in line]
        assert reported, describe(result)
        assert any("destination" in line and "s3:PutObject" in line for line in reported), reported
    assert_nothing_under_destination_prefix(accounts)
    progress = read_progress(job.progress_file)
    assert sorted(progress["resume"]["failed"]) == sorted(accounts.prefix + name for name in names)


# -- refused credentials ----------------------------------------------------------------------
#
# Wrong keys are not a missing permission: granting s3:ListBucket would not help. The person
# must read that the keys of the named side were refused.


@pytest.mark.parametrize("side", ["source", "destination"])
@pytest.mark.parametrize("fault", ["wrong secret key", "unknown access key"])
def test_refused_credentials_are_named_for_their_side(accounts: CrossAccount, side: str, fault: str) -> None:
    put_small_objects(accounts, 2)
    server = accounts.server
    good = server.source if side == "source" else server.dest
    bad = (Identity(good.access_key, good.secret_key[::-1]) if fault == "wrong secret key"
           else Identity("NO_SUCH_KEY", good.secret_key))
    job = accounts.job(bad if side == "source" else server.source, bad if side == "destination" else server.dest)

    result = job.run(accounts.source_uri, accounts.destination_uri)

    line = assert_usage_error(result, f"{side} credentials")
    other = "destination" if side == "source" else "source"
    assert f"{other} credentials" not in line, line
    said = line.replace(str(job.credentials), "CREDENTIALS-FILE")
    assert re.search(r"refused|secret key|access key|invalid|not valid", said, re.IGNORECASE), line
    assert_nothing_under_destination_prefix(accounts)
