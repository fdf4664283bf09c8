"""The job's state in a bucket (--progress-file s3://BUCKET/FOLDER/), as shards in containers keep it:
an AWS Batch child or a Kubernetes pod has no disk that outlives it, so a retried child or a
rescheduled pod must find its progress in S3, and two runs of one shard must not overwrite each
other's.

What a person running them relies on: every object arrives exactly once, a shard killed and started
again on another machine (a fresh working directory) resumes from the bucket, the operator's `status`
reads the whole job from the bucket, a second run of one shard stops the first instead of both
writing, and a state bucket the credentials cannot use is one sentence before anything is copied.
SeaweedFS plays the destination account, whose identity may use the state bucket (STATE_BUCKET);
moto plays a server that ignores S3's conditional writes.
"""

from __future__ import annotations

import collections
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from fault_proxy import Answer, FaultProxy, Forward, Request
from conftest import FAKE_KEYS
from s3servers import DEST_BUCKET, STATE_BUCKET, MotoBuckets, SeaweedServer, put_objects
from test_cross_account import CrossAccount
from test_faults import job_through
from test_shards import SHARDS, TAGLESS, fill_source, source_listings, status_rows
from toolcli import ToolJob, copied_keys, describe, run_tool, write_source_credentials

import s3_bulk_transfer as tool

pytestmark = pytest.mark.engine_independent  # where the state is kept is the same under either engine


@pytest.fixture
def accounts(seaweed: SeaweedServer, tool_env: dict[str, str], tmp_path: Path) -> CrossAccount:
    return CrossAccount(server=seaweed, prefix=f"state-{uuid.uuid4().hex[:10]}/", workdir=tmp_path,
                        base_env=tool_env)


def state_objects(accounts: CrossAccount) -> dict[str, bytes]:
    """The objects of this test's state folder, by name."""
    admin = accounts.server.client(accounts.server.admin)
    listed = admin.list_objects_v2(Bucket=STATE_BUCKET, Prefix=accounts.prefix).get("Contents", [])
    return {entry["Key"][len(accounts.prefix):]: admin.get_object(Bucket=STATE_BUCKET, Key=entry["Key"])["Body"].read()
            for entry in listed}


def on_its_own_machine(job: ToolJob, tmp_path: Path, name: str) -> ToolJob:
    """The job as a container runs it: a working directory of its own that nothing else shares."""
    workdir = tmp_path / name
    workdir.mkdir()
    return ToolJob(workdir=workdir, env=job.env, credentials=job.credentials, dest_endpoint_url=job.dest_endpoint_url)


def state_writes(proxy: FaultProxy) -> list[Any]:
    return [seen for seen in proxy.counts.operations("PutObject") if seen.bucket == STATE_BUCKET]


def test_shards_keep_their_state_in_a_bucket_and_a_killed_one_resumes_elsewhere(
        accounts: CrossAccount, tmp_path: Path) -> None:
    names = fill_source(accounts)
    state = f"s3://{STATE_BUCKET}/{accounts.prefix}"
    with FaultProxy(accounts.server.endpoint_url, key_prefix=accounts.prefix) as proxy:
        job = job_through(accounts, proxy)
        reference = job.run(accounts.source_uri, accounts.destination_uri, "--dry-run", *TAGLESS)
        assert reference.returncode == 0, describe(reference)
        one_listing = source_listings(proxy)
        created_before = len(proxy.counts.operations("PutObject"))
        machines = [on_its_own_machine(job, tmp_path, f"pod{index}") for index in range(SHARDS)]
        shards = [machine.start(accounts.source_uri, accounts.destination_uri, "--shard", f"{index}/{SHARDS}",
                                "--progress-file", state, *TAGLESS) for index, machine in enumerate(machines)]
        killed = machines[1]
        killed.wait_for(shards[1], lambda: len(copied_keys(killed.shard_log_text(1, SHARDS))) >= 40,
                        "shard 1 had copied 40 objects")
        shards[1].kill()
        shards[1].wait()
        # Rescheduled on another machine: nothing of the first run's disk comes with it.
        again = on_its_own_machine(job, tmp_path, "pod1-rescheduled")
        restarted = again.start(accounts.source_uri, accounts.destination_uri, "--shard", f"1/{SHARDS}",
                                "--progress-file", state, *TAGLESS)
        codes = [machines[0].wait(shards[0]), again.wait(restarted), machines[2].wait(shards[2])]
        assert codes == [0, 0, 0], again.diagnostics()
        sharded_listings = source_listings(proxy) - one_listing
        creates = collections.Counter(seen.key for seen in proxy.counts.operations("PutObject")[created_before:]
                                      if seen.bucket == DEST_BUCKET)
        writes = state_writes(proxy)
        status = run_tool(["status", state, "--endpoint-url", proxy.endpoint_url], env=job.env, cwd=tmp_path)

    assert accounts.destination_snapshot() == accounts.source_snapshot()
    assert accounts.destination_uploads() == []
    keys = {accounts.prefix + name for name in names}
    assert set(creates) == keys
    recopied = {key for key, count in creates.items() if count > 1}
    shard_1 = set(copied_keys(killed.shard_log_text(1, SHARDS))) | set(copied_keys(again.shard_log_text(1, SHARDS)))
    assert recopied <= shard_1, "a key was sent again by a shard that was not killed"
    assert sum(len(copied_keys(machine.shard_log_text(index, SHARDS)))
               for index, machine in enumerate(machines) if index != 1) \
        + len(shard_1) == len(keys)  # between them, the shards copied every key, and none twice
    saved = state_objects(accounts)
    shard_files = [f"transfer_progress.shard-{index}-of-{SHARDS}.json" for index in range(SHARDS)]
    # The plan and each shard's progress, and nothing else: no claim, no check object left behind.
    assert sorted(saved) == sorted([f"transfer_progress.plan-of-{SHARDS}-shards.json", *shard_files]), sorted(saved)
    documents = [tool.parse_json_document(saved[name], where=name, what="progress", when_invalid="") for name in
                 shard_files]
    assert [document["summary"]["state"] for document in documents] == ["complete"] * SHARDS
    assert sum(document["summary"]["objects_done"] for document in documents) == len(keys)  # none counted twice
    # No shard kept a progress file of its own on its disk.
    assert not list(tmp_path.glob("pod*/*.json")), list(tmp_path.glob("pod*/*.json"))
    # Every write of the state was conditional, so a second run of a shard could not go unnoticed.
    assert writes and all(any(name.lower() in ("if-match", "if-none-match") for name, _ in seen.headers)
                          for seen in writes)
    assert sharded_listings <= 1.2 * one_listing, (sharded_listings, one_listing)
    assert status.returncode == 0, describe(status)
    assert re.search(r"total\s+1,100\s.*\s3 complete$", status_rows(status)["total"]), describe(status)
    print(f"state in a bucket: {len(writes)} state PutObjects for {len(keys)} objects in {SHARDS} shards; "
          f"{sum(creates.values()) - len(keys)} objects sent again after the kill; {sharded_listings} listing pages "
          f"against {one_listing} unsharded")


