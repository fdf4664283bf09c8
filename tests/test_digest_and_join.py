"""Unit tests for the integrity arithmetic (S3's ETag algorithms, part layouts) and the merge join."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

import s3_bulk_transfer as tool

MiB = tool.MiB


def s3_multipart_etag(body: bytes, part_size: int) -> str:
    """S3's ETag of a multipart upload, written out the plain way to check the tool's against."""
    digests = [hashlib.md5(body[start:start + part_size]).digest() for start in range(0, len(body), part_size)]
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


def md5_digest(part_sizes: tuple[int, ...], *, composite: bool) -> tool.OrderedDigest:
    return tool.OrderedDigest(tool.LayoutHash("MD5", part_sizes, composite=composite), None)


def test_whole_object_md5_is_the_same_however_the_bytes_are_fed() -> None:
    body = os.urandom(3 * MiB + 17)
    digest = md5_digest((len(body),), composite=False)
    for start in range(0, len(body), 1_000_003):
        digest.update(body[start:start + 1_000_003])
    assert digest.etag() == hashlib.md5(body).hexdigest()


def test_composite_etag_is_recomputed_along_source_boundaries_from_other_sized_chunks() -> None:
    body = os.urandom(2 * 5 * MiB + 123)
    layout = tool.equal_part_layout(len(body), 3, 5 * MiB, 123)
    assert layout == (5 * MiB, 5 * MiB, 123)
    digest = md5_digest(layout, composite=True)
    for start in range(0, len(body), 3 * MiB):  # our parts do not line up with the source's
        digest.update(body[start:start + 3 * MiB])
    assert digest.etag() == s3_multipart_etag(body, 5 * MiB)


def test_an_upload_of_one_part_has_a_composite_etag_too() -> None:
    body = os.urandom(MiB + 5)
    digest = md5_digest((len(body),), composite=True)
    digest.update(body)
    assert digest.etag() == s3_multipart_etag(body, len(body))
    assert digest.etag().endswith("-1")


def test_parts_finishing_out_of_order_are_hashed_in_order() -> None:
    body = os.urandom(4 * MiB)
    parts = [body[index * MiB:(index + 1) * MiB] for index in range(4)]
    digest = md5_digest((len(body),), composite=False)
    threads = [threading.Thread(target=digest.feed, args=(number, parts[number - 1]),
                                kwargs={"cancelled": lambda: False}) for number in (4, 2, 3, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert digest.etag() == hashlib.md5(body).hexdigest()


def test_a_waiting_part_gives_up_when_its_job_is_cancelled() -> None:
    digest = md5_digest((2 * MiB,), composite=False)
    with pytest.raises(tool.StopRequested):
        digest.feed(2, b"x" * MiB, cancelled=lambda: True)


@pytest.mark.parametrize(
    ("size", "count", "first", "last"),
    [
        (10 * MiB, 3, 5 * MiB, 1),  # sizes do not add up
        (11 * MiB, 2, 5 * MiB, 6 * MiB),  # last part larger than the others
        (10 * MiB, 0, 5 * MiB, 5 * MiB),
    ],
)
def test_layouts_that_do_not_describe_equal_parts_are_refused(size: int, count: int, first: int, last: int) -> None:
    assert tool.equal_part_layout(size, count, first, last) is None


def test_a_source_of_unequal_parts_is_hashed_along_them_but_not_copied_along_them() -> None:
    body = os.urandom(8 * MiB + 5 * MiB + 5 * MiB)
    unequal = tool.IntegrityCheck("etag", "unused", (8 * MiB, 5 * MiB, 5 * MiB))
    digest = unequal.new_digest()
    assert digest is not None
    for start in range(0, len(body), 5 * MiB):  # copied in parts of 5 MiB
        digest.update(body[start:start + 5 * MiB])
    starts = (0, 8 * MiB, 13 * MiB)
    expected = hashlib.md5(b"".join(hashlib.md5(body[start:start + size]).digest()
                                    for start, size in zip(starts, (8 * MiB, 5 * MiB, 5 * MiB)))).hexdigest()
    assert digest.etag() == f"{expected}-3"
    # A server-side copy, whose only proof is the part ETags S3 returns, keeps the check when its parts
    # are the source's (copy_part_plan repeats even an unequal layout), and is left with the size when not.
    assert not unequal.uniform_parts
    assert tool.server_side_check(unequal, along_source_parts=False).method == "size-only"
    assert tool.server_side_check(unequal, along_source_parts=True) is unequal
    uniform = tool.IntegrityCheck("etag", "unused", (8 * MiB, 8 * MiB, 2 * MiB))
    assert uniform.uniform_parts and tool.server_side_check(uniform, along_source_parts=True) is uniform


def test_a_copy_keeps_the_source_parts_whenever_s3_takes_them() -> None:
    config = tool.RunSettings(job=None, tuning=tool.Tuning(chunk_size=5 * MiB, max_workers=4,  # type: ignore[arg-type]
                                                           memory_limit=20 * MiB))
    big = tool.ListedObject("k", 30 * MiB, '"x-2"')
    plan = tool.copy_part_plan
    # Parts of 25 MiB, past 4 x --chunk-size and the memory limit: kept (run alone), the ETag with them.
    assert plan(big, tool.IntegrityCheck("etag", "x-2", (25 * MiB, 5 * MiB)), config, server_side=False) == \
        (25 * MiB, None)
    unequal = (8 * MiB, 5 * MiB, 5 * MiB)
    assert plan(tool.ListedObject("k", 18 * MiB, '"x-3"'), tool.IntegrityCheck("etag", "x-3", unequal), config,
                server_side=False) == (8 * MiB, unequal)
    # Parts S3 would refuse (a 4 MiB part before the last), or no layout at all: parts of our own.
    assert plan(tool.ListedObject("k", 12 * MiB, '"x-3"'),
                tool.IntegrityCheck("etag", "x-3", (4 * MiB, 4 * MiB, 4 * MiB)), config, server_side=False) == \
        (5 * MiB, None)
    assert plan(big, tool.IntegrityCheck("md5", "x"), config, server_side=False) == (5 * MiB, None)
    assert [(part.start, part.end) for part in tool.plan_layout(unequal)] == [
        (0, 8 * MiB - 1), (8 * MiB, 13 * MiB - 1), (13 * MiB, 18 * MiB - 1)]


def listed(key: str) -> tool.ListedObject:
    return tool.ListedObject(key=key, size=1, etag='"e"')


def test_merge_join_pairs_keys_relative_to_each_prefix() -> None:
    source = iter([listed("a/1"), listed("a/2"), listed("a/4"), listed("a/é")])
    destination = iter([listed("copy/0"), listed("copy/2"), listed("copy/3"), listed("copy/é")])
    joined = [(key, s is not None, d is not None) for key, s, d in tool.merge_join(source, "a/", destination, "copy/")]
    assert joined == [
        ("0", False, True),
        ("1", True, False),
        ("2", True, True),
        ("3", False, True),
        ("4", True, False),
        ("é", True, True),
    ]


def test_merge_join_of_empty_listings_is_empty() -> None:
    assert list(tool.merge_join(iter([]), "", iter([]), "")) == []


def s3_composite_checksum(algorithm: str, body: bytes, part_size: int) -> str:
    """S3's composite checksum written out the plain way: the checksum of the part checksums."""
    import base64
    parts = [base64.b64decode(tool.checksum_of(algorithm, body[start:start + part_size]))
             for start in range(0, len(body), part_size)]
    return f"{tool.checksum_of(algorithm, b''.join(parts))}-{len(parts)}"


