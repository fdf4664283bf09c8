"""Every object is proven equal to its source before it is completed, end to end against moto.

What the tool promises, and what each test shows from the outside (exit code, log, final
report, progress file, destination bucket):

* A single-part source (plain MD5 ETag) is checked by the MD5 of the bytes read ("md5"), whether
  it is copied with one PUT or, above the threshold, in parts of --chunk-size.
* A source uploaded in parts (ETag = MD5 of the part MD5s, "-N") is checked by recomputing that
  ETag along the source's own part layout, learned from HeadObject(PartNumber=1 and N) ("etag").
  Whenever S3 takes the source's parts, the copy uses the same parts, whatever --chunk-size says
  (a part larger than the memory limit runs alone), so the destination ETag equals the source's.
* A source of unequal parts has every part's size read (HeadObject(PartNumber) of each), is
  copied in those very parts and checked along them ("etag"): its ETag is kept too.
* Bytes damaged on the way from the source are never completed: the object is retried and
  then reported failed with "integrity mismatch" and both hashes; nothing is left behind.

Sizes: --chunk-size 5MiB and --max-workers 4 (so a 20 MiB memory limit), --multipart-threshold 15MiB;
no object above 40 MiB, since moto reads the whole object for every ranged GET.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pytest
from conftest import FAKE_KEYS
from fault_proxy import FaultProxy, flip_middle_byte
from s3servers import MotoBuckets, incomplete_uploads, object_snapshot
from toolcli import ToolJob, copied_keys, describe, read_progress, write_source_credentials
from units import KIB, MIB
from uploads import (
    body,
    etag_of,
    md5_hex,
    multipart_etag,
    plain_client,
    upload,
    upload_parts,
    verified_by,
)

import s3_bulk_transfer as tool  # (its attempt counts)

THRESHOLD = ["--multipart-threshold", "15MiB"]  # overrides toolcli's 6MiB; chunk 5MiB and 4 workers stay
CHUNK = 5 * MIB


def verified_line(counts: dict[str, int]) -> str:
    return (f"Verified before completing: {counts['md5']} by md5, {counts['etag']} by etag, "
            f"{counts.get('checksum', 0)} by checksum, {counts['size-only']} by size-only.")


# -- every layout, verified and copied byte for byte ------------------------------------------


def test_each_source_layout_is_verified_by_the_strongest_check_it_allows(
    job: ToolJob, moto_buckets: MotoBuckets
) -> None:
    client = plain_client(moto_buckets.endpoint_url)
    src = moto_buckets.source
    data = {
        "a/empty": b"",
        "a/small.txt": body(100 * KIB, seed=1),
        "b/plain-large.bin": body(20 * MIB + 3, seed=2),  # one PUT at the source, copied in 5 parts
        "c/parts-8mib.bin": body(20 * MIB + 12345, seed=3),  # 8+8+4 MiB: layout kept
        "d/parts-25mib.bin": body(30 * MIB + 777, seed=4),  # 25+5 MiB: a part above the memory limit, kept alone
        "e/parts-below-threshold.bin": body(12 * MIB + 5, seed=5),  # 6+6 MiB+5: one GET, one PUT
        "f/unequal-parts.bin": body(18 * MIB, seed=6),  # 8+5+5 MiB: each part's size read, the layout repeated
    }
    source_etags = {
        "a/empty": upload(client, src, "a/empty", data["a/empty"]),
        "a/small.txt": upload(client, src, "a/small.txt", data["a/small.txt"]),
        "b/plain-large.bin": upload(client, src, "b/plain-large.bin", data["b/plain-large.bin"]),
        "c/parts-8mib.bin": upload(client, src, "c/parts-8mib.bin", data["c/parts-8mib.bin"], part_size=8 * MIB),
        "d/parts-25mib.bin": upload(client, src, "d/parts-25mib.bin", data["d/parts-25mib.bin"],
                                    part_size=25 * MIB),
        "e/parts-below-threshold.bin": upload(client, src, "e/parts-below-threshold.bin",
                                              data["e/parts-below-threshold.bin"], part_size=6 * MIB),
        "f/unequal-parts.bin": upload_parts(client, src, "f/unequal-parts.bin", data["f/unequal-parts.bin"],
                                            [8 * MIB, 5 * MIB, 5 * MIB]),
    }
    # The sources are what the test means them to be.
    assert source_etags["b/plain-large.bin"] == md5_hex(data["b/plain-large.bin"])
    assert source_etags["c/parts-8mib.bin"] == multipart_etag(data["c/parts-8mib.bin"], 8 * MIB)
    assert source_etags["d/parts-25mib.bin"] == multipart_etag(data["d/parts-25mib.bin"], 25 * MIB)
    assert source_etags["e/parts-below-threshold.bin"] == multipart_etag(data["e/parts-below-threshold.bin"], 6 * MIB)
    assert source_etags["f/unequal-parts.bin"].endswith("-3")

    dry = job.run(f"s3://{src}", f"s3://{moto_buckets.dest}", *THRESHOLD, "--dry-run")
    result = job.run(f"s3://{src}", f"s3://{moto_buckets.dest}", *THRESHOLD)

    assert dry.returncode == 0, describe(dry)
    # The source's own parts (3 + 2 + 3) and our 5 of the one uploaded whole; the 25 MiB part runs alone.
    assert "multipart:    4 objects (88.0 MiB, 13 parts)" in dry.stdout, dry.stdout
    assert "alone:        1 objects keep their source's parts, larger than --memory-limit 20.0 MiB" in dry.stdout
    assert result.returncode == 0, describe(result)
    # Byte for byte (an MD5 of a full GET of each side, not the ETags).
    destination = object_snapshot(moto_buckets.client, moto_buckets.dest)
    assert {key: entry["md5"] for key, entry in destination.items()} == {
        key: md5_hex(value) for key, value in data.items()}
    assert incomplete_uploads(moto_buckets.client, moto_buckets.dest) == []

    dest_etags = {key: etag_of(moto_buckets.client, moto_buckets.dest, key) for key in data}
    # Same ETag wherever the source was uploaded in parts (or in one PUT and copied so): its layout is kept.
    for key in ("a/empty", "a/small.txt", "c/parts-8mib.bin", "d/parts-25mib.bin", "f/unequal-parts.bin"):
        assert dest_etags[key] == source_etags[key], key
    # Elsewhere another layout (so another ETag) over the same bytes.
    assert dest_etags["b/plain-large.bin"] == multipart_etag(data["b/plain-large.bin"], CHUNK)  # 5 parts
    assert dest_etags["e/parts-below-threshold.bin"] == md5_hex(data["e/parts-below-threshold.bin"])  # one PUT

    log = job.log_text()
    assert '"d/parts-25mib.bin" keeps its source\'s parts of up to 25.0 MiB, larger than the 20.0 MiB memory ' \
           'limit: they are copied one at a time' in log
    assert verified_by(log) == {
        "a/empty": "md5",
        "a/small.txt": "md5",
        "b/plain-large.bin": "md5",
        "c/parts-8mib.bin": "etag",
        "d/parts-25mib.bin": "etag",
        "e/parts-below-threshold.bin": "etag",
        "f/unequal-parts.bin": "etag",
    }, log
    assert sorted(copied_keys(log)) == sorted(data)  # one "copied" line each

    expected = {"md5": 3, "etag": 4, "checksum": 0, "size-only": 0}
    assert verified_line(expected) in result.stdout, describe(result)
    summary = read_progress(job.progress_file)["summary"]
    assert summary["this_run"]["verified"] == expected
    assert summary["state"] == "complete"
    assert summary["objects_done"] == len(data)


# -- bytes damaged on the way from the source ---------------------------------------------


def copy_parts(size: int, copy_part: int | tuple[int, ...]) -> list[tuple[int, int]]:
    """(start, length) of each part the copy reads: of one size, or a source's own unequal layout."""
    sizes = list(copy_part) if isinstance(copy_part, tuple) else [copy_part] * -(-size // copy_part)
    starts = [sum(sizes[:index]) for index in range(len(sizes))]
    return [(start, min(length, size - start)) for start, length in zip(starts, sizes)]


def damaged_hash(data: bytes, *, copy_part: Optional[int | tuple[int, ...]],
                 source_parts: Optional[tuple[int, ...]]) -> str:
    """What the tool's check computes over the bytes the proxy hands it: every GET body (the whole
    object, or one copy part) with its middle byte inverted, hashed along the source's layout."""
    if copy_part is None:
        damaged = flip_middle_byte(data)
    else:
        damaged = b"".join(flip_middle_byte(data[start:start + length])
                           for start, length in copy_parts(len(data), copy_part))
    return md5_hex(damaged) if source_parts is None else multipart_etag(damaged, source_parts)


# (object size, source part sizes or None for one PUT, the part size the copy uses or None for one GET)
DAMAGED_CASES = {
    "small": (300 * KIB + 1, None, None),
    "large-single-part-source": (17 * MIB + 3, None, CHUNK),
    "large-8mib-parts-source": (17 * MIB + 3, (8 * MIB, 8 * MIB, MIB + 3), 8 * MIB),
    # Unequal parts, which HeadObject(PartNumber) of each part told: the copy repeats them.
    "large-unequal-parts-source": (18 * MIB, (8 * MIB, 5 * MIB, 5 * MIB), (8 * MIB, 5 * MIB, 5 * MIB)),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_CASES))
