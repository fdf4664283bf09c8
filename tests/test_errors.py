"""Bad input, end to end against moto: one sentence on stderr, exit 2, nothing written.

The issue asks that a mistake in the command line, the credentials file, the
buckets or the progress file be reported before anything is copied, as one line
a person can act on (no traceback), with exit code 2. Every test here also
checks that nothing was written: the destination bucket is still empty, no
multipart upload was started, the source is unchanged and no progress file was
created (or an existing one was left byte for byte as it was).

Hostile or impossible objects (a key with "." or ".." segments, an object over
S3's limit of 10,000 parts of 5 GiB) are refused one by one instead: the run copies the others
and exits 1, and nothing at all is written for the refused ones.
tests/README.md's "Mistakes the tool catches" names the test for each mistake.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import posixpath
import re
import subprocess
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from conftest import FAKE_KEYS
from fault_proxy import FaultProxy
from s3servers import MotoBuckets, incomplete_uploads, object_snapshot
from toolcli import ToolJob, assert_usage_error, describe, read_progress, run_tool, write_source_credentials


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


def assert_nothing_written(buckets: MotoBuckets, source_before: dict[str, dict[str, Any]], job: ToolJob,
                           progress_before: bytes | None = None) -> None:
    """Nothing in either bucket changed, and the progress file is as it was: absent, or byte for byte
    ``progress_before``."""
    client = buckets.client
    assert object_snapshot(client, buckets.dest) == {}
    assert incomplete_uploads(client, buckets.dest) == []
    assert object_snapshot(client, buckets.source) == source_before
    assert incomplete_uploads(client, buckets.source) == []
    if progress_before is None:
        assert not job.progress_file.exists()
    else:
        assert job.progress_file.read_bytes() == progress_before


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


@pytest.mark.parametrize("how, fragment", [
    ("a directory", "Is a directory"),
    ("saved as UTF-16", "not UTF-8"),  # what some Windows editors do
    pytest.param("mode 000", "Permission denied", marks=pytest.mark.skipif(
        os.geteuid() == 0, reason="root reads a file of mode 000 anyway; the other two cases cover the message")),
])
def test_unreadable_credentials_file(job: ToolJob, moto_buckets: MotoBuckets, source_objects: dict,
                                     how: str, fragment: str) -> None:
    if how == "a directory":
        job.credentials.unlink()
        job.credentials.mkdir()
    elif how == "saved as UTF-16":
        job.credentials.write_text(job.credentials.read_text(), encoding="utf-16")
    else:
        job.credentials.chmod(0o000)

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}")

    assert_usage_error(result, str(job.credentials), fragment)
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
                                        ("destination", "s3:/bucket/key"), ("source", "s3://Not_A_Bucket/"),
                                        ("destination", "s3://some-bucket/copy/../elsewhere")])
def test_bad_uri(job: ToolJob, moto_buckets: MotoBuckets, source_objects: dict, which: str, uri: str) -> None:
    source = uri if which == "source" else f"s3://{moto_buckets.source}"
    destination = uri if which == "destination" else f"s3://{moto_buckets.dest}"

    result = job.run(source, destination)

    assert_usage_error(result, repr(uri))
    assert_nothing_written(moto_buckets, source_objects, job)


@pytest.mark.parametrize("which", ["source", "destination"])
def test_a_directory_bucket_is_refused_before_any_request(job: ToolJob, moto_buckets: MotoBuckets,
                                                          source_objects: dict, which: str) -> None:
    """S3 Express One Zone directory buckets (names ending in --x-s3, S3 User Guide, "Directory bucket
    naming rules") list keys out of key order, take no StartAfter, have ETags that are no MD5s and no
    tags: the key-range listing, the watermarks and the integrity checks would all be wrong there, so
    such a bucket is refused on either side before a single request (the tool used to connect, and
    botocore's CreateSession got NoSuchBucket from moto, called "does not exist")."""
    directory = "mybucket--usw2-az1--x-s3"
    source = f"s3://{directory}/photos" if which == "source" else f"s3://{moto_buckets.source}"
    destination = f"s3://{directory}/photos" if which == "destination" else f"s3://{moto_buckets.dest}"
    with FaultProxy(moto_buckets.endpoint_url) as proxy:
        job.credentials = write_source_credentials(job.credentials, FAKE_KEYS, proxy.endpoint_url)
        job.dest_endpoint_url = proxy.endpoint_url

        result = job.run(source, destination)

    assert_usage_error(result, f"s3://{directory}/photos/", "directory bucket", "S3 Express One Zone",
                       "not in key order", "StartAfter")
    assert proxy.counts.requests == 0 and proxy.counts.log == []
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
    ("--max-workers", "0", ("--max-workers", "between 1 and 256")),
    ("--max-workers", "-3", ("--max-workers", "between 1 and 256")),
    ("--max-workers", "100000", ("--max-workers", "between 1 and 256")),
    ("--multipart-threshold", "6GiB", ("--multipart-threshold", "5GiB")),
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
    assert_nothing_written(moto_buckets, source_objects, job, progress_before=content.encode())


def test_progress_file_of_another_job_is_refused_and_left_untouched(
    job: ToolJob, moto_buckets: MotoBuckets, source_objects: dict
) -> None:
    # The other job copies an empty prefix, so that it leaves a progress file and nothing in S3.
    other = job.run(f"s3://{moto_buckets.source}/nothing-here", f"s3://{moto_buckets.dest}/elsewhere")
    assert other.returncode == 0, describe(other)
    saved = job.progress_file.read_bytes()

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}")

    assert_usage_error(result, str(job.progress_file), "belongs to another job", "--restart")
    assert_nothing_written(moto_buckets, source_objects, job, progress_before=saved)


# -- objects that must not or cannot be copied: refused one by one, the others copied, exit 1 ----


def failure_lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The `error: FAILED "KEY": reason` lines of stderr, by key."""
    found = re.findall(r'^error: FAILED ("(?:[^"\\]|\\.)*"): (.*)$', result.stderr, flags=re.MULTILINE)
    return {json.loads(key): reason for key, reason in found}


def test_keys_with_dot_segments_are_refused_and_the_others_copied(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    """S3 and moto keep such keys as they are, but a proxy or server that normalises URLs would not:
    path-style, the first key below would be written to the source bucket. The tool refuses them, so
    where a copy lands never depends on what sits between it and S3."""
    client, source, dest = moto_buckets.client, moto_buckets.source, moto_buckets.dest
    escaping = f"dir/a/../../../{source}/escaped.txt"
    assert posixpath.normpath(f"/{dest}/copy/{escaping[len('dir/'):]}") == f"/{source}/escaped.txt"
    refused = [escaping, "dir/./dot.txt", "dir/./big.bin"]  # big.bin would be a multipart upload
    for key in [*refused[:2], "dir/ok.txt", "dir/two..dots.txt"]:
        client.put_object(Bucket=source, Key=key, Body=f"body of {key}".encode())
    client.put_object(Bucket=source, Key="dir/./big.bin", Body=b"\x5a" * (7 * 1024 * 1024))
    source_before = object_snapshot(client, source)

    result = job.run(f"s3://{source}/dir", f"s3://{dest}/copy")

    assert result.returncode == 1, describe(result)
    assert "Traceback" not in result.stderr
    failures = failure_lines(result)
    assert set(failures) == set(refused), describe(result)
    assert all('"." or ".." path segment' in reason and "outside the destination prefix" in reason
               for reason in failures.values()), failures
    assert sorted(object_snapshot(client, dest)) == ["copy/ok.txt", "copy/two..dots.txt"]
    assert incomplete_uploads(client, dest) == []
    assert object_snapshot(client, source) == source_before
    assert sorted(read_progress(job.progress_file)["resume"]["failed"]) == sorted(refused)


@contextlib.contextmanager
def listing_that_claims(upstream_url: str, sizes: dict[str, int]) -> Iterator[str]:
    """A read-only HTTP proxy on 127.0.0.1 in front of ``upstream_url`` (moto) whose ListObjectsV2
    answers give ``sizes`` for those keys; every other request and answer passes unchanged. Yields
    the proxy's endpoint URL."""
    upstream = urllib.parse.urlsplit(upstream_url)
    assert upstream.hostname == "127.0.0.1"

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def forward(self) -> None:
            connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
            try:
                connection.request(self.command, self.path, headers=dict(self.headers))
                response = connection.getresponse()
                body = response.read()
            finally:
                connection.close()
            if self.command == "GET" and "list-type=2" in self.path:
                for key, size in sizes.items():
                    body = re.sub(rb"(<Key>" + re.escape(key.encode()) + rb"</Key>.*?<Size>)\d+(</Size>)",
                                  rb"\g<1>" + str(size).encode() + rb"\g<2>", body, flags=re.DOTALL)
            self.send_response_only(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in {"content-length", "transfer-encoding", "connection"}:
                    self.send_header(name, value)
            length = response.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(body))
            self.send_header("Content-Length", length)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = forward

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the base class would print every request on the test's stderr

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="listing-proxy", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_an_object_larger_than_s3_allows_fails_alone_before_anything_is_written(
    moto_buckets: MotoBuckets, tool_env: dict[str, str], tmp_path: Path
) -> None:
    """An object over S3's limit of 10,000 parts of 5 GiB (48.8 TiB; a MinIO or Ceph source may hold
    one) fails with one sentence naming its key, its size and the limit, before any
    CreateMultipartUpload; the others are copied.

    No 49 TiB object can be made on a test machine, so the source is moto behind a proxy whose listing
    says huge.bin is 49 TiB (its real body is 1 KiB). That is honest for what is tested: the tool
    decides from the listing alone, before it reads or writes anything for the object, so a listing
    that says 49 TiB is all it would see of a real one. What this does not prove is how a real
    server answers a 49 TiB copy, which the tool never attempts.
    """
    client, source, dest = moto_buckets.client, moto_buckets.source, moto_buckets.dest
    client.put_object(Bucket=source, Key="huge.bin", Body=b"\x00" * 1024)
    client.put_object(Bucket=source, Key="ok.txt", Body=b"fine")
    claimed = 49 * 1024**4
    with listing_that_claims(moto_buckets.endpoint_url, {"huge.bin": claimed}) as proxy_url:
        credentials = write_source_credentials(tmp_path / "source-credentials.json", FAKE_KEYS, proxy_url)
        job = ToolJob(workdir=tmp_path, env=tool_env, credentials=credentials,
                      dest_endpoint_url=moto_buckets.endpoint_url)

        result = job.run(f"s3://{source}", f"s3://{dest}")

    assert result.returncode == 1, describe(result)
    assert "Traceback" not in result.stderr
    failures = failure_lines(result)
    assert list(failures) == ["huge.bin"], describe(result)
    assert "49.0 TiB" in failures["huge.bin"] and f"{claimed:,} bytes" in failures["huge.bin"]
    assert "limit of 48.8 TiB (53,687,091,200,000 bytes, 10,000 parts of 5 GiB)" in failures["huge.bin"]
    assert sorted(object_snapshot(client, dest)) == ["ok.txt"]
    assert incomplete_uploads(client, dest) == []
    assert list(read_progress(job.progress_file)["resume"]["failed"]) == ["huge.bin"]


def test_an_object_over_the_old_five_tib_limit_is_planned_in_parts_within_s3s_ten_thousand(
    moto_buckets: MotoBuckets, tool_env: dict[str, str], tmp_path: Path
) -> None:
    """S3 holds objects of up to 10,000 parts of 5 GiB (48.8 TiB), no longer 5 TiB: a dry run through a
    listing that claims 6 TiB (as the test above, a 1 KiB body) plans the object in parts raised to
    fit 10,000, where it used to be refused as "over S3's limit of 5 TiB"."""
    client, source, dest = moto_buckets.client, moto_buckets.source, moto_buckets.dest
    client.put_object(Bucket=source, Key="big.bin", Body=b"\x00" * 1024)
    claimed = 6 * 1024**4
    with listing_that_claims(moto_buckets.endpoint_url, {"big.bin": claimed}) as proxy_url:
        credentials = write_source_credentials(tmp_path / "source-credentials.json", FAKE_KEYS, proxy_url)
        job = ToolJob(workdir=tmp_path, env=tool_env, credentials=credentials,
                      dest_endpoint_url=moto_buckets.endpoint_url)

        result = job.run(f"s3://{source}", f"s3://{dest}", "--dry-run")

    assert result.returncode == 0, describe(result)
    assert "cannot copy" not in result.stdout, describe(result)
    planned = re.search(r"multipart:\s+1 objects \(6\.0 TiB, ([\d,]+) parts\)", result.stdout)
    assert planned is not None, describe(result)
    assert 9_000 < int(planned.group(1).replace(",", "")) <= 10_000  # parts of 630 MiB, not 5 MiB
    assert re.search(r"largest single unit 630\.0 MiB", result.stdout), describe(result)
    assert object_snapshot(client, dest) == {}
    assert incomplete_uploads(client, dest) == []
    assert not job.progress_file.exists()


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
