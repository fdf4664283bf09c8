"""Comparing source and destination, end to end against moto: --verify-only, --verify, --skip-existing.

--verify-only copies nothing and never touches the progress file: it walks both listings in key
order (keys relative to each side's prefix) and reports every key missing from the destination,
of another size, or of the same size but another ETag where the ETags are comparable, and keys
only the destination has. Exit 1 on a discrepancy; keys only in the destination are reported
but are no discrepancy (exit 0). --report writes the findings as JSON. --verify does the same
after a successful copy. --skip-existing copies only what the destination lacks or holds
different; same size with ETags of different part layouts counts as done when the destination
is at least as new.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from conftest import FAKE_KEYS
from fault_proxy import FaultProxy
from s3servers import MotoBuckets, incomplete_uploads, object_snapshot
from toolcli import ToolJob, copied_keys, describe, read_progress, write_source_credentials
from units import KIB, MIB
from uploads import body, etag_of, plain_client, upload

THRESHOLD = ["--multipart-threshold", "15MiB"]  # overrides toolcli's 6MiB; chunk 5MiB and 4 workers stay


def summary_line(source: str, destination: str, *, identical: int = 0, size_only: int = 0, missing: int = 0,
                 size: int = 0, etag: int = 0, checksum: int = 0, extra: int = 0) -> str:
    return (f"Verify {source} -> {destination}: {identical} identical by ETag or checksum, {size_only} equal in size "
            f"(ETags not comparable), {missing} missing, {size} size mismatches, {etag} ETag mismatches, {checksum} "
            f"checksum mismatches, {extra} only in the destination.")


def report_summary(*, identical: int = 0, size_only: int = 0, missing: int = 0, size: int = 0, etag: int = 0,
                   checksum: int = 0, extra: int = 0) -> dict[str, int]:
    return {"match": identical, "match by size only": size_only, "missing": missing, "size mismatch": size,
            "etag mismatch": etag, "checksum mismatch": checksum, "destination only": extra}


def everything(buckets: MotoBuckets) -> dict[str, Any]:
    """Both buckets, byte for byte, and their open uploads: what must not change."""
    return {
        "source": object_snapshot(buckets.client, buckets.source),
        "destination": object_snapshot(buckets.client, buckets.dest),
        "uploads": incomplete_uploads(buckets.client, buckets.dest) + incomplete_uploads(buckets.client,
                                                                                          buckets.source),
    }


# -- --verify-only ------------------------------------------------------------------------


def test_verify_only_reports_every_kind_of_discrepancy_and_writes_nothing(
    job: ToolJob, moto_buckets: MotoBuckets
) -> None:
    client = plain_client(moto_buckets.endpoint_url)
    src, dst = moto_buckets.source, moto_buckets.dest
    small, other_small = body(1000, seed=1), body(1000, seed=2)
    parts, other_parts = body(10 * MIB, seed=3), body(10 * MIB, seed=4)
    layout = body(12 * MIB, seed=5)

    # Under the source prefix data/ and the destination prefix backup/, by relative key:
    upload(client, src, "data/same.txt", small)
    upload(client, dst, "backup/same.txt", small)
    upload(client, src, "data/missing.txt", small)
    upload(client, src, "data/truncated.bin", small)
    upload(client, dst, "backup/truncated.bin", small[:-1])
    upload(client, src, "data/altered.bin", small)
    upload(client, dst, "backup/altered.bin", other_small)  # same size, other bytes
    upload(client, src, "data/parts-same.bin", parts, part_size=5 * MIB)
    upload(client, dst, "backup/parts-same.bin", parts, part_size=5 * MIB)
    upload(client, src, "data/parts-altered.bin", parts, part_size=5 * MIB)
    upload(client, dst, "backup/parts-altered.bin", other_parts, part_size=5 * MIB)  # same layout, other bytes
    upload(client, src, "data/layout.bin", layout, part_size=8 * MIB)
    upload(client, dst, "backup/layout.bin", layout)  # same bytes, one part: ETags not comparable
    upload(client, dst, "backup/extra.txt", b"only here")
    # Outside both prefixes: not part of the comparison at all.
    upload(client, src, "other/not-compared.txt", b"x")
    upload(client, dst, "other/not-compared-either.txt", b"y")
    upload(client, dst, "backup-old/same.txt", b"a sibling prefix, not under backup/")
    before = everything(moto_buckets)
    report = job.workdir / "report.json"

    result = job.run(f"s3://{src}/data", f"s3://{dst}/backup", "--verify-only", "--report", str(report),
                     *THRESHOLD)

    assert result.returncode == 1, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    line = summary_line(f"s3://{src}/data/", f"s3://{dst}/backup/", identical=2, size_only=1, missing=1, size=1,
                        etag=2, extra=1)
    assert line in result.stderr, describe(result)
    printed = result.stdout + result.stderr
    for problem, key in (("missing", "missing.txt"), ("size mismatch", "truncated.bin"),
                         ("etag mismatch", "altered.bin"), ("etag mismatch", "parts-altered.bin"),
                         ("destination only", "extra.txt")):
        assert f'  {problem}: "{key}" (' in printed, describe(result)
    for fine in ("same.txt", "parts-same.bin", "layout.bin", "not-compared"):
        assert f'"{fine}' not in printed, describe(result)

    document = json.loads(report.read_text(encoding="utf-8"))
    assert document["source"] == f"s3://{src}/data/"
    assert document["destination"] == f"s3://{dst}/backup/"
    assert document["summary"] == report_summary(identical=2, size_only=1, missing=1, size=1, etag=2, extra=1)
    found = {entry["key"]: entry for entry in document["discrepancies"]}
    assert len(found) == len(document["discrepancies"]) == 5, document
    assert {key: entry["problem"] for key, entry in found.items()} == {
        "missing.txt": "missing",
        "truncated.bin": "size mismatch",
        "altered.bin": "etag mismatch",
        "parts-altered.bin": "etag mismatch",
        "extra.txt": "destination only",
    }
    assert "1,000" in found["truncated.bin"]["detail"] and "999" in found["truncated.bin"]["detail"]
    for key in ("altered.bin", "parts-altered.bin"):
        assert etag_of(client, src, f"data/{key}") in found[key]["detail"], found[key]
        assert etag_of(client, dst, f"backup/{key}") in found[key]["detail"], found[key]

    # It copied nothing, and left no progress file behind.
    assert everything(moto_buckets) == before
    assert not job.progress_file.exists()
    assert copied_keys(job.log_text()) == []


def test_verify_only_exits_0_when_the_destination_merely_has_more(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    client = plain_client(moto_buckets.endpoint_url)
    src, dst = moto_buckets.source, moto_buckets.dest
    for key in ("a.txt", "b/c.txt"):
        upload(client, src, key, key.encode())
        upload(client, dst, key, key.encode())
    upload(client, dst, "b/extra.txt", b"only in the destination")
    upload(client, dst, "zzz-last.txt", b"after every source key")
    before = everything(moto_buckets)
    report = job.workdir / "report.json"

    result = job.run(f"s3://{src}", f"s3://{dst}", "--verify-only", "--report", str(report), *THRESHOLD)

    assert result.returncode == 0, describe(result)
    assert summary_line(f"s3://{src}/", f"s3://{dst}/", identical=2, extra=2) in result.stdout, describe(result)
    document = json.loads(report.read_text(encoding="utf-8"))
    assert document["summary"] == report_summary(identical=2, extra=2)
    assert [(entry["key"], entry["problem"]) for entry in document["discrepancies"]] == [
        ("b/extra.txt", "destination only"), ("zzz-last.txt", "destination only")]
    assert everything(moto_buckets) == before
    assert not job.progress_file.exists()


def test_verify_only_compares_only_the_selected_keys_on_both_sides(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    """--include/--exclude select on both sides by relative key: an excluded key is neither missing
    nor extra."""
    client = plain_client(moto_buckets.endpoint_url)
    src, dst = moto_buckets.source, moto_buckets.dest
    upload(client, src, "keep.txt", b"kept")
    upload(client, dst, "keep.txt", b"kept")
    upload(client, src, "debug.log", b"never copied")
    upload(client, dst, "old.log", b"left over")
    upload(client, dst, "keep-extra.txt", b"extra")

    result = job.run(f"s3://{src}", f"s3://{dst}", "--verify-only", "--exclude", "*.log", *THRESHOLD)

    assert result.returncode == 0, describe(result)
    assert summary_line(f"s3://{src}/", f"s3://{dst}/", identical=1, extra=1) in result.stdout, describe(result)
    assert "log" not in result.stdout.replace(str(job.log_file), ""), describe(result)


def test_verify_only_stops_with_one_clear_sentence_when_a_comparison_is_refused(
    job: ToolJob, moto_buckets: MotoBuckets, tmp_path: Path
) -> None:
    """Two ETags that differ are looked at with HeadObject; when that is refused (a bare 403, as S3
    answers a denied HEAD), the comparison cannot finish: it must say so in a sentence and exit 2
    (as any other failure that dooms the run does), not crash with a traceback or pass for a
    finished comparison."""
    client = plain_client(moto_buckets.endpoint_url)
    src, dst = moto_buckets.source, moto_buckets.dest
    upload(client, src, "differs.bin", body(1000, seed=1))
    upload(client, dst, "differs.bin", body(1000, seed=2))

    with FaultProxy(moto_buckets.endpoint_url, refuse_head={(src, "differs.bin")}) as proxy:
        job.credentials = write_source_credentials(tmp_path / "via-proxy.json", FAKE_KEYS, proxy.endpoint_url)
        result = job.run(f"s3://{src}", f"s3://{dst}", "--verify-only", *THRESHOLD)

    assert proxy.counts.refused >= 1, proxy.counts
    assert "Traceback" not in result.stderr, describe(result)
    assert result.returncode == 2, describe(result)
    assert "The comparison stopped" in result.stderr, describe(result)
    assert not job.progress_file.exists()


# -- --verify ------------------------------------------------------------------------------


def test_verify_after_a_clean_copy_exits_0_and_verify_only_leaves_the_progress_file_alone(
    job: ToolJob, moto_buckets: MotoBuckets
) -> None:
    client = plain_client(moto_buckets.endpoint_url)
    src, dst = moto_buckets.source, moto_buckets.dest
    upload(client, src, "small.txt", body(10 * KIB, seed=1))
    upload(client, src, "plain-large.bin", body(16 * MIB, seed=2))  # copied in 5 MiB parts: another ETag
    upload(client, src, "parts-8mib.bin", body(16 * MIB + 1, seed=3), part_size=8 * MIB)  # same parts, same ETag
    report = job.workdir / "report.json"

    result = job.run(f"s3://{src}", f"s3://{dst}", "--verify", "--report", str(report), *THRESHOLD)

    assert result.returncode == 0, describe(result)
    line = summary_line(f"s3://{src}/", f"s3://{dst}/", identical=2, size_only=1)
    assert line in result.stdout, describe(result)
    assert sorted(copied_keys(job.log_text())) == ["parts-8mib.bin", "plain-large.bin", "small.txt"]
    document = json.loads(report.read_text(encoding="utf-8"))
    assert document["discrepancies"] == []
    assert document["summary"] == report_summary(identical=2, size_only=1)
    assert object_snapshot(moto_buckets.client, dst) == object_snapshot(moto_buckets.client, src)

    # --verify-only afterwards agrees, and does not touch the progress file the copy left.
    progress_before = job.progress_file.read_bytes()
    log_before = len(job.log_text())
    result = job.run(f"s3://{src}", f"s3://{dst}", "--verify-only", *THRESHOLD)
    assert result.returncode == 0, describe(result)
    assert line in result.stdout, describe(result)
    assert job.progress_file.read_bytes() == progress_before
    assert copied_keys(job.log_text()[log_before:]) == []


# -- --skip-existing -----------------------------------------------------------------------


def test_skip_existing_copies_only_what_changed_or_is_new(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    client = plain_client(moto_buckets.endpoint_url)
    src, dst = moto_buckets.source, moto_buckets.dest
    upload(client, src, "a.txt", body(3 * KIB, seed=1))
    upload(client, src, "changed.txt", body(3 * KIB, seed=2))
    upload(client, src, "large/plain.bin", body(16 * MIB, seed=3))  # destination gets 5 MiB parts
    upload(client, src, "large/parts-8mib.bin", body(16 * MIB, seed=4), part_size=8 * MIB)  # same ETag
    first = job.run(f"s3://{src}", f"s3://{dst}", *THRESHOLD)
    assert first.returncode == 0, describe(first)
    assert etag_of(client, dst, "large/plain.bin") != etag_of(client, src, "large/plain.bin")
    assert etag_of(client, dst, "large/parts-8mib.bin") == etag_of(client, src, "large/parts-8mib.bin")

    job.progress_file.unlink()
    upload(client, src, "changed.txt", body(3 * KIB, seed=22))  # same size, other bytes
    upload(client, src, "new.txt", body(5 * KIB, seed=5))
    log_before = len(job.log_text())

    result = job.run(f"s3://{src}", f"s3://{dst}", "--skip-existing", *THRESHOLD)

    assert result.returncode == 0, describe(result)
    assert sorted(copied_keys(job.log_text()[log_before:])) == ["changed.txt", "new.txt"]
    assert "Skipped 3 objects already identical in the destination." in result.stdout, describe(result)
    this_run = read_progress(job.progress_file)["summary"]["this_run"]
    assert this_run["objects_skipped_as_identical"] == 3
    assert this_run["objects_done"] == 2
    assert this_run["verified"] == {"md5": 2, "etag": 0, "checksum": 0, "size-only": 0}
    assert object_snapshot(moto_buckets.client, dst) == object_snapshot(moto_buckets.client, src)
    assert incomplete_uploads(moto_buckets.client, dst) == []


def test_skip_existing_recopies_a_same_size_object_changed_at_the_source_since(
    job: ToolJob, moto_buckets: MotoBuckets
) -> None:
    """Same size and ETags of different layouts: only the dates can tell, and here the source is
    newer, so the destination copy is stale and is copied again."""
    client = plain_client(moto_buckets.endpoint_url)
    src, dst = moto_buckets.source, moto_buckets.dest
    upload(client, src, "large/plain.bin", body(16 * MIB, seed=1))
    upload(client, src, "small.txt", b"unchanged")
    first = job.run(f"s3://{src}", f"s3://{dst}", *THRESHOLD)
    assert first.returncode == 0, describe(first)
    job.progress_file.unlink()
    # S3 (and moto) list LastModified to the second: overwrite in a later second than the copy.
    copied_at = client.head_object(Bucket=dst, Key="large/plain.bin")["LastModified"]
    while client.head_object(Bucket=src, Key="large/plain.bin")["LastModified"] <= copied_at:
        time.sleep(0.3)
        upload(client, src, "large/plain.bin", body(16 * MIB, seed=2))  # same size, other bytes
    log_before = len(job.log_text())

    result = job.run(f"s3://{src}", f"s3://{dst}", "--skip-existing", *THRESHOLD)

    assert result.returncode == 0, describe(result)
    assert copied_keys(job.log_text()[log_before:]) == ["large/plain.bin"]
    assert "Skipped 1 objects already identical in the destination." in result.stdout, describe(result)
    assert object_snapshot(moto_buckets.client, dst) == object_snapshot(moto_buckets.client, src)


def test_verify_metadata_finds_headers_metadata_and_tags_that_differ(job: ToolJob, moto_buckets: MotoBuckets,
                                                                     tmp_path: Path) -> None:
    client = moto_buckets.client
    for key in ("same.txt", "headers.txt", "metadata.txt", "tags.txt"):
        client.put_object(Bucket=moto_buckets.source, Key=key, Body=f"body of {key}".encode(),
                          ContentType="text/plain", CacheControl="max-age=60", Metadata={"owner": "ops"},
                          Tagging="team=storage")
    copied = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--verify", "--verify-metadata")
    # Then, behind the tool's back, the destination changes, its bytes (and ETags) untouched.
    dest = moto_buckets.dest
    for key, change in (("headers.txt", {"ContentType": "text/html", "Metadata": {"owner": "ops"}}),
                        ("metadata.txt", {"ContentType": "text/plain", "Metadata": {"owner": "someone else"}})):
        client.copy_object(Bucket=dest, Key=key, CopySource={"Bucket": dest, "Key": key}, MetadataDirective="REPLACE",
                           CacheControl="max-age=60", **change)
    client.put_object_tagging(Bucket=dest, Key="tags.txt", Tagging={"TagSet": [{"Key": "team", "Value": "web"}]})
    report = tmp_path / "audit.json"

    plain = job.run(f"s3://{moto_buckets.source}", f"s3://{dest}", "--verify-only")
    deep = job.run(f"s3://{moto_buckets.source}", f"s3://{dest}", "--verify-only", "--verify-metadata",
                   "--report", str(report))

    assert copied.returncode == 0 and "headers and metadata: 0 mismatches, tags: 0 mismatches" in copied.stdout, \
        describe(copied)
    assert plain.returncode == 0, describe(plain)  # the bytes are all identical
    assert deep.returncode == 1, describe(deep)
    assert ("1 identical by ETag or checksum, 0 equal in size (ETags not comparable), 0 missing, 0 size mismatches, "
            "0 ETag mismatches, 0 checksum mismatches, 0 only in the destination; headers and metadata: 2 "
            "mismatches, tags: 1 mismatches.") in deep.stderr, describe(deep)
    found = {entry["key"]: entry for entry in json.loads(report.read_text())["discrepancies"]}
    assert found["headers.txt"]["problem"] == "metadata mismatch"
    assert "ContentType 'text/plain' in the source, 'text/html' in the destination" in found["headers.txt"]["detail"]
    assert "metadata 'owner': 'ops' in the source, 'someone else' in the destination" in \
        found["metadata.txt"]["detail"]
    assert found["tags.txt"] == {"key": "tags.txt", "problem": "tags mismatch",
                                 "detail": "source tags {'team': 'storage'}, destination tags {'team': 'web'}"}
    assert "same.txt" not in found
    summary = json.loads(report.read_text())["summary"]
    assert summary["metadata mismatch"] == 2 and summary["tags mismatch"] == 1
