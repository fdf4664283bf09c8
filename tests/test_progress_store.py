"""Unit tests for the progress bookkeeping: the watermark, resume state and the file itself."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

import s3_bulk_transfer as tool

JOB = {"source": "s3://a/", "destination": "s3://b/", "source_endpoint_url": None,
       "destination_endpoint_url": None, "filters": []}


def new_store(tmp_path: Path) -> tool.ProgressStore:
    return tool.ProgressStore.open(tmp_path / "progress.json", JOB, restart=False)


def watermarks(store: tool.ProgressStore) -> list[str | None]:
    """Each range's watermark: where a rerun's listing of it starts, unless that is the range's start."""
    return [None if start_after == key_range.after else start_after for key_range, start_after in store.listing_plan()]


def test_watermark_advances_only_over_a_contiguous_run_of_settled_keys(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    for key in ("a", "b", "c", "d"):
        store.listed(key)
    store.mark_done("b", 10)
    assert watermarks(store) == [None] and store.is_done_beyond_watermark("b")
    store.mark_done("a", 10)
    assert watermarks(store) == ["b"] and not store.is_done_beyond_watermark("b")
    store.mark_failed("c", "boom")
    assert watermarks(store) == ["c"]
    store.mark_done("d", 1)
    assert watermarks(store) == ["d"]


def test_saved_state_resumes_exactly_where_it_stopped(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    for key in ("a", "b", "c", "d"):
        store.listed(key)
    store.mark_failed("a", "access denied")
    store.mark_done("c", 5)
    store.save({})
    reopened = new_store(tmp_path)
    assert watermarks(reopened) == ["a"]
    assert reopened.retry_keys() == ["a"]
    assert reopened.is_done_beyond_watermark("c")
    assert not reopened.is_done_beyond_watermark("b") and not reopened.is_done_beyond_watermark("d")


def test_a_failed_key_that_later_succeeds_is_no_longer_failed(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.listed("a")
    store.mark_failed("a", "timeout")
    store.mark_done("a", 3)
    assert store.failures() == {}


def test_file_size_does_not_grow_with_the_number_of_keys(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    for index in range(20_000):
        key = f"key-{index:08d}"
        store.listed(key)
        store.mark_done(key, 100)
    store.save({})
    assert (tmp_path / "progress.json").stat().st_size < 4_000


def test_file_is_valid_json_with_the_summary_first_and_owner_only(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.listed("k")
    store.mark_done("k", 42)
    store.finish("complete", {"objects_done": 1})
    path = tmp_path / "progress.json"
    document = json.loads(path.read_text())
    assert list(document)[:2] == ["format", "summary"]
    assert document["summary"]["state"] == "complete"
    assert document["summary"]["objects_done"] == 1 and document["summary"]["bytes_done"] == 42
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [name for name in os.listdir(tmp_path) if name != "progress.json"] == []  # no temporary left


def test_multipart_uploads_in_flight_are_recorded_and_forgotten(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    source = tool.ListedObject(key="big", size=20 * tool.MiB, etag='"abc-2"')
    upload = tool.UploadRecord(upload_id="upload-1", destination_key="big", source_etag=source.etag,
                               size=source.size, part_size=8 * tool.MiB, part_etags_are_md5=True)
    store.uploads.record(source.key, upload)
    store.uploads.record_part("big", 2, '"e2"', "AAAAAA==")
    store.save({})
    record = new_store(tmp_path).uploads.record_for("big")
    assert record is not None
    assert record.upload_id == "upload-1" and record.part_size == 8 * tool.MiB
    assert record.parts == {2: '"e2"'}
    assert record.part_checksums == {2: "AAAAAA=="}
    store.uploads.forget("big")
    store.save({})
    assert new_store(tmp_path).uploads.record_for("big") is None


def test_a_progress_file_of_another_job_is_refused(tmp_path: Path) -> None:
    new_store(tmp_path).save({})
    other = dict(JOB, destination="s3://elsewhere/")
    with pytest.raises(tool.ConfigurationError, match="--restart"):
        tool.ProgressStore.open(tmp_path / "progress.json", other, restart=False)


def test_a_truncated_progress_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "progress.json"
    path.write_text('{"format": "s3-bulk-transfer progress, version 1", "summ')
    with pytest.raises(tool.ConfigurationError, match="not valid JSON.*--restart"):
        tool.ProgressStore.open(path, JOB, restart=False)
    assert path.read_text().endswith('"summ')
    assert watermarks(tool.ProgressStore.open(path, JOB, restart=True)) == [None]


# -- key ranges (parallel listing) ------------------------------------------------------------


def test_ranges_cover_the_keyspace_and_a_key_equal_to_a_split_point_ends_its_range() -> None:
    points = ["b/", "d/"]
    assert tool.key_ranges(points) == [tool.KeyRange(None, "b/"), tool.KeyRange("b/", "d/"), tool.KeyRange("d/", None)]
    assert [tool.range_index(points, key) for key in ("a", "b", "b/", "b/x", "c", "d/", "d/a", "é")] == \
        [0, 0, 0, 1, 1, 1, 2, 2]


def test_split_points_are_spread_over_the_candidates() -> None:
    folders = [f"logs/{day:03d}/" for day in range(100)]
    points = tool.choose_split_points(folders, 5)
    assert points == ["logs/020/", "logs/040/", "logs/060/", "logs/080/"]
    assert tool.choose_split_points(folders[:3], 8) == folders[:3]  # fewer candidates than ranges: each one
    assert tool.choose_split_points(folders, 1) == [] and tool.choose_split_points([], 8) == []


def test_each_range_keeps_its_own_watermark_across_a_save(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    assert store.splittable()
    store.split(["m"])
    for key in ("a", "b", "n", "o"):  # two listers, interleaved
        store.listed(key)
    store.mark_done("n", 1)
    store.mark_done("b", 1)  # beyond range 0's watermark: "a" is still in flight
    assert watermarks(store) == [None, "n"]
    store.save({})
    reopened = new_store(tmp_path)
    assert not reopened.splittable()  # a started job keeps its ranges
    assert watermarks(reopened) == [None, "n"]
    assert reopened.is_done_beyond_watermark("b") and not reopened.is_done_beyond_watermark("o")
    assert reopened.listing_plan() == [(tool.KeyRange(None, "m"), None), (tool.KeyRange("m", None), "n")]
    assert reopened.counts_as_done("b") and reopened.counts_as_done("n") and not reopened.counts_as_done("a")


def test_a_file_from_before_parallel_listing_resumes_as_one_range(tmp_path: Path) -> None:
    path = tmp_path / "progress.json"
    path.write_text(json.dumps({"format": tool.PROGRESS_FORMAT, "summary": {}, "job": JOB, "resume": {
        "listing_complete": False, "watermark": "k", "done_beyond_watermark": ["m"], "failed": {"c": "boom"},
        "multipart_uploads": {}}}))
    store = new_store(tmp_path)
    assert store.listing_plan() == [(tool.KeyRange(None, None), "k")]
    assert store.retry_keys() == ["c"] and store.is_done_beyond_watermark("m")
    assert not store.splittable()


def test_file_size_grows_with_the_ranges_not_the_keys(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.split([f"{index:04d}" for index in range(1, 64)])
    for index in range(20_000):
        key = f"{index % 64:04d}-{index:08d}"
        store.listed(key)
        store.mark_done(key, 100)
    store.save({})
    assert (tmp_path / "progress.json").stat().st_size < 64 * 200
