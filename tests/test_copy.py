"""What a successful copy gives a user, end to end against moto.

Each test runs the CLI as a subprocess between two fresh moto buckets and checks
what a person would check afterwards: the destination holds byte-identical
objects with the same headers, metadata and tags under the expected keys;
nothing outside the selection was copied; the exit code, the log (one line per
object), the progress file (valid JSON, summary at the top, owner-only) and
reruns behave as the README promises.

The size settings (5 MiB parts, 6 MiB threshold) keep multipart objects at
10-12 MiB so that the whole file runs in seconds.
"""

from __future__ import annotations

import collections
import datetime
import re
import stat
import subprocess
import sys
from typing import Any

import pytest
from botocore.client import BaseClient
from conftest import FAKE_KEYS
from fault_proxy import Answer, FaultProxy, Forward, Request
from s3servers import MotoBuckets, incomplete_uploads, object_snapshot, put_objects
from toolcli import (
    CHUNK_SIZE,
    MULTIPART_THRESHOLD,
    RUN_TIMEOUT,
    SIZE_ARGS,
    TOOL,
    ToolJob,
    assert_usage_error,
    copied_keys,
    describe,
    engine_args,
    read_progress,
    write_source_credentials,
)
from uploads import body, etag_of

import s3_bulk_transfer as tool  # (the pure shard rule, to know which keys are whose)


def put_plain(client: BaseClient, bucket: str, keys: list[str]) -> None:
    """Small objects whose body is their key, so a mix-up of keys shows as a byte mismatch."""
    put_objects(client, bucket, {key: f"body of {key}".encode() for key in keys})


def strip_prefix(snapshot: dict[str, dict[str, Any]], prefix: str) -> dict[str, dict[str, Any]]:
    assert all(key.startswith(prefix) for key in snapshot), sorted(snapshot)
    return {key[len(prefix):]: value for key, value in snapshot.items()}


def dest_keys(buckets: MotoBuckets) -> list[str]:
    return sorted(object_snapshot(buckets.client, buckets.dest))


# The mixed set: every size class the planner distinguishes, each with its own headers,
# metadata and tags, so that an attribute taken from the wrong object or dropped on one
# code path (single PUT vs CreateMultipartUpload) shows up.
EXPIRES = datetime.datetime(2031, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc)
MIXED_SIZES = {
    "empty": 0,
    "small/one.txt": 1234,
    "small/two.bin": 64 * 1024,
    "boundary/threshold-minus-1": MULTIPART_THRESHOLD - 1,  # largest single PUT
    "boundary/threshold": MULTIPART_THRESHOLD,  # smallest multipart: 5 MiB + 1 MiB
    "multipart/short-last-part": 2 * CHUNK_SIZE + 7,  # 3 parts, the last one 7 bytes
    "multipart/exact-multiple": 2 * CHUNK_SIZE,  # 2 full parts
}
# Parts each object must have been uploaded in (0 = one PutObject), per --chunk-size 5MiB.
EXPECTED_PARTS = {
    "empty": 0,
    "small/one.txt": 0,
    "small/two.bin": 0,
    "boundary/threshold-minus-1": 0,
    "boundary/threshold": 2,
    "multipart/short-last-part": 3,
    "multipart/exact-multiple": 2,
}


def put_mixed_set(client: BaseClient, bucket: str, prefix: str = "") -> None:
    for index, (name, size) in enumerate(sorted(MIXED_SIZES.items())):
        put_objects(
            client, bucket, {prefix + name: body(size, seed=index)},
            ContentType=f"application/x-test-{index}",
            ContentEncoding="gzip" if index % 2 else "identity",
            ContentDisposition=f'attachment; filename="file {index}.dat"',
            ContentLanguage="de-CH" if index % 2 else "en-GB",
            CacheControl=f"max-age={index * 60}, must-revalidate",
            Expires=EXPIRES + datetime.timedelta(days=index),
            Metadata={"origin": f"object-{index}", "checksum-note": "plain ascii, with spaces"},
            Tagging=f"index={index}&team=data%20platform&path=a%2Fb%3Ac%40d",
        )


