"""--from-inventory: copying what an S3 Inventory report or a key list names, with no listing.

The reports are generated here in the layout AWS documents ("Locating your inventory list"):
``PREFIX/SOURCE-BUCKET/CONFIG-ID/DATE/manifest.json`` (with ``manifest.checksum``) naming gzip'd
CSV data files under ``PREFIX/SOURCE-BUCKET/CONFIG-ID/data/``, each row quoted, no header, the key
URL-encoded as an HTML form is (a space as ``+``). They are read from a local copy of the report's
folder or from a bucket on moto. The CLI tests run the tool as a subprocess against moto; the unit
tests at the end call the pure parsing rules directly.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import random
import re
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.client import BaseClient

from conftest import FAKE_KEYS
from fault_proxy import FaultProxy
from s3servers import MotoBuckets, incomplete_uploads, object_snapshot
from toolcli import (CHUNK_SIZE, ToolJob, assert_usage_error, copied_keys, describe, read_progress,
                     write_source_credentials)

import s3_bulk_transfer as tool

CURRENT_SCHEMA = "Bucket, Key, Size, LastModifiedDate, ETag, StorageClass, IsMultipartUploaded"
ALL_VERSIONS_SCHEMA = ("Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag, "
                       "StorageClass, IsMultipartUploaded")
CONFIG_FOLDER = "reports/{bucket}/daily"  # destination-prefix/source-bucket/config-ID
MANIFEST_KEY = CONFIG_FOLDER + "/2026-01-04T01-00Z/manifest.json"

# Keys that URL-encoding, form-decoding ("+" is a space) or a naive split would break.
LISTED = [
    "a/plain.txt",
    "b/with space.txt",
    "b/plus+sign",
    "b/percent%41%2F%zz",
    "c/unicode/café/日本語/🙂.txt",
    "c/comma,and \"quote\"",
    "d/multipart.bin",
]
UNLISTED = ["a/not-in-report.txt", "b/with+space.txt", "c/unicode/cafe.txt", "e/later"]
GONE = "b/gone since the report"  # in the report, deleted from the source since


def body_of(key: str) -> bytes:
    if key.endswith("multipart.bin"):  # 3 parts of --chunk-size, to prove the report's ETag drives If-Match
        return random.Random(7).randbytes(2 * CHUNK_SIZE + 11)
    return f"body of {key}".encode()


def put_source(client: BaseClient, bucket: str, keys: list[str]) -> dict[str, dict[str, Any]]:
    """Put each key; what an inventory row says of it (size and unquoted ETag, as reports give it)."""
    described = {}
    for key in keys:
        data = body_of(key)
        response = client.put_object(Bucket=bucket, Key=key, Body=data)
        described[key] = {"size": len(data), "etag": response["ETag"].strip('"')}
    return described


def csv_gz(rows: list[list[str]]) -> bytes:
    """A data file as S3 writes one: every field quoted, no header, gzip'd."""
    text = io.StringIO()
    csv.writer(text, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(rows)
    return gzip.compress(text.getvalue().encode("utf-8"))


def inventory_row(bucket: str, key: str, described: dict[str, Any], schema: str, **versions: str) -> list[str]:
    values = {
        "Bucket": bucket,
        "Key": urllib.parse.quote_plus(key, safe="/"),
        "VersionId": uuid.uuid4().hex,
        "IsLatest": versions.get("IsLatest", "true"),
        "IsDeleteMarker": versions.get("IsDeleteMarker", "false"),
        "Size": str(described["size"]) if versions.get("IsDeleteMarker") != "true" else "",
        "LastModifiedDate": "2026-01-03T10:20:30.000Z",
        "ETag": described["etag"] if versions.get("IsDeleteMarker") != "true" else "",
        "StorageClass": "STANDARD",
        "IsMultipartUploaded": "true" if "-" in described["etag"] else "false",
    }
    return [values[name.strip()] for name in schema.split(",")]


def build_report(bucket: str, files: list[list[list[str]]], schema: str) -> dict[str, bytes]:
    """The objects of one report, by key in the report's bucket: data files, manifest, checksum."""
    folder = CONFIG_FOLDER.format(bucket=bucket)
    objects = {f"{folder}/data/{uuid.uuid4()}.csv.gz": csv_gz(rows) for rows in files}
    manifest = {
        "sourceBucket": bucket,
        "destinationBucket": "arn:aws:s3:::inventory-destination",
        "version": "2016-11-30",
        "creationTimestamp": "1767488400000",
        "fileFormat": "CSV",
        "fileSchema": schema,
        "files": [{"key": key, "size": len(data), "MD5checksum": hashlib.md5(data).hexdigest()}
                  for key, data in objects.items()],
    }
    manifest_bytes = json.dumps(manifest, indent=2).encode()
    objects[MANIFEST_KEY.format(bucket=bucket)] = manifest_bytes
    objects[MANIFEST_KEY.format(bucket=bucket).replace(".json", ".checksum")] = \
        hashlib.md5(manifest_bytes).hexdigest().encode()
    return objects


def write_local(report: dict[str, bytes], root: Path, bucket: str) -> Path:
    """A local copy of the report's folder (CONFIG-ID/), as `aws s3 cp --recursive` makes one."""
    folder = CONFIG_FOLDER.format(bucket=bucket) + "/"
    for key, data in report.items():
        path = root / key[len(folder):]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root / MANIFEST_KEY.format(bucket=bucket)[len(folder):]


def upload(report: dict[str, bytes], client: BaseClient, bucket: str) -> None:
    client.create_bucket(Bucket=bucket)
    for key, data in report.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)


