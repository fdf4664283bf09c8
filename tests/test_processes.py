"""One job in several processes on one machine (--processes N): the parent lists and keeps the one
progress file; worker processes copy the small objects. What a person relies on: the same result as
one process (every byte, header and tag, one progress file, one log), every object created once,
and after kill -9 of the parent or of a worker, or Ctrl-C, a rerun that finishes with nothing lost,
nothing completed twice, and no upload left behind.

SeaweedFS with the two accounts' identities, a prefix per test; the fault proxy in front of the
destination counts the PutObject requests of each key.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from fault_proxy import FaultProxy
from s3servers import DEST_BUCKET, SeaweedServer
from test_cross_account import CrossAccount
from toolcli import ToolJob, copied_keys, describe, read_progress
from units import MIB

SMALL_OBJECTS = 400
LARGE_BODY = 7 * MIB  # over the tests' 6 MiB threshold: copied in parts, by the parent
PROCESSES = ["--processes", "3"]  # this one and two worker processes


@pytest.fixture
def accounts(seaweed: SeaweedServer, tool_env: dict[str, str], tmp_path: Path) -> CrossAccount:
    return CrossAccount(server=seaweed, prefix=f"procs-{uuid.uuid4().hex[:10]}/", workdir=tmp_path,
                        base_env=tool_env)


def fill_source(accounts: CrossAccount) -> set[str]:
    names = [f"s{index % 8}/{index:04d}.txt" for index in range(SMALL_OBJECTS)]

    def put(name: str) -> None:
        accounts.put(name, f"body of {name} ".encode() * (1 + len(name) % 7), ContentType="text/plain",
                     Metadata={"name": name.replace("/", "-")}, Tagging=f"n={len(name) % 3}")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(put, names))
    accounts.put("large/big.bin", os.urandom(LARGE_BODY))
    return {accounts.prefix + name for name in [*names, "large/big.bin"]}


def job_through(accounts: CrossAccount, proxy: FaultProxy) -> ToolJob:
    job = accounts.job(accounts.server.source, accounts.server.dest)
    job.dest_endpoint_url = proxy.endpoint_url
    return job


def creates(proxy: FaultProxy) -> collections.Counter[str]:
    """Objects created in the destination, by source key: a PutObject, or a multipart upload begun."""
    counted: collections.Counter[str] = collections.Counter()
    for operation in ("PutObject", "CreateMultipartUpload"):
        counted.update(seen.key for seen in proxy.counts.operations(operation) if seen.bucket == DEST_BUCKET)
    return counted


def assert_one_complete_job(accounts: CrossAccount, job: ToolJob, keys: set[str]) -> dict:
    assert accounts.destination_snapshot() == accounts.source_snapshot()  # bodies, headers, metadata, tags
    assert accounts.destination_uploads() == []
    progress = read_progress(job.progress_file)
    assert progress["summary"]["state"] == "complete"
    assert progress["summary"]["objects_done"] == len(keys)  # none counted twice, over every run
    assert progress["resume"]["failed"] == {} and progress["resume"]["multipart_uploads"] == {}
    return progress


def test_worker_processes_copy_every_object_once_into_one_progress_file_and_log(accounts: CrossAccount) -> None:
    keys = fill_source(accounts)
    with FaultProxy(accounts.server.endpoint_url, key_prefix=accounts.prefix) as proxy:
        job = job_through(accounts, proxy)
        result = job.run(accounts.source_uri, accounts.destination_uri, *PROCESSES)
        created = creates(proxy)

    assert result.returncode == 0, describe(result)
    assert_one_complete_job(accounts, job, keys)
    assert set(created) == keys and set(created.values()) == {1}, "an object was created twice"
    log = job.log_file.read_text()
    assert sorted(copied_keys(log)) == sorted(keys)  # one log, one line per object, the workers' too
    assert "small objects in 2 worker processes" in log
    assert f"{len(keys):,} objects" in result.stdout, describe(result)


@pytest.mark.parametrize("victim", ["parent", "worker"])
def test_kill_9_of_the_parent_or_a_worker_loses_nothing_and_completes_nothing_twice(
        accounts: CrossAccount, victim: str) -> None:
    keys = fill_source(accounts)
    with FaultProxy(accounts.server.endpoint_url, key_prefix=accounts.prefix) as proxy:
        job = job_through(accounts, proxy)
        arguments, first, children = started_and_copying(accounts, job)
        if victim == "parent":
            first.kill()
            first.wait()
            assert wait_gone(children), "a worker process outlived its parent"
            # What the parent had not saved as done is copied again: at most what it logged since its
            # last save (all of it, here: it is killed within seconds), plus what was in flight.
            resent_bound = len(copied_keys(job.log_file.read_text())) + 2
            second = job.run(*arguments)
            assert second.returncode == 0, describe(second)
        else:
            os.kill(children[0], signal.SIGKILL)
            assert job.wait(first) == 0, job.diagnostics()
            log = job.log_file.read_text()
            assert "worker process" in log and "ended unexpectedly (killed by SIGKILL)" in log, log[-3000:]
            resent_bound = 2  # only what the dead worker held: --max-workers 2 is the job's, not each process's
        created = creates(proxy)

    assert_one_complete_job(accounts, job, keys)
    assert set(created) == keys
    again = sum(created.values()) - len(keys)
    assert again <= resent_bound, (again, resent_bound)
    print(f"{victim} killed: {again} objects sent again of {len(keys)}")


def test_ctrl_c_stops_every_process_once_and_the_rerun_resumes(accounts: CrossAccount) -> None:
    keys = fill_source(accounts)
    with FaultProxy(accounts.server.endpoint_url, key_prefix=accounts.prefix) as proxy:
        job = job_through(accounts, proxy)
        arguments, first, children = started_and_copying(accounts, job)
        # Ctrl-C reaches every process of the terminal's foreground group at once.
        for pid in [first.pid, *children]:
            os.kill(pid, signal.SIGINT)
        code = job.wait(first)
        interrupted = read_progress(job.progress_file)
        stderr = Path(job.workdir / "run1.stderr").read_text()
        assert wait_gone(children), f"worker processes {children} outlived the run\n{job.diagnostics()}"
        second = job.run(*arguments)
        created = creates(proxy)

    assert code == 130, job.diagnostics()
    assert interrupted["summary"]["state"] == "interrupted", job.diagnostics()
    assert stderr.count("Interrupted: finishing the parts in flight") == 1, job.diagnostics()
    assert second.returncode == 0, describe(second)
    assert_one_complete_job(accounts, job, keys)
    assert set(created) == keys


def started_and_copying(accounts: CrossAccount, job: ToolJob) -> tuple[list[str], subprocess.Popen[bytes], list[int]]:
    """A run of the job started as a process of its own, once its worker processes have copied 60
    objects: its arguments, the process and its workers. Two --max-workers, so that it is still
    running then."""
    arguments = [accounts.source_uri, accounts.destination_uri, *PROCESSES, "--max-workers", "2"]
    first = job.start(*arguments)
    job.wait_for(first, lambda: len(copied_keys(job.log_file.read_text() if job.log_file.exists() else "")) >= 60,
                 "60 objects were copied")
    children = worker_pids(first.pid)
    assert len(children) == 2, children
    return arguments, first, children


def worker_pids(parent: int) -> list[int]:
    """The worker processes of a run: its children that multiprocessing spawned (not its resource tracker)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(pid) for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]


def wait_gone(pids: list[int], timeout: float = 10.0) -> bool:
    """Whether these processes are all gone (or dead, unreaped) within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
                   for pid in pids):
            return True
        time.sleep(0.05)
    return False
