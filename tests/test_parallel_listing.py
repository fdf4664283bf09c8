"""Keyspace-parallel listing, end to end against moto: every key exactly once, whatever the ranges.

The tool cuts the source keyspace at split points (folders found with Delimiter "/", or the next
character of keys without folders) into ranges (after, through], lists several at once and keeps a
watermark per range in the progress file. moto stands in for S3 here because, unlike SeaweedFS,
it keeps keys ending in "/" and keys that are prefixes of other keys as S3 does.
"""

from __future__ import annotations

import collections
import concurrent.futures
import re
import signal
import subprocess
import time

import pytest
from s3servers import MotoBuckets, incomplete_uploads, object_snapshot, put_objects
from toolcli import ToolJob, copied_keys, describe, done_per_progress_file, read_progress
from uploads import body

import s3_bulk_transfer as tool

# Keys a range boundary could lose or duplicate: folder markers equal to a split point ("b/"),
# keys that are prefixes of others, keys beside folders, non-ASCII keys (UTF-8 order = str order),
# keys without folders that sort between folders, and the very first and last keys.
AWKWARD_KEYS = [
    "!first", "a", "a/", "a/0", "a/b", "a/b/c", "ab", "b/", "b/0", "b/é", "b/日本", "b0", "c", "c/x",
    *(f"d{index}/obj-{index:02d}" for index in range(12)),
    "z/", "zz", "é/1", "日本/2", "\U0001f600",
]


# A listing of one page is not split (each range would read a page of its own), so every test adds
# 1,000 empty keys under pad/, listed across the ranges like the others and then excluded.
PADDING = [f"pad/{index:04d}" for index in range(1_000)]
WITHOUT_PADDING = ["--exclude", "pad/*"]


def put(moto_buckets: MotoBuckets, keys: list[str]) -> None:
    def put_one(item: tuple[int, str]) -> None:
        index, key = item
        moto_buckets.client.put_object(Bucket=moto_buckets.source, Key=key, Body=body(100 + index, seed=index),
                                       Metadata={"index": str(index)})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(put_one, enumerate(keys)))


def put_padding(moto_buckets: MotoBuckets, prefix: str = "") -> None:
    put_objects(moto_buckets.client, moto_buckets.source, {prefix + key: b"" for key in PADDING})


def ranges_logged(log: str) -> list[int]:
    return [int(count) for count in re.findall(r"listing (\d+) key ranges", log)]


@pytest.mark.parametrize("listers", ["1", "8"])
def test_every_key_is_copied_exactly_once_across_range_boundaries(
        job: ToolJob, moto_buckets: MotoBuckets, listers: str) -> None:
    put(moto_buckets, AWKWARD_KEYS)
    source = object_snapshot(moto_buckets.client, moto_buckets.source)
    put_padding(moto_buckets)

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--list-concurrency", listers,
                     *WITHOUT_PADDING)

    assert result.returncode == 0, describe(result)
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == source
    counted = collections.Counter(copied_keys(job.log_text()))
    assert counted == collections.Counter(AWKWARD_KEYS), counted  # each once, none missing
    ranges = read_progress(job.progress_file)["resume"]["ranges"]
    if listers == "1":
        assert len(ranges) == 1 and ranges_logged(job.log_text()) == []
    else:
        assert len(ranges) > 2 and ranges_logged(job.log_text()) == [len(ranges)]
        # The ranges follow one another and cover everything, and each is listed to its end.
        assert ranges[0]["after"] is None and ranges[-1]["through"] is None
        assert all(left["through"] == right["after"] for left, right in zip(ranges, ranges[1:]))
        for key_range in ranges:
            inside = [key for key in AWKWARD_KEYS + PADDING if (key_range["after"] is None or key > key_range["after"])
                      and (key_range["through"] is None or key <= key_range["through"])]
            assert key_range["watermark"] == (max(inside) if inside else None), key_range
            assert key_range["done_beyond_watermark"] == []