def test_mixed_sizes_copy_byte_identical_with_headers_metadata_and_tags(
    job: ToolJob, moto_buckets: MotoBuckets
) -> None:
    client = moto_buckets.client
    put_mixed_set(client, moto_buckets.source)

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}")

    assert result.returncode == 0, describe(result)
    source = object_snapshot(client, moto_buckets.source)
    assert set(source) == set(MIXED_SIZES)
    assert object_snapshot(client, moto_buckets.dest) == source
    assert incomplete_uploads(client, moto_buckets.dest) == []
    # The threshold is inclusive ("objects this size or larger are copied in parts"), and the
    # parts are --chunk-size long: the destination ETags show how each object was written.
    for key, parts in EXPECTED_PARTS.items():
        written = etag_of(client, moto_buckets.dest, key)
        if parts:
            assert written.endswith(f"-{parts}"), (key, written)
        else:
            assert "-" not in written, (key, written)


# Keys that break naive URL handling, path joining or listing. `//` and a trailing `/` are
# stored verbatim by moto (and AWS) but not by SeaweedFS, which is why they live here.
AWKWARD_KEYS = [
    "unicode/café/naïve/日本語/🙂.txt",
    "spaces/a b  c .txt",
    "plus/a+b+c",
    "percent/100%/%41%2F%zz",
    "question/what?is=this&x=1",
    "hash/#anchor#x",
    "double//slash//key",
    "//leading-slashes",
    "trailing/slash/",
    "mixed/ +%?#&=;:@$,'\"\\~ end",
    "k" * 1024,  # S3's longest key: 1,024 bytes of UTF-8
]


def test_awkward_keys_are_copied_intact(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    client = moto_buckets.client
    assert len(AWKWARD_KEYS[-1].encode("utf-8")) == 1024
    put_plain(client, moto_buckets.source, AWKWARD_KEYS)

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}")

    assert result.returncode == 0, describe(result)
    source = object_snapshot(client, moto_buckets.source)
    assert sorted(source) == sorted(AWKWARD_KEYS)
    assert object_snapshot(client, moto_buckets.dest) == source
    assert sorted(copied_keys(job.log_text())) == sorted(AWKWARD_KEYS)


