"""Bad input, end to end against moto: one sentence on stderr, exit 2, nothing written.

The issue asks that a mistake in the command line, the credentials file, the
buckets or the progress file be reported before anything is copied, as one line
a person can act on (no traceback), with exit code 2. Every test here also
checks that nothing was written: the destination bucket is still empty, no
multipart upload was started, the source is unchanged and no progress file was
created (or an existing one was left byte for byte as it was).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from conftest import FAKE_KEYS
from s3servers import MotoBuckets, incomplete_uploads, object_snapshot
from toolcli import ToolJob, assert_usage_error, describe, run_tool, write_source_credentials


@pytest.fixture
def job(moto_buckets: MotoBuckets, tool_env: dict[str, str], tmp_path: Path) -> ToolJob:
    credentials = write_source_credentials(tmp_path / "source-credentials.json", FAKE_KEYS, moto_buckets.endpoint_url)
    return ToolJob(workdir=tmp_path, env=tool_env, credentials=credentials,
                   dest_endpoint_url=moto_buckets.endpoint_url)


@pytest.fixture
def source_objects(moto_buckets: MotoBuckets) -> dict[str, dict[str, Any]]:
    """A few source objects (one of them above the 6 MiB multipart threshold), so that a run that
    wrongly went ahead would have something to write; returns their snapshot."""
    client = moto_buckets.client
    for key in ("a.txt", "dir/b.txt", "dir/c d.txt"):
        client.put_object(Bucket=moto_buckets.source, Key=key, Body=f"body of {key}".encode(),
                          Metadata={"k": "v"}, Tagging="t=1")
    client.put_object(Bucket=moto_buckets.source, Key="dir/large.bin", Body=b"\x5a" * (7 * 1024 * 1024))
    return object_snapshot(client, moto_buckets.source)


def assert_nothing_written(buckets: MotoBuckets, source_before: dict[str, dict[str, Any]], job: ToolJob) -> None:
    client = buckets.client
    assert object_snapshot(client, buckets.dest) == {}
    assert incomplete_uploads(client, buckets.dest) == []
    assert object_snapshot(client, buckets.source) == source_before
    assert incomplete_uploads(client, buckets.source) == []
    assert not job.progress_file.exists()


# -- the source credentials file ------------------------------------------------------------


def test_missing_credentials_file(job: ToolJob, moto_buckets: MotoBuckets, source_objects: dict) -> None:
    job.credentials = job.workdir / "no-such-credentials.json"

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}")

    assert_usage_error(result, str(job.credentials), "does not exist")
    assert_nothing_written(moto_buckets, source_objects, job)


def test_malformed_json_credentials_file(job: ToolJob, moto_buckets: MotoBuckets, source_objects: dict) -> None:
    job.credentials.write_text('{"aws_access_key_id": "testing", "aws_secret_access_key": "testing",\n')

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}")

    assert_usage_error(result, str(job.credentials), "not valid JSON")
    assert_nothing_written(moto_buckets, source_objects, job)


def test_unknown_field_in_credentials_file(job: ToolJob, moto_buckets: MotoBuckets, source_objects: dict) -> None:
    # A typo a person makes: aws_secret_key instead of aws_secret_access_key.
    job.credentials.write_text(json.dumps({
        "aws_access_key_id": "testing", "aws_secret_key": "testing", "endpoint_url": moto_buckets.endpoint_url,
    }))

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}")

    assert_usage_error(result, str(job.credentials), "aws_secret_key")
    assert_nothing_written(moto_buckets, source_objects, job)


def test_credentials_file_readable_by_others_warns_and_the_run_still_works(
    job: ToolJob, moto_buckets: MotoBuckets, source_objects: dict
) -> None:
    job.credentials.chmod(0o644)

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}")

    assert result.returncode == 0, describe(result)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, describe(result)
    assert str(job.credentials) in warnings[0] and "chmod 600" in warnings[0], warnings[0]
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == source_objects


# -- buckets and URIs -------------------------------------------------------------------------


def test_missing_source_bucket(job: ToolJob, moto_buckets: MotoBuckets, source_objects: dict) -> None:
    missing = f"no-such-source-{uuid.uuid4().hex[:8]}"

    result = job.run(f"s3://{missing}", f"s3://{moto_buckets.dest}")

    line = assert_usage_error(result, "source", missing)
    assert "does not exist" in line
    assert_nothing_written(moto_buckets, source_objects, job)


def test_missing_destination_bucket(job: ToolJob, moto_buckets: MotoBuckets, source_objects: dict) -> None:
    missing = f"no-such-dest-{uuid.uuid4().hex[:8]}"

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{missing}")

    line = assert_usage_error(result, "destination", missing)
    assert "does not exist" in line
    assert_nothing_written(moto_buckets, source_objects, job)
    with pytest.raises(ClientError):  # and the tool did not create it
        moto_buckets.client.head_bucket(Bucket=missing)


@pytest.mark.parametrize("which, uri", [("source", "http://x"), ("destination", "s3://"),
                                        ("destination", "s3:/bucket/key"), ("source", "s3://Not_A_Bucket/")])
def test_bad_uri(job: ToolJob, moto_buckets: MotoBuckets, source_objects: dict, which: str, uri: str) -> None:
    source = uri if which == "source" else f"s3://{moto_buckets.source}"
    destination = uri if which == "destination" else f"s3://{moto_buckets.dest}"

    result = job.run(source, destination)

    assert_usage_error(result, repr(uri))
    assert_nothing_written(moto_buckets, source_objects, job)


@pytest.mark.parametrize("source_path, destination_path", [
    ("", ""),  # the whole bucket onto itself
    ("photos", "photos"),  # a prefix onto itself
    ("photos", "photos/backup"),  # into itself: it would copy its own copies
    ("photos/2024", "photos"),  # its parent contains it
    ("", "backup"),  # the whole bucket contains every prefix
])
def test_source_and_destination_overlap(job: ToolJob, moto_buckets: MotoBuckets, source_objects: dict,
                                        source_path: str, destination_path: str) -> None:
    bucket = moto_buckets.source

    result = job.run(f"s3://{bucket}/{source_path}", f"s3://{bucket}/{destination_path}")

    assert_usage_error(result, "overlap")
    assert_nothing_written(moto_buckets, source_objects, job)


def test_overlap_is_found_when_the_same_endpoint_is_written_with_a_trailing_slash(
    job: ToolJob, moto_buckets: MotoBuckets, source_objects: dict
) -> None:
    """http://host:port and http://host:port/ are one server: copying a prefix into itself there
    must be refused too (with a large prefix, the listing would meet its own copies and copy them
    again, photos/backup/backup/...)."""
    job.dest_endpoint_url = moto_buckets.endpoint_url + "/"
    bucket = moto_buckets.source

    result = job.run(f"s3://{bucket}/dir", f"s3://{bucket}/dir/backup")

    assert_usage_error(result, "overlap")
    assert_nothing_written(moto_buckets, source_objects, job)


def test_sibling_prefixes_of_one_bucket_do_not_overlap(job: ToolJob, moto_buckets: MotoBuckets,
                                                       source_objects: dict) -> None:
    """dir and dirx share characters, not keys: copying one into the other is allowed."""
    bucket = moto_buckets.source

    result = job.run(f"s3://{bucket}/dir", f"s3://{bucket}/dirx")

    assert result.returncode == 0, describe(result)
    copies = object_snapshot(moto_buckets.client, bucket, "dirx/")
    originals = {key: value for key, value in source_objects.items() if key.startswith("dir/")}
    assert {key[len("dirx/"):]: value for key, value in copies.items()} == {
        key[len("dir/"):]: value for key, value in originals.items()
    }


# -- tuning options -------------------------------------------------------------------------


@pytest.mark.parametrize("option, value, fragments", [
    ("--chunk-size", "1MiB", ("--chunk-size", "5MiB")),
    ("--chunk-size", "6GiB", ("--chunk-size", "5GiB")),
    ("--max-workers", "0", ("--max-workers",)),
    ("--max-workers", "-3", ("--max-workers",)),
    ("--shard", "3/3", ("--shard", "from 0 to 2")),
    ("--shard", "auto/3", ("--shard auto/3", "AWS_BATCH_JOB_ARRAY_INDEX", "JOB_COMPLETION_INDEX")),
])
def test_out_of_range_tuning(job: ToolJob, moto_buckets: MotoBuckets, source_objects: dict,
                             option: str, value: str, fragments: tuple[str, ...]) -> None:
    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", option, value)

    assert_usage_error(result, *fragments)
    assert_nothing_written(moto_buckets, source_objects, job)


def test_a_bandwidth_that_is_not_a_rate(job: ToolJob, moto_buckets: MotoBuckets, source_objects: dict) -> None:
    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--max-bandwidth", "fast")

    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr
    assert "--max-bandwidth" in result.stderr and "write e.g. 100MB/s" in result.stderr
    assert_nothing_written(moto_buckets, source_objects, job)


# -- log and progress files -------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--log-file", "--progress-file"])
def test_file_in_a_missing_directory(job: ToolJob, moto_buckets: MotoBuckets, source_objects: dict,
                                     option: str) -> None:
    missing_dir = job.workdir / "no" / "such" / "dir"

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", option, str(missing_dir / "f"))

    assert_usage_error(result, option, str(missing_dir))
    assert_nothing_written(moto_buckets, source_objects, job)
    assert not missing_dir.parent.parent.exists()


@pytest.mark.parametrize("content, fragment", [
    ('{\n  "format": "s3-bulk-transfer progress, version 1",\n  "summary": {\n    "state": "runn', "not valid JSON"),
    ("", "not valid JSON"),  # a file cut to nothing by a full disk
    ('{"hello": "world"}\n', "not written by this tool"),
])
def test_damaged_progress_file_is_reported_and_left_untouched(
    job: ToolJob, moto_buckets: MotoBuckets, source_objects: dict, content: str, fragment: str
) -> None:
    job.progress_file.write_text(content)

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}")

    line = assert_usage_error(result, str(job.progress_file), fragment)
    assert "--restart" in line
    assert job.progress_file.read_text() == content
    client = moto_buckets.client
    assert object_snapshot(client, moto_buckets.dest) == {}
    assert incomplete_uploads(client, moto_buckets.dest) == []


# -- help -------------------------------------------------------------------------------------


def test_help_explains_the_exit_codes(tool_env: dict[str, str], tmp_path: Path) -> None:
    result = run_tool(["--help"], env=tool_env, cwd=tmp_path)

    assert result.returncode == 0, describe(result)
    assert "exit codes" in result.stdout
    code_lines = {line.split()[0]: line for line in result.stdout.splitlines()
                  if line.strip() and line.split()[0] in {"0", "1", "2", "130"}}
    assert set(code_lines) == {"0", "1", "2", "130"}, result.stdout
    assert "interrupt" in code_lines["130"].lower()
    assert "fail" in code_lines["1"].lower()


def test_no_arguments_is_a_usage_error_without_traceback(tool_env: dict[str, str], tmp_path: Path) -> None:
    result: subprocess.CompletedProcess[str] = run_tool([], env=tool_env, cwd=tmp_path)

    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr
    assert "usage:" in result.stderr
