"""Shards of one job on several machines (--shard I/N), as an AWS Batch array job or a Kubernetes
indexed Job starts them: all at once, in one shared state folder, none told about the others.

What a person running them relies on: every object arrives exactly once between them, a shard
killed and started again resumes its own share only, and the shards together list the bucket
about once (each lists the key ranges of the plan the first of them wrote), not once each.
SeaweedFS with the two accounts' identities, a prefix per test; the fault proxy counts requests.
"""

from __future__ import annotations

import collections
import concurrent.futures
import datetime
import json
import re
import uuid
from pathlib import Path

import pytest
from fault_proxy import FaultProxy
from s3servers import DEST_BUCKET, SOURCE_BUCKET, SeaweedServer
from test_cross_account import CrossAccount
from test_faults import job_through
from toolcli import ToolJob, copied_keys, describe, read_progress, run_tool

import s3_bulk_transfer as tool

pytestmark = pytest.mark.engine_independent  # how shards divide a job is the same under either engine

SHARDS = 3
FOLDERS = 22
KEYS_PER_FOLDER = 50  # 1,100 keys: more than one ListObjectsV2 page, so the keyspace is worth cutting
TAGLESS = ["--no-tags"]  # no GetObjectTagging per object: shards divide keys, tags are not their concern


@pytest.fixture
def accounts(seaweed: SeaweedServer, tool_env: dict[str, str], tmp_path: Path) -> CrossAccount:
    return CrossAccount(server=seaweed, prefix=f"shards-{uuid.uuid4().hex[:10]}/", workdir=tmp_path,
                        base_env=tool_env)


def fill_source(accounts: CrossAccount) -> list[str]:
    names = [f"f{folder:02d}/{index:03d}.txt" for folder in range(FOLDERS) for index in range(KEYS_PER_FOLDER)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: accounts.put(name, f"body of {name}".encode()), names))
    return names


def listing_pages(proxy: FaultProxy) -> int:
    """ListObjectsV2 pages of either bucket, less the one-key probes of the preflights."""
    return sum(1 for seen in proxy.counts.operations("ListObjectsV2") if seen.query.get("max-keys") != ["1"])


def source_listings(proxy: FaultProxy) -> int:
    """ListObjectsV2 pages of the source, less the one-key probe each run starts with to check
    that it may list (the preflight: MaxKeys=1), which is one per process, not a listing."""
    return sum(1 for seen in proxy.counts.operations("ListObjectsV2")
               if seen.bucket == SOURCE_BUCKET and seen.query.get("max-keys") != ["1"])


def shard_file(job: ToolJob, path: Path, index: int) -> Path:
    return path.with_name(f"{path.stem}.shard-{index}-of-{SHARDS}{path.suffix}")


def status_of(job: ToolJob, *extra: str):  # noqa: ANN201 - subprocess.CompletedProcess[str]
    """`s3_bulk_transfer.py status PROGRESS_FILE`, as the operator of the job types it."""
    return run_tool(["status", str(job.progress_file), *extra], env=job.env, cwd=job.workdir)


def status_rows(result) -> dict[str, str]:  # noqa: ANN001
    """The table's rows: shard label -> the rest of its line."""
    return {line.split()[0]: line for line in result.stdout.splitlines() if re.match(r"\s+(\d+/\d+|total)\s", line)}


