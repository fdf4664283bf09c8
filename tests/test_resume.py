"""Resume and interrupt behaviour of the CLI, end to end against moto.

Every test runs ``s3_bulk_transfer.py`` as a subprocess, interrupts it (SIGINT,
a second SIGINT, SIGKILL) at a point it recognises from the log file, the
progress file or the destination server, and then checks what a rerun does:
that nothing already done is copied again, that a half-done multipart upload
continues with only its missing parts, that the destination ends up identical
to the source, and that no multipart upload is left behind (each one bills
storage on AWS).

moto is slow in ways that help here: it reads the whole source object for
every ranged GET, so a 40 MiB object copied in 5 MiB parts takes long enough
to be interrupted half-way without any sleep-and-hope. Nothing asserts on
timing; waits have deadlines and fail with the tool's log tail.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.client import BaseClient
from conftest import FAKE_KEYS
from s3servers import MotoBuckets, incomplete_uploads, object_snapshot
import toolcli
from toolcli import (
    POLL_SECONDS,
    RUN_TIMEOUT,
    WAIT_SECONDS,
    ToolJob,
    copied_keys,
    done_per_progress_file,
    write_source_credentials,
)
from units import KIB, MIB
from uploads import md5_hex

PART_SIZE = 5 * MIB
BIG_KEY = "b/big-object.bin"


# ----------------------------------------------------------------------------------------
# Running the tool
# ----------------------------------------------------------------------------------------


class ResumeJob(ToolJob):
    """One transfer job (source bucket -> destination bucket), run as a process of its own each time.

    Every run of the same ResumeJob uses the same command line, as a person rerunning "the same
    command" would (``arguments()``), so ``start()`` and ``run()`` take none; two workers, and
    ``extra_args`` last (the last of an option wins). The log file is appended to across runs.
    """

    def __init__(self, buckets: MotoBuckets, workdir: Path, env: dict[str, str],
                 extra_args: list[str] | None = None) -> None:
        credentials = write_source_credentials(workdir / "source-credentials.json", FAKE_KEYS, buckets.endpoint_url)
        super().__init__(workdir=workdir, env=env, credentials=credentials, dest_endpoint_url=buckets.endpoint_url)
        self.buckets = buckets
        self.extra_args = list(extra_args or [])

    def arguments(self) -> list[str]:
        return [f"s3://{self.buckets.source}", f"s3://{self.buckets.dest}", "--max-workers", "2", *self.extra_args]

    def start(self) -> subprocess.Popen[bytes]:
        return super().start(*self.arguments())

    def run(self) -> int:
        """Run to the end; the exit code."""
        return self.wait(self.start())


@pytest.fixture
def make_job(moto_buckets: MotoBuckets, tool_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., ResumeJob]]:
    """Build the ResumeJob of this test's buckets; kills any run a failed test left behind."""
    jobs: list[ResumeJob] = []

    def make(*extra_args: str) -> ResumeJob:
        job = ResumeJob(moto_buckets, tmp_path, tool_env, list(extra_args))
        jobs.append(job)
        return job

    yield make
    for job in jobs:
        job.kill_leftovers()


# ----------------------------------------------------------------------------------------
# Reading the log
# ----------------------------------------------------------------------------------------

_DECODER = json.JSONDecoder()
_STARTED = re.compile(r" INFO started multipart upload of ")
_RESUMING = re.compile(r" INFO resuming multipart upload of ")
_ABORTED = re.compile(r" INFO aborted multipart upload of ")


def keys_after(pattern: re.Pattern[str], text: str) -> list[str]:
    """The JSON-encoded key that follows ``pattern`` on each log line where it occurs, in order."""
    keys = []
    for line in text.splitlines():
        match = pattern.search(line)
        if match:
            key, _ = _DECODER.raw_decode(line, match.end())
            keys.append(key)
    return keys


def resume_lines(text: str) -> dict[str, tuple[int, int]]:
    """key -> (parts already uploaded, parts in all) from the ``resuming multipart upload`` lines."""
    found = {}
    for line in text.splitlines():
        match = _RESUMING.search(line)
        if match:
            key, end = _DECODER.raw_decode(line, match.end())
            counts = re.match(r": (\d+) of (\d+) parts already uploaded", line[end:])
            assert counts, f"unexpected resume line: {line}"
            found[key] = (int(counts.group(1)), int(counts.group(2)))
    return found


# ----------------------------------------------------------------------------------------
# Source data and server-side checks
# ----------------------------------------------------------------------------------------


def put_objects(client: BaseClient, bucket: str, objects: dict[str, bytes]) -> None:
    """Upload objects in parallel, each with headers and metadata (some with tags) to carry over."""

    def put(item: tuple[int, tuple[str, bytes]]) -> None:
        index, (key, body) = item
        extra: dict[str, Any] = {}
        if index % 3 == 0:
            extra["Tagging"] = f"batch=b{index % 5}&kind=test"
        if index % 4 == 0:
            extra["CacheControl"] = "max-age=3600"
        client.put_object(
            Bucket=bucket,
            Key=key,
            Body=body,
            ContentType="application/octet-stream" if index % 2 else "text/plain; charset=utf-8",
            Metadata={"index": str(index), "origin": "test-resume"},
            **extra,
        )

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(put, enumerate(sorted(objects.items()))))