def test_a_body_damaged_in_transit_is_never_written(
    case: str, job: ToolJob, moto_buckets: MotoBuckets, tmp_path: Path
) -> None:
    size, source_parts, copy_part = DAMAGED_CASES[case]
    client = plain_client(moto_buckets.endpoint_url)
    src, dst = moto_buckets.source, moto_buckets.dest
    target = "damaged/object.bin"
    data = body(size, seed=11)
    source_etag = (upload(client, src, target, data) if source_parts is None
                   else upload_parts(client, src, target, data, list(source_parts)))
    clean = {"clean/a.txt": body(2 * KIB, seed=12), "clean/parts.bin": body(16 * MIB, seed=13)}
    upload(client, src, "clean/a.txt", clean["clean/a.txt"])
    upload(client, src, "clean/parts.bin", clean["clean/parts.bin"], part_size=8 * MIB)
    # No additional checksum on the source objects: only the tool's own check can notice.
    head = client.head_object(Bucket=src, Key=target, ChecksumMode="ENABLED")
    assert not any(name.startswith("Checksum") and name != "ChecksumType" for name in head), head

    with FaultProxy(moto_buckets.endpoint_url, corrupt={(src, target)}) as proxy:
        job.credentials = write_source_credentials(tmp_path / "via-proxy.json", FAKE_KEYS, proxy.endpoint_url)
        result = job.run(f"s3://{src}", f"s3://{dst}", *THRESHOLD)
    assert proxy.counts.errors == [], proxy.counts.errors

    assert result.returncode == 1, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    expected = source_etag
    actual = damaged_hash(data, copy_part=copy_part, source_parts=source_parts)
    assert actual != expected
    failed_lines = [line for line in result.stderr.splitlines() if line.startswith(f'error: FAILED "{target}"')]
    assert len(failed_lines) == 1, describe(result)
    for text in (failed_lines[0], read_progress(job.progress_file)["resume"]["failed"][target]):
        assert "integrity mismatch" in text, text
        assert f"hash to {actual}" in text, text
        assert f"the source ETag says {expected}" in text, text
    assert f'"{target}": ' in result.stderr.split("Failed objects")[-1], describe(result)  # in the final report

    # Never written, nothing left half-done; the others are byte-identical copies.
    destination = object_snapshot(moto_buckets.client, dst)
    assert {key: entry["md5"] for key, entry in destination.items()} == {
        key: md5_hex(value) for key, value in clean.items()}
    assert incomplete_uploads(moto_buckets.client, dst) == []
    assert target not in copied_keys(job.log_text())

    # Retried as promised: a small body BODY_ATTEMPTS times (as a damaged body), a large object
    # OBJECT_ATTEMPTS times, each time reading every part again to compare it with what S3 holds.
    parts = 1 if copy_part is None else len(copy_parts(size, copy_part))
    attempts = tool.BODY_ATTEMPTS if copy_part is None else tool.OBJECT_ATTEMPTS
    assert proxy.counts.corrupted == attempts * parts, (proxy.counts, job.log_text())
    if copy_part is not None:
        again = [line for line in job.log_text().splitlines()
                 if f'"{target}": integrity mismatch' in line
                 and line.endswith("; reading its parts from the source again to upload again those S3 holds "
                                   "differently")]
        assert len(again) == attempts - 1, job.log_text()
        assert f"(after {tool.OBJECT_ATTEMPTS} attempts)" in failed_lines[0]

    summary = read_progress(job.progress_file)["summary"]
    assert summary["this_run"]["verified"] == {"md5": 1, "etag": 1, "checksum": 0, "size-only": 0}
    assert summary["multipart_uploads_in_flight"] == 0
    assert verified_line({"md5": 1, "etag": 1, "checksum": 0, "size-only": 0}) in result.stderr, describe(result)