def test_prefix_and_filters_apply_within_every_range(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    keys = [f"data/{folder}/{name}" for folder in ("a", "b", "c", "d", "e") for name in ("x.csv", "y.json", "z.csv")]
    put(moto_buckets, [*keys, "data.csv", "database/q.csv", "other/w.csv"])
    put_padding(moto_buckets, "data/")  # listed, then left out by the filters

    result = job.run(f"s3://{moto_buckets.source}/data", f"s3://{moto_buckets.dest}/copy",
                     "--list-concurrency", "4", "--exclude", "*", "--include", "*.csv")

    assert result.returncode == 0, describe(result)
    wanted = sorted(key for key in keys if key.endswith(".csv"))
    assert sorted(copied_keys(job.log_text())) == wanted
    assert sorted(object_snapshot(moto_buckets.client, moto_buckets.dest)) == [
        "copy/" + key[len("data/"):] for key in wanted]
    assert ranges_logged(job.log_text()) and all(
        key_range["after"] is None or key_range["after"].startswith("data/")
        for key_range in read_progress(job.progress_file)["resume"]["ranges"])


def test_a_rerun_keeps_the_ranges_of_the_first_run(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    put(moto_buckets, [f"f{index:02d}/k" for index in range(20)])
    put_padding(moto_buckets)
    first = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--list-concurrency", "4",
                    *WITHOUT_PADDING)
    assert first.returncode == 0, describe(first)
    ranges = read_progress(job.progress_file)["resume"]["ranges"]
    put(moto_buckets, ["f05/new", "f19/new", "zzz-new"])  # new keys, in the first and last ranges too
    source = {**object_snapshot(moto_buckets.client, moto_buckets.source, "f"),
              **object_snapshot(moto_buckets.client, moto_buckets.source, "z")}

    rerun = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--list-concurrency", "1",
                    *WITHOUT_PADDING)

    assert rerun.returncode == 0, describe(rerun)
    after = read_progress(job.progress_file)["resume"]["ranges"]
    assert len(ranges) > 2
    assert [(r["after"], r["through"]) for r in after] == [(r["after"], r["through"]) for r in ranges]
    assert collections.Counter(copied_keys(job.log_text()))["f05/new"] == 1
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == source


def test_sigkill_in_the_middle_of_parallel_listing_then_a_rerun_copies_the_rest_once(
        job: ToolJob, moto_buckets: MotoBuckets) -> None:
    keys = [f"day-{folder:02d}/part-{index:03d}" for folder in range(16) for index in range(25)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: moto_buckets.client.put_object(Bucket=moto_buckets.source, Key=key,
                                                                 Body=body(16 * 1024, seed=len(key))), keys))
    put_padding(moto_buckets)
    # 6 MiB at 2 MB/s: about three seconds of copying, with the progress file saved every two.
    arguments = ["--list-concurrency", "4", "--max-workers", "4", "--max-bandwidth", "2MB/s", *WITHOUT_PADDING]
    command = job.command(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", *arguments)
    process = subprocess.Popen(command, env=job.env, cwd=job.workdir, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        # Kill once several ranges are under way and the file has recorded some of them.
        while time.monotonic() < deadline and process.poll() is None:
            if job.progress_file.exists():
                ranges = read_progress(job.progress_file)["resume"]["ranges"]
                if sum(key_range["watermark"] is not None for key_range in ranges) >= 3:
                    break
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL, "the run ended before it could be killed"
    finally:
        if process.poll() is None:
            process.kill()
    on_disk = read_progress(job.progress_file)
    done = done_per_progress_file(on_disk, keys)
    assert 0 < len(done) < len(keys)
    log_before = len(job.log_text())

    rerun = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", *arguments)

    assert rerun.returncode == 0, describe(rerun)
    recopied = copied_keys(job.log_text()[log_before:])
    assert len(recopied) == len(set(recopied))  # none twice in the rerun
    assert set(recopied) == set(keys) - done  # exactly what the file did not count
    assert sorted(object_snapshot(moto_buckets.client, moto_buckets.dest)) == sorted(keys)
    assert incomplete_uploads(moto_buckets.client, moto_buckets.dest) == []
    print(f"killed with {len(done)} of {len(keys)} objects counted in "
          f"{len(on_disk['resume']['ranges'])} ranges; the rerun copied {len(recopied)}")


def test_a_flat_prefix_of_many_pages_is_split_after_reading_two_pages(moto_buckets: MotoBuckets) -> None:
    """Looking for folders under a prefix that has none must not list it in full: for a flat prefix
    of millions of keys that would be a second whole listing before the copy even starts."""
    flat = [f"flat/{index:05d}" for index in range(1_001)]  # two pages: the old way read three
    put(moto_buckets, flat)
    pages: list[str] = []
    moto_buckets.client.meta.events.register("before-send.s3.ListObjectsV2",
                                              lambda request, **_: pages.append(request.url))
    side = tool.ConnectedSide(access=tool.SideAccess(role="source", origin="a test"), client=moto_buckets.client,
                     bucket=moto_buckets.source, region="us-east-1")
    split_points = tool.discover_split_points(side, tool.S3Location.parse(f"s3://{moto_buckets.source}/flat/"), 8)

    assert len(pages) == 2, pages  # one to see that there is more than a page, one to look for folders
    assert len(split_points) == 7 and all(point.startswith("flat/") for point in split_points), split_points
    assert split_points == sorted(split_points)