def test_a_second_run_of_one_job_stops_the_first_instead_of_both_writing(accounts: CrossAccount,
                                                                          tmp_path: Path) -> None:
    for index in range(120):
        accounts.put(f"obj/{index:03d}.bin", bytes([index]) * 16_384)
    state = f"s3://{STATE_BUCKET}/{accounts.prefix}"
    job = accounts.job(accounts.server.source, accounts.server.dest)
    first_machine = on_its_own_machine(job, tmp_path, "first")
    # Held back by a bandwidth cap, so that the second run starts while the first is still copying.
    first = first_machine.start(accounts.source_uri, accounts.destination_uri, "--progress-file", state,
                                "--max-bandwidth", "256KiB", *TAGLESS)
    first_machine.wait_for(first, lambda: len(copied_keys(first_machine.log_text())) >= 10,
                           "the first run had copied 10 objects")
    second_machine = on_its_own_machine(job, tmp_path, "second")
    second = second_machine.run(accounts.source_uri, accounts.destination_uri, "--progress-file", state, *TAGLESS)
    first_code = first_machine.wait(first)
    first_stderr = (first_machine.workdir / "run1.stderr").read_text()

    assert second.returncode == 0, describe(second)
    assert first_code == 2, first_machine.diagnostics()
    assert "Another run of this job wrote its progress at" in first_stderr, first_stderr
    assert "Traceback" not in first_stderr
    assert accounts.destination_snapshot() == accounts.source_snapshot()
    assert accounts.destination_uploads() == []
    document = tool.parse_json_document(state_objects(accounts)["transfer_progress.json"], where="", what="",
                                        when_invalid="")
    # The progress is the second run's, whole: the stopped run did not overwrite it on its way out.
    assert document["summary"]["state"] == "complete" and document["summary"]["objects_done"] == 120, document


class AppliedButAnsweredAsFailed:
    """The first `times` writes of the progress are applied by the server, but the client is told
    500 InternalError, as when S3's answer is lost after it stored the object: botocore sends the
    write again, and its condition (no object yet, or the ETag before the first write) now fails."""

    def __init__(self, times: int) -> None:
        self.left = times
        self.applied = 0

    def __call__(self, request: Request, forward: Forward) -> Answer:
        answer = forward(request)
        if (self.left and request.bucket == STATE_BUCKET and request.operation == "PutObject"
                and ".check-" not in request.key and answer.status == 200):
            self.left -= 1
            self.applied += 1
            return Answer.s3_error(500, "InternalError", "We encountered an internal error. Please try again.")
        return answer