def test_source_prefix_maps_onto_destination_prefix(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    client = moto_buckets.client
    inside = ["a/b/k", "a/b/sub/deeper/k2", "a/b/ spaced key"]
    outside = ["a/bc/k", "a/b", "a/k", "b/a/b/k", "z"]  # a/bc/ and the bare key a/b only share characters
    put_plain(client, moto_buckets.source, inside + outside)
    put_objects(client, moto_buckets.source, {"a/b/large": body(2 * CHUNK_SIZE + 100, seed=9)},
                Metadata={"m": "large"}, Tagging="size=large")

    result = job.run(f"s3://{moto_buckets.source}/a/b", f"s3://{moto_buckets.dest}/x/")

    assert result.returncode == 0, describe(result)
    source = object_snapshot(client, moto_buckets.source, "a/b/")
    destination = object_snapshot(client, moto_buckets.dest)
    assert sorted(destination) == ["x/ spaced key", "x/k", "x/large", "x/sub/deeper/k2"]
    assert strip_prefix(destination, "x/") == strip_prefix(source, "a/b/")
    assert incomplete_uploads(client, moto_buckets.dest) == []


def test_include_exclude_last_matching_rule_wins(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    client = moto_buckets.client
    keys = ["root/logs/a.log", "root/logs/keep.log", "root/data/x.csv", "root/data/y.txt", "root/top.txt",
            "root/data/deep/z.csv", "elsewhere/data/x.csv"]
    put_plain(client, moto_buckets.source, keys)

    # Patterns match the key relative to the source prefix ("data/..." not "root/data/..."),
    # and '*' crosses '/', as in aws s3. Per key, the last rule that matches decides.
    result = job.run(
        f"s3://{moto_buckets.source}/root", f"s3://{moto_buckets.dest}/copy",
        "--exclude", "*", "--include", "data/*", "--exclude", "*.txt", "--include", "logs/keep*",
    )

    assert result.returncode == 0, describe(result)
    assert dest_keys(moto_buckets) == ["copy/data/deep/z.csv", "copy/data/x.csv", "copy/logs/keep.log"]
    assert strip_prefix(object_snapshot(client, moto_buckets.dest), "copy/") == {
        key[len("root/"):]: value
        for key, value in object_snapshot(client, moto_buckets.source, "root/").items()
        if key in {"root/data/deep/z.csv", "root/data/x.csv", "root/logs/keep.log"}
    }


def test_an_include_after_an_exclude_brings_a_key_back_and_vice_versa(
    job: ToolJob, moto_buckets: MotoBuckets
) -> None:
    put_plain(moto_buckets.client, moto_buckets.source, ["a.tmp", "b.tmp", "c.txt"])

    result = job.run(
        f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}",
        "--include", "a.tmp", "--exclude", "*.tmp",  # the exclude comes last: a.tmp is skipped too
    )

    assert result.returncode == 0, describe(result)
    assert dest_keys(moto_buckets) == ["c.txt"]


def test_dry_run_prints_the_plan_and_writes_nothing(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    client = moto_buckets.client
    put_plain(client, moto_buckets.source, ["one", "two", "three"])
    put_objects(client, moto_buckets.source, {"big": body(2 * CHUNK_SIZE + 1, seed=3)})  # 3 parts

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--dry-run")

    assert result.returncode == 0, describe(result)
    assert "Traceback" not in result.stderr
    out = result.stdout
    assert re.search(r"to copy:\s+4 objects", out), out
    assert re.search(r"multipart:\s+1 objects? \([^)]*3 parts\)", out), out
    assert re.search(r"memory bound:.*4 workers", out), out
    assert object_snapshot(client, moto_buckets.dest) == {}
    assert incomplete_uploads(client, moto_buckets.dest) == []
    assert not job.progress_file.exists()


@pytest.mark.engine_independent  # counts and clean-up are boto3's under either engine
def test_the_dry_runs_request_estimate_is_what_the_copy_then_sends(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    client = moto_buckets.client
    put_plain(client, moto_buckets.source, ["one", "two", "three", "four", "five"])
    put_objects(client, moto_buckets.source, {"big": body(2 * CHUNK_SIZE + 1, seed=3)})  # 3 parts
    with FaultProxy(moto_buckets.endpoint_url) as proxy:
        write_source_credentials(job.credentials, FAKE_KEYS, proxy.endpoint_url)
        job.dest_endpoint_url = proxy.endpoint_url
        dry = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--dry-run", "--price-write", "1",
                      "--price-read", "1")
        before = len(proxy.counts.log)
        copied = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--no-tags")
        # What the copy sent, less the preflights' one-key listings of both buckets.
        sent = collections.Counter(seen.operation for seen in proxy.counts.log[before:]
                                   if seen.query.get("max-keys") != ["1"])

    assert dry.returncode == 0 and copied.returncode == 0, describe(dry)
    estimate = re.search(r"requests:\s+source \(us-east-1\): (\d+) LIST \(as this dry run listed\), (\d+) GET, "
                         r"(\d+) HEAD, "
                         r"and up to (\d+) GetObjectTagging \(one per tagged object\); destination \(us-east-1\): "
                         r"(\d+) PUT", dry.stdout)
    assert estimate, dry.stdout
    lists, gets, heads, tagged, writes = map(int, estimate.groups())
    assert (gets, heads, tagged, writes) == (5 + 3, 1, 6, 5 + 3 + 2)
    # The same, request for request (the listing of an empty destination is the preflight's own).
    assert sent["GetObject"] == gets and sent["ListObjectsV2"] == lists
    assert sent["PutObject"] + sent["CreateMultipartUpload"] + sent["UploadPart"] + \
        sent["CompleteMultipartUpload"] == writes
    assert sent["HeadObject"] >= heads
    # At $1 a thousand: the source's 1 + 8 + 1 requests, and its up to 6 tag reads; the destination's 10.
    assert "about $0.01 to $0.02 to the source's account (nothing leaves us-east-1" in dry.stdout, dry.stdout
    assert "and $0.01 to the destination's" in dry.stdout
    assert "an estimate, before storage and retries" in dry.stdout


def test_log_has_one_line_per_object_and_progress_file_reads_complete(
    job: ToolJob, moto_buckets: MotoBuckets
) -> None:
    client = moto_buckets.client
    keys = [f"obj/{index:03d}" for index in range(25)]
    put_plain(client, moto_buckets.source, keys)
    put_objects(client, moto_buckets.source, {"obj/big": body(2 * CHUNK_SIZE + 3, seed=5)})

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}")

    assert result.returncode == 0, describe(result)
    assert sorted(copied_keys(job.log_text())) == sorted(keys + ["obj/big"])
    progress = read_progress(job.progress_file)
    sections = list(progress)
    assert sections.index("summary") < sections.index("job") < sections.index("resume"), sections
    summary = progress["summary"]
    assert summary["state"] == "complete"
    assert summary["objects_done"] == 26
    assert summary["objects_failed"] == 0
    assert summary["multipart_uploads_in_flight"] == 0
    assert progress["resume"]["failed"] == {}
    assert progress["resume"]["multipart_uploads"] == {}


def test_log_and_progress_files_are_owner_only(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    put_plain(moto_buckets.client, moto_buckets.source, ["secret-ish/key-names"])

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}")

    assert result.returncode == 0, describe(result)
    for path in (job.log_file, job.progress_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path, oct(path.stat().st_mode))


def test_rerun_of_a_completed_job_copies_nothing_again(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    client = moto_buckets.client
    keys = ["a", "b/c", "d e"]
    put_plain(client, moto_buckets.source, keys)
    put_objects(client, moto_buckets.source, {"big": body(2 * CHUNK_SIZE, seed=1)})
    first = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}/copy")
    assert first.returncode == 0, describe(first)
    first_log = job.log_text()
    assert sorted(copied_keys(first_log)) == sorted(keys + ["big"])
    destination_before = {key: etag_of(client, moto_buckets.dest, key) for key in dest_keys(moto_buckets)}

    again = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}/copy")

    assert again.returncode == 0, describe(again)
    assert copied_keys(job.log_text()[len(first_log):]) == []
    assert {key: etag_of(client, moto_buckets.dest, key) for key in dest_keys(moto_buckets)} == destination_before
    assert read_progress(job.progress_file)["summary"]["state"] == "complete"
    assert incomplete_uploads(client, moto_buckets.dest) == []