@pytest.mark.parametrize("algorithm", ["CRC32", "SHA256", "SHA1"])
def test_checksums_full_and_composite_along_the_source_layout(algorithm: str) -> None:
    import base64
    import zlib
    body = os.urandom(2 * 5 * MiB + 99)
    layout = (5 * MiB, 5 * MiB, 99)
    if algorithm == "CRC32":
        assert tool.checksum_of("CRC32", body) == base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
    for composite in (False, True):
        check = tool.IntegrityCheck("checksum", "", layout, tool.SourceChecksum(algorithm, "", composite))
        digest = check.new_digest()
        assert digest is not None
        for start in range(0, len(body), 3 * MiB):
            digest.update(body[start:start + 3 * MiB])
        expected = s3_composite_checksum(algorithm, body, 5 * MiB) if composite else tool.checksum_of(algorithm, body)
        assert digest.checksum() == expected


def test_source_checksums_are_believed_only_where_they_cannot_be_misread() -> None:
    assert tool.find_source_checksum({"ChecksumCRC32": "AAAA", "ChecksumType": "FULL_OBJECT"}, "abc-3") == \
        tool.SourceChecksum("CRC32", "AAAA", composite=False)
    assert tool.find_source_checksum({"ChecksumSHA256": "AAAA-3"}, "abc-3").composite
    assert tool.find_source_checksum({"ChecksumCRC32": "AAAA"}, "abc") == tool.SourceChecksum("CRC32", "AAAA", False)
    # moto's HeadObject: a composite value without its -N and no type: not to be trusted.
    assert tool.find_source_checksum({"ChecksumCRC32": "AAAA"}, "abc-3") is None
    assert tool.find_source_checksum({}, "abc") is None


