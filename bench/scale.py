#!/usr/bin/env python3
"""Scale measurements for issue #7: memory and progress file flat in the number of objects, and
parallel listing against single-stream listing.

Run it through ./bench/run-scale.sh (which sets up .venv first). Three parts; what the issue asks
for runs first (synthetic 1 M and 10 M keys; one copy of each size; one listing of every point),
then, while they fit --budget-minutes (25), the further repetitions and the tracemalloc runs:

* ``synthetic`` (no server): the listing/planning pipeline of the tool, imported as a module, fed
  by a fake ListObjectsV2 paginator that makes pages of 1,000 keys on the fly (10 million keys
  like ``logs/2024/06/30/part-00017-00001234.gz``), through the tool's own ``list_objects``,
  ``selected_objects`` (``--exclude '*.tmp'``), key ranges and ``ListingWindow`` (8 listers, as
  ``--max-workers 16`` gets by default), ``map_destination_key``, ``why_uncopyable``, the part
  plan of the large objects, a ``StatusReporter`` and a ``ProgressStore`` that sees ``listed`` and
  then ``mark_done`` of every key, 16 in flight finishing out of order, saved every 2 s. Keys/s and
  peak RSS at 1 M and 10 M keys, and tracemalloc's peak at 100 k and 1 M.
* ``flat`` (SeaweedFS): N and 10 x N small objects (1-4 KiB, 100 folders) copied by the tool
  (``--max-workers 16 --copy-mode stream``), each run under measure_child.py (peak RSS, wall, CPU)
  while this script polls the progress file every 0.5 s for its largest size. Every copy is
  checked (every key at the destination with its size).
* ``listing`` (SeaweedFS): the 10 x N set listed alone by the tool's own code path (connect_side,
  listing_split_points, key_ranges, ListingWindow over source_objects, as run_transfer does) with 1,
  4, 8 and 16 listers, directly and through latency_proxy.py (+20 ms per round trip; --rtt-ms adds
  others). Driven directly rather than through ``--dry-run`` so that the listing alone is timed (no
  start-up, connecting or planning).
  Besides keys/s: requests, keys parsed (a range's last page is parsed whole), client CPU, and
  connections urllib3 discarded because the client's pool was full.

The machine is shared and has 2 cores, SeaweedFS included: every figure is stored with the 1-minute
load average before and after it and with the CPU seconds other processes used meanwhile. Nothing
waits for a quiet machine.

Child roles (run by this script through measure_child.py, so that each peak RSS is the child's own):
``scale.py synthetic-child ...`` and ``scale.py listing-child ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import importlib
import json
import logging
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))
sys.path.insert(0, str(BENCH_DIR))

TOOL = REPO_ROOT / "s3_bulk_transfer.py"
PYTHON = sys.executable
MEASURE = BENCH_DIR / "measure_child.py"
RESULTS_DIR = BENCH_DIR / "results"

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

WORKERS = 16
FOLDERS = 100
POLL_SECONDS = 0.5
LIST_CONCURRENCIES = (1, 4, 8, 16)
SYNTHETIC_IN_FLIGHT = 16
SYNTHETIC_LISTERS = 8  # what --max-workers 16 gets by default (max-workers / 2)


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def now_iso() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def import_tool(path: str) -> Any:
    """The tool snapshot as a module."""
    sys.path.insert(0, str(Path(path).parent))
    return importlib.import_module(Path(path).stem)


# =============================================================================================
# Child: the synthetic listing/planning pipeline (no server)
# =============================================================================================


def synthetic_key(index: int, days: list[str]) -> str:
    """Key number `index`, in key order: 10,000 keys a day, 100 part files of 100 keys each; every
    1,000th key is a .tmp the filter excludes."""
    day, within = divmod(index, 10_000)
    suffix = "tmp" if index % 1000 == 999 else "gz"
    return f"logs/{days[day]}/part-{within // 100:05d}-{index:08d}.{suffix}"


def synthetic_size(index: int) -> int:
    """Mostly 1 KiB - 4 MiB; one key in 10,000 is 200 MiB - 9.7 GiB (multipart, up to 1,240 parts at
    8 MiB); key 5,000,000 (or the middle key) is 5 TiB, S3's largest, which needs 525 MiB parts."""
    if index % 10_000 == 5_000:
        return 200 * MiB + (index // 10_000 % 97) * 100 * MiB
    return 1024 + (index * 2_654_435_761) % (4 * MiB)


class FakePaginator:
    """Stands in for botocore's list_objects_v2 paginator: pages of 1,000 entry dicts made on demand,
    honouring Prefix and StartAfter, over `count` synthetic keys."""

    def __init__(self, count: int, days: list[str], huge_index: int) -> None:
        self.count = count
        self.days = days
        self.huge_index = huge_index
        self.pages = 0
        self.modified = datetime.datetime(2024, 7, 1, tzinfo=datetime.timezone.utc)

    def _first_after(self, start_after: str | None) -> int:
        if not start_after:
            return 0
        low, high = 0, self.count  # first index whose key is > start_after
        while low < high:
            middle = (low + high) // 2
            if synthetic_key(middle, self.days) <= start_after:
                low = middle + 1
            else:
                high = middle
        return low

    def paginate(self, Bucket: str, Prefix: str = "", StartAfter: str | None = None,
                 Delimiter: str | None = None, **_: Any) -> Iterator[dict[str, Any]]:
        if Delimiter is not None:  # split discovery: the folders one level below Prefix, in one page
            assert Delimiter == "/" and not StartAfter
            folders = {Prefix + rest.split("/", 1)[0] + "/" for day in self.days
                       if (path := f"logs/{day}/").startswith(Prefix) and "/" in (rest := path[len(Prefix):])}
            yield {"CommonPrefixes": [{"Prefix": folder} for folder in sorted(folders)], "IsTruncated": False}
            return
        index = self._first_after(StartAfter)
        days, modified, huge = self.days, self.modified, self.huge_index
        while index < self.count:
            end = min(index + 1000, self.count)
            contents = []
            for number in range(index, end):
                contents.append({
                    "Key": synthetic_key(number, days),
                    "Size": 5 * TiB if number == huge else synthetic_size(number),
                    "ETag": f'"{number:032x}"',
                    "StorageClass": "STANDARD",
                    "LastModified": modified,
                })
            self.pages += 1
            yield {"Contents": contents, "KeyCount": len(contents), "IsTruncated": end < self.count}
            index = end


class FakeClient:
    def __init__(self, paginator: FakePaginator) -> None:
        self._paginator = paginator

    def get_paginator(self, name: str) -> FakePaginator:
        assert name == "list_objects_v2"
        return self._paginator


def rss_kib() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def synthetic_child(args: argparse.Namespace) -> int:
    if args.tracemalloc:
        import tracemalloc
        tracemalloc.start()
    tool = import_tool(args.tool)
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    os.chdir(scratch)
    progress_path = scratch / "progress.json"
    cli = tool.build_parser().parse_args([
        "s3://synthetic-source/logs", "s3://synthetic-dest/copy", "--exclude", "*.tmp",
        "--max-workers", str(WORKERS), "--list-concurrency", str(args.listers),
        "--source-endpoint-url", "http://127.0.0.1:9", "--dest-endpoint-url", "http://127.0.0.1:9",
        "--progress-file", str(progress_path), "--log-file", str(scratch / "transfer.log"), "-q",
    ])
    tool.resolve_state_files(cli, {})
    config = tool.build_settings(cli)
    count = args.keys
    first_day = datetime.date(2021, 1, 1)
    days = [(first_day + datetime.timedelta(days=day)).strftime("%Y/%m/%d") for day in range((count - 1) // 10_000 + 1)]
    paginator = FakePaginator(count, days, huge_index=count // 2)
    source = tool.ConnectedSide(access=config.job.source_access, client=FakeClient(paginator), bucket="synthetic-source",
                       region="us-east-1")
    store = tool.ProgressStore(progress_path, config.job.identity())
    if config.tuning.list_concurrency > 1:  # as run_transfer: the tool's own split discovery, on the fake listing
        store.split(tool.listing_split_points(config, source))
    plan = store.listing_plan()
    status = tool.StatusReporter(max_workers=WORKERS, interval=10.0, live=False, plain=False)
    stopping = threading.Event()

    def stream(key_range: Any, start_after: str | None) -> Any:
        return lambda: tool.source_objects(config, source, start_after, key_range.through, inventory=None,
                                           on_missing=lambda key: None)

    rng = random.Random(7)
    in_flight: list[tuple[Any, list[Any]]] = []
    selected = multipart = parts_planned = largest_parts = 0
    progress_max = 0
    samples: list[dict[str, Any]] = []
    baseline_rss = rss_kib()
    if args.tracemalloc:
        tracemalloc.reset_peak()
        traced_baseline = tracemalloc.get_traced_memory()[0]

    def finish(entry: tuple[Any, list[Any]]) -> None:
        listed, parts = entry
        if parts:
            for part in parts:
                store.uploads.record_part(listed.key, part.number, f'"{part.number:032x}"', None)
            store.uploads.forget(listed.key)
        store.mark_done(listed.key, listed.size)
        status.object_done(listed.size, bytes_moved=listed.size, verified_by="md5", server_side=False)

    started = time.perf_counter()
    cpu_started = resource.getrusage(resource.RUSAGE_SELF)
    window = tool.ListingWindow([stream(key_range, after) for key_range, after in plan],
                                listers=config.tuning.list_concurrency, window=tool.LISTING_WINDOW, stopping=stopping)
    sample_every = max(count // 10, 1)
    while True:
        listed = window.next(lambda: None)
        if listed is None:
            break
        selected += 1
        status.listed(listed.size)
        if store.is_done_beyond_watermark(listed.key):
            store.listed(listed.key, already_done=True)
            continue
        store.listed(listed.key)
        destination_key = tool.map_destination_key(listed.key, config.job.source, config.job.destination)
        if tool.why_uncopyable(listed.key[len(config.job.source.prefix):], destination_key, listed.size):
            raise AssertionError(f"synthetic key refused: {listed.key}")
        parts: list[Any] = []
        if listed.size >= config.tuning.multipart_threshold:
            part_size = tool.choose_part_size(listed.size, config.tuning.chunk_size)
            parts = tool.plan_parts(listed.size, part_size)
            multipart += 1
            parts_planned += len(parts)
            largest_parts = max(largest_parts, len(parts))
            store.uploads.record(listed.key, tool.UploadRecord(
                upload_id=f"upload-{selected}", destination_key=destination_key, source_etag=listed.etag,
                size=listed.size, part_size=part_size, part_etags_are_md5=True))
        in_flight.append((listed, parts))
        if len(in_flight) >= SYNTHETIC_IN_FLIGHT:  # a worker frees up: one of the 16, not the oldest
            position = rng.randrange(len(in_flight))
            in_flight[position], in_flight[-1] = in_flight[-1], in_flight[position]
            finish(in_flight.pop())
        if selected % 1000 == 0:
            store.save_if_due(status.summary())  # as the engine's tick: at most every PROGRESS_SAVE_INTERVAL
            with contextlib.suppress(FileNotFoundError):
                progress_max = max(progress_max, progress_path.stat().st_size)
            if selected % sample_every < 1000:
                samples.append({"keys_selected": selected, "rss_kib": rss_kib(),
                                "seconds": round(time.perf_counter() - started, 2)})
    while in_flight:
        finish(in_flight.pop(0))
    store.listing_finished()
    status.listing_complete = True
    elapsed = time.perf_counter() - started
    cpu_ended = resource.getrusage(resource.RUSAGE_SELF)
    store.finish("complete", status.summary())
    stopping.set()
    final_size = progress_path.stat().st_size
    saved = json.loads(progress_path.read_text())
    report: dict[str, Any] = {
        "keys_listed": count, "keys_selected": selected, "pages": paginator.pages,
        "multipart_objects": multipart, "parts_planned": parts_planned, "largest_part_count": largest_parts,
        "listers": config.tuning.list_concurrency, "ranges": len(plan),
        "split_points_sample": [key_range.after for key_range, _ in plan[1:4]], "seconds": elapsed,
        "cpu_s": (cpu_ended.ru_utime + cpu_ended.ru_stime) - (cpu_started.ru_utime + cpu_started.ru_stime),
        "keys_per_s": count / elapsed, "baseline_rss_kib": baseline_rss, "end_rss_kib": rss_kib(),
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "rss_samples": samples,
        "progress_bytes_final": final_size, "progress_bytes_max": max(progress_max, final_size),
        "objects_done_in_file": saved["summary"]["objects_done"],
        "watermarks_at_end": sum(1 for entry in saved["resume"]["ranges"] if entry["watermark"]),
        "done_beyond_at_end": sum(len(entry["done_beyond_watermark"]) for entry in saved["resume"]["ranges"]),
        "tracemalloc": bool(args.tracemalloc),
    }
    if args.tracemalloc:
        current, peak = tracemalloc.get_traced_memory()
        report.update(tracemalloc_baseline_bytes=traced_baseline, tracemalloc_peak_bytes=peak,
                      tracemalloc_end_bytes=current)
    expected_selected = count - count // 1000  # every 1,000th key is a .tmp
    report["ok"] = (selected == expected_selected and saved["summary"]["objects_done"] == expected_selected
                    and report["done_beyond_at_end"] == 0)
    Path(args.out).write_text(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


# =============================================================================================
# Child: listing alone, the tool's own code path
# =============================================================================================


class PoolFullCounter(logging.Handler):
    """Counts urllib3's "Connection pool is full, discarding connection" records: more threads used a
    client at once than its pool holds, so connections were closed and opened again. urllib3 gives its
    logger a NullHandler, so these never reach stderr unless someone listens."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("Connection pool is full"):
            self.count += 1


def listing_child(args: argparse.Namespace) -> int:
    pool_full = PoolFullCounter()
    logging.getLogger("urllib3.connectionpool").addHandler(pool_full)
    tool = import_tool(args.tool)
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    os.chdir(scratch)
    cli = tool.build_parser().parse_args([
        args.source, "s3://dest-account-bucket/listing-probe", "--source-credentials", args.credentials,
        "--dest-endpoint-url", args.endpoint, "--max-workers", str(args.max_workers),
        "--list-concurrency", str(args.listers), "--progress-file", str(scratch / "progress.json"),
        "--log-file", str(scratch / "transfer.log"), "-q",
    ])
    tool.resolve_state_files(cli, {})
    config = tool.build_settings(cli)
    t0 = time.perf_counter()
    source = tool.connect_side(config.job.source_access, config.job.source.bucket, max_workers=config.tuning.max_workers,
                               list_prefix=config.job.source.prefix, read_timeout=config.tuning.read_timeout)
    parsed = {"requests": 0, "keys": 0}

    def count_page(parsed_page: dict[str, Any] | None = None, **_: Any) -> None:
        parsed["requests"] += 1
        parsed["keys"] += len((parsed_page or {}).get("Contents", ()))

    # botocore passes the parsed response as `parsed`; keys past a range's end are parsed, then dropped.
    source.client.meta.events.register("after-call.s3.ListObjectsV2",
                                       lambda parsed=None, **kw: count_page(parsed))
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t1 = time.perf_counter()
    # As run_transfer: split a fresh job only when more than one lister is asked for.
    split_points = tool.listing_split_points(config, source) if config.tuning.list_concurrency > 1 else []
    t2 = time.perf_counter()
    ranges = tool.key_ranges(split_points)
    stopping = threading.Event()

    def stream(key_range: Any) -> Any:
        return lambda: tool.source_objects(config, source, key_range.after, key_range.through, inventory=None,
                                           on_missing=lambda key: None)

    window = tool.ListingWindow([stream(key_range) for key_range in ranges], listers=config.tuning.list_concurrency,
                                window=tool.LISTING_WINDOW, stopping=stopping)
    count = 0
    keys: set[str] = set()
    while (listed := window.next(lambda: None)) is not None:
        count += 1
        keys.add(listed.key)
    t3 = time.perf_counter()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    stopping.set()
    report = {
        "listers": config.tuning.list_concurrency, "ranges": len(ranges), "keys": count, "distinct_keys": len(keys),
        "connect_s": t1 - t0, "split_s": t2 - t1, "list_s": t3 - t2, "total_s": t3 - t1,
        "keys_per_s": count / (t3 - t1), "cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        "list_requests": parsed["requests"], "keys_parsed": parsed["keys"], "pool_full_discards": pool_full.count,
        "ok": count == args.expected and len(keys) == args.expected,
    }
    Path(args.out).write_text(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


# =============================================================================================
# Parent: measuring children
# =============================================================================================


def children_of(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def vm_rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def progress_facts(path: Path) -> dict[str, Any] | None:
    """What makes the progress file's size: ranges, keys done beyond the watermarks, uploads, failures."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # between its creation and the first save, or replaced while read
    ranges = data["resume"].get("ranges") or []
    return {"ranges": len(ranges),
            "done_beyond": sum(len(entry.get("done_beyond_watermark", ())) for entry in ranges),
            "failed": len(data["resume"].get("failed", {})),
            "uploads": len(data["resume"].get("multipart_uploads", {}))}


def measured(command: list[str], env: dict[str, str], cwd: Path, scratch: Path, *, server_pid: int | None,
             progress_file: Path | None = None, timeout: float = 3600.0) -> dict[str, Any]:
    """Run `command` under measure_child.py; meanwhile poll the progress file (size, and what is in it
    at its largest) and the child's RSS every POLL_SECONDS. CPU of other processes from bench.py's
    CpuSnapshot (the child's own is excluded: it is gone by the second snapshot)."""
    from bench import CpuSnapshot

    scratch.mkdir(parents=True, exist_ok=True)
    report_path, out_path, err_path = scratch / "measure.json", scratch / "stdout.txt", scratch / "stderr.txt"
    load_before = loadavg()
    before = CpuSnapshot.take()
    launcher = subprocess.Popen([PYTHON, str(MEASURE), str(report_path), str(out_path), str(err_path), "--",
                                 *command], env=env, cwd=cwd, stdin=subprocess.DEVNULL, start_new_session=True)
    started = time.monotonic()
    progress_max, progress_max_facts, rss_samples = 0, None, []
    try:
        while launcher.poll() is None:
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{command[:3]} ran over {timeout:.0f} s")
            if progress_file is not None:
                with contextlib.suppress(OSError):
                    size = progress_file.stat().st_size
                    if size > progress_max:
                        facts = progress_facts(progress_file)
                        if facts is not None:
                            progress_max, progress_max_facts = size, facts
            for child in children_of(launcher.pid):
                rss = vm_rss_kib(child)
                if rss is not None:
                    rss_samples.append([round(time.monotonic() - started, 1), rss])
            time.sleep(POLL_SECONDS)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
        raise
    after = CpuSnapshot.take()
    report = json.loads(report_path.read_text())
    stderr = err_path.read_text(errors="replace")
    load = before.until(after, server_pid) if server_pid else before.until(after, -1)
    result = {
        "exit_code": report["exit_code"], "wall_s": report["wall_s"], "cpu_s": report["cpu_s"],
        "max_rss_kib": report["max_rss_kib"], "write_bytes": report["write_bytes"],
        "loadavg_before": load_before, "loadavg_after": loadavg(),
        "server_cpu_s": load["server_cpu_s"] if server_pid else None, "other_cpu_s": load["other_cpu_s"],
        "rss_samples": rss_samples,
        "stderr_tail": "\n".join(stderr.strip().splitlines()[-10:]),
    }
    if progress_file is not None:
        final = progress_file.stat().st_size if progress_file.exists() else None
        result.update(progress_bytes_final=final, progress_bytes_max=max(progress_max, final or 0),
                      progress_at_max=progress_max_facts, progress_at_end=progress_facts(progress_file))
    return result


# =============================================================================================
# Part 1: synthetic pipeline
# =============================================================================================


def run_synthetic(args: argparse.Namespace, tool: Path, scratch: Path,
                  plan: list[tuple[int, bool]]) -> list[dict[str, Any]]:
    runs = []
    print(f"\n== synthetic listing/planning pipeline (no server), {SYNTHETIC_LISTERS} listers", flush=True)
    for keys, traced in plan:
        work = scratch / f"synthetic-{keys}-{'traced' if traced else 'plain'}"
        out = work / "child.json"
        command = [PYTHON, str(Path(__file__).resolve()), "synthetic-child", "--tool", str(tool), "--keys", str(keys),
                   "--listers", str(SYNTHETIC_LISTERS), "--scratch", str(work / "run"), "--out", str(out),
                   *(["--tracemalloc"] if traced else [])]
        print(f"  {keys:>11,} keys{' (tracemalloc)' if traced else ''} ...", end="", flush=True)
        result = measured(command, dict(os.environ), REPO_ROOT, work, server_pid=None)
        child = json.loads(out.read_text()) if out.exists() else {}
        run = {"keys": keys, "tracemalloc": traced, **result, "child": child,
               "ok": result["exit_code"] == 0 and bool(child.get("ok"))}
        runs.append(run)
        if run["ok"]:
            traced_text = (f", tracemalloc peak {child['tracemalloc_peak_bytes'] / MiB:.1f} MiB" if traced else "")
            print(f" {child['seconds']:.1f} s, {child['keys_per_s']:,.0f} keys/s, peak RSS "
                  f"{result['max_rss_kib'] / KiB:.1f} MiB (after import {child['baseline_rss_kib'] / KiB:.1f})"
                  f"{traced_text}; load {result['loadavg_before']}->{result['loadavg_after']}", flush=True)
        else:
            print(f" FAILED (exit {result['exit_code']}): {result['stderr_tail']}", flush=True)
        shutil.rmtree(work / "run", ignore_errors=True)
    return runs


# =============================================================================================
# Part 2: flat memory on SeaweedFS
# =============================================================================================


def dataset_prefix(count: int) -> str:
    return f"scale-{count}/"


def dataset_key(count: int, index: int) -> str:
    return f"day-{index * FOLDERS // count:03d}/obj-{index:07d}.bin"


def upload_dataset(server: Any, count: int) -> tuple[dict[str, int], float]:
    """`count` objects of 1-4 KiB over FOLDERS folders, 16 threads sharing one client."""
    import boto3
    from botocore.config import Config
    from s3servers import SOURCE_BUCKET

    client = boto3.session.Session().client(
        "s3", endpoint_url=server.endpoint_url, aws_access_key_id=server.admin.access_key,
        aws_secret_access_key=server.admin.secret_key, region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=20,
                      retries={"mode": "standard", "max_attempts": 10}))
    prefix = dataset_prefix(count)
    sizes = {dataset_key(count, index): random.Random(index).randint(KiB, 4 * KiB) for index in range(count)}

    def put(item: tuple[str, int]) -> None:
        client.put_object(Bucket=SOURCE_BUCKET, Key=prefix + item[0], Body=os.urandom(item[1]))

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, sizes.items(), chunksize=64))
    return sizes, time.monotonic() - started


def check_destination(server: Any, dest_prefix: str, sizes: dict[str, int]) -> tuple[bool, str, int]:
    from s3servers import DEST_BUCKET

    from bench import list_sizes, open_uploads

    admin = server.client(server.admin)
    actual = list_sizes(admin, DEST_BUCKET, dest_prefix)
    problems = []
    missing = [key for key in sizes if key not in actual]
    extra = [key for key in actual if key not in sizes]
    wrong = [key for key in sizes if key in actual and actual[key] != sizes[key]]
    for what, keys in (("missing", missing), ("unexpected", extra), ("of wrong size", wrong)):
        if keys:
            problems.append(f"{len(keys)} {what} (e.g. {keys[0]})")
    if open_uploads(admin, DEST_BUCKET, dest_prefix):
        problems.append("multipart uploads left open")
    if problems:
        return False, "; ".join(problems), len(actual)
    return True, f"{len(actual):,} keys at the destination, each with its size", len(actual)


def copy_command(tool: Path, server: Any, count: int, dest_prefix: str, work: Path) -> tuple[list[str], dict]:
    from s3servers import DEST_BUCKET, SOURCE_BUCKET

    from bench import clean_env

    credentials = work / "source_credentials.json"
    credentials.write_text(json.dumps({"aws_access_key_id": server.source.access_key,
                                       "aws_secret_access_key": server.source.secret_key,
                                       "endpoint_url": server.endpoint_url}))
    credentials.chmod(0o600)
    env = clean_env(work)
    env.update(AWS_ACCESS_KEY_ID=server.dest.access_key, AWS_SECRET_ACCESS_KEY=server.dest.secret_key)
    command = [PYTHON, str(tool), f"s3://{SOURCE_BUCKET}/{dataset_prefix(count).rstrip('/')}",
               f"s3://{DEST_BUCKET}/{dest_prefix.rstrip('/')}", "--max-workers", str(WORKERS),
               "--copy-mode", "stream", "--source-credentials", str(credentials),
               "--dest-endpoint-url", server.endpoint_url, "--progress-file", str(work / "progress.json"),
               "--log-file", str(work / "transfer.log"), "-q"]
    return command, env


def run_flat(tool: Path, scratch: Path, server: Any, sizes: dict[int, dict[str, int]], repetition: int,
             deadline: float, estimates: dict[int, float]) -> list[dict[str, Any]]:
    """One copy of each size (the larger first on odd repetitions). A repetition after the first is
    skipped for a size whose previous copy's wall time would carry it past the deadline."""
    runs: list[dict[str, Any]] = []
    counts = sorted(sizes)
    print(f"\n== flat memory, repetition {repetition + 1}: the tool copies "
          f"{' and '.join(f'{count:,}' for count in counts)} small objects, --max-workers {WORKERS} "
          "--copy-mode stream", flush=True)
    for count in counts if repetition % 2 == 0 else list(reversed(counts)):
        if repetition > 0 and time.monotonic() + estimates.get(count, 0) * 1.1 > deadline:
            print(f"  {count:>7,} objects, repetition {repetition + 1}: skipped, it would run past the "
                  "--budget-minutes deadline", flush=True)
            runs.append({"objects": count, "repetition": repetition, "skipped": "time budget"})
            continue
        runs.append(copy_once(tool, scratch, server, sizes[count], count, repetition))
        estimates[count] = runs[-1]["wall_s"]
    return runs


def copy_once(tool: Path, scratch: Path, server: Any, sizes: dict[str, int], count: int,
              repetition: int) -> dict[str, Any]:
    dest_prefix = f"copy-{count}-r{repetition}/"
    work = scratch / f"flat-{count}-r{repetition}"
    work.mkdir(parents=True, exist_ok=True)
    command, env = copy_command(tool, server, count, dest_prefix, work)
    print(f"  {count:>7,} objects, repetition {repetition + 1} ...", end="", flush=True)
    result = measured(command, env, work, work / "measure", server_pid=server._process.pid,
                      progress_file=work / "progress.json")
    ok, check, at_destination = check_destination(server, dest_prefix, sizes)
    ok = ok and result["exit_code"] == 0
    log = work / "transfer.log"
    log_text = log.read_text(errors="replace") if log.exists() else ""
    run = {"objects": count, "repetition": repetition, "command": command, **result, "ok": ok,
           "check": check, "objects_at_destination": at_destination, "objects_per_s": count / result["wall_s"],
           "log_bytes": log.stat().st_size if log.exists() else None,
           "log_ranges_line": next((line.split(" INFO ", 1)[-1] for line in log_text.splitlines()
                                    if "key ranges" in line), None)}
    print(f" {result['wall_s']:.1f} s, {run['objects_per_s']:.0f} obj/s, CPU {result['cpu_s']:.1f} s, "
          f"peak RSS {result['max_rss_kib'] / KiB:.1f} MiB, progress file {result['progress_bytes_final']:,} B "
          f"(max {result['progress_bytes_max']:,}); load {result['loadavg_before']}->{result['loadavg_after']}, "
          f"other CPU {result['other_cpu_s']:.1f} s; {'ok' if ok else 'FAILED: ' + check}", flush=True)
    if not ok:
        print(f"!!! stderr tail:\n{result['stderr_tail']}", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return run


# =============================================================================================
# Part 3: listing throughput
# =============================================================================================


def run_listing(args: argparse.Namespace, tool: Path, scratch: Path, server: Any, count: int,
                proxies: list[tuple[str, Any]], repetition: int) -> list[dict[str, Any]]:
    """Every lister count, directly and through the proxy; the order reversed on odd repetitions."""
    runs = []
    print(f"\n== listing alone, repetition {repetition + 1}: {count:,} keys, the tool's split discovery + "
          f"ListingWindow, listers {', '.join(map(str, args.list_concurrency))}", flush=True)
    endpoints = [("direct", server.endpoint_url)] + [(path, proxy.endpoint_url) for path, proxy in proxies]
    concurrencies = list(args.list_concurrency)
    if repetition % 2:
        endpoints.reverse()
        concurrencies.reverse()
    for path, endpoint in endpoints:
        for listers in concurrencies:
            runs.append(list_once(tool, scratch, server, count, path, endpoint, listers, repetition))
    return runs


def list_once(tool: Path, scratch: Path, server: Any, count: int, path: str, endpoint: str, listers: int,
              repetition: int) -> dict[str, Any]:
    from s3servers import SOURCE_BUCKET

    from bench import clean_env

    work = scratch / f"list-{listers}-{repetition}-{endpoint.rsplit(':', 1)[1]}"
    work.mkdir(parents=True, exist_ok=True)
    credentials = work / "source_credentials.json"
    credentials.write_text(json.dumps({"aws_access_key_id": server.source.access_key,
                                       "aws_secret_access_key": server.source.secret_key,
                                       "endpoint_url": endpoint}))
    credentials.chmod(0o600)
    out = work / "child.json"
    command = [PYTHON, str(Path(__file__).resolve()), "listing-child", "--tool", str(tool),
               "--source", f"s3://{SOURCE_BUCKET}/{dataset_prefix(count).rstrip('/')}",
               "--credentials", str(credentials), "--endpoint", endpoint, "--max-workers", str(WORKERS),
               "--listers", str(listers), "--expected", str(count), "--scratch", str(work / "run"), "--out", str(out)]
    result = measured(command, clean_env(work), work, work / "measure", server_pid=server._process.pid)
    result.pop("rss_samples")
    child = json.loads(out.read_text()) if out.exists() else {}
    run = {"path": path, "listers": listers, "repetition": repetition, "command": command, **result,
           "child": child, "ok": result["exit_code"] == 0 and bool(child.get("ok"))}
    if run["ok"]:
        print(f"  {path:>10}, {listers:>2} listers ({child['ranges']:>2} ranges): {child['keys_per_s']:>8,.0f} keys/s "
              f"(split {child['split_s']:.2f} s + list {child['list_s']:.2f} s; {child['list_requests']} requests, "
              f"{child['keys_parsed']:,} keys parsed; client CPU {child['cpu_s']:.2f} s, server CPU "
              f"{result['server_cpu_s']:.1f} s); load {result['loadavg_before']}, other CPU "
              f"{result['other_cpu_s']:.1f} s", flush=True)
    else:
        print(f"  {path}, {listers} listers: FAILED (exit {result['exit_code']}) {child} {result['stderr_tail']}",
              flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return run


# =============================================================================================
# Report
# =============================================================================================


def mib(kib: float | None) -> str:
    return "-" if kib is None else f"{kib / KiB:.1f}"


def rss_quartiles(run: dict[str, Any]) -> str:
    """The client's RSS (sampled every 0.5 s) at a quarter, half and three quarters of its wall time."""
    samples = run.get("rss_samples") or []
    if not samples:
        return "-"
    picks = []
    for fraction in (0.25, 0.5, 0.75):
        when = fraction * run["wall_s"]
        picks.append(min(samples, key=lambda sample: abs(sample[0] - when))[1])
    return " / ".join(f"{value / KiB:.0f}" for value in picks)


def discarded(child: dict[str, Any]) -> str:
    count = child.get("pool_full_discards")
    return f" ({count} connections discarded: pool full)" if count else ""


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    flat = [run for run in results.get("flat", []) if run.get("ok")]
    counts = sorted({run["objects"] for run in flat})
    if len(counts) >= 2:
        small, large = counts[0], counts[-1]
        rss = {count: [run["max_rss_kib"] for run in flat if run["objects"] == count] for count in counts}
        small_rss, large_rss = median(rss[small]), median(rss[large])
        spreads = [max(values) - min(values) for values in rss.values() if len(values) > 1]
        summary["flat"] = {
            "objects": [small, large], "peak_rss_kib": {str(count): rss[count] for count in counts},
            "median_peak_rss_mib": {str(small): small_rss / KiB, str(large): large_rss / KiB},
            "difference_mib": (large_rss - small_rss) / KiB,
            "difference_percent": 100 * (large_rss - small_rss) / small_rss,
            "repeat_spread_mib": max(spreads) / KiB if spreads else None,
            "progress_bytes_max": {str(count): max(run["progress_bytes_max"] for run in flat if run["objects"] == count)
                                   for count in counts},
            "progress_bytes_final": {str(count): [run["progress_bytes_final"] for run in flat
                                                  if run["objects"] == count] for count in counts},
        }
    synthetic = [run for run in results.get("synthetic", []) if run.get("ok")]
    if synthetic:
        summary["synthetic"] = [{"keys": run["keys"], "tracemalloc": run["tracemalloc"],
                                 "keys_per_s": run["child"]["keys_per_s"], "ru_maxrss_mib": run["max_rss_kib"] / KiB,
                                 "tracemalloc_peak_mib": (run["child"].get("tracemalloc_peak_bytes") or 0) / MiB or None}
                                for run in synthetic]
    listing = [run for run in results.get("listing", []) if run.get("ok")]
    if listing:
        table = {}
        for path in dict.fromkeys(run["path"] for run in listing):
            rates = {listers: median([run["child"]["keys_per_s"] for run in listing
                                      if run["path"] == path and run["listers"] == listers])
                     for listers in sorted({run["listers"] for run in listing if run["path"] == path})}
            single = rates.get(1)
            table[path] = {str(listers): {"keys_per_s": rate, "vs_single": rate / single if single else None}
                           for listers, rate in rates.items()}
        summary["listing"] = table
    return summary


def markdown(results: dict[str, Any], summary: dict[str, Any]) -> str:
    info = results["info"]
    lines = [
        "# Scale measurements (issue #7)",
        "",
        (f"{info['started_at']}, {info['elapsed_s'] / 60:.1f} min. Machine: {info['cpu_count']} cores "
        f"({info['cpu_model']}), {info['memory_mib']:,} MiB, Python {info['python']}, boto3 {info['boto3']}, "
        f"SeaweedFS {info['weed']}. Tool: {info['tool_commit']}, SHA-256 {info['tool_sha256'][:16]}... "
        "(a copy taken at the start; every run used it)."),
        "",
        ("Everything ran on 127.0.0.1. **Two cores, shared**: SeaweedFS (its master, volume, filer and S3 gateway in "
        "one process), the latency proxy and the client compete for them, and other people's jobs may too. Nothing "
        "waited for a quiet machine: each row gives the 1-minute load average before (-> after) it and the CPU "
        "seconds other processes (not the client, not SeaweedFS) used meanwhile. The load average includes the "
        "run's own client and server."),
        "",
        f"Command: `{info['command']}`",
        "",
    ]
    flat = results.get("flat", [])
    if flat:
        lines += [
            "## 1. Peak RSS and progress file against the number of objects",
            "",
            (f"Objects of 1-4 KiB in {FOLDERS} folders (`day-NNN/`), uploaded once by 16 threads. Each run: "
            f"`.venv/bin/python s3_bulk_transfer.py s3://source-account-bucket/scale-N s3://dest-account-bucket/copy-N-rK "
            f"--max-workers {WORKERS} --copy-mode stream --source-credentials F --dest-endpoint-url URL "
            "--progress-file P --log-file L -q` (source keys in the file, destination keys in the environment; "
            f"`--list-concurrency` left at its default, {WORKERS // 2} for {WORKERS} workers), under "
            "`measure_child.py`; the progress file polled every 0.5 s. Every copy checked: every key at the "
            "destination with its size."),
            "",
            ("| objects | rep | wall s | obj/s | client CPU s | peak RSS MiB | RSS at 25/50/75% of the run MiB "
             "| progress file: final / largest bytes | ranges, done beyond watermarks at largest | log bytes "
             "| load before -> after | other CPU s | server CPU s | check |"),
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for run in flat:
            if run.get("skipped"):
                lines.append(f"| {run['objects']:,} | {run['repetition'] + 1} | skipped ({run['skipped']}) "
                             "| | | | | | | | | | | |")
                continue
            at_max = run.get("progress_at_max") or {}
            lines.append(
                f"| {run['objects']:,} | {run['repetition'] + 1} | {run['wall_s']:.1f} | {run['objects_per_s']:.0f} "
                f"| {run['cpu_s']:.1f} | {mib(run['max_rss_kib'])} | {rss_quartiles(run)} | {run['progress_bytes_final']:,} / "
                f"{run['progress_bytes_max']:,} | {at_max.get('ranges', '-')}, {at_max.get('done_beyond', '-')} "
                f"| {run['log_bytes']:,} | {run['loadavg_before']} -> {run['loadavg_after']} "
                f"| {run['other_cpu_s']:.1f} | {run['server_cpu_s']:.1f} "
                f"| {'ok' if run['ok'] else 'FAILED'}: {run['check']} |")
        flat_summary = summary.get("flat")
        if flat_summary:
            small, large = flat_summary["objects"]
            spread = flat_summary["repeat_spread_mib"]
            lines += [
                "",
                f"**Peak RSS: {flat_summary['median_peak_rss_mib'][str(small)]:.1f} MiB at {small:,} objects, "
                f"{flat_summary['median_peak_rss_mib'][str(large)]:.1f} MiB at {large:,}** (medians of the runs above): "
                f"a difference of {flat_summary['difference_mib']:+.1f} MiB ({flat_summary['difference_percent']:+.1f}%)"
                + (f"; repeats of one size differed by up to {spread:.1f} MiB." if spread is not None else ".")
                + f" Progress file, largest seen: {flat_summary['progress_bytes_max'][str(small)]:,} bytes at "
                f"{small:,} objects, {flat_summary['progress_bytes_max'][str(large)]:,} at {large:,}.",
            ]
    synthetic = results.get("synthetic", [])
    if synthetic:
        lines += [
            "",
            "## 2. Listing and planning alone, 10 million keys, no server",
            "",
            ("`bench/scale.py synthetic-child` imports the tool and feeds its pipeline from a fake ListObjectsV2 "
            "paginator (pages of 1,000 entry dicts made on demand, honouring StartAfter and Delimiter) instead of S3: keys "
            "`logs/YYYY/MM/DD/part-PPPPP-NNNNNNNN.gz`, 10,000 a day, sorted; every 1,000th a `.tmp`; sizes 1 KiB-4 MiB, "
            "one key in 10,000 of 200 MiB-9.7 GiB and one of 5 TiB (525 MiB parts). Through the tool's own "
            f"`list_objects` -> `selected_objects` (`--exclude '*.tmp'`) over up to {SYNTHETIC_LISTERS * 4} key ranges "
            "from its own split discovery (`listing_split_points` on the fake listing's folders: days at 1 M keys, "
            f"months at 10 M), a `ListingWindow` of {SYNTHETIC_LISTERS} listers, then per key as "
            "the engine's scheduler: `StatusReporter.listed`, `ProgressStore.listed`, `map_destination_key`, "
            "`why_uncopyable`, for large ones `choose_part_size` + `plan_parts` + `uploads.record`; 16 keys in flight, "
            "a random one of them finishing next (`uploads.record_part` of each part, `uploads.forget`, `mark_done`); the "
            "progress file saved every 2 s. Peak RSS is `ru_maxrss` of that process (via measure_child.py); "
            "tracemalloc runs are separate (it slows Python down)."),
            "",
            ("| keys listed | selected | tracemalloc | seconds | keys/s | RSS after import MiB | RSS at 10%..100% of keys MiB "
            "| peak RSS MiB | tracemalloc peak MiB | progress file final / largest bytes | load before -> after "
            "| other CPU s | ok |"),
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for run in synthetic:
            child = run.get("child") or {}
            if not child:
                lines.append(f"| {run['keys']:,} | FAILED | | | | | | | | | | | |")
                continue
            samples = child.get("rss_samples") or []
            sampled = (f"{min(s['rss_kib'] for s in samples) / KiB:.1f} .. {max(s['rss_kib'] for s in samples) / KiB:.1f}"
                       if samples else "-")
            traced = (f"{child['tracemalloc_peak_bytes'] / MiB:.1f}" if child.get("tracemalloc") else "-")
            lines.append(
                f"| {child['keys_listed']:,} | {child['keys_selected']:,} | {'yes' if run['tracemalloc'] else 'no'} "
                f"| {child['seconds']:.1f} | {child['keys_per_s']:,.0f} | {mib(child['baseline_rss_kib'])} | {sampled} "
                f"| {mib(run['max_rss_kib'])} | {traced} | {child['progress_bytes_final']:,} / "
                f"{child['progress_bytes_max']:,} | {run['loadavg_before']} -> {run['loadavg_after']} "
                f"| {run['other_cpu_s']:.1f} | {'ok' if run['ok'] else 'FAILED'} |")
    listing = results.get("listing", [])
    if listing:
        listers = sorted({run["listers"] for run in listing})
        lines += [
            "",
            f"## 3. Listing throughput, {results['listing_objects']:,} keys in {FOLDERS} folders",
            "",
            ("`bench/scale.py listing-child` runs the tool's own listing path, as `run_transfer` does: "
            "`connect_side` (not timed), then `listing_split_points` (split discovery, timed) when more than one "
            "lister, `key_ranges`, and a `ListingWindow` of N listers over `source_objects` of each range, drained "
            "as fast as possible (timed), `--max-workers 16` (a pool of 20 connections). keys/s = keys / (split "
            "discovery + listing). Every run checked: each key exactly once. Not through `--dry-run`, so that "
            "only the listing is timed. The +N ms paths go through "
            "`bench/latency_proxy.py` (half the added round trip each way). Medians of "
            f"{1 + max(run['repetition'] for run in listing)} run(s) per point; client CPU is the listing process's "
            "own (user+sys)."),
            "",
            "| path | " + " | ".join(f"{n} lister{'s' if n > 1 else ''}" for n in listers) + " |",
            "| --- | " + " | ".join("---" for _ in listers) + " |",
        ]
        for path, rates in summary.get("listing", {}).items():
            cells = []
            for n in listers:
                cell = rates.get(str(n))
                if cell is None:
                    cells.append("-")
                else:
                    ratio = f" ({cell['vs_single']:.2f}x)" if cell["vs_single"] and n > 1 else ""
                    cells.append(f"{cell['keys_per_s']:,.0f} keys/s{ratio}")
            lines.append(f"| {path} | " + " | ".join(cells) + " |")
        ok_runs = [run for run in listing if run["ok"]]
        if ok_runs:
            per_key = median([run["child"]["cpu_s"] / run["child"]["keys_parsed"] for run in ok_runs])
            overread = {n: median([run["child"]["keys_parsed"] / run["child"]["keys"] for run in ok_runs
                                   if run["listers"] == n]) for n in listers}
            lines += [
                "",
                f"Client CPU per key parsed (median of every run): {per_key * 1e6:.0f} us, so one Python process "
                f"parses at most about {1 / per_key:,.0f} keys/s on one core of this machine, whatever the lister "
                "count (the parsing holds the GIL). Keys parsed per key listed (each range's last page is read "
                "whole, past the range's end): "
                + ", ".join(f"{n} lister{'s' if n > 1 else ''} {overread[n]:.2f}" for n in listers) + ".",
            ]
        lines += [
            "",
            "Every run:",
            "",
            ("| path | listers | rep | ranges | split s | list s | keys/s | requests | keys parsed | client CPU s "
             "| client CPU ms / 1,000 keys parsed | server CPU s | load before -> after | other CPU s |"),
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for run in listing:
            child = run.get("child") or {}
            if not run["ok"]:
                lines.append(f"| {run['path']} | {run['listers']} | {run['repetition'] + 1} | FAILED | | | | | | | | | | |")
                continue
            lines.append(
                f"| {run['path']} | {run['listers']} | {run['repetition'] + 1} | {child['ranges']} | {child['split_s']:.2f} "
                f"| {child['list_s']:.2f} | {child['keys_per_s']:,.0f} | {child['list_requests']}"
                f"{discarded(child)} "
                f"| {child['keys_parsed']:,} | {child['cpu_s']:.2f} "
                f"| {1000 * child['cpu_s'] / max(child['keys_parsed'], 1) * 1000:.0f} | {run['server_cpu_s']:.1f} "
                f"| {run['loadavg_before']} -> {run['loadavg_after']} | {run['other_cpu_s']:.1f} |")
        proxy = results.get("proxy_check")
        if proxy:
            lines += ["", (f"Latency proxy check (HeadBucket median): {proxy['head_bucket_direct_ms']:.1f} ms direct, "
                          f"{proxy['head_bucket_proxied_ms']:.1f} ms through the proxy (+{proxy['added_ms']:.1f} ms, "
                          f"target +{proxy['target_added_ms']:.0f}; the proxy hop alone +{proxy['zero_delay_hop_ms']:.1f} ms).")]
    if results.get("uploads"):
        lines += ["", "Uploads (set-up, not measured figures): " + "; ".join(
            f"{upload['objects']:,} objects in {upload['seconds']:.0f} s ({upload['objects'] / upload['seconds']:.0f}/s)"
            for upload in results["uploads"]) + "."]
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"* {note}" for note in results["notes"]]
    return "\n".join(lines) + "\n"


# =============================================================================================
# main
# =============================================================================================


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Issue #7 scale measurements (127.0.0.1 only).")
    sub = parser.add_subparsers(dest="role")
    child = sub.add_parser("synthetic-child", help=argparse.SUPPRESS)
    child.add_argument("--tool", required=True)
    child.add_argument("--keys", type=int, required=True)
    child.add_argument("--listers", type=int, default=SYNTHETIC_LISTERS)
    child.add_argument("--scratch", required=True)
    child.add_argument("--out", required=True)
    child.add_argument("--tracemalloc", action="store_true")
    lister = sub.add_parser("listing-child", help=argparse.SUPPRESS)
    for name in ("--tool", "--source", "--credentials", "--endpoint", "--scratch", "--out"):
        lister.add_argument(name, required=True)
    for name in ("--max-workers", "--listers", "--expected"):
        lister.add_argument(name, type=int, required=True)

    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 500 / 5,000 objects, 100 k / 1 M synthetic keys, one repetition")
    parser.add_argument("--objects", type=int, default=5000, help="N: the flat-memory runs copy N and 10 x N (5,000)")
    parser.add_argument("--repetitions", type=int, default=2, help="copies of each size (default 2)")
    parser.add_argument("--listing-repetitions", type=int, default=3, help="runs per listing point (default 3)")
    parser.add_argument("--list-concurrency", type=int, nargs="+", default=list(LIST_CONCURRENCIES))
    parser.add_argument("--rtt-ms", type=float, nargs="*", default=[20.0],
                        help="round trips the listing is also measured through (latency_proxy.py), ms (default 20)")
    parser.add_argument("--synthetic-keys", type=int, nargs="*", default=[1_000_000, 10_000_000])
    parser.add_argument("--tracemalloc-keys", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--only", action="append", choices=("synthetic", "flat", "listing"))
    parser.add_argument("--budget-minutes", type=float, default=25.0,
                        help="repetitions of the copies after the first are skipped if they would end past this")
    parser.add_argument("--label", default="",
                        help="name a side run: results go to scale-LABEL-<timestamp>/ and scale-LABEL-latest/")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role is None and args.quick:
        args.objects = 500
        args.repetitions = 1
        args.listing_repetitions = 1
        args.synthetic_keys = [100_000, 1_000_000]
        args.tracemalloc_keys = [100_000]
    return args


def machine_info(tool: Path, argv: list[str]) -> dict[str, Any]:
    """bench.py's description of the machine and tool, plus what a scale run adds: the exact tool
    file measured, the command and the load it started under."""
    from bench import machine_info as shared_machine_info

    return {
        **shared_machine_info(),
        "tool_sha256": hashlib.sha256(tool.read_bytes()).hexdigest(),
        "command": "./bench/run-scale.sh" + "".join(f" {arg}" for arg in argv),
        "loadavg_at_start": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.role == "synthetic-child":
        return synthetic_child(args)
    if args.role == "listing-child":
        return listing_child(args)

    parts = tuple(args.only) if args.only else ("synthetic", "flat", "listing")
    started = time.monotonic()
    deadline = started + args.budget_minutes * 60
    scratch = Path(tempfile.mkdtemp(prefix="s3scale-"))
    results: dict[str, Any] = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                               "notes": []}
    failed = False
    try:
        tool = scratch / "tool" / TOOL.name
        tool.parent.mkdir(parents=True)
        shutil.copy2(TOOL, tool)
        results["info"] = info = machine_info(tool, argv)
        print(f"machine: {info['cpu_count']} cores, load {info['loadavg_at_start']}; tool {info['tool_commit']}",
              flush=True)
        def fits(seconds: float) -> bool:
            return time.monotonic() + seconds <= deadline

        if "synthetic" in parts:
            # First, before the server starts: the cleanest figure this shared machine can give.
            results["synthetic"] = run_synthetic(args, tool, scratch, [(keys, False) for keys in args.synthetic_keys])
        if "flat" in parts or "listing" in parts:
            from latency_proxy import LatencyProxy
            from s3servers import SeaweedServer

            from bench import check_proxy

            small, large = args.objects, 10 * args.objects
            with SeaweedServer() as server:
                print(f"\nSeaweedFS at {server.endpoint_url}; uploading {small:,} and {large:,} objects of 1-4 KiB",
                      flush=True)
                sizes, uploads = {}, []
                for count in ((small, large) if "flat" in parts else (large,)):
                    sizes[count], seconds = upload_dataset(server, count)
                    uploads.append({"objects": count, "seconds": seconds})
                    print(f"  uploaded {count:,} in {seconds:.0f} s ({count / seconds:.0f}/s)", flush=True)
                results["uploads"] = uploads
                results["flat"], results["listing"] = [], []
                estimates: dict[int, float] = {}
                # What the issue asks for first (each size copied once, every listing point once), then
                # the repetitions, while they fit the time budget.
                if "flat" in parts:
                    results["flat"] += run_flat(tool, scratch, server, sizes, 0, deadline, estimates)
                if "listing" in parts:
                    results["listing_objects"] = large
                    port = int(server.endpoint_url.rsplit(":", 1)[1])
                    with contextlib.ExitStack() as stack:
                        proxies = [(f"+{rtt:g} ms RTT", stack.enter_context(LatencyProxy(port, delay=rtt / 2000)))
                                   for rtt in args.rtt_ms]
                        if 20 in args.rtt_ms:  # bench.py's check, whose target is its own +20 ms
                            results["proxy_check"] = check_proxy(server, proxies[args.rtt_ms.index(20)][1])
                        for repetition in range(args.listing_repetitions):
                            t0 = time.monotonic()
                            results["listing"] += run_listing(args, tool, scratch, server, large, proxies, repetition)
                            if repetition + 1 < args.listing_repetitions and not fits(
                                    (time.monotonic() - t0) + estimates.get(small, 0)):
                                print("  (further listing repetitions skipped: time budget)", flush=True)
                                results["notes"].append(f"Listing: {repetition + 1} of {args.listing_repetitions} "
                                                        "repetitions run; the rest skipped for the time budget.")
                                break
                if "flat" in parts:
                    for repetition in range(1, args.repetitions):
                        results["flat"] += run_flat(tool, scratch, server, sizes, repetition, deadline, estimates)
        if "synthetic" in parts and args.tracemalloc_keys:
            estimate = sum(keys for keys in args.tracemalloc_keys) / 10_000  # about 10,000 keys/s under tracemalloc
            if fits(estimate):
                results["synthetic"] += run_synthetic(args, tool, scratch,
                                                      [(keys, True) for keys in args.tracemalloc_keys])
            else:
                traced = [keys for keys in args.tracemalloc_keys if keys <= 200_000]
                if traced and fits(sum(traced) / 10_000):
                    results["synthetic"] += run_synthetic(args, tool, scratch, [(keys, True) for keys in traced])
                results["notes"].append("tracemalloc: only the runs of at most 200,000 keys fit the time budget.")
        for part in ("synthetic", "flat", "listing"):
            failed |= not all(run.get("ok", True) for run in results.get(part, []))
        info["elapsed_s"] = time.monotonic() - started
        summary = summarize(results)
        results["summary"] = summary
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = f"scale-{args.label}" if args.label else "scale"
        out_dir = args.results_dir / f"{name}-{stamp}"
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
        report = markdown(results, summary)
        (out_dir / "results.md").write_text(report)
        latest = args.results_dir / f"{name}-latest"
        shutil.rmtree(latest, ignore_errors=True)
        shutil.copytree(out_dir, latest)
        print("\n" + report)
        print(f"results: {out_dir} (and {latest})")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; the server and the scratch directory were removed", file=sys.stderr)
        sys.exit(130)