def three_interleaved_files(bucket: str, described: dict[str, dict[str, Any]], schema: str) -> list[list[list[str]]]:
    """The listed keys dealt over three data files, so that only a merge puts them in order; one key
    is in two files, and a report of all versions also has older versions and a delete marker."""
    keys = sorted([*LISTED, GONE])
    files: list[list[list[str]]] = [[], [], []]
    for index, key in enumerate(keys):
        if schema == ALL_VERSIONS_SCHEMA:
            files[index % 3].append(inventory_row(bucket, key, described[key], schema, IsLatest="false"))
        files[index % 3].append(inventory_row(bucket, key, described[key], schema))
    files[2].append(inventory_row(bucket, keys[-1], described[keys[-1]], schema))  # also the last of file 0 or 1
    if schema == ALL_VERSIONS_SCHEMA:  # deleted: its latest version is a delete marker
        files[0].append(inventory_row(bucket, "z/deleted", {"size": 0, "etag": ""}, schema, IsDeleteMarker="true"))
        files[0].sort(key=lambda row: urllib.parse.unquote_plus(row[1]))
    return files


def assert_copied_exactly(client: BaseClient, buckets: MotoBuckets, keys: list[str]) -> None:
    source = object_snapshot(client, buckets.source)
    destination = object_snapshot(client, buckets.dest)
    assert sorted(destination) == sorted(keys)
    assert destination == {key: source[key] for key in keys}
    assert incomplete_uploads(client, buckets.dest) == []


# ----------------------------------------------------------------------------------------
# Copying from a report
# ----------------------------------------------------------------------------------------


def test_shards_of_a_report_each_read_only_their_share_of_its_data_files(job: ToolJob, moto_buckets: MotoBuckets,
                                                                           tool_env: dict[str, str]) -> None:
    client = moto_buckets.client
    keys = [f"f{index:02d}/{name}" for index in range(12) for name in ("a", "b", "c")]
    described = put_source(client, moto_buckets.source, keys)
    # Six data files of unequal sizes, the keys dealt over them, each key in one file as S3 writes them.
    files: list[list[list[str]]] = [[] for _ in range(6)]
    for index, key in enumerate(sorted(keys)):
        files[min(index % 7, 5)].append(inventory_row(moto_buckets.source, key, described[key], CURRENT_SCHEMA))
    report = build_report(moto_buckets.source, files, CURRENT_SCHEMA)
    report_bucket = f"inventory-{moto_buckets.source}"
    upload(report, client, report_bucket)
    manifest = f"s3://{report_bucket}/{MANIFEST_KEY.format(bucket=moto_buckets.source)}"
    data_files = {key for key in report if "/data/" in key}
    read_by: dict[str, list[int]] = {key: [] for key in data_files}
    copied: list[list[str]] = []
    with FaultProxy(moto_buckets.endpoint_url) as proxy:
        write_source_credentials(job.credentials, FAKE_KEYS, proxy.endpoint_url)
        job.dest_endpoint_url = proxy.endpoint_url
        for shard in range(2):
            before = len(proxy.counts.operations("GetObject"))
            result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--from-inventory", manifest,
                             "--shard", f"{shard}/2", "--verify")
            assert result.returncode == 0, describe(result)
            for seen in proxy.counts.operations("GetObject")[before:]:
                if seen.key in data_files:
                    read_by[seen.key].append(shard)
            copied.append(copied_keys(job.shard_log_text(shard, 2)))
            identical = int(re.search(r"([\d,]+) identical", result.stdout)[1].replace(",", ""))
            assert identical == len(copied[-1]), result.stdout  # its own objects compared, and only those

    assert_copied_exactly(client, moto_buckets, keys)
    assert all(len(set(shards)) == 1 for shards in read_by.values()), read_by  # each file read by one shard alone
    assert {0, 1} == {shards[0] for shards in read_by.values()}
    assert len(copied[0]) + len(copied[1]) == len(keys) and set(copied[0]) | set(copied[1]) == set(keys)
    progress = [read_progress(job.progress_file.with_name(f"progress.shard-{shard}-of-2.json")) for shard in range(2)]
    assert [entry["job"]["shard_split"] for entry in progress] == ["report files"] * 2


