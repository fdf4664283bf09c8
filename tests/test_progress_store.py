"""Unit tests for the progress bookkeeping: the watermark, resume state and the file itself."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import s3_bulk_transfer as tool  # noqa: E402

JOB = {"source": "s3://a/", "destination": "s3://b/", "source_endpoint_url": None,
       "destination_endpoint_url": None, "filters": []}


def new_store(tmp_path: Path) -> tool.ProgressStore:
    return tool.ProgressStore.open(tmp_path / "progress.json", JOB, restart=False)


def test_watermark_advances_only_over_a_contiguous_run_of_settled_keys(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    for key in ("a", "b", "c", "d"):
        store.listed(key)
    store.mark_done("b", 10)
    assert store.watermark is None and store.is_done_beyond_watermark("b")
    store.mark_done("a", 10)
    assert store.watermark == "b" and not store.is_done_beyond_watermark("b")
    store.mark_failed("c", "boom")
    assert store.watermark == "c"
    store.mark_done("d", 1)
    assert store.watermark == "d"


def test_saved_state_resumes_exactly_where_it_stopped(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    for key in ("a", "b", "c", "d"):
        store.listed(key)
    store.mark_failed("a", "access denied")
    store.mark_done("c", 5)
    store.save({})
    reopened = new_store(tmp_path)
    assert reopened.watermark == "a"
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
    job = tool.MultipartCopy(source, "big", "upload-1", 8 * tool.MiB, completed={})
    store.record_upload(source, job)
    store.record_part("big", 2, '"e2"', "AAAAAA==")
    store.save({})
    record = new_store(tmp_path).upload_for("big")
    assert record is not None
    assert record["upload_id"] == "upload-1" and record["part_size"] == 8 * tool.MiB
    assert record["parts"] == {"2": '"e2"'}
    assert record["part_checksums"] == {"2": "AAAAAA=="}
    store.forget_upload("big")
    store.save({})
    assert new_store(tmp_path).upload_for("big") is None


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
    assert tool.ProgressStore.open(path, JOB, restart=True).watermark is None