def test_progress_file_of_another_job_is_refused_and_left_untouched(
    job: ToolJob, moto_buckets: MotoBuckets
) -> None:
    client = moto_buckets.client
    put_plain(client, moto_buckets.source, ["k1", "k2"])
    first = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}/one")
    assert first.returncode == 0, describe(first)
    saved = job.progress_file.read_bytes()

    other = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}/two")

    assert_usage_error(other, str(job.progress_file), "another job", "--restart")
    assert job.progress_file.read_bytes() == saved
    assert dest_keys(moto_buckets) == ["one/k1", "one/k2"]

    # --restart discards the other job's progress and copies this job from scratch.
    restarted = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}/two", "--restart")

    assert restarted.returncode == 0, describe(restarted)
    assert dest_keys(moto_buckets) == ["one/k1", "one/k2", "two/k1", "two/k2"]
    progress = read_progress(job.progress_file)
    assert progress["summary"]["state"] == "complete"
    assert progress["summary"]["destination"] == f"s3://{moto_buckets.dest}/two/"


def test_restart_copies_everything_again(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    client = moto_buckets.client
    keys = ["r/1", "r/2", "r/3"]
    put_plain(client, moto_buckets.source, keys)
    first = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}")
    assert first.returncode == 0, describe(first)
    first_log = job.log_text()
    # Change a source object, so that "starts over" is visible in the bytes too.
    put_objects(client, moto_buckets.source, {"r/2": b"changed after the first run"})

    restarted = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--restart")

    assert restarted.returncode == 0, describe(restarted)
    assert sorted(copied_keys(job.log_text()[len(first_log):])) == keys
    assert object_snapshot(client, moto_buckets.dest) == object_snapshot(client, moto_buckets.source)
    assert read_progress(job.progress_file)["summary"]["state"] == "complete"


def test_key_too_long_for_the_destination_prefix_fails_alone(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    """A 1,024-byte source key cannot get a destination prefix: that object fails (exit 1, listed,
    with the reason), the others are copied."""
    client = moto_buckets.client
    long_key = "L" * 1024
    put_plain(client, moto_buckets.source, [long_key, "short"])

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}/prefix")

    assert result.returncode == 1, describe(result)
    assert "Traceback" not in result.stderr
    assert long_key in result.stderr and "1024" in result.stderr.replace(",", ""), describe(result)
    assert dest_keys(moto_buckets) == ["prefix/short"]
    progress = read_progress(job.progress_file)
    assert list(progress["resume"]["failed"]) == [long_key]
    assert progress["summary"]["state"] != "complete"