def test_a_key_list_shared_by_more_shards_than_files_is_split_by_hash(job: ToolJob, moto_buckets: MotoBuckets,
                                                                     tmp_path: Path) -> None:
    keys = [f"k{index:02d}" for index in range(20)]
    put_source(moto_buckets.client, moto_buckets.source, keys)
    key_list = tmp_path / "keys.txt"
    key_list.write_text("".join(f"{key}\n" for key in keys))
    copied = []
    for shard in range(2):
        result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--from-inventory",
                         str(key_list), "--shard", f"{shard}/2")
        assert result.returncode == 0, describe(result)
        copied.append(set(copied_keys(job.shard_log_text(shard, 2))))
        assert "fewer than the 2 shards" in job.shard_log_text(shard, 2)

    assert copied[0] and copied[1] and not copied[0] & copied[1] and copied[0] | copied[1] == set(keys)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_report_copies_exactly_the_objects_it_lists(job: ToolJob, moto_buckets: MotoBuckets, tmp_path: Path,
                                                      where: str) -> None:
    client = moto_buckets.client
    described = put_source(client, moto_buckets.source, LISTED + UNLISTED)
    described[GONE] = {"size": 123, "etag": "0123456789abcdef0123456789abcdef"}
    schema = CURRENT_SCHEMA if where == "local" else ALL_VERSIONS_SCHEMA
    report = build_report(moto_buckets.source, three_interleaved_files(moto_buckets.source, described, schema), schema)
    if where == "local":
        inventory = str(write_local(report, tmp_path / "daily", moto_buckets.source))
    else:
        report_bucket = f"inventory-{moto_buckets.source}"
        upload(report, client, report_bucket)
        inventory = f"s3://{report_bucket}/{MANIFEST_KEY.format(bucket=moto_buckets.source)}"

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--from-inventory", inventory,
                     "--verify")

    assert result.returncode == 0, describe(result)
    assert_copied_exactly(client, moto_buckets, LISTED)
    assert sorted(copied_keys(job.log_text())) == sorted(LISTED)  # the key in two files is copied once
    assert "Not copied: 1 objects listed no longer exist in the source" in result.stdout
    assert f"{json.dumps(GONE)} no longer exists in the source" in job.log_text()
    assert "0 missing" in result.stdout  # --verify compares the report's objects only


def test_a_source_prefix_and_filters_select_from_the_report(job: ToolJob, moto_buckets: MotoBuckets,
                                                            tmp_path: Path) -> None:
    client = moto_buckets.client
    described = put_source(client, moto_buckets.source, LISTED)
    described[GONE] = {"size": 1, "etag": "0123456789abcdef0123456789abcdef"}
    report = build_report(moto_buckets.source, three_interleaved_files(moto_buckets.source, described,
                                                                       CURRENT_SCHEMA), CURRENT_SCHEMA)
    manifest = write_local(report, tmp_path / "daily", moto_buckets.source)

    result = job.run(f"s3://{moto_buckets.source}/b", f"s3://{moto_buckets.dest}/copy", "--from-inventory",
                     str(manifest), "--exclude", "plus*")

    assert result.returncode == 0, describe(result)
    assert sorted(object_snapshot(client, moto_buckets.dest)) == ["copy/percent%41%2F%zz", "copy/with space.txt"]