def test_shards_started_together_copy_every_key_once_and_list_the_bucket_about_once(
        accounts: CrossAccount, tmp_path: Path) -> None:
    names = fill_source(accounts)
    with FaultProxy(accounts.server.endpoint_url, key_prefix=accounts.prefix) as proxy:
        job = job_through(accounts, proxy)
        # The reference: the same job unsharded lists the bucket so (a dry run lists as a copy does).
        reference = job.run(accounts.source_uri, accounts.destination_uri, "--dry-run", *TAGLESS)
        assert reference.returncode == 0 and "to copy:      1,100 objects" in reference.stdout, describe(reference)
        one_listing = source_listings(proxy)

        created_before = len(proxy.counts.operations("PutObject"))
        shards = [job.start(accounts.source_uri, accounts.destination_uri, "--shard", f"{index}/{SHARDS}", *TAGLESS)
                  for index in range(SHARDS)]
        logs = [shard_file(job, job.log_file, index) for index in range(SHARDS)]
        # kill -9 of one shard in the middle of its share, then started again, as Batch retries a child.
        job.wait_for(shards[1], lambda: len(copied_keys(logs[1].read_text() if logs[1].exists() else "")) >= 40,
                     "shard 1 had copied 40 objects")
        shards[1].kill()
        shards[1].wait()
        # The operator's view of the killed shard: still "running", since it could not say otherwise,
        # and "silent" once its file has gone unsaved for longer than any live run leaves it.
        while_killed = status_of(job)
        killed_file = read_progress(shard_file(job, job.progress_file, 1))
        saved_at = datetime.datetime.fromisoformat(killed_file["summary"]["updated_at"])
        later = tool.job_status(job.progress_file, tool.LOCAL_STATE_FILES, now=saved_at + datetime.timedelta(
            seconds=tool.SILENT_AFTER_SECONDS + 1))[SHARDS]
        restarted = job.start(accounts.source_uri, accounts.destination_uri, "--shard", f"1/{SHARDS}", *TAGLESS)
        codes = [job.wait(process) for process in (shards[0], restarted, shards[2])]
        assert codes == [0, 0, 0], job.diagnostics()
        sharded_listings = source_listings(proxy) - one_listing
        creates = collections.Counter(seen.key for seen in proxy.counts.operations("PutObject")[created_before:]
                                      if seen.bucket == DEST_BUCKET)
        # Verifying lists too: each shard compares only its own ranges, of both buckets.
        before = listing_pages(proxy)
        whole = job.run(accounts.source_uri, accounts.destination_uri, "--verify-only", *TAGLESS)
        one_audit = listing_pages(proxy) - before
        audits = [job.run(accounts.source_uri, accounts.destination_uri, "--verify-only", "--shard",
                          f"{index}/{SHARDS}", *TAGLESS) for index in range(SHARDS)]
        sharded_audits = listing_pages(proxy) - before - one_audit

    assert accounts.destination_snapshot() == accounts.source_snapshot()
    assert accounts.destination_uploads() == []
    plan = json.loads((tmp_path / f"progress.plan-of-{SHARDS}-shards.json").read_text())["plan"]
    assert plan["split"] == "ranges" and len(plan["owners"]) >= SHARDS  # the bucket was cut, not hashed
    keys = {accounts.prefix + name for name in names}
    copied = [set(copied_keys(log.read_text())) for log in logs]
    assert all(copied), "a shard had nothing to do: the plan did not spread the keys"
    assert sum(map(len, copied)) == len(keys)  # no key copied by two shards
    assert set().union(*copied) == keys
    # Every key was sent once, but for what the killed shard had sent and not yet saved as done.
    assert set(creates) == keys
    recopied = {key for key, count in creates.items() if count > 1}
    assert recopied <= copied[1], "a key was sent again by a shard that was not killed"
    progress = [read_progress(shard_file(job, job.progress_file, index)) for index in range(SHARDS)]
    assert [entry["summary"]["state"] for entry in progress] == ["complete"] * SHARDS
    assert sum(entry["summary"]["objects_done"] for entry in progress) == len(keys)  # none counted twice
    # Listed about once between them: each shard listed its own ranges, not the whole bucket.
    assert sharded_listings <= 1.2 * one_listing, (sharded_listings, one_listing)
    assert whole.returncode == 0 and [audit.returncode for audit in audits] == [0] * SHARDS, describe(whole)
    identical = [int(re.search(r"([\d,]+) identical", audit.stdout)[1].replace(",", "")) for audit in audits]
    assert identical == [len(found) for found in copied], (identical, [len(found) for found in copied])
    # (No page count is asserted for the audits: at this size each range's one page costs as much as
    # the whole listing, 1,100 keys being two pages; the saving is for shares of many pages.)
    assert while_killed.returncode == 1, describe(while_killed)
    assert "running" in status_rows(while_killed)["1/3"], describe(while_killed)
    assert later[1].state == "silent" and "killed" in tool.format_job_status(job.progress_file, {SHARDS: later})
    done = status_of(job)
    assert done.returncode == 0, describe(done)
    assert re.search(r"total\s+1,100\s.*\s3 complete$", status_rows(done)["total"]), describe(done)
    as_json = json.loads(status_of(job, "--json").stdout)[str(SHARDS)]
    assert [row["objects_done"] for row in as_json] == [entry["summary"]["objects_done"] for entry in progress]
    print(f"shards: {sharded_listings} ListObjectsV2 pages for {SHARDS} shards (one restarted) against "
          f"{one_listing} unsharded; {sum(creates.values()) - len(keys)} objects sent again after the kill; "
          f"verifying, {sharded_audits} pages of both buckets against {one_audit}")


