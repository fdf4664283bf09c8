"""--min-size, --max-size, --newer-than and --older-than: which objects are copied by size and age.

What a person relies on: only the objects inside the bounds are copied, by a listing as by an
inventory report (whose rows decide without a HeadObject when they carry size and date), the dry
run counts the same objects, an audit with the same options does not report the objects left out
as missing, and bounds that select nothing, or a date that is not one, are one sentence before
anything is copied. moto as the server; the unit tests call the pure rules.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import pytest
from fault_proxy import FaultProxy
from s3servers import MotoBuckets, object_snapshot, put_objects
from test_inventory import CURRENT_SCHEMA, MANIFEST_KEY, build_report, inventory_row, upload
from toolcli import ToolJob, assert_usage_error, copied_keys, describe, write_source_credentials
from conftest import FAKE_KEYS

import s3_bulk_transfer as tool

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("text", "moment"), [
    ("30d", NOW - datetime.timedelta(days=30)),
    ("12h", NOW - datetime.timedelta(hours=12)),
    ("90m", NOW - datetime.timedelta(minutes=90)),
    ("2w", NOW - datetime.timedelta(weeks=2)),
    ("1.5d", NOW - datetime.timedelta(hours=36)),
    ("2026-01-31", datetime.datetime(2026, 1, 31, tzinfo=UTC)),
    ("2026-01-31T12:30:00Z", datetime.datetime(2026, 1, 31, 12, 30, tzinfo=UTC)),
    ("2026-01-31T12:30:00+02:00", datetime.datetime(2026, 1, 31, 10, 30, tzinfo=UTC)),
])
def test_a_moment_is_a_duration_back_from_now_or_a_date_in_utc(text: str, moment: datetime.datetime) -> None:
    assert tool.parse_moment(text, NOW) == moment


def test_the_bounds_are_inclusive_for_sizes_and_strict_for_ages() -> None:
    cut = datetime.datetime(2026, 6, 1, tzinfo=UTC)
    sized = tool.ObjectFilter(min_size=10, max_size=20)
    assert [sized.admits(size, None) for size in (9, 10, 20, 21)] == [False, True, True, False]
    newer = tool.ObjectFilter(newer_than=cut)
    assert [newer.admits(1, when) for when in (cut - datetime.timedelta(seconds=1), cut,
                                               cut + datetime.timedelta(seconds=1))] == [False, False, True]
    assert not newer.admits(1, None)  # an object of unknown age is not taken for a new one
    assert tool.ObjectFilter(older_than=cut).admits(1, cut - datetime.timedelta(seconds=1))
    assert tool.ObjectFilter().admits(0, None) and not tool.ObjectFilter().active()


@pytest.mark.parametrize(("options", "sentence"), [
    (["--min-size", "2KiB", "--max-size", "1KiB"], "--min-size 2.0 KiB is above --max-size 1.0 KiB"),
    (["--newer-than", "2026-02-01", "--older-than", "2026-01-01"], "is not before --older-than 2026-01-01"),
    (["--newer-than", "last tuesday"], "--newer-than 'last tuesday' is neither a duration"),
])
def test_bounds_that_select_nothing_or_are_not_dates_are_one_sentence(job: ToolJob, moto_buckets: MotoBuckets,
                                                                      options: list[str], sentence: str) -> None:
    put_objects(moto_buckets.client, moto_buckets.source, {"a": b"a"})
    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", *options)
    assert_usage_error(result, sentence)
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == {}


def test_only_objects_within_the_size_and_age_bounds_are_copied_counted_and_audited(
        job: ToolJob, moto_buckets: MotoBuckets) -> None:
    sizes = {"tiny": 10, "medium": 2_048, "large": 100_000}
    client = moto_buckets.client
    put_objects(client, moto_buckets.source, {f"old/{name}": b"o" * size for name, size in sizes.items()})
    time.sleep(1.5)  # LastModified has a resolution of a second
    cut = datetime.datetime.now(UTC).isoformat(timespec="seconds")
    time.sleep(1.5)
    put_objects(client, moto_buckets.source, {f"new/{name}": b"n" * size for name, size in sizes.items()})
    bounds = ["--min-size", "1KiB", "--max-size", "50KiB", "--newer-than", cut]
    source, destination = f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}"

    dry = job.run(source, destination, "--dry-run", *bounds)
    copied = job.run(source, destination, *bounds, "--verify")
    audit = job.run(source, destination, "--verify-only", *bounds)
    unbounded_audit = job.run(source, destination, "--verify-only")

    assert dry.returncode == 0 and "to copy:      1 objects" in dry.stdout, describe(dry)
    assert "only objects at least 1.0 KiB, at most 50.0 KiB, modified after" in dry.stdout
    assert copied.returncode == 0, describe(copied)
    assert list(object_snapshot(client, moto_buckets.dest)) == ["new/medium"]
    assert copied_keys(job.log_text()) == ["new/medium"]
    # With the same bounds the audit compares the one object; without them, the five others are missing.
    assert audit.returncode == 0 and "1 identical by ETag or checksum, 0 equal in size (ETags not comparable), " \
        "0 missing" in audit.stdout + audit.stderr, describe(audit)
    assert unbounded_audit.returncode == 1 and "5 missing" in unbounded_audit.stderr, describe(unbounded_audit)


def test_report_rows_with_size_and_date_are_decided_without_a_head(job: ToolJob, moto_buckets: MotoBuckets,
                                                                   tmp_path: Path) -> None:
    client = moto_buckets.client
    bodies = {f"k{index}": b"x" * (100 * (index + 1)) for index in range(6)}
    put_objects(client, moto_buckets.source, bodies)
    described = {key: {"size": len(body), "etag": client.head_object(Bucket=moto_buckets.source, Key=key)["ETag"]
                       .strip('"')} for key, body in bodies.items()}
    # The report says every object was modified on 2026-01-03 (inventory_row's LastModifiedDate).
    rows = [inventory_row(moto_buckets.source, key, described[key], CURRENT_SCHEMA) for key in sorted(bodies)]
    report = build_report(moto_buckets.source, [rows], CURRENT_SCHEMA)
    report_bucket = f"inventory-{moto_buckets.source}"
    upload(report, client, report_bucket)
    manifest = f"s3://{report_bucket}/{MANIFEST_KEY.format(bucket=moto_buckets.source)}"
    with FaultProxy(moto_buckets.endpoint_url) as proxy:
        write_source_credentials(job.credentials, FAKE_KEYS, proxy.endpoint_url)
        job.dest_endpoint_url = proxy.endpoint_url
        newer = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--from-inventory", manifest,
                        "--newer-than", "2026-02-01")
        older = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--from-inventory", manifest,
                        "--older-than", "2026-02-01", "--max-size", "300", "--progress-file",
                        str(tmp_path / "second.json"))
        heads = [seen.key for seen in proxy.counts.operations("HeadObject") if seen.bucket == moto_buckets.source]

    assert newer.returncode == 0 and older.returncode == 0, describe(older)
    assert sorted(object_snapshot(client, moto_buckets.dest)) == ["k0", "k1", "k2"]  # 100, 200, 300 bytes
    assert [key for key in heads if key not in ("k0", "k1", "k2")] == []  # none asked of a row left out