def mixed_objects(seed: int, *, big_size: int = 40 * MIB, before: int = 40, after: int = 20) -> dict[str, bytes]:
    """Small objects (64 KiB - 1 MiB) before and after one multipart-sized object, in key order.

    The ones before are copied before the multipart upload starts, so an interrupt
    during it finds some objects already copied; a few keys after it are non-ASCII
    (their UTF-8 byte order must agree with the watermark's order).
    """
    rng = random.Random(seed)
    objects = {f"a/small-{i:03d}": rng.randbytes(rng.randint(64 * KIB, MIB)) for i in range(before)}
    objects[BIG_KEY] = rng.randbytes(big_size)
    tails = [f"c/small-{i:03d}" for i in range(after - 3)] + ["c/zé-1", "c/ü-2", "c/日本-3"]
    objects.update({key: rng.randbytes(rng.randint(64 * KIB, MIB)) for key in tails})
    return objects


def upload_parts(client: BaseClient, bucket: str, key: str, upload_id: str) -> dict[int, str]:
    """Part number -> ETag of an open multipart upload, as ListParts tells."""
    parts: dict[int, str] = {}
    for page in client.get_paginator("list_parts").paginate(Bucket=bucket, Key=key, UploadId=upload_id):
        for part in page.get("Parts", ()):
            parts[part["PartNumber"]] = part["ETag"]
    return parts


def open_upload_ids(client: BaseClient, bucket: str, key: str) -> list[str]:
    return [upload["UploadId"] for upload in incomplete_uploads(client, bucket) if upload["Key"] == key]


def parts_on_server(client: BaseClient, bucket: str, key: str) -> Callable[[], dict[int, str] | None]:
    """A condition: the parts of the (single) open upload of ``key`` once it has at least one."""

    def condition() -> dict[int, str] | None:
        ids = open_upload_ids(client, bucket, key)
        if len(ids) != 1:
            return None
        return upload_parts(client, bucket, key, ids[0]) or None

    return condition


def assert_fully_copied(job: ResumeJob) -> None:
    """The destination equals the source (bytes, headers, metadata, tags) and nothing is left open."""
    client, buckets = job.buckets.client, job.buckets
    assert object_snapshot(client, buckets.dest) == object_snapshot(client, buckets.source)
    assert incomplete_uploads(client, buckets.dest) == []
    final = job.progress()
    assert final["summary"]["state"] == "complete"
    assert final["resume"]["listing_complete"] is True
    assert final["resume"]["multipart_uploads"] == {}
    assert final["resume"]["failed"] == {}


def interrupt_during_multipart(job: ResumeJob, *, min_copied: int = 1) -> tuple[int, dict[int, str]]:
    """Start a run and send SIGINT once some objects are copied and the multipart upload of
    BIG_KEY has some parts but is not complete. Returns (exit code, parts seen before the signal)."""
    client, dest = job.buckets.client, job.buckets.dest
    process = job.start()
    job.wait_for(process, lambda: len(copied_keys(job.log_text())) >= min_copied,
                 f"{min_copied} copied objects in the log")
    job.wait_for(process, lambda: _STARTED.search(job.log_text()), "the multipart upload to start")
    seen = job.wait_for(process, parts_on_server(client, dest, BIG_KEY), "a part of the multipart upload")
    assert BIG_KEY not in copied_keys(job.log_text()), "the multipart object finished before it could be interrupted"
    process.send_signal(signal.SIGINT)
    return job.wait(process), seen


# ----------------------------------------------------------------------------------------
# 1. SIGINT partway through, then a rerun
# ----------------------------------------------------------------------------------------