def test_a_damaged_body_caught_by_botocores_crc32_is_retried_and_never_written(
    job: ToolJob, moto_buckets: MotoBuckets, tmp_path: Path
) -> None:
    """The same damage on a source object that carries a CRC32 (boto3's default since 1.36):
    botocore's response validation notices before the tool's MD5 does. It is still a damaged body
    of the source: retried like one, then failed, and never written."""
    src, dst = moto_buckets.source, moto_buckets.dest
    target = "damaged/with-crc32.bin"
    moto_buckets.client.put_object(Bucket=src, Key=target, Body=body(200 * KIB, seed=21))  # default: CRC32
    assert moto_buckets.client.head_object(Bucket=src, Key=target, ChecksumMode="ENABLED").get("ChecksumCRC32")
    upload(plain_client(moto_buckets.endpoint_url), src, "clean/a.txt", b"clean")

    with FaultProxy(moto_buckets.endpoint_url, corrupt={(src, target)}) as proxy:
        job.credentials = write_source_credentials(tmp_path / "via-proxy.json", FAKE_KEYS, proxy.endpoint_url)
        result = job.run(f"s3://{src}", f"s3://{dst}", *THRESHOLD)

    assert result.returncode == 1, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    assert sorted(object_snapshot(moto_buckets.client, dst)) == ["clean/a.txt"]
    assert target in read_progress(job.progress_file)["resume"]["failed"]
    assert proxy.counts.corrupted == 5, (proxy.counts, job.log_text())  # retried as a damaged body