def test_a_state_write_that_landed_but_whose_answer_was_lost_is_not_taken_for_another_run(
        accounts: CrossAccount) -> None:
    for index in range(30):
        accounts.put(f"obj/{index:02d}.txt", f"body {index}".encode())
    lost = AppliedButAnsweredAsFailed(times=2)  # the first save, which creates it, and the last
    with FaultProxy(accounts.server.endpoint_url, key_prefix=accounts.prefix) as proxy:
        proxy.behave(lost)
        job = job_through(accounts, proxy)
        result = job.run(accounts.source_uri, accounts.destination_uri, "--progress-file",
                         f"s3://{STATE_BUCKET}/{accounts.prefix}", *TAGLESS)
        refused = [seen for seen in state_writes(proxy) if seen.status == 412]

    assert lost.applied == 2
    assert refused, "no write was sent again: the test did not meet the case"
    assert result.returncode == 0, describe(result)
    assert "Another run" not in result.stderr
    assert accounts.destination_snapshot() == accounts.source_snapshot()


class IgnoresConditionalWrites:
    """A server that does not know S3's conditional writes: it drops If-Match and If-None-Match."""

    def __call__(self, request: Request, forward: Forward) -> Answer:
        if request.operation == "PutObject":
            request.headers = [(name, value) for name, value in request.headers
                               if name.lower() not in ("if-match", "if-none-match")]
        return forward(request)


def test_a_state_server_that_ignores_conditional_writes_is_named_and_the_copy_goes_on(
        moto_buckets: MotoBuckets, tool_env: dict[str, str], tmp_path: Path) -> None:
    buckets = moto_buckets
    put_objects(buckets.client, buckets.source, {f"k{index}": f"v{index}".encode() for index in range(5)})
    buckets.client.create_bucket(Bucket="moto-state")
    with FaultProxy(buckets.endpoint_url) as proxy:
        proxy.behave(IgnoresConditionalWrites())  # moto checks no signature, so a changed request passes
        credentials = write_source_credentials(tmp_path / "source.json", FAKE_KEYS, proxy.endpoint_url)
        job = ToolJob(workdir=tmp_path, env=tool_env, credentials=credentials, dest_endpoint_url=proxy.endpoint_url)
        result = job.run(f"s3://{buckets.source}/", f"s3://{buckets.dest}/", "--progress-file",
                         "s3://moto-state/jobs/", *TAGLESS)

    assert result.returncode == 0, describe(result)
    assert result.stderr.count("ignores conditional writes (If-None-Match)") == 1, result.stderr
    assert "make sure only one runs at a time" in result.stderr
    listed = buckets.client.list_objects_v2(Bucket="moto-state")["Contents"]
    assert [entry["Key"] for entry in listed] == ["jobs/transfer_progress.json"]  # the check object removed
    assert len(buckets.client.list_objects_v2(Bucket=buckets.dest).get("Contents", [])) == 5


def test_a_state_bucket_the_destination_may_not_use_is_one_sentence_before_anything_is_copied(
        accounts: CrossAccount) -> None:
    accounts.put("a.txt", b"a")
    job = accounts.job(accounts.server.source, accounts.server.dest)
    # The source account's bucket: the destination's credentials may not list it, let alone write there.
    result = job.run(accounts.source_uri, accounts.destination_uri, "--progress-file",
                     f"s3://source-account-bucket/{accounts.prefix}", *TAGLESS)

    assert result.returncode == 2, describe(result)
    assert "Access denied: the destination credentials" in result.stderr, result.stderr
    assert "source-account-bucket" in result.stderr and "Traceback" not in result.stderr
    assert accounts.destination_snapshot() == {}


@pytest.mark.parametrize(("given", "bucket", "key"), [
    ("s3://state-bucket", "state-bucket", "transfer_progress.json"),
    ("s3://state-bucket/", "state-bucket", "transfer_progress.json"),
    ("s3://state-bucket/jobs/july/", "state-bucket", "jobs/july/transfer_progress.json"),
    ("s3://state-bucket/jobs/july.json", "state-bucket", "jobs/july.json"),
])
def test_an_s3_state_location_names_one_object(given: str, bucket: str, key: str) -> None:
    location = tool.state_location(given)
    assert (location.bucket, location.key) == (bucket, key)
    shard = tool.shard_file_name(location, tool.Shard(2, 8, "ranges"))
    assert str(shard) == f"s3://{bucket}/{key[:-len('.json')]}.shard-2-of-8.json"
    assert str(tool.shard_plan_name(location, 8)) == f"s3://{bucket}/{key[:-len('.json')]}.plan-of-8-shards.json"
    assert tool.in_one_store(location, shard) and not tool.in_one_store(location, Path(key))


def test_a_state_location_with_a_bad_bucket_name_is_a_sentence(tmp_path: Path, tool_env: dict[str, str]) -> None:
    result = run_tool(["s3://src/", "s3://dst/", "--progress-file", "s3://Bad_Bucket/x.json"], env=tool_env,
                      cwd=tmp_path)
    assert result.returncode == 2, describe(result)
    assert "'Bad_Bucket' in 's3://Bad_Bucket/x.json' is not a valid bucket name" in result.stderr
    assert "Traceback" not in result.stderr