def test_a_single_worker_copies_small_and_multipart_objects(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    """One worker must carry every part of a multipart object as well as the small ones, without
    waiting on itself."""
    client = moto_buckets.client
    put_plain(client, moto_buckets.source, [f"w/{index}" for index in range(12)])
    put_objects(client, moto_buckets.source, {"w/big": body(2 * CHUNK_SIZE + 11, seed=11)})

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--max-workers", "1")

    assert result.returncode == 0, describe(result)
    assert object_snapshot(client, moto_buckets.dest) == object_snapshot(client, moto_buckets.source)
    assert incomplete_uploads(client, moto_buckets.dest) == []



def test_an_upload_orphaned_before_its_progress_save_is_cleaned_up(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    # A kill -9 between CreateMultipartUpload and the progress save right after it leaves an upload
    # that no progress file records; it is made here by hand, since that instant cannot be hit on purpose.
    client = moto_buckets.client
    put_objects(client, moto_buckets.source, {"big": body(2 * CHUNK_SIZE + 7, seed=3)})
    orphan = client.create_multipart_upload(Bucket=moto_buckets.dest, Key="copy/big")["UploadId"]
    client.upload_part(Bucket=moto_buckets.dest, Key="copy/big", UploadId=orphan, PartNumber=1,
                       Body=body(CHUNK_SIZE, seed=4))

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}/copy")

    assert result.returncode == 0, describe(result)
    assert object_snapshot(client, moto_buckets.dest, "copy/")["copy/big"]["md5"] == \
        object_snapshot(client, moto_buckets.source)["big"]["md5"]
    assert incomplete_uploads(client, moto_buckets.dest) == []
    assert "no progress file records" in job.log_text()


class ListingOfUploadsDamagedOnce:
    """The first ListMultipartUploads answer with a byte inverted in its middle, as a faulty network
    would: XML botocore cannot parse."""

    def __init__(self) -> None:
        self.damaged = 0

    def __call__(self, request: Request, forward: Forward) -> Answer:
        answer = forward(request)
        if not self.damaged and request.operation == "ListMultipartUploads" and answer.status == 200:
            self.damaged += 1
            middle = len(answer.body) // 2
            answer.body = answer.body[:middle] + bytes([answer.body[middle] ^ 0xFF]) + answer.body[middle + 1:]
        return answer


@pytest.mark.engine_independent  # counts and clean-up are boto3's under either engine
def test_an_orphaned_upload_is_cleaned_up_even_when_the_listing_of_uploads_arrives_damaged(
        job: ToolJob, moto_buckets: MotoBuckets) -> None:
    # As the fault soak met it: a CreateMultipartUpload carried out whose answer was lost, sent again,
    # and then the listing that finds the first upload damaged on its way.
    client = moto_buckets.client
    put_objects(client, moto_buckets.source, {"big": body(2 * CHUNK_SIZE + 7, seed=3)})
    orphan = client.create_multipart_upload(Bucket=moto_buckets.dest, Key="copy/big")["UploadId"]
    damage = ListingOfUploadsDamagedOnce()
    with FaultProxy(moto_buckets.endpoint_url) as proxy:
        proxy.behave(damage)
        write_source_credentials(job.credentials, FAKE_KEYS, proxy.endpoint_url)
        job.dest_endpoint_url = proxy.endpoint_url
        result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}/copy")

    assert damage.damaged == 1
    assert result.returncode == 0, describe(result)
    assert [upload["UploadId"] for upload in incomplete_uploads(client, moto_buckets.dest)] == [], orphan
    assert object_snapshot(client, moto_buckets.dest, "copy/")["copy/big"]["md5"] == \
        object_snapshot(client, moto_buckets.source)["big"]["md5"]


