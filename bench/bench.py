#!/usr/bin/env python3
"""Benchmark s3_bulk_transfer.py against rclone (streaming) and the AWS CLI (server-side copy).

Run it through ./bench/run.sh, which installs rclone, the AWS CLI v1 and matplotlib first.

Why these comparisons: the tool exists to stream objects between two accounts through memory, the
job rclone does with two remotes, so rclone is the yardstick for speed, CPU and memory. When the
destination keys may also read the source, a server-side copy is possible, and `aws s3 cp
--recursive` (CopyObject / UploadPartCopy) is what most people would reach for instead.

What one invocation does:

* starts a private SeaweedFS on 127.0.0.1 (tests/s3servers.py) whose identities play two accounts:
  ``source`` may only read and list the source bucket, ``dest`` may only write the destination
  bucket, so neither tool can copy server-side and every byte streams through the client;
* uploads the data sets once, as ``admin``: ``small`` (2,000 x 64 KiB) and ``large`` (4 x 256 MiB,
  single-part uploads, so their ETags are MD5s and ``--chunk-size`` decides the copy's parts);
* runs each tool on each scenario, alternating which tool goes first from one repetition to the
  next (against cache and warm-up effects), each run into a fresh destination prefix that is checked
  (every key, every size, no multipart upload left open) and then deleted;
* measures each client process from outside (bench/measure_child.py): wall time, CPU user+sys,
  peak RSS and bytes written to disk;
* writes bench/results/<timestamp>/{results.json,results.md,chart.png} and copies them to
  bench/results/latest/.

Concurrency is matched, never tuned per tool: see ``rclone_concurrency``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
# The tests directory itself goes on sys.path (as scripts/demo.py does), not the repo root, so that a
# `tests` package installed in site-packages cannot shadow it.
sys.path.insert(0, str(REPO_ROOT / "tests"))
sys.path.insert(0, str(BENCH_DIR))

from botocore.client import BaseClient
from latency_proxy import LatencyProxy, measure_added_rtt
from s3servers import DEST_BUCKET, SOURCE_BUCKET, Identity, SeaweedServer

TOOL = REPO_ROOT / "s3_bulk_transfer.py"
TOOL_SNAPSHOT: Path | None = None  # set by main(): see snapshot_tool
PYTHON = sys.executable  # the venv's interpreter: bench.py is run with .venv/bin/python
MEASURE = BENCH_DIR / "measure_child.py"
RESULTS_DIR = BENCH_DIR / "results"

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MB = 1_000_000  # throughput is reported in decimal MB/s, as rclone and most network tools do

CHUNK_SIZE = 8 * MiB
MULTIPART_THRESHOLD = 100 * MiB  # the tool's default; rclone's --s3-upload-cutoff and the AWS CLI follow it
WORKERS = 10  # the tool's default --max-workers, used by every scenario but the grid and memory check
GRID_WORKERS = (1, 4, 10, 20)
# Both engines of the tool (--engine) beside rclone, the reference the ratios are taken against. "ours"
# alone (grid, memory, bandwidth) is the default engine.
ENGINES_AND_RCLONE = ("ours-crt", "ours-threads", "rclone")
ENGINE_ARGUMENTS = {"ours-crt": ("--engine", "crt"), "ours-threads": ("--engine", "threads")}
MEMORY_CHUNKS = (8 * MiB, 16 * MiB)
ONE_WAY_DELAY = 0.010  # seconds each way: 20 ms added round trip
RUN_TIMEOUT = 3600.0  # a deadline for a hung run, not a performance limit
PYTHON_BASELINE = 100 * MiB  # README: "plus Python's own ~100 MiB"
BANDWIDTH_TOLERANCE = 0.10
CONTENDED_ATTEMPTS = 3  # tries per run while another job keeps competing for the cores

PARTS = ("small", "large", "latency", "server-side", "grid", "memory", "bandwidth", "processes", "requests")
PROCESS_COUNTS = (1, 2, 3)  # --processes compared on the small data set: one process, and 1 or 2 workers beside it
# The tool's log lines for the CPU of each of its processes, written as each ends: "worker process 1
# (pid 123) used 2.05 s of CPU, 0.46 s of it starting" (--processes), "this process used ...".
WORKER_CPU_LINE = re.compile(r"worker process \d+ \(pid \d+\) used ([\d.]+) s of CPU, ([\d.]+) s of it starting")
PARENT_CPU_LINE = re.compile(r"this process used ([\d.]+) s of CPU, ([\d.]+) s of it starting")
PACED_REQUESTS_LINE = re.compile(r"(\d+) requests read the source, at most [\d.e+]+ a second")


# =============================================================================================
# Data sets
# =============================================================================================


@dataclasses.dataclass(frozen=True)
class Dataset:
    """``count`` random objects of ``size`` bytes under ``prefix`` of the source bucket."""

    name: str
    count: int
    size: int

    @property
    def prefix(self) -> str:
        return f"{self.name}/"

    @property
    def total_bytes(self) -> int:
        return self.count * self.size

    def keys(self) -> list[str]:
        width = len(str(self.count - 1))
        return [f"obj-{index:0{width}d}" for index in range(self.count)]

    def describe(self) -> str:
        unit = f"{self.size // MiB} MiB" if self.size >= MiB else f"{self.size // KiB} KiB"
        return f"{self.count:,} x {unit}"


def datasets_for(quick: bool) -> dict[str, Dataset]:
    if quick:
        # 128 MiB rather than smaller: still above the 100 MiB multipart threshold, so the quick run
        # exercises the same multipart path (ranged GETs -> UploadPart) as the full one.
        return {"small": Dataset("small", 300, 64 * KiB), "large": Dataset("large", 2, 128 * MiB)}
    return {"small": Dataset("small", 2000, 64 * KiB), "large": Dataset("large", 4, 256 * MiB)}


def upload_dataset(admin: BaseClient, dataset: Dataset) -> None:
    """Fill the source prefix with random bytes (incompressible, unique per object).

    Single PutObject calls, as boto3 does by default, so every object has an MD5 ETag and a CRC32
    additional checksum (botocore's default for uploads), like objects written by a current SDK.
    """
    threads = 16 if dataset.size < MiB else 2  # two 256 MiB bodies at a time keep this process small

    def put(key: str) -> None:
        admin.put_object(Bucket=SOURCE_BUCKET, Key=dataset.prefix + key, Body=os.urandom(dataset.size))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, dataset.keys()))


# =============================================================================================
# The server: listing, checking and deleting copies, reclaiming space
# =============================================================================================


def list_sizes(client: BaseClient, bucket: str, prefix: str) -> dict[str, int]:
    """{key relative to prefix: size} of every object under prefix."""
    sizes: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for entry in page.get("Contents", []):
            sizes[entry["Key"][len(prefix):]] = entry["Size"]
    return sizes


def open_uploads(client: BaseClient, bucket: str, prefix: str) -> list[dict[str, Any]]:
    uploads: list[dict[str, Any]] = []
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
        uploads.extend(page.get("Uploads", []))
    return uploads


def check_copy(admin: BaseClient, dataset: Dataset, dest_prefix: str) -> tuple[bool, str]:
    """Whether the destination holds every object of the data set with its size, and nothing else.

    A listing comparison, not a byte comparison: the tools check their own bytes (MD5/ETag), and
    what this guards against is a fast run that silently skipped or truncated objects.
    """
    expected = dict.fromkeys(dataset.keys(), dataset.size)
    actual = list_sizes(admin, DEST_BUCKET, dest_prefix)
    problems = []
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    wrong = sorted(key for key in set(expected) & set(actual) if actual[key] != expected[key])
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if extra:
        problems.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
    if wrong:
        problems.append(f"{len(wrong)} of wrong size (e.g. {wrong[0]}: {actual[wrong[0]]} bytes)")
    uploads = open_uploads(admin, DEST_BUCKET, dest_prefix)
    if uploads:
        problems.append(f"{len(uploads)} multipart uploads left open")
    if problems:
        return False, "; ".join(problems)
    return True, f"all {len(expected)} objects present with the right size"


def delete_prefix(admin: BaseClient, prefix: str) -> None:
    """Delete every object and open multipart upload under prefix in the destination bucket."""
    for upload in open_uploads(admin, DEST_BUCKET, prefix):
        admin.abort_multipart_upload(Bucket=DEST_BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])
    keys = [prefix + key for key in list_sizes(admin, DEST_BUCKET, prefix)]
    for start in range(0, len(keys), 1000):
        batch = [{"Key": key} for key in keys[start:start + 1000]]
        admin.delete_objects(Bucket=DEST_BUCKET, Delete={"Objects": batch, "Quiet": True})


class SpaceReclaimer:
    """Compacts SeaweedFS's volumes once enough has been deleted.

    SeaweedFS only marks deleted needles; the space comes back when the master vacuums a volume.
    Its capacity here is -volume.max=200 volumes of 64 MB (12.8 GB), and a full benchmark writes
    about 40 GB of copies, so without vacuuming the server would fill up midway. Vacuuming between
    runs (never during one) also gives every run the same, compact, server state.
    """

    def __init__(self, server: SeaweedServer, threshold_bytes: int = 512 * MiB) -> None:
        # SeaweedServer does not expose the master's port; it is on the command line it ran.
        args = server._process.args
        port = next(arg.split("=", 1)[1] for arg in args if str(arg).startswith("-master.port="))
        self._url = f"http://127.0.0.1:{port}/vol/vacuum?garbageThreshold=0.01"
        self._threshold = threshold_bytes
        self._pending = 0

    def deleted(self, nbytes: int) -> None:
        self._pending += nbytes
        if self._pending >= self._threshold:
            self.vacuum()

    def vacuum(self) -> None:
        with urllib.request.urlopen(self._url, timeout=600) as response:
            response.read()
        self._pending = 0


# =============================================================================================
# Measuring one client process
# =============================================================================================

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PF_KTHREAD = 0x00200000  # /proc/PID/stat flags: a kernel thread


def _proc_cpu_seconds() -> dict[int, tuple[float, bool]]:
    """{pid: (utime + stime in seconds, is a kernel thread)} of every process right now."""
    table: dict[int, tuple[float, bool]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        # after "pid (comm)": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
        table[int(entry.name)] = ((int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
                                  bool(int(fields[6]) & PF_KTHREAD))
    return table


@dataclasses.dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds used so far by every process, to tell afterwards who used the cores during a run."""

    processes: dict[int, tuple[float, bool]]

    @classmethod
    def take(cls) -> CpuSnapshot:
        return cls(_proc_cpu_seconds())

    def until(self, later: CpuSnapshot, server_pid: int) -> dict[str, float]:
        """CPU used in between by the server, by kernel threads, and by other user processes.

        The client itself is gone by then (its CPU comes from wait4) and this process only runs the
        proxy. A large "other" figure means another job competed for the cores during the run (a
        test suite, a build), and the run's figures are not comparable with the rest. Processes that
        both started and ended during the run are missed, unless their parent reaped them and lives on.
        """
        used = {"server_cpu_s": 0.0, "kernel_cpu_s": 0.0, "other_cpu_s": 0.0}
        for pid, (seconds, kernel) in later.processes.items():
            delta = seconds - self.processes.get(pid, (0.0, kernel))[0]
            if pid == server_pid:
                used["server_cpu_s"] += delta
            elif kernel:
                used["kernel_cpu_s"] += delta
            elif pid != os.getpid():
                used["other_cpu_s"] += delta
        return used


@dataclasses.dataclass
class Measurement:
    exit_code: int
    wall_s: float
    cpu_s: float
    user_s: float
    sys_s: float
    max_rss_kib: int
    write_bytes: int | None
    proc_io_read_as: str
    stdout: str
    stderr: str
    tree_peak_rss_kib: int = 0  # the process and its children at once (--processes), sampled


def run_measured(command: list[str], env: dict[str, str], cwd: Path, scratch: Path) -> Measurement:
    """Run ``command`` under measure_child.py and return what it cost.

    The launcher and the tool share a new process group, so an interrupted benchmark (Ctrl-C, a
    timeout) can kill both at once without the tool being left running.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    report_path, out_path, err_path = scratch / "measure.json", scratch / "stdout.txt", scratch / "stderr.txt"
    launcher = subprocess.Popen(
        [PYTHON, str(MEASURE), str(report_path), str(out_path), str(err_path), "--", *command],
        env=env, cwd=cwd, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        launcher.wait(timeout=RUN_TIMEOUT)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
        raise
    if launcher.returncode != 0 or not report_path.exists():
        raise RuntimeError(f"measure_child.py failed (exit {launcher.returncode}) for {command[0]}")
    report = json.loads(report_path.read_text())
    return Measurement(
        exit_code=report["exit_code"], wall_s=report["wall_s"], cpu_s=report["cpu_s"], user_s=report["user_s"],
        sys_s=report["sys_s"], max_rss_kib=report["max_rss_kib"], write_bytes=report["write_bytes"],
        proc_io_read_as=report["proc_io_read_as"],
        stdout=out_path.read_text(errors="replace"), stderr=err_path.read_text(errors="replace"),
        tree_peak_rss_kib=report.get("tree_peak_rss_kib", 0),
    )


# =============================================================================================
# The tools' command lines
# =============================================================================================


def clean_env(scratch: Path) -> dict[str, str]:
    """This environment without any AWS_* or RCLONE_* setting of the person running the benchmark,
    and with config files pointing at nothing, so that no real ~/.aws or rclone.conf leaks in."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "RCLONE_"))}
    env.update(
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(scratch / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(scratch / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        RCLONE_CONFIG=str(scratch / "no-rclone.conf"),
    )
    return env


@dataclasses.dataclass(frozen=True)
class Job:
    """One copy: which data set, into which destination prefix, how parallel, through which endpoint."""

    dataset: Dataset
    dest_prefix: str  # ends in "/"
    workers: int
    endpoint_url: str
    chunk_size: int = CHUNK_SIZE
    extra_args: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Invocation:
    command: list[str]
    env: dict[str, str]
    log_file: Path | None = None
    progress_file: Path | None = None


def snapshot_tool(scratch: Path) -> Path:
    """A copy of s3_bulk_transfer.py taken at the start, run by every run of the benchmark, so that an
    edit to the working tree during a long benchmark cannot mix two versions into one set of medians."""
    copy = scratch / "tool" / TOOL.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(TOOL, copy)
    return copy


def ours_invocation(job: Job, source: Identity, dest: Identity, scratch: Path) -> Invocation:
    """The tool as a user runs it: source keys (and endpoint) from a credentials file, destination
    keys from the environment, log and progress file in the run's scratch directory."""
    credentials = scratch / "source_credentials.json"
    credentials.write_text(json.dumps({
        "aws_access_key_id": source.access_key,
        "aws_secret_access_key": source.secret_key,
        "endpoint_url": job.endpoint_url,
    }))
    credentials.chmod(0o600)
    log_file, progress_file = scratch / "transfer.log", scratch / "progress.json"
    env = clean_env(scratch)
    env.update(AWS_ACCESS_KEY_ID=dest.access_key, AWS_SECRET_ACCESS_KEY=dest.secret_key)
    command = [
        PYTHON, str(TOOL_SNAPSHOT or TOOL),
        f"s3://{SOURCE_BUCKET}/{job.dataset.name}", f"s3://{DEST_BUCKET}/{job.dest_prefix.rstrip('/')}",
        "--max-workers", str(job.workers),
        "--chunk-size", f"{job.chunk_size // MiB}MiB",
        "--source-credentials", str(credentials),
        "--dest-endpoint-url", job.endpoint_url,
        "--progress-file", str(progress_file),
        "--log-file", str(log_file),
        "-q",
        *job.extra_args,
    ]
    return Invocation(command, env, log_file, progress_file)


def rclone_concurrency(workers: int, dataset: Dataset) -> tuple[int, int]:
    """(--transfers, --s3-upload-concurrency) giving rclone at least the tool's concurrency.

    The tool keeps ``workers`` units in flight, a unit being one small object (GET then PUT) or
    one part of a large object; all workers share the parts of one object. rclone runs --transfers
    files at once, each file's parts uploaded --s3-upload-concurrency at a time. So: as many
    transfers as there are files, up to ``workers``, and enough upload concurrency per transfer to
    reach ``workers`` parts in flight, rounded up (rclone never gets less than the tool).
    small: --transfers N, upload concurrency 1 (irrelevant: no multipart upload below the cutoff).
    large with 4 files: N=1 -> 1x1, N=4 -> 4x1, N=10 -> 4x3 (12 parts), N=20 -> 4x5.
    --checkers N as well: they only compare against the (empty) destination listing.
    """
    transfers = max(1, min(workers, dataset.count))
    return transfers, max(1, math.ceil(workers / transfers))


def rclone_invocation(job: Job, source: Identity, dest: Identity, scratch: Path) -> Invocation:
    """rclone copy between two S3 remotes with different keys, so it must stream (no server-side copy).

    Fairness of the checksum options: rclone's defaults are kept, because the tool checks MD5s too.
    --s3-disable-checksum only stops rclone storing an MD5 in the metadata of multipart uploads,
    and rclone takes that MD5 from the source's ETag (these sources are single-part uploads, so it
    costs no hashing either way); disabling it would also drop what rclone's own post-copy hash
    comparison of multipart objects relies on. With defaults rclone still compares source and
    destination hashes after each transfer, the closest match to the tool's checks. The tool does
    more (it hashes every byte locally and checks the source's CRC32 before completing), so CPU
    figures lean somewhat in rclone's favour.
    """
    def remote(name: str, identity: Identity) -> str:
        return "\n".join([
            f"[{name}]", "type = s3", "provider = Other", f"access_key_id = {identity.access_key}",
            f"secret_access_key = {identity.secret_key}", f"endpoint = {job.endpoint_url}",
            "region = us-east-1", "force_path_style = true", "no_check_bucket = true", "",
        ])

    config = scratch / "rclone.conf"
    config.write_text(remote("src", source) + "\n" + remote("dst", dest))
    config.chmod(0o600)
    env = clean_env(scratch)
    env["RCLONE_CONFIG"] = str(config)
    transfers, upload_concurrency = rclone_concurrency(job.workers, job.dataset)
    command = [
        "rclone", "copy",
        f"src:{SOURCE_BUCKET}/{job.dataset.name}", f"dst:{DEST_BUCKET}/{job.dest_prefix.rstrip('/')}",
        "--transfers", str(transfers),
        "--checkers", str(job.workers),
        "--s3-upload-concurrency", str(upload_concurrency),
        "--s3-chunk-size", f"{job.chunk_size // MiB}M",
        "--s3-upload-cutoff", f"{MULTIPART_THRESHOLD // MiB}M",  # the tool's --multipart-threshold
        "-q",
        *job.extra_args,
    ]
    return Invocation(command, env)


def awscli_invocation(job: Job, keys: Identity, scratch: Path) -> Invocation:
    """`aws s3 cp --recursive` bucket to bucket: CopyObject / UploadPartCopy, no byte through the client.

    Its S3 settings are aligned with the tool's: N concurrent requests, 100 MiB multipart threshold,
    8 MiB parts (the AWS CLI's "MB" is MiB, like the tool's units).
    """
    config = scratch / "aws-config"
    config.write_text("\n".join([
        "[default]", "region = us-east-1", "s3 =",
        f"    max_concurrent_requests = {job.workers}",
        f"    multipart_threshold = {MULTIPART_THRESHOLD // MiB}MB",
        f"    multipart_chunksize = {job.chunk_size // MiB}MB",
        "    addressing_style = path", "",
    ]))
    env = clean_env(scratch)
    env.update(AWS_CONFIG_FILE=str(config), AWS_ACCESS_KEY_ID=keys.access_key, AWS_SECRET_ACCESS_KEY=keys.secret_key)
    aws = str(Path(PYTHON).parent / "aws")
    command = [
        aws, "s3", "cp", "--recursive", "--only-show-errors", "--endpoint-url", job.endpoint_url,
        f"s3://{SOURCE_BUCKET}/{job.dataset.prefix}", f"s3://{DEST_BUCKET}/{job.dest_prefix}",
        *job.extra_args,
    ]
    return Invocation(command, env)


# =============================================================================================
# Runs and their figures
# =============================================================================================


@dataclasses.dataclass
class Run:
    """One measured run of one tool, with its derived figures."""

    scenario: str
    tool: str
    dataset: str
    workers: int
    chunk_size: int
    repetition: int
    order: int  # 0 if this tool ran first in its repetition
    via_proxy: bool
    dataset_bytes: int
    dataset_objects: int
    command: list[str]
    exit_code: int
    ok: bool
    check: str
    wall_s: float
    cpu_s: float
    user_s: float
    sys_s: float
    max_rss_kib: int
    write_bytes: int | None
    proc_io_read_as: str
    log_bytes: int | None
    progress_bytes: int | None
    stderr_tail: str
    server_cpu_s: float = 0.0  # SeaweedFS's CPU during the run
    kernel_cpu_s: float = 0.0  # kernel threads (writeback of the server's files, ...)
    other_cpu_s: float = 0.0  # user processes other than client, server and bench.py: should be ~0
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def contended(self) -> bool:
        """Whether something else used more than 5% of the machine during the run."""
        return self.other_cpu_s > 0.05 * self.wall_s * (os.cpu_count() or 1)

    @property
    def mb_per_s(self) -> float:
        return self.dataset_bytes / MB / self.wall_s

    @property
    def objects_per_s(self) -> float:
        return self.dataset_objects / self.wall_s

    @property
    def cpu_s_per_gb(self) -> float:
        return self.cpu_s / (self.dataset_bytes / 1e9)

    @property
    def rss_mib(self) -> float:
        """Peak memory of the tool: of its one process, or of all its processes at once."""
        return max(self.max_rss_kib, int(self.extra.get("tree_peak_rss_kib", 0))) / 1024

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(mb_per_s=self.mb_per_s, objects_per_s=self.objects_per_s, cpu_s_per_gb=self.cpu_s_per_gb,
                    rss_mib=self.rss_mib, contended=self.contended)
        return data


def file_size(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        return path.stat().st_size
    except OSError:
        return 0


class FlagUnsupported(Exception):
    """The tool rejected an option this scenario needs (exit 2, "unrecognized arguments")."""


class Bench:
    """The server, the data sets and every run made against them."""

    def __init__(self, server: SeaweedServer, scratch: Path, datasets: dict[str, Dataset]) -> None:
        self.server = server
        self.admin = server.client(server.admin)
        self.scratch = scratch
        self.datasets = datasets
        self.reclaimer = SpaceReclaimer(server)
        self.runs: list[Run] = []
        self.failures: list[Run] = []
        self.discarded: list[Run] = []  # runs disturbed by another job, made again
        self._counter = 0

    def run(self, scenario: str, tool: str, job_factory: Callable[[str], Job], repetition: int, order: int,
            via_proxy: bool = False, note: str = "") -> Run:
        """Run one tool once into a fresh destination prefix, check the copy, delete it, return the Run.

        The machine may be shared (a developer's test suite on the same two cores), so each run waits
        for the machine to be quiet, and a run during which another job used the cores anyway is
        discarded and made again (up to CONTENDED_ATTEMPTS in all; the last one counts, flagged).
        """
        for attempt in range(1, CONTENDED_ATTEMPTS + 1):
            self.wait_for_quiet()
            run = self._run_once(scenario, tool, job_factory, repetition, order, via_proxy, note)
            if not (run.contended and run.ok and attempt < CONTENDED_ATTEMPTS):
                break
            print("     discarded (another job competed for the cores): running it again")
            self.discarded.append(run)
        if not run.ok:
            self.failures.append(run)
        self.runs.append(run)
        return run

    def wait_for_quiet(self, limit_s: float = 900.0, sample_s: float = 1.0) -> None:
        """Wait (at most ``limit_s``) until other user processes use under 5% of the machine."""
        started = time.monotonic()
        announced = False
        while True:
            before = CpuSnapshot.take()
            time.sleep(sample_s)
            other = before.until(CpuSnapshot.take(), self.server._process.pid)["other_cpu_s"]
            busy = other > 0.05 * sample_s * (os.cpu_count() or 1)
            waited = time.monotonic() - started
            if not busy or waited > limit_s:
                if announced:
                    print(f"     (waited {waited:.0f} s for other jobs to finish"
                          + ("; giving up, the next run may be disturbed)" if busy else ")"), flush=True)
                return
            if not announced:
                print(f"     (other processes use {other / sample_s:.1f} cores: waiting for the machine to be quiet)",
                      flush=True)
                announced = True

    def _run_once(self, scenario: str, tool: str, job_factory: Callable[[str], Job], repetition: int, order: int,
                  via_proxy: bool, note: str) -> Run:
        self._counter += 1
        run_id = f"{self._counter:04d}-{scenario}-{tool}"
        dest_prefix = f"runs/{run_id}/"
        job = job_factory(dest_prefix)
        scratch = self.scratch / "runs" / run_id
        scratch.mkdir(parents=True)
        invocation = self._invocation(tool, scenario, job, scratch)
        label = (f"  {scenario:<12} {tool:<7} {job.dataset.name:<5} workers={job.workers:<2} "
                 f"chunk={job.chunk_size // MiB}MiB rep={repetition + 1}{note}")
        print(label, end="", flush=True)
        before = CpuSnapshot.take()
        measured = run_measured(invocation.command, invocation.env, scratch, scratch / "measure")
        load = before.until(CpuSnapshot.take(), self.server._process.pid)
        if (tool.startswith("ours") and measured.exit_code == 2 and "unrecognized arguments" in measured.stderr):
            print(" -> the tool does not know this option")
            delete_prefix(self.admin, dest_prefix)
            raise FlagUnsupported(measured.stderr.strip().splitlines()[-1])
        ok_copy, check = check_copy(self.admin, job.dataset, dest_prefix)
        ok = measured.exit_code == 0 and ok_copy
        if measured.exit_code != 0:
            check = f"exit code {measured.exit_code}; " + check
        run = Run(
            scenario=scenario, tool=tool, dataset=job.dataset.name, workers=job.workers, chunk_size=job.chunk_size,
            repetition=repetition, order=order, via_proxy=via_proxy, dataset_bytes=job.dataset.total_bytes,
            dataset_objects=job.dataset.count, command=invocation.command, exit_code=measured.exit_code, ok=ok,
            check=check, wall_s=measured.wall_s, cpu_s=measured.cpu_s, user_s=measured.user_s, sys_s=measured.sys_s,
            max_rss_kib=measured.max_rss_kib, write_bytes=measured.write_bytes,
            proc_io_read_as=measured.proc_io_read_as, log_bytes=file_size(invocation.log_file),
            progress_bytes=file_size(invocation.progress_file),
            stderr_tail="\n".join(measured.stderr.strip().splitlines()[-15:]),
            server_cpu_s=load["server_cpu_s"], kernel_cpu_s=load["kernel_cpu_s"], other_cpu_s=load["other_cpu_s"],
        )
        run.extra["tree_peak_rss_kib"] = measured.tree_peak_rss_kib
        if invocation.log_file is not None and invocation.log_file.exists():
            log = invocation.log_file.read_text(errors="replace")
            run.extra["worker_cpu_s"] = [[float(used), float(starting)] for used, starting in WORKER_CPU_LINE.findall(log)]
            run.extra["parent_cpu_s"] = [[float(used), float(starting)] for used, starting in PARENT_CPU_LINE.findall(log)]
            paced = PACED_REQUESTS_LINE.search(log)
            if paced:
                run.extra["paced_requests"] = int(paced.group(1))
        delete_prefix(self.admin, dest_prefix)
        self.reclaimer.deleted(job.dataset.total_bytes)
        if run.contended:
            print(f" [warning: other processes used {run.other_cpu_s:.1f} CPU s during this run]", end="")
        if run.proc_io_read_as != "Z":
            print(f" [warning: /proc/PID/io read in state {run.proc_io_read_as!r}, not from the zombie]", end="")
        if ok:
            print(f" -> {run.wall_s:7.2f} s {run.mb_per_s:7.1f} MB/s {run.objects_per_s:7.1f} obj/s "
                  f"CPU {run.cpu_s:6.2f} s (server {run.server_cpu_s:5.1f} s) RSS {run.rss_mib:6.1f} MiB "
                  f"disk {run.write_bytes} B")
        else:
            print(f"\n!!! FAILED: {tool} in {scenario} ({job.dataset.name}): {check}\n"
                  f"!!! command: {' '.join(invocation.command)}\n!!! stderr (tail):\n{run.stderr_tail}\n", flush=True)
        shutil.rmtree(scratch, ignore_errors=True)  # credentials, logs: scratch only
        return run

    def _invocation(self, tool: str, scenario: str, job: Job, scratch: Path) -> Invocation:
        server = self.server
        if scenario == "server-side":
            keys = server.dest_reads_source  # destination keys that may read the source: S3 can copy
            if tool.startswith("ours"):
                return ours_invocation(job, keys, keys, scratch)
            return awscli_invocation(job, keys, scratch)
        if tool.startswith("ours"):
            return ours_invocation(job, server.source, server.dest, scratch)
        return rclone_invocation(job, server.source, server.dest, scratch)


# =============================================================================================
# Scenarios
# =============================================================================================


@dataclasses.dataclass
class Scenario:
    name: str
    title: str
    dataset: str
    tools: tuple[str, ...]  # the last one is the reference the ratios are taken against
    runs: list[Run] = dataclasses.field(default_factory=list)
    skipped: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)


def alternating(tools: tuple[str, ...], repetition: int) -> list[str]:
    """The tools in order on even repetitions, reversed on odd ones."""
    return list(tools) if repetition % 2 == 0 else list(reversed(tools))


def run_comparison(bench: Bench, name: str, title: str, dataset: Dataset, tools: tuple[str, ...],
                   repetitions: int, endpoint_url: str, via_proxy: bool = False,
                   extra: dict[str, tuple[str, ...]] | None = None) -> Scenario:
    """Every tool on one data set at WORKERS, ``repetitions`` times, alternating the order."""
    scenario = Scenario(name, title, dataset.name, tools)
    print(f"\n== {title}")
    try:
        for repetition in range(repetitions):
            for order, tool in enumerate(alternating(tools, repetition)):
                args = (extra or {}).get(tool, ())

                def job(prefix: str, args: tuple[str, ...] = args) -> Job:
                    return Job(dataset, prefix, WORKERS, endpoint_url, extra_args=args)

                scenario.runs.append(bench.run(name, tool, job, repetition, order, via_proxy))
    except FlagUnsupported as error:
        scenario.skipped = f"skipped: the tool rejects an option this scenario needs ({error})"
        print(f"   {scenario.skipped}")
    return scenario


def run_grid(bench: Bench, datasets: dict[str, Dataset], repetitions: int) -> Scenario:
    scenario = Scenario("grid", "--max-workers grid (direct, 8 MiB chunks)", "small+large", ("ours", "rclone"))
    print(f"\n== {scenario.title}, {repetitions} repetition(s) per point")
    point = 0
    for dataset in datasets.values():
        for workers in GRID_WORKERS:
            for repetition in range(repetitions):
                for order, tool in enumerate(alternating(scenario.tools, point)):
                    def job(prefix: str, workers: int = workers, dataset: Dataset = dataset) -> Job:
                        return Job(dataset, prefix, workers, bench.server.endpoint_url)

                    scenario.runs.append(bench.run("grid", tool, job, repetition, order))
                point += 1
    if repetitions == 1:
        scenario.notes.append("One run per grid point (not a median): read the trend, not single points.")
    return scenario


def measure_ours_baseline(bench: Bench, dataset: Dataset) -> Measurement:
    """Peak RSS of the tool doing everything but moving data: --dry-run lists and plans the data set."""
    scratch = bench.scratch / "runs" / "baseline"
    scratch.mkdir(parents=True, exist_ok=True)
    job = Job(dataset, "runs/baseline/", WORKERS, bench.server.endpoint_url, extra_args=("--dry-run",))
    invocation = ours_invocation(job, bench.server.source, bench.server.dest, scratch)
    return run_measured(invocation.command, invocation.env, scratch, scratch / "measure")


def run_memory(bench: Bench, dataset: Dataset) -> Scenario:
    scenario = Scenario("memory", f"Memory bound: ours' peak RSS on {dataset.name} ({dataset.describe()})",
                        dataset.name, ("ours",))
    print(f"\n== {scenario.title}")
    baseline = measure_ours_baseline(bench, dataset)
    scenario.notes.append(f"baseline: `--dry-run` on the same data set peaks at {baseline.max_rss_kib / 1024:.1f} MiB "
                          f"(Python, boto3, both clients, the listing; no object data)")
    for chunk in MEMORY_CHUNKS:
        for workers in GRID_WORKERS:
            def job(prefix: str, workers: int = workers, chunk: int = chunk) -> Job:
                return Job(dataset, prefix, workers, bench.server.endpoint_url, chunk_size=chunk)

            run = bench.run("memory", "ours", job, 0, 0)
            bound = PYTHON_BASELINE + workers * chunk  # README: max(memory-limit, largest unit) + ~100 MiB
            run.extra.update(readme_bound_mib=bound / MiB, slack_mib=(bound / MiB) - run.rss_mib,
                             baseline_rss_mib=baseline.max_rss_kib / 1024,
                             above_baseline_mib=run.rss_mib - baseline.max_rss_kib / 1024,
                             workers_x_chunk_mib=workers * chunk / MiB)
            scenario.runs.append(run)
    return scenario


def run_bandwidth(bench: Bench, dataset: Dataset, uncapped_mb_s: float | None) -> Scenario:
    scenario = Scenario("bandwidth", f"--max-bandwidth on {dataset.name} ({dataset.describe()})", dataset.name,
                        ("ours",))
    print(f"\n== {scenario.title}")

    def job(prefix: str, args: tuple[str, ...] = ()) -> Job:
        return Job(dataset, prefix, WORKERS, bench.server.endpoint_url, extra_args=args)

    if uncapped_mb_s is None:
        uncapped = bench.run("bandwidth", "ours", job, 0, 0, note=" (uncapped)")
        scenario.runs.append(uncapped)
        if not uncapped.ok:
            scenario.skipped = "skipped: the uncapped run failed"
            return scenario
        uncapped_mb_s = uncapped.mb_per_s
    # The wall time includes start-up and listing, during which no data moves at any cap; a --dry-run
    # of the same data set measures that, so the achieved rate can also be given without it.
    startup_s = measure_ours_baseline(bench, dataset).wall_s
    cap = int(uncapped_mb_s * MB / 2)  # bytes per second of object data
    try:
        run = bench.run("bandwidth", "ours", lambda prefix: job(prefix, ("--max-bandwidth", str(cap))), 0, 1,
                        note=f" (cap {cap / MB:.1f} MB/s)")
    except FlagUnsupported as error:
        scenario.skipped = f"skipped: the tool has no --max-bandwidth ({error})"
        print(f"   {scenario.skipped}")
        return scenario
    achieved = dataset.total_bytes / run.wall_s
    achieved_data = dataset.total_bytes / max(run.wall_s - startup_s, 1e-3)
    run.extra.update(cap_bytes_per_s=cap, uncapped_mb_s=uncapped_mb_s, achieved_over_cap=achieved / cap,
                     startup_s=startup_s, achieved_excl_startup_over_cap=achieved_data / cap,
                     within_tolerance=abs(achieved_data / cap - 1) <= BANDWIDTH_TOLERANCE)
    print(f"   achieved {achieved / MB:.1f} MB/s over the whole run, {achieved_data / MB:.1f} MB/s without the "
          f"{startup_s:.1f} s start-up; cap {cap / MB:.1f} MB/s")
    scenario.runs.append(run)
    return scenario


def check_proxy(server: SeaweedServer, proxy: LatencyProxy) -> dict[str, float]:
    """Time a HeadBucket around and through the proxy; a zero-delay twin of the proxy tells the cost
    of the extra Python hop itself apart from the delay."""
    keys = (server.admin.access_key, server.admin.secret_key, SOURCE_BUCKET)
    direct, proxied = measure_added_rtt(server.endpoint_url, proxy.endpoint_url, *keys)
    with LatencyProxy(proxy.target_port, delay=0.0) as hop_only:
        _, hopped = measure_added_rtt(server.endpoint_url, hop_only.endpoint_url, *keys)
    figures = {"head_bucket_direct_ms": direct * 1000, "head_bucket_proxied_ms": proxied * 1000,
               "added_ms": (proxied - direct) * 1000, "target_added_ms": 2 * ONE_WAY_DELAY * 1000,
               "zero_delay_hop_ms": (hopped - direct) * 1000}
    print(f"latency proxy sanity: HeadBucket median {figures['head_bucket_direct_ms']:.1f} ms direct, "
          f"{figures['head_bucket_proxied_ms']:.1f} ms through the proxy: +{figures['added_ms']:.1f} ms "
          f"(target +{figures['target_added_ms']:.0f} ms; the proxy hop alone, at zero delay, "
          f"+{figures['zero_delay_hop_ms']:.1f} ms)")
    return figures


# =============================================================================================
# Summaries, tables, chart
# =============================================================================================

METRICS = ("wall_s", "mb_per_s", "objects_per_s", "cpu_s_per_gb", "rss_mib", "write_bytes")


def median_of(runs: list[Run]) -> dict[str, Any] | None:
    """Medians of the successful runs; MB/s and obj/s from the median wall time."""
    good = [run for run in runs if run.ok]
    if not good:
        return None
    wall = statistics.median(run.wall_s for run in good)
    cpu = statistics.median(run.cpu_s for run in good)
    writes = [run.write_bytes for run in good if run.write_bytes is not None]
    first = good[0]
    return {
        "runs": len(good), "failed_runs": len(runs) - len(good),
        "wall_s": wall, "mb_per_s": first.dataset_bytes / MB / wall, "objects_per_s": first.dataset_objects / wall,
        "cpu_s": cpu, "cpu_s_per_gb": cpu / (first.dataset_bytes / 1e9),
        "rss_mib": statistics.median(run.rss_mib for run in good),
        "server_cpu_s": statistics.median(run.server_cpu_s for run in good),
        "write_bytes": max(writes) if writes else None,  # the worst run: the claim is "never writes data"
        "log_plus_progress_bytes": max((run.log_bytes or 0) + (run.progress_bytes or 0) for run in good),
    }


def summarize(scenario: Scenario) -> dict[str, Any]:
    medians = {tool: median_of([run for run in scenario.runs if run.tool == tool]) for tool in scenario.tools}
    reference = medians.get(scenario.tools[-1]) if len(scenario.tools) > 1 else None
    ratios: dict[str, dict[str, float | None]] = {}
    for tool, median in medians.items():
        if median is None or reference is None:
            continue
        ratios[tool] = {metric: (median[metric] / reference[metric] if reference[metric] else None)
                        for metric in ("mb_per_s", "objects_per_s", "cpu_s_per_gb", "rss_mib")}
    return {"medians": medians, "ratios": ratios, "reference": scenario.tools[-1] if reference else None}


def fmt_bytes(value: int | None) -> str:
    if value is None:
        return "n/a"
    if value < 10 * KiB:
        return f"{value} B"
    if value < 10 * MiB:
        return f"{value / KiB:.0f} KiB"
    return f"{value / MiB:.0f} MiB"


def comparison_table(scenario: Scenario, summary: dict[str, Any]) -> list[str]:
    reference = summary["reference"]
    header = ("| tool | runs | wall s | MB/s | obj/s | CPU s/GB | peak RSS MiB | disk writes (log+progress) "
              "| server CPU s |"
              + (f" MB/s vs {reference} | CPU/GB vs {reference} | RSS vs {reference} |" if reference else ""))
    lines = [header, "|" + " --- |" * (header.count("|") - 1)]
    for tool in scenario.tools:
        median = summary["medians"][tool]
        if median is None:
            lines.append(f"| {tool} | **FAILED** (every run) |")
            continue
        runs = f"{median['runs']}" + (f" (**{median['failed_runs']} FAILED**)" if median["failed_runs"] else "")
        row = (f"| {tool} | {runs} | {median['wall_s']:.2f} | {median['mb_per_s']:.1f} | {median['objects_per_s']:.1f} "
               f"| {median['cpu_s_per_gb']:.1f} | {median['rss_mib']:.0f} | {fmt_bytes(median['write_bytes'])} "
               f"({fmt_bytes(median['log_plus_progress_bytes']) if tool == 'ours' else '-'}) "
               f"| {median['server_cpu_s']:.1f} |")
        if reference:
            ratio = summary["ratios"].get(tool, {})
            row += "".join(f" {ratio[m]:.2f}x |" if ratio.get(m) else " n/a |"
                           for m in ("mb_per_s", "cpu_s_per_gb", "rss_mib"))
        lines.append(row)
    return lines


def processes_table(scenario: Scenario) -> list[str]:
    """Where each process's CPU went under --processes, and what that makes the ceiling of each: the
    objects/s a process could reach with a core of its own, were the client the bottleneck, from its
    CPU per object once started (the tool logs each process's CPU, and how much of it was start-up).
    The parent lists and settles every object; a worker copies them. Medians over the runs."""
    lines = ["| tool | obj/s (min-max) | CPU ms/object, all processes | start-up CPU s, each process "
             "| parent: ms/object, share of a core, ceiling obj/s | each worker: ms/object, share of a core, "
             "ceiling obj/s |", "| --- | --- | --- | --- | --- | --- |"]
    for tool in scenario.tools[:-1]:
        runs = [run for run in scenario.runs if run.tool == tool and run.ok and run.extra.get("parent_cpu_s")]
        if not runs:
            continue
        objects = runs[0].dataset_objects
        rates = [run.objects_per_s for run in runs]
        parent = [run.extra["parent_cpu_s"][0] for run in runs]
        workers = [run.extra.get("worker_cpu_s", []) for run in runs]
        parent_ms = statistics.median((used - starting) / objects * 1000 for used, starting in parent)
        parent_share = statistics.median(used / run.wall_s for (used, _), run in zip(parent, runs))
        starting = statistics.median(start for *_, start in parent)
        cells = [f"{statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})",
                 f"{statistics.median(run.cpu_s for run in runs) / objects * 1000:.2f}",
                 f"{starting:.2f}" + (f", workers {statistics.median(s for each in workers for _, s in each):.2f}"
                                      if any(workers) else ""),
                 f"{parent_ms:.2f}, {parent_share:.0%}, {1000 / parent_ms:,.0f}"]
        if any(workers):
            # Each worker copied about objects / N of them: its CPU once started, per object it copied.
            worker_ms = statistics.median((used - start) / (objects / len(each)) * 1000
                                          for each in workers for used, start in each)
            worker_share = statistics.median(used / run.wall_s for each, run in zip(workers, runs) for used, _ in each)
            cells.append(f"{worker_ms:.2f}, {worker_share:.0%}, {1000 / worker_ms:,.0f}")
        else:
            cells.append("(none: the one process copies)")
        lines.append(f"| {tool} | " + " | ".join(cells) + " |")
    return lines


def grid_table(scenario: Scenario) -> list[str]:
    lines = ["| data set | workers | tool | wall s | MB/s | obj/s | CPU s/GB | peak RSS MiB | MB/s vs rclone |",
             "|" + " --- |" * 9]
    for dataset in dict.fromkeys(run.dataset for run in scenario.runs):
        for workers in GRID_WORKERS:
            point = {tool: median_of([run for run in scenario.runs
                                      if run.tool == tool and run.dataset == dataset and run.workers == workers])
                     for tool in scenario.tools}
            for tool, median in point.items():
                if median is None:
                    lines.append(f"| {dataset} | {workers} | {tool} | **FAILED** | | | | | |")
                    continue
                ref = point.get("rclone")
                ratio = f"{median['mb_per_s'] / ref['mb_per_s']:.2f}x" if ref else "n/a"
                lines.append(f"| {dataset} | {workers} | {tool} | {median['wall_s']:.2f} | {median['mb_per_s']:.1f} "
                             f"| {median['objects_per_s']:.1f} | {median['cpu_s_per_gb']:.1f} "
                             f"| {median['rss_mib']:.0f} | {ratio} |")
    return lines


def memory_table(scenario: Scenario) -> list[str]:
    header = ("| chunk | workers | peak RSS MiB | above baseline MiB | workers x chunk MiB | README bound MiB "
              "| slack MiB | within |")
    lines = [header, "|" + " --- |" * 8]
    for run in scenario.runs:
        if not run.ok:
            lines.append(f"| {run.chunk_size // MiB} MiB | {run.workers} | **FAILED** | | | | | |")
            continue
        extra = run.extra
        lines.append(f"| {run.chunk_size // MiB} MiB | {run.workers} | {run.rss_mib:.0f} "
                     f"| {extra['above_baseline_mib']:.0f} | {extra['workers_x_chunk_mib']:.0f} "
                     f"| {extra['readme_bound_mib']:.0f} | {extra['slack_mib']:.0f} "
                     f"| {'yes' if extra['slack_mib'] >= 0 else '**NO**'} |")
    return lines


def run_requests(bench: Bench, dataset: Dataset, repetitions: int) -> Scenario:
    """--max-requests-per-second on the small data set, at about half the requests a second the
    uncapped tool sends: the requests the tool says it paced over the run's wall time, without the
    start-up (a --dry-run's wall time) as well."""
    scenario = Scenario("requests", f"--max-requests-per-second on {dataset.name} ({dataset.describe()})",
                        dataset.name, ("ours",))
    print(f"\n== {scenario.title}")

    def job(args: tuple[str, ...]) -> Callable[[str], Job]:
        return lambda prefix: Job(dataset, prefix, WORKERS, bench.server.endpoint_url, extra_args=args)

    try:
        # A cap far above the rate reached, so that the uncapped run counts its requests too.
        uncapped = bench.run("requests", "ours", job(("--max-requests-per-second", "1000000")), 0, 0,
                             note=" (uncapped)")
    except FlagUnsupported as error:
        scenario.skipped = f"skipped: the tool has no --max-requests-per-second ({error})"
        print(f"   {scenario.skipped}")
        return scenario
    scenario.runs.append(uncapped)
    if not uncapped.ok or "paced_requests" not in uncapped.extra:
        scenario.skipped = "skipped: the uncapped run failed or did not count its requests"
        return scenario
    startup_s = measure_ours_baseline(bench, dataset).wall_s
    cap = max(1, round(uncapped.extra["paced_requests"] / max(uncapped.wall_s - startup_s, 1e-3) / 2))
    for repetition in range(repetitions):
        run = bench.run("requests", "ours", job(("--max-requests-per-second", str(cap))), repetition, 1,
                        note=f" (cap {cap}/s)")
        if run.ok and "paced_requests" in run.extra:
            requests = run.extra["paced_requests"]
            run.extra.update(cap_per_s=cap, achieved_over_cap=requests / run.wall_s / cap, startup_s=startup_s,
                             achieved_excl_startup_over_cap=requests / max(run.wall_s - startup_s, 1e-3) / cap)
        scenario.runs.append(run)
    return scenario


def requests_table(scenario: Scenario) -> list[str]:
    lines = ["| run | wall s | requests | requests/s | cap /s | achieved / cap | same without start-up |",
             "|" + " --- |" * 7]
    for run in scenario.runs:
        extra = run.extra
        requests = extra.get("paced_requests", 0)
        if "cap_per_s" not in extra:
            lines.append(f"| uncapped | {run.wall_s:.2f} | {requests:,} | {requests / run.wall_s:.0f} | - | - | - |")
            continue
        lines.append(f"| capped, rep {run.repetition + 1} | {run.wall_s:.2f} | {requests:,} | "
                     f"{requests / run.wall_s:.0f} | {extra['cap_per_s']} | {extra['achieved_over_cap']:.2f} | "
                     f"{extra['achieved_excl_startup_over_cap']:.2f} (start-up {extra['startup_s']:.1f} s) |"
                     + ("" if run.ok else " **FAILED** |"))
    return lines


def bandwidth_table(scenario: Scenario) -> list[str]:
    header = ("| run | wall s | achieved MB/s | cap MB/s | achieved / cap | same without start-up "
              "| within 10% |")
    lines = [header, "|" + " --- |" * 7]
    for run in scenario.runs:
        if "cap_bytes_per_s" not in run.extra:
            lines.append(f"| uncapped | {run.wall_s:.2f} | {run.mb_per_s:.1f} | - | - | - | - |")
            continue
        extra = run.extra
        lines.append(f"| capped (uncapped: {extra['uncapped_mb_s']:.1f} MB/s) | {run.wall_s:.2f} "
                     f"| {run.mb_per_s:.1f} | {extra['cap_bytes_per_s'] / MB:.1f} "
                     f"| {extra['achieved_over_cap']:.2f} | {extra['achieved_excl_startup_over_cap']:.2f} "
                     f"(start-up {extra['startup_s']:.1f} s) | {'yes' if extra['within_tolerance'] else '**NO**'} |"
                     + ("" if run.ok else " **FAILED** |"))
    return lines


def markdown_report(scenarios: list[Scenario], summaries: dict[str, dict[str, Any]], info: dict[str, Any],
                    proxy: dict[str, float] | None, datasets: dict[str, Dataset], repetitions: int,
                    failures: list[Run], runs: list[Run], discarded: int = 0) -> str:
    lines = [
        f"# s3_bulk_transfer.py benchmark, {info['started_at']}",
        "",
        f"Local SeaweedFS {info['weed']} on 127.0.0.1, {info['cpu_count']} CPU cores ({info['cpu_model']}) shared by "
        f"server, proxy and client; rclone {info['rclone']}; {info['awscli']}; tool at {info['tool_commit']}. "
        f"Data sets: " + ", ".join(f"`{d.name}` = {d.describe()}" for d in datasets.values()) +
        f". Medians of {repetitions} repetition(s), tool order alternating. MB = 10^6 bytes; RSS in MiB; "
        "CPU = user + sys of the client process; disk writes = /proc/PID/io write_bytes of the client, "
        "with the tool's final log + progress file sizes in brackets.",
        "",
    ]
    if failures:
        lines += [(f"**{len(failures)} run(s) FAILED** (non-zero exit or an incomplete copy); they are left out "
                   "of the medians:"), ""]
        lines += [f"* {run.scenario}/{run.tool}/{run.dataset} workers={run.workers}: {run.check}" for run in failures]
        lines.append("")
    if discarded:
        lines += [(f"{discarded} run(s) were disturbed by another job on the machine, discarded and made again "
                   "(kept in results.json under discarded_runs)."), ""]
    contended = [run for run in runs if run.contended]
    if contended:
        lines += [(f"**Warning: during {len(contended)} of {len(runs)} runs other processes used more than 5% of "
                   "the machine** (user processes other than the client, SeaweedFS and bench.py: another job was "
                   f"running, even after {CONTENDED_ATTEMPTS} attempts), so those figures are suspect:"), ""]
        lines += [f"* {run.scenario}/{run.tool}/{run.dataset} workers={run.workers} rep={run.repetition + 1}: "
                  f"{run.other_cpu_s:.1f} CPU s in {run.wall_s:.1f} s" for run in contended]
        lines.append("")
    if proxy:
        lines += [(f"Latency proxy check: HeadBucket {proxy['head_bucket_direct_ms']:.1f} ms direct, "
                   f"{proxy['head_bucket_proxied_ms']:.1f} ms through the proxy (+{proxy['added_ms']:.1f} ms; "
                   f"target +{proxy['target_added_ms']:.0f} ms; the proxy hop alone, at zero delay, "
                   f"+{proxy['zero_delay_hop_ms']:.1f} ms)."), ""]
    for scenario in scenarios:
        lines += [f"## {scenario.title}", ""]
        if scenario.skipped:
            lines += [scenario.skipped, ""]
        if scenario.name == "grid":
            lines += grid_table(scenario)
        elif scenario.name == "memory":
            lines += memory_table(scenario)
        elif scenario.name == "bandwidth":
            lines += bandwidth_table(scenario) if scenario.runs else []
        elif scenario.name == "requests":
            lines += requests_table(scenario) if scenario.runs else []
        elif scenario.runs:
            lines += comparison_table(scenario, summaries[scenario.name + ":" + scenario.dataset])
            if scenario.name == "processes":
                lines += [""] + processes_table(scenario)
        lines += [""] + [f"{note}" for note in scenario.notes] + ([""] if scenario.notes else [])
    return "\n".join(lines).rstrip() + "\n"


def draw_chart(grid: Scenario, path: Path) -> bool:
    """Throughput and peak RSS against --max-workers, one line per tool and data set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not grid.runs:
        return False
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = {"ours": "tab:blue", "ours-crt": "tab:blue", "ours-threads": "tab:green", "rclone": "tab:orange"}
    styles = {"small": "--", "large": "-"}
    markers = {"small": "o", "large": "s"}
    for dataset in dict.fromkeys(run.dataset for run in grid.runs):
        for tool in grid.tools:
            points = []
            for workers in GRID_WORKERS:
                median = median_of([run for run in grid.runs
                                    if run.tool == tool and run.dataset == dataset and run.workers == workers])
                if median:
                    points.append((workers, median["mb_per_s"], median["rss_mib"]))
            if not points:
                continue
            xs = [p[0] for p in points]
            label = f"{tool}, {dataset}"
            style = {"color": colours.get(tool), "linestyle": styles.get(dataset, ":"),
                     "marker": markers.get(dataset, "x"), "label": label}
            left.plot(xs, [p[1] for p in points], **style)
            right.plot(xs, [p[2] for p in points], **style)
    for axis, ylabel in ((left, "throughput, MB/s"), (right, "peak RSS, MiB")):
        axis.set_xlabel("--max-workers (rclone: matched transfers x upload concurrency)")
        axis.set_ylabel(ylabel)
        axis.set_xticks(list(GRID_WORKERS))
        axis.set_ylim(bottom=0)
        axis.grid(True, alpha=0.3)
        axis.legend()
    left.set_title("Throughput (local SeaweedFS, 2 cores shared)")
    right.set_title("Client peak RSS")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def command_output(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except OSError as error:
        return f"unavailable ({error})"
    return (result.stdout or result.stderr).strip().splitlines()[0] if (result.stdout or result.stderr) else "?"


def machine_info() -> dict[str, Any]:
    import boto3
    import botocore

    cpu_model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    commit = command_output(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "diff", "--quiet", "HEAD", "--", TOOL.name],
                           check=False).returncode != 0
    return {
        "started_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(), "cpu_model": cpu_model,
        "memory_mib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MiB,
        "kernel": platform.release(), "python": platform.python_version(),
        "boto3": boto3.__version__, "botocore": botocore.__version__,
        "rclone": command_output(["rclone", "version"]).removeprefix("rclone "),
        "weed": command_output([str(Path(PYTHON).parent / "weed"), "version"]).removeprefix("version "),
        "awscli": command_output([str(Path(PYTHON).parent / "aws"), "--version"]).split(" Python")[0],
        "tool_commit": commit + (" + uncommitted changes to s3_bulk_transfer.py" if dirty else ""),
    }


# =============================================================================================
# main
# =============================================================================================


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark s3_bulk_transfer.py against rclone and the AWS CLI "
                                                 "on a local SeaweedFS server (127.0.0.1 only).")
    parser.add_argument("--quick", action="store_true",
                        help="small data sets (300 x 64 KiB, 2 x 128 MiB) and 1 repetition: a smoke run")
    parser.add_argument("--repetitions", type=int, metavar="K",
                        help="repetitions per comparison, medians reported (default 3; 1 with --quick)")
    parser.add_argument("--grid-repetitions", type=int, default=1, metavar="K",
                        help="repetitions per --max-workers grid point (default 1)")
    parser.add_argument("--only", action="append", choices=PARTS, metavar="PART",
                        help=f"run only this part; repeatable; one of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repetitions is None:
        args.repetitions = 1 if args.quick else 3
    if args.repetitions < 1 or args.grid_repetitions < 1:
        parser.error("repetitions must be at least 1")
    args.parts = tuple(args.only) if args.only else PARTS
    return args


@contextlib.contextmanager
def temporary_directory() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="s3bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_parts(bench: Bench, args: argparse.Namespace, proxy: LatencyProxy) -> tuple[list[Scenario], dict | None]:
    datasets, parts, reps = bench.datasets, args.parts, args.repetitions
    direct = bench.server.endpoint_url
    scenarios: list[Scenario] = []
    proxy_figures = None
    for name in ("small", "large"):
        if name in parts:
            dataset = datasets[name]
            scenarios.append(run_comparison(bench, name, f"{name} ({dataset.describe()}), {WORKERS} workers, direct",
                                            dataset, ENGINES_AND_RCLONE, reps, direct, extra=ENGINE_ARGUMENTS))
    if "latency" in parts:
        proxy_figures = check_proxy(bench.server, proxy)
        for dataset in datasets.values():
            scenarios.append(run_comparison(
                bench, "latency", f"{dataset.name} ({dataset.describe()}), {WORKERS} workers, "
                f"+{2 * ONE_WAY_DELAY * 1000:.0f} ms RTT (latency proxy)", dataset, ENGINES_AND_RCLONE, reps,
                proxy.endpoint_url, via_proxy=True, extra=ENGINE_ARGUMENTS))
    if "server-side" in parts:
        for dataset in datasets.values():
            scenarios.append(run_comparison(
                bench, "server-side", f"{dataset.name} ({dataset.describe()}), {WORKERS} workers, server-side copy "
                "(destination keys may read the source)", dataset, ("ours", "aws-cli"), reps, direct,
                extra={"ours": ("--copy-mode", "server-side")}))
    if "processes" in parts:
        dataset = datasets["small"]
        tools = (*(f"ours-p{count}" for count in PROCESS_COUNTS), "rclone")
        scenarios.append(run_comparison(
            bench, "processes", f"small ({dataset.describe()}), {WORKERS} workers, direct, --processes "
            f"{' and '.join(map(str, PROCESS_COUNTS))}", dataset, tools, reps, direct,
            extra={f"ours-p{count}": ("--processes", str(count)) for count in PROCESS_COUNTS}))
    if "grid" in parts:
        scenarios.append(run_grid(bench, datasets, args.grid_repetitions))
    if "memory" in parts:
        scenarios.append(run_memory(bench, datasets["large"]))
    if "bandwidth" in parts:
        large = next((s for s in scenarios if s.name == "large"), None)
        uncapped = median_of([r for r in large.runs if r.tool == "ours-crt"]) if large else None
        scenarios.append(run_bandwidth(bench, datasets["large"], uncapped["mb_per_s"] if uncapped else None))
    if "requests" in parts:
        scenarios.append(run_requests(bench, datasets["small"], reps))
    return scenarios, proxy_figures


def write_results(args: argparse.Namespace, bench: Bench, scenarios: list[Scenario], info: dict[str, Any],
                  proxy: dict | None, elapsed: float) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = args.results_dir / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = {s.name + ":" + s.dataset: summarize(s) for s in scenarios}
    document = {
        "machine": info, "elapsed_s": elapsed, "quick": args.quick, "repetitions": args.repetitions,
        "grid_repetitions": args.grid_repetitions, "parts": list(args.parts), "latency_proxy": proxy,
        "datasets": {name: dataclasses.asdict(d) | {"total_bytes": d.total_bytes} for name, d in bench.datasets.items()},
        "scenarios": [{"name": s.name, "title": s.title, "dataset": s.dataset, "tools": list(s.tools),
                       "skipped": s.skipped, "notes": s.notes, **summaries[s.name + ":" + s.dataset]}
                      for s in scenarios],
        "runs": [run.as_dict() for run in bench.runs],
        "discarded_runs": [run.as_dict() for run in bench.discarded],
    }
    (out_dir / "results.json").write_text(json.dumps(document, indent=2, default=str))
    report = markdown_report(scenarios, summaries, info, proxy, bench.datasets, args.repetitions, bench.failures,
                             bench.runs, len(bench.discarded))
    report += f"\nWhole benchmark: {elapsed / 60:.1f} min.\n"
    (out_dir / "results.md").write_text(report)
    grid = next((s for s in scenarios if s.name == "grid"), None)
    has_chart = draw_chart(grid, out_dir / "chart.png") if grid else False
    latest = args.results_dir / "latest"
    shutil.rmtree(latest, ignore_errors=True)
    latest.mkdir(parents=True)
    for name in ("results.md", "results.json") + (("chart.png",) if has_chart else ()):
        shutil.copy2(out_dir / name, latest / name)
    print(f"\nresults: {out_dir}/ (copied to {latest}/)" + ("" if has_chart else "; no chart (the grid did not run)"))
    return report


def interrupt_on_signals() -> None:
    """Ctrl-C and SIGTERM both raise KeyboardInterrupt, so the `with` blocks below kill the running
    tool, stop SeaweedFS and delete the scratch directory. SIGINT is set explicitly because a shell
    starts background jobs with it ignored, and Python then leaves it ignored."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_signals()
    if shutil.which("rclone") is None:
        print("error: rclone is not on PATH (bench/run.sh installs it)", file=sys.stderr)
        return 2
    datasets = datasets_for(args.quick)
    started = time.monotonic()
    info = machine_info()
    print(f"machine: {info['cpu_count']} cores, Python {info['python']}, rclone {info['rclone']}, "
          f"weed {info['weed']}, {info['awscli']}; tool {info['tool_commit']}")
    global TOOL_SNAPSHOT
    with temporary_directory() as scratch, SeaweedServer() as server:
        TOOL_SNAPSHOT = snapshot_tool(scratch)
        info["tool_sha256"] = hashlib.sha256(TOOL_SNAPSHOT.read_bytes()).hexdigest()
        bench = Bench(server, scratch, datasets)
        print(f"SeaweedFS at {server.endpoint_url}; uploading " +
              ", ".join(f"{d.name} = {d.describe()}" for d in datasets.values()), flush=True)
        for dataset in datasets.values():
            t0 = time.monotonic()
            upload_dataset(bench.admin, dataset)
            print(f"  uploaded {dataset.name} in {time.monotonic() - t0:.1f} s", flush=True)
        with LatencyProxy(int(server.endpoint_url.rsplit(":", 1)[1]), delay=ONE_WAY_DELAY) as proxy:
            scenarios, proxy_figures = run_parts(bench, args, proxy)
        report = write_results(args, bench, scenarios, info, proxy_figures, time.monotonic() - started)
    print("\n" + report)
    if bench.failures:
        print(f"!!! {len(bench.failures)} run(s) FAILED; see above and results.md", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; the server and the scratch directory were removed", file=sys.stderr)
        sys.exit(130)