# -- digests whose state outlives the process (resume after a crash) -----------------------------


@pytest.mark.parametrize("algorithm", ["MD5", "SHA1", "SHA256"])
def test_a_hash_saved_and_taken_up_in_pieces_gives_hashlibs_digest(algorithm: str) -> None:
    """OpenSSL's context, saved at arbitrary points (not only at block boundaries) and restored, goes on
    to the digest hashlib gives the whole."""
    rng = __import__("random").Random(algorithm)
    body = rng.randbytes(3 * MiB + 777)
    cuts = sorted(rng.sample(range(1, len(body)), 5))
    hasher = tool.new_hasher(algorithm)
    assert hasher.exportable, "OpenSSL's libcrypto (which hashlib uses) was not found"
    for start, stop in zip([0, *cuts], [*cuts, len(body)]):
        hasher.update(body, start, stop)
        hasher = tool.new_hasher(algorithm, hasher.state())  # as a rerun takes it up
    assert hasher.digest() == hashlib.new(algorithm.lower(), body).digest()
    assert tool.new_hasher(algorithm).digest() == hashlib.new(algorithm.lower()).digest()  # nothing fed


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "CRC64NVME"])
def test_part_crcs_combine_into_the_crc_of_the_whole(algorithm: str) -> None:
    """What S3 computes for a FULL_OBJECT multipart checksum, from part checksums alone."""
    rng = __import__("random").Random(algorithm)
    body = rng.randbytes(2 * MiB + 12345)
    sizes = [MiB, MiB, 12345]
    parts, start = [], 0
    for size in sizes:
        parts.append(tool.checksum_of(algorithm, body[start:start + size]))
        start += size
    whole = tool.combined_checksum(algorithm, parts, sizes, full_object=True)
    assert whole == tool.checksum_of(algorithm, body)
    if algorithm == "CRC32":  # against zlib itself, not only the tool's own CRC code
        import base64
        import zlib
        assert whole == base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
    assert tool.CrcCombiner(algorithm).combine(7, 9, 0) == 7  # nothing appended


def test_a_digest_saved_mid_object_and_restored_gives_the_same_etag_and_checksum() -> None:
    body = os.urandom(4 * 5 * MiB + 1000)
    layout = tool.equal_part_layout(len(body), 5, 5 * MiB, 1000)
    checksum = tool.SourceChecksum("CRC32", tool.checksum_of("CRC32", body), composite=False)
    for method, expected in (("md5", hashlib.md5(body).hexdigest()), ("etag", s3_multipart_etag(body, 5 * MiB))):
        check = tool.IntegrityCheck(method, expected, layout if method == "etag" else (len(body),), checksum)
        digest = check.new_digest()
        parts = [body[start:start + 3 * MiB] for start in range(0, len(body), 3 * MiB)]  # not the source's parts
        for number, part in enumerate(parts[:4], start=1):
            digest.feed(number, part, cancelled=lambda: False)
        restored = check.new_digest(digest.state())
        assert restored.parts_hashed == 4
        for number, part in enumerate(parts[4:], start=5):
            restored.feed(number, part, cancelled=lambda: False)
        assert check.mismatch(restored) is None, method
        assert restored.etag() == expected