def test_three_shards_in_three_processes_copy_every_object_exactly_once(
        job: ToolJob, moto_buckets: MotoBuckets) -> None:
    keys = [f"data/{index:03d}.txt" for index in range(60)]
    put_plain(moto_buckets.client, moto_buckets.source, keys)
    put_objects(moto_buckets.client, moto_buckets.source, {"data/large.bin": body(2 * CHUNK_SIZE + 1, seed=5)})
    # Three machines sharing one directory would not be told apart by their file names: so no
    # --progress-file or --log-file here, each shard must pick its own.
    command = [
        sys.executable, str(TOOL), f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}",
        "--source-credentials", str(job.credentials), "--dest-endpoint-url", moto_buckets.endpoint_url,
        *SIZE_ARGS, "--copy-mode", "stream", *engine_args(),
    ]
    processes = [
        subprocess.Popen([*command, "--shard", f"{index}/3"], cwd=job.workdir, env=job.env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for index in range(3)
    ]
    outcomes = [process.communicate(timeout=RUN_TIMEOUT) for process in processes]

    assert [process.returncode for process in processes] == [0, 0, 0], outcomes
    copied_per_shard = [copied_keys((job.workdir / f"s3_transfer.shard-{index}-of-3.log").read_text())
                        for index in range(3)]
    every_copy = [key for copied in copied_per_shard for key in copied]
    assert sorted(every_copy) == sorted([*keys, "data/large.bin"])  # each key once, in one shard only
    assert all(copied for copied in copied_per_shard)  # the split is real: every shard had work
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == object_snapshot(moto_buckets.client,
                                                                                     moto_buckets.source)
    assert incomplete_uploads(moto_buckets.client, moto_buckets.dest) == []
    for index in range(3):
        progress = read_progress(job.workdir / f"transfer_progress.shard-{index}-of-3.json")
        assert progress["summary"]["state"] == "complete"
        assert progress["job"]["shard"] == f"{index}/3"
        assert progress["summary"]["objects_done"] == len(copied_per_shard[index])


def test_a_shard_of_a_job_verifies_only_its_own_keys(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    keys = [f"v/{index:02d}" for index in range(30)]
    put_plain(moto_buckets.client, moto_buckets.source, keys)

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--shard", "1/2", "--verify")

    assert result.returncode == 0, describe(result)
    mine = [key for key in keys if tool.shard_of(key, 2) == 1]
    assert dest_keys(moto_buckets) == mine
    # The other shard's keys are not "missing" to this shard's verification.
    assert f"{len(mine):,} identical by ETag or checksum" in result.stdout
    assert " 0 missing" in result.stdout


def test_a_request_rate_cap_paces_every_request_that_reads_the_source(job: ToolJob,
                                                                       moto_buckets: MotoBuckets) -> None:
    # How close the pace comes to the cap is measured in bench/, not asserted here; what is asserted is
    # that no request reading the source goes around it.
    keys = [f"paced/{index}.txt" for index in range(8)]
    put_plain(moto_buckets.client, moto_buckets.source, keys)
    put_objects(moto_buckets.client, moto_buckets.source, {"paced/large.bin": body(2 * CHUNK_SIZE + 7, seed=3)},
                Tagging="kind=large")
    with FaultProxy(moto_buckets.endpoint_url) as proxy:
        write_source_credentials(job.credentials, FAKE_KEYS, proxy.endpoint_url)
        job.dest_endpoint_url = proxy.endpoint_url
        result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--max-requests-per-second", "40")
        # The preflight's (the bucket's region, the one-key ListObjectsV2 proving it may list) come first.
        reading = [seen for seen in proxy.counts.log if seen.bucket == moto_buckets.source
                   and seen.operation != "HeadBucket" and seen.query.get("max-keys") != ["1"]]

    assert result.returncode == 0, describe(result)
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == object_snapshot(moto_buckets.client,
                                                                                     moto_buckets.source)
    log = job.log_text()
    assert "at most 40 requests a second to the source" in log
    paced = int(re.search(r"(\d+) requests read the source, at most 40 a second", log)[1])
    assert paced == len(reading) > len(keys), (paced, sorted({seen.operation for seen in reading}))


def test_a_bandwidth_cap_changes_nothing_but_the_pace(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    # How close the pace comes to the cap is measured in bench/, not asserted here.
    keys = [f"capped/{index}.txt" for index in range(5)]
    put_plain(moto_buckets.client, moto_buckets.source, keys)
    put_objects(moto_buckets.client, moto_buckets.source,
                {"capped/large.bin": body(2 * CHUNK_SIZE + 7, seed=9)})

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--max-bandwidth", "256MB/s")

    assert result.returncode == 0, describe(result)
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == object_snapshot(moto_buckets.client,
                                                                                     moto_buckets.source)
    assert "bandwidth cap 256.0 MiB/s" in job.log_text()