def test_a_dry_run_makes_the_plan_that_shards_started_later_follow(accounts: CrossAccount, tmp_path: Path) -> None:
    names = fill_source(accounts)
    job = accounts.job(accounts.server.source, accounts.server.dest)
    plan_file = tmp_path / "progress.plan-of-2-shards.json"  # beside the progress files, as by default

    planned = job.run(accounts.source_uri, accounts.destination_uri, "--dry-run", "--shard", "0/2")
    assert planned.returncode == 0, describe(planned)
    made = plan_file.read_text()
    # A plan and no shard yet: the operator sees two shards not started, and the job not done.
    waiting = status_of(job)
    assert waiting.returncode == 1, describe(waiting)
    assert [row.split()[1:3] for label, row in status_rows(waiting).items() if label != "total"] == \
        [["not", "started"]] * 2, describe(waiting)
    # Objects created after the plan, in a new folder before every other: still copied, by exactly one shard.
    accounts.put("a-late/new.txt", b"late")
    later = [job.run(accounts.source_uri, accounts.destination_uri, "--dry-run", "--shard", f"{index}/2")
             for index in range(2)]

    assert [result.returncode for result in later] == [0, 0], [describe(result) for result in later]
    assert plan_file.read_text() == made  # never rewritten
    planned_count = int(re.search(r"to copy: +([\d,]+) objects", planned.stdout)[1].replace(",", ""))
    counts = [int(re.search(r"to copy: +([\d,]+) objects", result.stdout)[1].replace(",", "")) for result in later]
    assert counts[0] == planned_count + 1  # the late key, in the first range of the keyspace
    assert sum(counts) == len(names) + 1 and all(counts)


def test_a_plan_of_another_source_is_refused_with_a_sentence(accounts: CrossAccount, tmp_path: Path) -> None:
    job = accounts.job(accounts.server.source, accounts.server.dest)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({"format": "s3-bulk-transfer shard plan, version 1",
                                     "job": {"source": "s3://elsewhere/", "source_endpoint_url": None, "shards": 2},
                                     "plan": {"shards": 2, "split": "hash"}}))

    result = job.run(accounts.source_uri, accounts.destination_uri, "--shard", "0/2",
                     "--shard-plan", str(plan_file))

    assert result.returncode == 2, describe(result)
    assert "s3://elsewhere/" in result.stderr and "another --shard-plan" in result.stderr, describe(result)
    assert "Traceback" not in result.stderr


def test_status_of_a_place_with_no_job_or_a_damaged_file_is_a_sentence(tmp_path: Path) -> None:
    nothing = run_tool(["status", str(tmp_path / "progress.json")], env={}, cwd=tmp_path)
    assert nothing.returncode == 2 and "no progress file of a job" in nothing.stderr, describe(nothing)
    (tmp_path / "progress.shard-1-of-2.json").write_text('{"format": "s3-bulk-transfer progress, version 1", ')

    damaged = run_tool(["status", str(tmp_path / "progress.json")], env={}, cwd=tmp_path)

    assert damaged.returncode == 2 and "is not valid JSON" in damaged.stderr, describe(damaged)
    assert "Traceback" not in damaged.stderr