def test_sigint_then_rerun_resumes_without_recopying(make_job: Callable[..., ResumeJob]) -> None:
    job = make_job()
    client, buckets = job.buckets.client, job.buckets
    objects = mixed_objects(seed=1)
    put_objects(client, buckets.source, objects)

    code, _ = interrupt_during_multipart(job, min_copied=5)
    assert code == 130, job.diagnostics()

    after_run1 = job.progress()
    assert after_run1["summary"]["state"] == "interrupted"
    assert after_run1["resume"]["listing_complete"] is False
    run1_log_size = job.log_size()
    run1_copied = copied_keys(job.log_text())
    assert run1_copied and BIG_KEY not in run1_copied
    assert len(run1_copied) == len(set(run1_copied))

    # The upload in flight is recorded, still open on the server, and the file knows its parts.
    record = after_run1["resume"]["multipart_uploads"][BIG_KEY]
    assert record["destination_key"] == BIG_KEY
    assert record["size"] == len(objects[BIG_KEY])
    assert record["part_size"] == PART_SIZE
    assert open_upload_ids(client, buckets.dest, BIG_KEY) == [record["upload_id"]]
    server_parts = upload_parts(client, buckets.dest, BIG_KEY, record["upload_id"])
    total_parts = -(-len(objects[BIG_KEY]) // PART_SIZE)
    assert 0 < len(server_parts) < total_parts
    assert {int(number): etag for number, etag in record["parts"].items()} == server_parts
    # Everything the log says was copied counts as done in the file.
    assert set(run1_copied) <= done_per_progress_file(after_run1, sorted(objects))

    assert job.run() == 0, job.diagnostics()

    run2_log = job.log_text(since=run1_log_size)
    run2_copied = copied_keys(run2_log)
    assert not set(run2_copied) & set(run1_copied), "objects copied in run 1 were copied again"
    assert sorted(run2_copied) == sorted(set(objects) - set(run1_copied))
    assert resume_lines(run2_log)[BIG_KEY] == (len(server_parts), total_parts)
    assert_fully_copied(job)
    head = client.head_object(Bucket=buckets.dest, Key=BIG_KEY)
    assert head["ETag"].strip('"').endswith(f"-{total_parts}")


# ----------------------------------------------------------------------------------------
# 2. SIGKILL partway through a multipart object, then a rerun
# ----------------------------------------------------------------------------------------


def test_sigkill_then_rerun_copies_exactly_what_the_file_does_not_count_done(
    make_job: Callable[..., ResumeJob],
) -> None:
    job = make_job()
    client, buckets = job.buckets.client, job.buckets
    objects = mixed_objects(seed=2)
    put_objects(client, buckets.source, objects)

    process = job.start()
    job.wait_for(process, lambda: len(copied_keys(job.log_text())) >= 5, "5 copied objects in the log")
    job.wait_for(process, parts_on_server(client, buckets.dest, BIG_KEY), "a part of the multipart upload")
    process.send_signal(signal.SIGKILL)
    assert job.wait(process) == -signal.SIGKILL

    on_disk = job.progress()  # the file as the kill left it: must be valid JSON
    assert on_disk["summary"]["state"] == "running"
    done = done_per_progress_file(on_disk, sorted(objects))
    assert done, "the progress file recorded nothing done before the kill"
    assert BIG_KEY in on_disk["resume"]["multipart_uploads"], "the upload in flight was not recorded"
    run1_log_size = job.log_size()

    assert job.run() == 0, job.diagnostics()

    run2_log = job.log_text(since=run1_log_size)
    run2_copied = copied_keys(run2_log)
    assert len(run2_copied) == len(set(run2_copied)), "an object was copied twice in one run"
    assert set(run2_copied) == set(objects) - done
    assert_fully_copied(job)


# ----------------------------------------------------------------------------------------
# 3. The progress file is always valid JSON and does not grow with the bucket
# ----------------------------------------------------------------------------------------


def watch_progress_file(job: ResumeJob) -> dict[str, Any]:
    """Run the job to the end while reading its progress file every ~20 ms.

    Returns the exit code, how many reads parsed, every read that did not parse, the
    largest size seen, and the states seen.
    """
    reads = 0
    bad: list[str] = []
    largest = 0
    states: set[str] = set()
    process = job.start()
    while True:
        finished = process.poll() is not None
        try:
            text = job.progress_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = None
        if text is not None:
            largest = max(largest, len(text.encode("utf-8")))
            try:
                states.add(json.loads(text)["summary"]["state"])
                reads += 1
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                bad.append(f"{error}: {text[:200]!r}")
        if finished:
            break
        time.sleep(POLL_SECONDS)
    return {"code": job.wait(process), "reads": reads, "bad": bad, "largest": largest, "states": states}


def test_progress_file_is_always_valid_and_bounded(
    moto_buckets: MotoBuckets, tool_env: dict[str, str], tmp_path: Path
) -> None:
    # Long keys, so that a file listing every done key would be unmistakably large.
    padding = "x" * 60
    results = {}
    for count in (100, 400):
        # A bucket pair of its own per size (moto_buckets' names plus a suffix).
        buckets = MotoBuckets(source=f"{moto_buckets.source}-{count}", dest=f"{moto_buckets.dest}-{count}",
                              client=moto_buckets.client, endpoint_url=moto_buckets.endpoint_url)
        for bucket in (buckets.source, buckets.dest):
            buckets.client.create_bucket(Bucket=bucket)
        keys = [f"objects/{i:05d}-{padding}" for i in range(count)]
        put_objects(buckets.client, buckets.source, {key: os.urandom(1 * KIB) for key in keys})
        workdir = tmp_path / f"job-{count}"
        workdir.mkdir()
        job = ResumeJob(buckets, workdir, tool_env)
        try:
            results[count] = watch_progress_file(job)
        finally:
            job.kill_leftovers()
        result = results[count]
        assert result["code"] == 0, job.diagnostics()
        assert result["bad"] == [], f"unparsable progress file reads: {result['bad'][:3]}"
        assert result["reads"] >= 10
        assert "running" in result["states"]
        final = job.progress()
        assert final["summary"]["state"] == "complete"
        assert final["summary"]["objects_done"] == count
        assert final["resume"]["listing_complete"] is True
        # Two workers list in one stream (--list-concurrency defaults to half the workers).
        assert final["resume"]["ranges"] == [
            {"after": None, "through": None, "watermark": keys[-1], "done_beyond_watermark": []}]
        assert final["resume"]["multipart_uploads"] == {}
        listed = buckets.client.get_paginator("list_objects_v2").paginate(Bucket=buckets.dest)
        assert [entry["Key"] for page in listed for entry in page.get("Contents", ())] == keys

    # 400 keys of 70 bytes would be 28 KB on their own; the whole file stays far below that,
    # and four times the objects add at most a little (counters, a few keys beyond the watermark).
    assert results[400]["largest"] < 12 * KIB, results
    assert results[400]["largest"] - results[100]["largest"] < 2 * KIB, results


# ----------------------------------------------------------------------------------------
# 4. A multipart upload resumes with only its missing parts
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("second_run", ["stream", "server-side", "the other engine"])
def test_multipart_upload_resumes_from_its_missing_parts(make_job: Callable[..., ResumeJob], second_run: str) -> None:
    # The rerun may copy the missing parts either way: the parts a streaming run uploaded are kept,
    # whichever engine (--engine) uploaded them, since the part plan and the progress file are the same.
    job = make_job()
    client, buckets = job.buckets.client, job.buckets
    body = random.Random(4).randbytes(40 * MIB)
    put_objects(client, buckets.source, {BIG_KEY: body})
    total_parts = 8

    process = job.start()

    def recorded_upload_id() -> str | None:
        try:
            record = job.progress()["resume"]["multipart_uploads"].get(BIG_KEY)
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return record["upload_id"] if record else None

    upload_id = job.wait_for(process, recorded_upload_id, "the upload to be recorded in the progress file")
    job.wait_for(process, lambda: upload_parts(client, buckets.dest, BIG_KEY, upload_id),
                 "ListParts to show a part")
    process.send_signal(signal.SIGINT)
    assert job.wait(process) == 130, job.diagnostics()

    parts_before = upload_parts(client, buckets.dest, BIG_KEY, upload_id)
    assert 0 < len(parts_before) < total_parts
    record = job.progress()["resume"]["multipart_uploads"][BIG_KEY]
    assert record["upload_id"] == upload_id
    assert {int(number): etag for number, etag in record["parts"].items()} == parts_before
    run1_log_size = job.log_size()

    first_engine = toolcli.ENGINE or "crt"  # auto is crt where awscrt is installed, as requirements.txt does
    other_engine = "threads" if first_engine == "crt" else "crt"
    if second_run == "the other engine":
        job.extra_args += ["--engine", other_engine]
    else:
        job.extra_args += ["--copy-mode", second_run]
    assert job.run() == 0, job.diagnostics()

    run2_log = job.log_text(since=run1_log_size)
    assert resume_lines(run2_log) == {BIG_KEY: (len(parts_before), total_parts)}
    assert keys_after(_STARTED, run2_log) == []  # continued, not started again
    assert copied_keys(run2_log) == [BIG_KEY]
    assert ("(server-side copy)" in run2_log) == (second_run == "server-side")
    run2_engine = other_engine if second_run == "the other engine" else first_engine
    assert f"Object bodies moved by the {run2_engine} engine" in run2_log
    head = client.head_object(Bucket=buckets.dest, Key=BIG_KEY)
    assert head["ETag"].strip('"').endswith(f"-{total_parts}")
    assert head["ContentLength"] == len(body)
    assert_fully_copied(job)
    assert object_snapshot(client, buckets.dest)[BIG_KEY]["md5"] == md5_hex(body)


# ----------------------------------------------------------------------------------------
# 5. The source object changes between runs
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("change", ["rewritten", "shrunk_below_threshold", "deleted"])
def test_source_changed_between_runs_discards_the_old_upload(
    make_job: Callable[..., ResumeJob], change: str
) -> None:
    job = make_job()
    client, buckets = job.buckets.client, job.buckets
    objects = mixed_objects(seed=5, big_size=30 * MIB, before=4, after=4)
    put_objects(client, buckets.source, objects)

    code, _ = interrupt_during_multipart(job)
    assert code == 130, job.diagnostics()
    old_upload_id = job.progress()["resume"]["multipart_uploads"][BIG_KEY]["upload_id"]
    assert open_upload_ids(client, buckets.dest, BIG_KEY) == [old_upload_id]
    run1_log_size = job.log_size()

    new_body = b""
    if change == "rewritten":  # another multipart-sized object: new ETag, new size
        new_body = random.Random(55).randbytes(35 * MIB)
    elif change == "shrunk_below_threshold":  # now copied with one PUT, not in parts
        new_body = random.Random(56).randbytes(1 * MIB)
    if change == "deleted":
        client.delete_object(Bucket=buckets.source, Key=BIG_KEY)
    else:
        client.put_object(Bucket=buckets.source, Key=BIG_KEY, Body=new_body, Metadata={"version": "2"})

    assert job.run() == 0, job.diagnostics()

    run2_log = job.log_text(since=run1_log_size)
    # The old upload is gone (aborted), whatever became of the source object.
    assert incomplete_uploads(client, buckets.dest) == [], (
        f"multipart upload(s) left open after the source object was {change}"
    )
    assert BIG_KEY not in resume_lines(run2_log)
    assert_fully_copied(job)
    if change == "deleted":
        assert BIG_KEY not in copied_keys(run2_log)
        assert "Contents" not in client.list_objects_v2(Bucket=buckets.dest, Prefix=BIG_KEY)
        return
    assert BIG_KEY in copied_keys(run2_log)
    dest_snapshot = object_snapshot(client, buckets.dest, prefix=BIG_KEY)
    assert dest_snapshot[BIG_KEY]["md5"] == md5_hex(new_body)
    assert dest_snapshot[BIG_KEY]["metadata"] == {"version": "2"}
    if change == "rewritten":
        assert BIG_KEY in keys_after(_ABORTED, run2_log)
        assert BIG_KEY in keys_after(_STARTED, run2_log)  # a new upload, copied whole
        head = client.head_object(Bucket=buckets.dest, Key=BIG_KEY)
        assert head["ETag"].strip('"').endswith("-7")


# ----------------------------------------------------------------------------------------
# 6. A second Ctrl-C leaves at once
# ----------------------------------------------------------------------------------------


def test_second_ctrl_c_exits_at_once_with_valid_progress(make_job: Callable[..., ResumeJob]) -> None:
    # A proxy holds the answer to the GET of part 5, which the four workers reach only once parts
    # are done, and every request after it (aws_behaviour.Hold): the part in flight when the first
    # Ctrl-C comes can never finish, so only the second Ctrl-C ends the run.
    from aws_behaviour import Hold
    from fault_proxy import FaultProxy

    job = make_job()
    client, buckets = job.buckets.client, job.buckets
    rng = random.Random(6)
    objects = {BIG_KEY: rng.randbytes(30 * MIB), "c/after-1": rng.randbytes(100 * KIB),
               "c/after-2": rng.randbytes(100 * KIB)}
    put_objects(client, buckets.source, objects)

    with FaultProxy(buckets.endpoint_url) as proxy:
        fifth_part = f"bytes={4 * PART_SIZE}-{5 * PART_SIZE - 1}"
        hold = Hold(lambda request: request.operation == "GetObject" and request.header("Range") == fifth_part,
                    answer_trigger=False)
        proxy.behave(hold)
        route_through(job, proxy, "--max-workers", "4")
        process = job.start()
        job.wait_for(process, hold.triggered.is_set, "the GET of part 5, its answer held")
        process.send_signal(signal.SIGINT)
        job.wait_for(process, lambda: "Interrupted: finishing the parts in flight" in job.log_text(),
                     "the first Ctrl-C to be handled")
        process.send_signal(signal.SIGINT)
        assert job.wait(process) == 130, job.diagnostics()

        progress = job.progress()  # valid JSON
        assert progress["summary"]["state"] == "interrupted"
        # It left without draining: the orderly exit's final report was never written.
        assert "Transfer interrupted after" not in job.log_text(), "the second Ctrl-C did not exit at once"
        record = progress["resume"]["multipart_uploads"][BIG_KEY]
        assert open_upload_ids(client, buckets.dest, BIG_KEY) == [record["upload_id"]]

        # And the job still resumes to a complete, identical copy.
        proxy.behave_only()
        assert job.run() == 0, job.diagnostics()
    assert_fully_copied(job)


# ----------------------------------------------------------------------------------------
# 7. SIGKILL at many seeded moments, rerunning after each, until done
# ----------------------------------------------------------------------------------------

KILL_MOMENTS = 12
KILL_KINDS = ("after a random time", "during a multipart upload", "during a progress write")


def temporary_progress_files(job: ResumeJob) -> list[str]:
    prefix = f".{job.progress_file.name}."
    return [name for name in os.listdir(job.workdir) if name.startswith(prefix) and name.endswith(".tmp")]


def open_upload_with_parts(job: ResumeJob) -> bool:
    client, dest = job.buckets.client, job.buckets.dest
    for upload in incomplete_uploads(client, dest):
        try:
            if upload_parts(client, dest, upload["Key"], upload["UploadId"]):
                return True
        except client.exceptions.NoSuchUpload:
            continue  # the tool completed it between the listing and ListParts: it has no parts open now
    return False


def kill_during_a_progress_write(job: ResumeJob, process: subprocess.Popen[bytes], deadline: float) -> bool:
    """Freeze the tool the moment a temporary progress file appears; kill it if the write is still
    under way (the temporary file still there), otherwise let it go on and wait for the next write.
    SIGSTOP first, because the write takes a millisecond and a poll alone would mostly land after it."""
    while time.monotonic() < deadline and process.poll() is None:
        if temporary_progress_files(job):
            process.send_signal(signal.SIGSTOP)
            if temporary_progress_files(job):
                process.send_signal(signal.SIGKILL)
                return True
            process.send_signal(signal.SIGCONT)
        time.sleep(0.0002)
    return False


def test_sigkill_at_seeded_random_moments_then_reruns_until_done(
    moto_buckets: MotoBuckets, tool_env: dict[str, str], tmp_path: Path
) -> None:
    # Counting what reaches the destination needs a proxy in front of it (no faults injected).
    from fault_proxy import FaultProxy

    rng = random.Random(20261127)
    objects: dict[str, bytes] = {}
    for group, letter in enumerate("aceg"):
        objects.update({f"{letter}/small-{i:02d}": rng.randbytes(rng.randint(32 * KIB, 512 * KIB)) for i in range(20)})
        if letter != "g":
            objects[f"{chr(ord(letter) + 1)}/big-{group}"] = rng.randbytes(20 * MIB + group)
    put_objects(moto_buckets.client, moto_buckets.source, objects)
    total_bytes = sum(len(body) for body in objects.values())
    moments = [KILL_KINDS[index % len(KILL_KINDS)] for index in range(KILL_MOMENTS)]
    rng.shuffle(moments)

    with FaultProxy(moto_buckets.endpoint_url, lifetime=600) as proxy:
        # 10 MB/s keeps the copy going for about 8 s in all, so that every moment finds work to kill.
        job = ResumeJob(moto_buckets, tmp_path, tool_env,
                      ["--dest-endpoint-url", proxy.endpoint_url, "--max-bandwidth", "10MB/s"])
        try:
            killed: collections.Counter[str] = collections.Counter()
            lost_done_bytes = 0  # objects a killed run copied but its progress file did not yet count
            for moment in moments:
                log_offset = job.log_size()
                process = job.start()
                deadline = time.monotonic() + WAIT_SECONDS
                if moment == "after a random time":
                    time.sleep(rng.uniform(0.5, 2.0))
                    process.send_signal(signal.SIGKILL)
                elif moment == "during a multipart upload":
                    job.wait_for(process, lambda: open_upload_with_parts(job), "a multipart upload with parts")
                    time.sleep(rng.uniform(0.0, 0.3))
                    process.send_signal(signal.SIGKILL)
                else:
                    assert kill_during_a_progress_write(job, process, deadline), job.diagnostics()
                    assert temporary_progress_files(job), "the kill did not land inside a progress write"
                assert job.wait(process) == -signal.SIGKILL, f"the run ended before the kill {moment}"
                killed[moment] += 1

                # Whatever the moment, the progress file is valid JSON (or not written yet).
                progress = job.progress() if job.progress_file.exists() else None
                done = done_per_progress_file(progress, sorted(objects)) if progress else set()
                copied_by_run = set(copied_keys(job.log_text(since=log_offset)))
                lost_done_bytes += sum(len(objects[key]) for key in copied_by_run - done)

            assert job.run() == 0, job.diagnostics()
        finally:
            job.kill_leftovers()

    assert sum(killed.values()) == KILL_MOMENTS and set(killed) == set(KILL_KINDS), killed
    assert_fully_copied(job)
    assert temporary_progress_files(job) == []  # the killed writes' leftovers were cleaned up
    recopied = proxy.counts.uploaded_bytes - total_bytes
    # What a kill may cost: the objects done since the last save (every 2 s), counted above, and
    # what was in flight: two workers, each with at most one 5 MiB part or one small object.
    in_flight_bound = KILL_MOMENTS * 2 * PART_SIZE
    assert 0 <= recopied <= lost_done_bytes + in_flight_bound, (recopied, lost_done_bytes, in_flight_bound)
    print(f"kills survived: {dict(killed)}; {total_bytes / MIB:.1f} MiB copied with {recopied / MIB:.1f} MiB "
          f"re-copied (bound {(lost_done_bytes + in_flight_bound) / MIB:.1f} MiB, of which "
          f"{lost_done_bytes / MIB:.1f} MiB finished after the last save before a kill)")


COPYING = {"GetObject", "PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"}


def test_a_second_run_of_the_same_job_is_refused_while_the_first_runs(make_job: Callable[..., ResumeJob]) -> None:
    # The first run is held at the proxy after its first copy (aws_behaviour.Hold), so it is still
    # running, whatever the machine's speed, when the second one starts; then it is let go on.
    from aws_behaviour import Hold, operation_is
    from fault_proxy import FaultProxy

    job = make_job()
    client, buckets = job.buckets.client, job.buckets
    objects = mixed_objects(seed=8, big_size=20 * MIB, before=10, after=5)
    put_objects(client, buckets.source, objects)

    with FaultProxy(buckets.endpoint_url) as proxy:
        # Only the copying is held: the second run connects and reads its progress file's lock.
        hold = Hold(operation_is("PutObject"), holds=lambda request: request.operation in COPYING)
        proxy.behave(hold)
        route_through(job, proxy)
        first = job.start()
        job.wait_for(first, hold.triggered.is_set, "the first run to copy an object")
        second = subprocess.run(job.command(*job.arguments()), env=job.env, cwd=job.workdir, capture_output=True,
                                text=True, timeout=RUN_TIMEOUT, check=False)
        hold.release()

        assert second.returncode == 2, second.stderr
        assert "Traceback" not in second.stderr
        assert f"Another run is using the progress file {job.progress_file} right now" in second.stderr
        assert job.wait(first) == 0, job.diagnostics()
    copied = copied_keys(job.log_text())
    assert sorted(copied) == sorted(objects)  # each object copied once, by the first run
    assert_fully_copied(job)


# ----------------------------------------------------------------------------------------
# 8. A kill at an exact request: what was uploaded is what gets proven, and nothing is read twice
# ----------------------------------------------------------------------------------------
#
# A proxy in front of moto holds the tool at one request (aws_behaviour.Hold): either that request is
# answered and every later one held, or the server carries it out and its answer is held. The test kills
# the tool there once the progress file shows what the moment means, then reruns through a clean proxy.
# One worker, so that the parts go one after another and "the moment" is one state of the copy.

HOLD_BIG = "b/big.bin"
HOLD_SIZE = 3 * PART_SIZE + 3 * MIB  # four parts: 5, 5, 5 and 3 MiB
SMALL_KEYS = ("a/one.txt", "c/two.txt")


def part_range(number: int) -> str:
    start = (number - 1) * PART_SIZE
    return f"bytes={start}-{min(start + PART_SIZE, HOLD_SIZE) - 1}"


def route_through(job: ResumeJob, proxy: Any, *extra_args: str) -> None:
    """Send every request of the job's next runs (both sides) through `proxy`."""
    credentials = json.loads(job.credentials.read_text())
    job.credentials.write_text(json.dumps({**credentials, "endpoint_url": proxy.endpoint_url}))
    job.extra_args = [*extra_args, "--dest-endpoint-url", proxy.endpoint_url]


@dataclass
class HeldJob:
    """The objects of these tests, and a job whose source and destination are reached through a proxy."""

    job: ResumeJob
    data: dict[str, bytes]

    def through(self, proxy: Any) -> None:
        """Send every request of the next runs through `proxy`, one worker at a time."""
        route_through(self.job, proxy, "--max-workers", "1")

    def record(self) -> dict[str, Any]:
        """The progress file's record of the big object's upload ({} while there is none)."""
        try:
            return self.job.progress()["resume"]["multipart_uploads"].get(HOLD_BIG, {})
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def kill_when(self, process: subprocess.Popen[bytes], condition: Callable[[], Any], what: str) -> None:
        self.job.wait_for(process, condition, what)
        process.send_signal(signal.SIGKILL)
        assert self.job.wait(process) == -signal.SIGKILL

    def assert_identical(self) -> None:
        client, buckets = self.job.buckets.client, self.job.buckets
        assert {key: entry["md5"] for key, entry in object_snapshot(client, buckets.dest).items()} == {
            key: md5_hex(value) for key, value in self.data.items()}
        assert incomplete_uploads(client, buckets.dest) == []


@pytest.fixture
def held(make_job: Callable[..., ResumeJob]) -> HeldJob:
    """A big object uploaded in one PUT (its ETag the MD5 of all of it) or in 5 MiB parts, and two small
    ones; no additional checksum (a client that adds none), so the ETag is the only proof."""
    from uploads import plain_client, upload

    job = make_job()
    rng = random.Random(15)
    data = {HOLD_BIG: rng.randbytes(HOLD_SIZE), **{key: rng.randbytes(20 * KIB) for key in SMALL_KEYS}}
    client = plain_client(job.buckets.endpoint_url)
    for key, value in data.items():
        upload(client, job.buckets.source, key, value)
    return HeldJob(job, data)


def hashed_through(held: HeldJob, parts: int) -> Callable[[], bool]:
    """A condition: the progress file records `parts` parts of the big object, and keeps its digest
    after them (a file without a digest, as versions before it wrote, goes by its parts alone)."""

    def condition() -> bool:
        record = held.record()
        return str(parts) in record.get("parts", {}) and record.get("digest", {}).get("next_part", parts + 1) == parts + 1

    return condition


@pytest.mark.parametrize("moment", ["after it was hashed and saved", "before its answer arrived",
                                    "before its answer arrived, SSE-KMS destination"])
def test_a_part_damaged_before_a_kill_is_found_and_uploaded_again(held: HeldJob, moment: str) -> None:
    """Part 2's GET is damaged on the way; the damaged bytes are uploaded (their own checksum is right)
    and the run is killed before it could find out. The rerun must not complete them into the object:
    the digest it takes up is of what was uploaded, and a part S3 has beyond it is compared with a fresh
    read. Under SSE-KMS a part's ETag proves nothing, and moto (unlike S3) lists no part checksums, so
    there the part is uploaded again rather than trusted."""
    from aws_behaviour import DamageOnce, Hold, SseKmsBucket, operation_is
    from fault_proxy import FaultProxy

    buckets = held.job.buckets
    uploaded_two = operation_is("UploadPart", key=HOLD_BIG, partNumber="2")
    with FaultProxy(buckets.endpoint_url) as proxy:
        hold = Hold(uploaded_two, answer_trigger=moment == "after it was hashed and saved")
        kms = [SseKmsBucket(buckets.dest)] if "SSE-KMS" in moment else []
        proxy.behave(DamageOnce(buckets.source, HOLD_BIG, part_range(2)), hold, *kms)
        held.through(proxy)
        process = held.job.start()
        if hold._answer_trigger:
            held.kill_when(process, hashed_through(held, 2), "the damaged part 2 hashed and saved")
        else:
            held.job.wait_for(process, hashed_through(held, 1), "part 1 hashed and saved")
            held.kill_when(process, hold.triggered.is_set, "part 2 uploaded, its answer held")
        assert sorted(parts_on_server(buckets.client, buckets.dest, HOLD_BIG)() or {}) == [1, 2]  # damaged 2 too

        log_offset, first_request = held.job.log_size(), len(proxy.counts.log)
        proxy.behave_only(*kms)  # the same endpoint (the same job), without the damage or the hold
        assert held.job.run() == 0, held.job.diagnostics()

    held.assert_identical()
    rerun = held.job.log_text(since=log_offset)
    reason = ("cannot be compared with the source (its ETag is no MD5, as under SSE-KMS, and S3 gave no checksum "
              "for it)" if kms else "holds other bytes than the source")
    assert f'part 2 of "{HOLD_BIG}", uploaded before the last run stopped, {reason}; uploading it again' in rerun
    uploaded_again = [seen.query["partNumber"] for seen in proxy.counts.log[first_request:]
                      if seen.operation == "UploadPart"]
    assert uploaded_again.count(["2"]) == 1, uploaded_again


@pytest.mark.parametrize("layout", ["one PUT", "5 MiB parts"])
def test_a_resumed_upload_reads_again_only_the_parts_it_had_not_hashed(
        make_job: Callable[..., ResumeJob], layout: str) -> None:
    """The digest of the parts uploaded before a kill is taken up from the progress file: the rerun
    reads the parts after it and no others (before, it read every uploaded part again to hash it: a
    5 TiB object stopped at 90% would have meant 4.5 TiB read twice). With one PUT at the source, the
    digest is the MD5 of the whole object, whose state OpenSSL's context lets the file keep; with parts,
    the MD5s of the parts so far."""
    from aws_behaviour import Hold, operation_is
    from fault_proxy import FaultProxy
    from uploads import plain_client, upload

    job = make_job()
    data = {HOLD_BIG: random.Random(16).randbytes(HOLD_SIZE)}
    upload(plain_client(job.buckets.endpoint_url), job.buckets.source, HOLD_BIG, data[HOLD_BIG],
           part_size=PART_SIZE if layout == "5 MiB parts" else None)
    held = HeldJob(job, data)
    with FaultProxy(job.buckets.endpoint_url) as proxy:
        proxy.behave(Hold(operation_is("UploadPart", key=HOLD_BIG, partNumber="3")))
        held.through(proxy)
        held.kill_when(held.job.start(), hashed_through(held, 3), "three parts hashed and saved")
        first_request = len(proxy.counts.log)
        proxy.behave_only()
        assert held.job.run() == 0, held.job.diagnostics()

    held.assert_identical()
    read_again = sum(seen.body_bytes for seen in proxy.counts.log[first_request:]
                     if seen.operation == "GetObject" and seen.key == HOLD_BIG)
    assert read_again == HOLD_SIZE - 3 * PART_SIZE, read_again
    print(f"{layout}: the rerun read {read_again / MIB:.0f} MiB of the {HOLD_SIZE / MIB:.0f} MiB object")


def test_an_upload_of_a_sources_unequal_parts_resumes_along_them_and_keeps_its_etag(
        make_job: Callable[..., ResumeJob]) -> None:
    """A source uploaded in unequal parts (7, 5, 6 and 0.5 MiB) is copied in those very parts, so that
    its ETag is kept; killed after three, the rerun takes the layout from the progress file and uploads
    only the last."""
    from aws_behaviour import Hold, operation_is
    from fault_proxy import FaultProxy
    from uploads import etag_of, plain_client, upload_parts

    job = make_job()
    sizes = [7 * MIB, 5 * MIB, 6 * MIB, MIB // 2]
    data = {HOLD_BIG: random.Random(17).randbytes(sum(sizes))}
    source_etag = upload_parts(plain_client(job.buckets.endpoint_url), job.buckets.source, HOLD_BIG,
                               data[HOLD_BIG], sizes)
    held = HeldJob(job, data)
    with FaultProxy(job.buckets.endpoint_url) as proxy:
        proxy.behave(Hold(operation_is("UploadPart", key=HOLD_BIG, partNumber="3")))
        held.through(proxy)
        held.kill_when(held.job.start(), hashed_through(held, 3), "three parts hashed and saved")
        recorded = held.record()
        first_request, log_offset = len(proxy.counts.log), held.job.log_size()
        proxy.behave_only()
        assert held.job.run() == 0, held.job.diagnostics()

    held.assert_identical()
    assert recorded["part_sizes"] == sizes
    assert etag_of(job.buckets.client, job.buckets.dest, HOLD_BIG) == source_etag
    uploaded_again = sorted(seen.query["partNumber"][0] for seen in proxy.counts.log[first_request:]
                            if seen.operation == "UploadPart")
    assert uploaded_again == ["4"], uploaded_again
    assert "3 of 4 parts already uploaded" in held.job.log_text(since=log_offset)


@pytest.mark.parametrize("destination", ["plain", "SSE-KMS"])
def test_an_upload_completed_just_before_a_kill_is_found_done_and_not_copied_again(
        held: HeldJob, destination: str) -> None:
    """Killed after S3 completed the upload and before the progress file could say so: the rerun finds
    the recorded upload gone, and the object at the destination is the one the parts make (by their
    ETags, or under SSE-KMS by the CRC64NVME the recorded part checksums combine into), so it is done,
    neither read nor written again (before: copied again whole, a second version on a versioned bucket)."""
    from aws_behaviour import Hold, SseKmsBucket, operation_is
    from fault_proxy import FaultProxy

    buckets = held.job.buckets
    kms = [SseKmsBucket(buckets.dest)] if destination == "SSE-KMS" else []
    with FaultProxy(buckets.endpoint_url) as proxy:
        hold = Hold(operation_is("CompleteMultipartUpload", key=HOLD_BIG), answer_trigger=False)
        proxy.behave(hold, *kms)
        held.through(proxy)
        held.kill_when(held.job.start(), hold.triggered.is_set, "the upload completed, its answer held")
        assert incomplete_uploads(buckets.client, buckets.dest) == []  # S3 did complete it
        assert HOLD_BIG in held.job.progress()["resume"]["multipart_uploads"]  # and the file did not learn of it

        log_offset, first_request = held.job.log_size(), len(proxy.counts.log)
        proxy.behave_only(*kms)
        assert held.job.run() == 0, held.job.diagnostics()

    held.assert_identical()
    touched = [seen.operation for seen in proxy.counts.log[first_request:] if seen.key == HOLD_BIG
               and seen.operation in ("GetObject", "CreateMultipartUpload", "UploadPart", "PutObject")]
    assert touched == [], touched
    rerun = held.job.log_text(since=log_offset)
    assert f'"{HOLD_BIG}" was completed at the destination just before the last run stopped' in rerun
    assert held.job.progress()["summary"]["state"] == "complete"