def test_a_report_drives_server_side_copies_and_skip_existing(job: ToolJob, moto_buckets: MotoBuckets,
                                                              tmp_path: Path) -> None:
    client = moto_buckets.client
    described = put_source(client, moto_buckets.source, LISTED[:4] + UNLISTED)
    described[GONE] = {"size": 5, "etag": "0123456789abcdef0123456789abcdef"}
    client.put_object(Bucket=moto_buckets.dest, Key=LISTED[0], Body=body_of(LISTED[0]))
    rows = [inventory_row(moto_buckets.source, key, described[key], CURRENT_SCHEMA)
            for key in sorted([*LISTED[:4], GONE])]
    manifest = write_local(build_report(moto_buckets.source, [rows], CURRENT_SCHEMA), tmp_path / "daily",
                           moto_buckets.source)
    job.copy_mode = "server-side"

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--from-inventory", str(manifest),
                     "--skip-existing")

    assert result.returncode == 0, describe(result)
    assert_copied_exactly(client, moto_buckets, LISTED[:4])
    assert sorted(copied_keys(job.log_text())) == sorted(LISTED[1:4])
    assert "Skipped 1 objects already identical" in result.stdout
    assert "Copied server-side by S3, no byte through this machine: 3 objects" in result.stdout
    assert "Not copied: 1 objects listed no longer exist in the source" in result.stdout


def test_a_rerun_after_completion_copies_nothing(job: ToolJob, moto_buckets: MotoBuckets, tmp_path: Path) -> None:
    client = moto_buckets.client
    described = put_source(client, moto_buckets.source, LISTED)
    described[GONE] = {"size": 5, "etag": "0123456789abcdef0123456789abcdef"}
    report = build_report(moto_buckets.source, three_interleaved_files(moto_buckets.source, described,
                                                                       CURRENT_SCHEMA), CURRENT_SCHEMA)
    manifest = str(write_local(report, tmp_path / "daily", moto_buckets.source))
    first = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--from-inventory", manifest)
    assert first.returncode == 0, describe(first)
    log_size = len(job.log_text())

    second = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--from-inventory", manifest)

    assert second.returncode == 0, describe(second)
    assert copied_keys(job.log_text()[log_size:]) == []
    assert "0 objects (0 B) copied in this run" in second.stdout
    assert_copied_exactly(client, moto_buckets, LISTED)


def test_a_progress_file_of_a_listing_is_not_taken_for_a_report(job: ToolJob, moto_buckets: MotoBuckets,
                                                                tmp_path: Path) -> None:
    client = moto_buckets.client
    described = put_source(client, moto_buckets.source, ["a/plain.txt"])
    report = build_report(moto_buckets.source, [[inventory_row(moto_buckets.source, "a/plain.txt",
                                                               described["a/plain.txt"], CURRENT_SCHEMA)]],
                          CURRENT_SCHEMA)
    manifest = str(write_local(report, tmp_path / "daily", moto_buckets.source))
    assert job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}").returncode == 0

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--from-inventory", manifest)

    assert_usage_error(result, "belongs to another job", "inventory", "--restart")


def test_dry_run_counts_the_listed_objects(job: ToolJob, moto_buckets: MotoBuckets, tmp_path: Path) -> None:
    client = moto_buckets.client
    described = put_source(client, moto_buckets.source, LISTED + UNLISTED)
    report = build_report(moto_buckets.source, [[inventory_row(moto_buckets.source, key, described[key],
                                                               CURRENT_SCHEMA) for key in sorted(LISTED)]],
                          CURRENT_SCHEMA)
    manifest = str(write_local(report, tmp_path / "daily", moto_buckets.source))

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--from-inventory", manifest,
                     "--dry-run")

    assert result.returncode == 0, describe(result)
    total = sum(described[key]["size"] for key in LISTED)
    assert f"to copy:      {len(LISTED)} objects, {tool.format_size(total)}" in result.stdout
    assert "multipart:    1 objects" in result.stdout
    assert object_snapshot(client, moto_buckets.dest) == {}
    assert not job.progress_file.exists()