# -- sources uploaded in a single part ------------------------------------------------------


@pytest.mark.parametrize("size", [1 * MIB + 7, 16 * MIB + 7], ids=["below-threshold", "above-threshold"])
def test_a_source_uploaded_as_one_multipart_part_is_verified_by_etag(
    size: int, job: ToolJob, moto_buckets: MotoBuckets
) -> None:
    """A multipart upload of a single part has the ETag MD5(MD5(body))-1, not MD5(body): what
    `aws s3 cp - s3://...` (a stream from stdin) or any SDK's streaming upload leaves for an object
    smaller than one part. Nothing is wrong with such an object; it must copy and verify."""
    client = plain_client(moto_buckets.endpoint_url)
    src, dst = moto_buckets.source, moto_buckets.dest
    data = body(size, seed=31)
    source_etag = upload_parts(client, src, "one-part.bin", data, [size])
    assert source_etag == multipart_etag(data, size)  # "...-1"
    assert source_etag.endswith("-1")

    result = job.run(f"s3://{src}", f"s3://{dst}", *THRESHOLD)

    assert result.returncode == 0, describe(result)
    assert object_snapshot(moto_buckets.client, dst)["one-part.bin"]["md5"] == md5_hex(data)
    assert verified_by(job.log_text()) == {"one-part.bin": "etag"}
    assert read_progress(job.progress_file)["summary"]["this_run"]["verified"] == {"md5": 0, "etag": 1, "checksum": 0,
                                                                                    "size-only": 0}


def test_sse_kms_sources_are_copied_verified_by_size_only(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    """An SSE-KMS object's ETag is not an MD5 on AWS (moto happens to send one anyway): nothing to
    check the bytes against, so the copy says so instead of pretending."""
    client = plain_client(moto_buckets.endpoint_url)
    src, dst = moto_buckets.source, moto_buckets.dest
    data = {"kms/small.txt": body(10 * KIB, seed=41), "kms/large.bin": body(16 * MIB, seed=42)}
    for key, value in data.items():
        client.put_object(Bucket=src, Key=key, Body=value, ServerSideEncryption="aws:kms")
    assert client.head_object(Bucket=src, Key="kms/small.txt")["ServerSideEncryption"] == "aws:kms"

    result = job.run(f"s3://{src}", f"s3://{dst}", *THRESHOLD)

    assert result.returncode == 0, describe(result)
    destination = object_snapshot(moto_buckets.client, dst)
    assert {key: entry["md5"] for key, entry in destination.items()} == {k: md5_hex(v) for k, v in data.items()}
    log = job.log_text()
    assert verified_by(log) == {"kms/small.txt": "size-only", "kms/large.bin": "size-only"}
    for key in data:
        line = next(line for line in log.splitlines() if f' INFO copied "{key}"' in line)
        assert line.endswith("verified by size-only because its ETag is not an MD5 (SSE-KMS or SSE-C encryption) "
                             "and it has no additional checksum")
    expected = {"md5": 0, "etag": 0, "checksum": 0, "size-only": 2}
    assert verified_line(expected) in result.stdout, describe(result)
    assert read_progress(job.progress_file)["summary"]["this_run"]["verified"] == expected