# ----------------------------------------------------------------------------------------
# Key lists
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["keys.txt", "keys.csv.gz", "s3://keys.txt"])
def test_a_key_list_copies_exactly_its_keys(job: ToolJob, moto_buckets: MotoBuckets, tmp_path: Path,
                                            form: str) -> None:
    client = moto_buckets.client
    described = put_source(client, moto_buckets.source, LISTED + UNLISTED)
    keys = sorted([*LISTED, GONE, LISTED[0]])  # a repeated key is copied once
    path = tmp_path / form.removeprefix("s3://")
    if form.endswith("keys.txt"):  # keys only: each one costs a HeadObject, and GONE is found gone by it
        path.write_text("".join(f"{key}\n" for key in keys), encoding="utf-8")
    else:  # key, size, ETag: no request per key; GONE is found gone by its GET
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        for key in keys:
            known = described.get(key, {"size": 9, "etag": "0123456789abcdef0123456789abcdef"})
            writer.writerow([key, known["size"], known["etag"]])
        path.write_bytes(gzip.compress(text.getvalue().encode("utf-8")))
    inventory = str(path)
    if form.startswith("s3://"):
        upload({"lists/keys.txt": path.read_bytes()}, client, f"lists-{moto_buckets.source}")
        inventory = f"s3://lists-{moto_buckets.source}/lists/keys.txt"

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--from-inventory", inventory)

    assert result.returncode == 0, describe(result)
    assert_copied_exactly(client, moto_buckets, LISTED)
    assert "Not copied: 1 objects listed no longer exist in the source" in result.stdout


def test_an_unsorted_key_list_is_refused_with_the_sort_command(job: ToolJob, moto_buckets: MotoBuckets,
                                                               tmp_path: Path) -> None:
    client = moto_buckets.client
    put_source(client, moto_buckets.source, ["B", "a", "b"])
    keys = tmp_path / "keys.txt"
    keys.write_text("B\nb\na\n")  # "a" sorts between "B" and "b" in byte order

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--from-inventory", str(keys))

    assert_usage_error(result, "not in key order", 'line 3 ("a") comes after "b"', "LC_ALL=C sort -u")
    assert object_snapshot(client, moto_buckets.dest) == {}
    assert not job.progress_file.exists()


def test_a_missing_inventory_is_a_usage_error(job: ToolJob, moto_buckets: MotoBuckets, tmp_path: Path) -> None:
    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--from-inventory",
                     str(tmp_path / "nowhere" / "manifest.json"))

    assert_usage_error(result, "does not exist", "--from-inventory")


# ----------------------------------------------------------------------------------------
# Damaged reports
# ----------------------------------------------------------------------------------------


def damage(report: dict[str, bytes], bucket: str, how: str) -> tuple[dict[str, bytes], str]:
    """The report damaged one way, and a fragment of the sentence that must say so."""
    manifest_key = MANIFEST_KEY.format(bucket=bucket)
    checksum_key = manifest_key.replace(".json", ".checksum")
    manifest = json.loads(report[manifest_key])
    data_key = manifest["files"][0]["key"]
    if how == "data file cut short after the manifest was written":
        report[data_key] = report[data_key][: len(report[data_key]) // 2]
        return report, "but the manifest"
    if how == "gzip cut short, manifest written for it":
        report[data_key] = report[data_key][:-12]
        manifest["files"][0].update(size=len(report[data_key]),
                                    MD5checksum=hashlib.md5(report[data_key]).hexdigest())
        fragment = "is truncated"
    elif how == "manifest without files":
        del manifest["files"]
        fragment = 'has no "files" list'
    elif how == "manifest cut short":
        report[manifest_key] = report[manifest_key][:40]
        del report[checksum_key]
        return report, "is not valid JSON"
    elif how == "data file missing":
        del report[data_key]
        return report, "names is not"
    elif how == "MD5checksum of a data file wrong":
        manifest["files"][0]["MD5checksum"] = "0" * 32
        fragment = "does not match the MD5"
    elif how == "manifest does not match manifest.checksum":
        report[checksum_key] = b"0" * 32
        return report, "does not match its manifest.checksum"
    elif how == "report in Parquet":
        manifest["fileFormat"] = "Parquet"
        fragment = "pyarrow"
    else:
        assert how == "report of another bucket"
        manifest["sourceBucket"] = "another-bucket"
        fragment = "not the source bucket"
    report[manifest_key] = json.dumps(manifest).encode()
    report[checksum_key] = hashlib.md5(report[manifest_key]).hexdigest().encode()
    return report, fragment


@pytest.mark.parametrize("how", [
    "data file cut short after the manifest was written",
    "gzip cut short, manifest written for it",
    "manifest without files",
    "manifest cut short",
    "data file missing",
    "MD5checksum of a data file wrong",
    "manifest does not match manifest.checksum",
    "report in Parquet",
    "report of another bucket",
])
def test_a_damaged_report_is_a_usage_error_and_nothing_is_copied(job: ToolJob, moto_buckets: MotoBuckets,
                                                                 tmp_path: Path, how: str) -> None:
    client = moto_buckets.client
    described = put_source(client, moto_buckets.source, LISTED[:3])
    report = build_report(moto_buckets.source, [[inventory_row(moto_buckets.source, key, described[key],
                                                               CURRENT_SCHEMA)] for key in sorted(described)],
                          CURRENT_SCHEMA)
    report, fragment = damage(report, moto_buckets.source, how)
    manifest = str(write_local(report, tmp_path / "daily", moto_buckets.source))

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--from-inventory", manifest)

    assert_usage_error(result, fragment)
    assert object_snapshot(client, moto_buckets.dest) == {}


# ----------------------------------------------------------------------------------------
# The parsing rules
# ----------------------------------------------------------------------------------------

SIDE = tool.ConnectedSide(access=tool.SideAccess(role="source", origin="a test"), client=None, bucket="src",
                 region="us-east-1")
POSITIONS = {column: index for index, column in enumerate(tool.parse_inventory_schema(ALL_VERSIONS_SCHEMA))}


def parse_row(fields: list[str]) -> tool.InventoryRow | None:
    return tool.parse_inventory_row(fields, POSITIONS, tool.inventory_row_key(fields, POSITIONS), bucket="src")


def test_report_keys_are_form_decoded() -> None:
    fields = ["src", "a+b%2Bc/caf%C3%A9%25", "v1", "true", "false", "42", "2026-01-03T10:20:30.000Z",
              "d41d8cd98f00b204e9800998ecf8427e", "GLACIER", "false"]
    row = parse_row(fields)
    assert row is not None
    assert row.key == "a b+c/café%"
    assert (row.size, row.etag, row.storage_class) == (42, '"d41d8cd98f00b204e9800998ecf8427e"', "GLACIER")
    assert row.last_modified is not None and row.last_modified.utcoffset() is not None


def test_older_versions_and_delete_markers_are_not_objects() -> None:
    base = ["src", "k", "v", "true", "false", "1", "", "e", "STANDARD", "false"]
    assert parse_row(base) is not None
    assert parse_row([*base[:3], "false", *base[4:]]) is None
    assert parse_row([*base[:4], "true", "", "", "", "", ""]) is None


@pytest.mark.parametrize(("fields", "why"), [
    (["other", "k", "v", "true", "false", "1", "", "e", "STANDARD", "false"], "not of the source bucket src"),
    (["src", "k", "v", "true", "false", "1"], "has 6 fields"),
    (["src", "k", "v", "true", "false", "1.5", "", "e", "STANDARD", "false"], "not a whole number"),
    (["src", "%FF", "v", "true", "false", "1", "", "e", "STANDARD", "false"], "can't decode"),
])
def test_a_bad_report_row_says_why(fields: list[str], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_row(fields)


def test_key_list_rows_are_taken_as_written() -> None:
    assert tool.parse_key_list_row(["a b+c%20"]) == tool.InventoryRow("a b+c%20")
    assert tool.parse_key_list_row(["k,1", "7", '"abc"']) == tool.InventoryRow("k,1", 7, '"abc"')
    with pytest.raises(ValueError, match="at most three"):
        tool.parse_key_list_row(["a", "1", "e", "x"])


def test_a_schema_without_a_key_is_refused() -> None:
    with pytest.raises(ValueError, match="no Key column"):
        tool.parse_inventory_schema("Bucket, Size")


def chunks(data: bytes, size: int) -> list[tuple[bytes, bool]]:
    pieces = [data[start:start + size] for start in range(0, len(data), size)] or [b""]
    return [(piece, index == len(pieces) - 1) for index, piece in enumerate(pieces)]


def test_lines_come_whole_from_any_chunking_and_several_gzip_members() -> None:
    lines = [f"line {index} {'x' * (index % 50)}".encode() for index in range(3000)]
    data = gzip.compress(b"\n".join(lines[:1000]) + b"\n") + gzip.compress(b"\n".join(lines[1000:]))
    for size in (1, 7, 4096, len(data)):
        assert list(tool.inventory_lines(chunks(data, size), name="the test file", gzipped=True)) == lines


def test_a_truncated_gzip_is_refused_before_its_last_lines() -> None:
    data = gzip.compress(b"a\nb\nc\n")[:-8]  # without its CRC and length trailer
    with pytest.raises(tool.FatalTransferError, match="The test file ends in the middle of its gzip stream"):
        next(tool.inventory_lines(chunks(data, len(data)), name="the test file", gzipped=True))


def write_key_files(tmp_path: Path, contents: list[str]) -> tool.Inventory:
    files = []
    for index, text in enumerate(contents):
        path = tmp_path / f"keys-{index}.txt"
        path.write_text(text, encoding="utf-8")
        files.append(tool.InventoryFile(str(path), path.stat().st_size, gzipped=False))
    return tool.Inventory("test", tuple(files))


def test_files_are_merged_in_key_order_each_key_once(tmp_path: Path) -> None:
    inventory = write_key_files(tmp_path, ["a\nd\nx/1\nx/3\n", "b\nd\nx/2\n\n", "c\nx/0\ny\n"])
    location = tool.S3Location("src", "x/")
    assert [row.key for row in tool.inventory_rows(inventory, SIDE, tool.S3Location("src", ""), None)] == \
        ["a", "b", "c", "d", "x/0", "x/1", "x/2", "x/3", "y"]
    assert [row.key for row in tool.inventory_rows(inventory, SIDE, location, None)] == ["x/0", "x/1", "x/2", "x/3"]
    assert [row.key for row in tool.inventory_rows(inventory, SIDE, location, "x/1", "x/2")] == ["x/2"]


def test_a_file_out_of_key_order_stops_the_run_even_below_the_watermark(tmp_path: Path) -> None:
    inventory = write_key_files(tmp_path, ["a\nc\nb\nd\n"])
    with pytest.raises(tool.FatalTransferError, match=r'line 3 \("b"\) comes after "c".*LC_ALL=C sort -u'):
        list(tool.inventory_rows(inventory, SIDE, tool.S3Location("src", ""), "c"))


def test_an_empty_key_is_refused_with_its_line(tmp_path: Path) -> None:
    inventory = tool.Inventory("test", write_key_files(tmp_path, ["a,1\n,2\n"]).files, csv_key_list=True)
    with pytest.raises(tool.FatalTransferError, match="Line 2 of the key list .* key is empty"):
        list(tool.inventory_rows(inventory, SIDE, tool.S3Location("src", ""), None))


def test_byte_order_is_key_order() -> None:
    # What `LC_ALL=C sort` gives, which is S3's order: by UTF-8 bytes, so upper case first and é after z.
    keys = ["B", "a", "b", "z", "é", "日本", "🙂"]
    assert sorted(keys) == keys == sorted(keys, key=lambda key: key.encode("utf-8"))


def test_local_data_files_are_found_by_the_end_of_their_key(tmp_path: Path) -> None:
    manifest = tmp_path / "daily" / "2026-01-04T01-00Z" / "manifest.json"
    data = tmp_path / "daily" / "data" / "f.csv.gz"
    beside = tmp_path / "daily" / "2026-01-04T01-00Z" / "files" / "g.csv.gz"
    for path in (manifest, data, beside):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    assert tool.local_data_file(manifest, "reports/src/daily/data/f.csv.gz") == data
    assert tool.local_data_file(manifest, "reports/src/2026-01-04T01-00Z/files/g.csv.gz") == beside
    assert tool.local_data_file(manifest, "reports/src/daily/data/missing.csv.gz") is None
    assert tool.local_data_file(manifest, "reports/../daily/data/f.csv.gz") is None


def test_report_files_are_shared_out_by_size_the_same_way_every_time() -> None:
    sizes = [700, 100, 100, 300, 200, 400, 100]
    owners = tool.share_report_files(sizes, 3)
    assert owners == tool.share_report_files(sizes, 3)  # every shard, every rerun: the same shares
    loads = [sum(size for size, owner in zip(sizes, owners) if owner == shard) for shard in range(3)]
    assert sorted(loads) == [600, 600, 700]  # the largest file alone, the rest evened out
    assert tool.share_report_files([5, 5], 3) is None  # a shard would read nothing: a hash instead
    assert tool.share_report_files([5], 1) == [0]
