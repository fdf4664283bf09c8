"""Unit tests for the pure rules: sizes, URIs, part planning, filters and key mapping."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import botocore.utils
import pytest

import s3_bulk_transfer as tool

MiB, GiB, TiB = tool.MiB, tool.GiB, tool.TiB


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8388608", 8 * MiB),
        ("8MiB", 8 * MiB),
        ("16MB", 16 * MiB),  # binary, as in the AWS CLI's s3 settings
        ("5m", 5 * MiB),
        ("1.5GiB", int(1.5 * GiB)),
        (" 2 G ", 2 * GiB),
    ],
)
def test_parse_size_accepts_bytes_and_units(text: str, expected: int) -> None:
    assert tool.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "eight", "8XB", "-5MiB", "5 MiBs"])
def test_parse_size_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        tool.parse_size(text)


def test_s3_location_treats_a_prefix_as_a_folder() -> None:
    assert tool.S3Location.parse("s3://bucket") == tool.S3Location("bucket", "")
    assert tool.S3Location.parse("s3://bucket/") == tool.S3Location("bucket", "")
    assert tool.S3Location.parse("s3://bucket/photos") == tool.S3Location("bucket", "photos/")
    assert tool.S3Location.parse("s3://bucket/a/b/") == tool.S3Location("bucket", "a/b/")


@pytest.mark.parametrize("uri", ["http://bucket", "bucket/key", "s3://", "s3://Bad_Bucket", "s3://ab"])
def test_s3_location_rejects_what_is_not_an_s3_uri(uri: str) -> None:
    with pytest.raises(tool.ConfigurationError):
        tool.S3Location.parse(uri)


def test_plan_covers_every_byte_once_with_a_short_last_part() -> None:
    size = 3 * 5 * MiB + 123
    parts = tool.plan_parts(size, 5 * MiB)
    assert [part.number for part in parts] == [1, 2, 3, 4]
    assert parts[0].start == 0 and parts[-1].end == size - 1
    assert all(later.start == earlier.end + 1 for earlier, later in zip(parts, parts[1:]))
    assert [part.size for part in parts] == [5 * MiB] * 3 + [123]


def test_plan_of_an_exact_multiple_has_no_empty_tail() -> None:
    parts = tool.plan_parts(4 * 8 * MiB, 8 * MiB)
    assert len(parts) == 4 and all(part.size == 8 * MiB for part in parts)


def test_plan_of_an_empty_object_is_one_empty_part() -> None:
    assert [part.size for part in tool.plan_parts(0, 8 * MiB)] == [0]


def test_part_size_is_the_chunk_size_while_it_fits_ten_thousand_parts() -> None:
    assert tool.choose_part_size(100 * GiB // 2, 8 * MiB) == 8 * MiB
    assert tool.choose_part_size(10_000 * 8 * MiB, 8 * MiB) == 8 * MiB


def test_the_largest_object_is_what_ten_thousand_parts_of_five_gib_make() -> None:
    # S3's multipart limits page: 10,000 parts of at most 5 GiB, "Maximum object size 48.8 TiB".
    assert tool.MAX_OBJECT_SIZE == 10_000 * 5 * GiB
    assert f"{tool.MAX_OBJECT_SIZE / TiB:.1f} TiB" == "48.8 TiB"


@pytest.mark.parametrize("size", [5 * TiB, 6 * TiB, 48 * TiB])
def test_part_size_grows_for_an_object_of_terabytes(size: int) -> None:
    part_size = tool.choose_part_size(size, 8 * MiB)
    assert part_size % MiB == 0
    assert math.ceil(size / part_size) <= tool.MAX_PARTS
    assert part_size - MiB < size / tool.MAX_PARTS  # the smallest whole-MiB size that fits
    assert tool.MIN_PART_SIZE <= part_size <= tool.MAX_PART_SIZE
    assert len(tool.plan_parts(size, part_size)) <= tool.MAX_PARTS


def test_part_size_stops_at_the_largest_object_s3_can_hold() -> None:
    # 10,000 parts of 5 GiB: a byte more fits no plan of S3's parts.
    assert tool.choose_part_size(tool.MAX_OBJECT_SIZE, 8 * MiB) == tool.MAX_PART_SIZE
    assert len(tool.plan_parts(tool.MAX_OBJECT_SIZE, tool.MAX_PART_SIZE)) == tool.MAX_PARTS
    with pytest.raises(ValueError, match="48.8 TiB"):
        tool.choose_part_size(tool.MAX_OBJECT_SIZE + 1, 8 * MiB)


@pytest.mark.parametrize("chunk_size", [tool.MIN_PART_SIZE, 8 * MiB, tool.MAX_PART_SIZE])
def test_every_object_s3_can_hold_fits_ten_thousand_parts_at_any_chunk_size(chunk_size: int) -> None:
    """No --chunk-size can make an object S3 can hold impossible: its parts are raised instead."""
    part_size = tool.choose_part_size(tool.MAX_OBJECT_SIZE, chunk_size)
    assert tool.MIN_PART_SIZE <= part_size <= tool.MAX_PART_SIZE
    assert math.ceil(tool.MAX_OBJECT_SIZE / part_size) <= tool.MAX_PARTS


def test_an_object_of_six_tib_is_copyable() -> None:
    assert tool.why_uncopyable("big.bin", "copy/big.bin", 6 * TiB) is None


def test_an_object_over_s3s_limit_is_refused_with_its_size_and_the_limit() -> None:
    size = 49 * TiB
    reason = tool.why_uncopyable("huge.bin", "copy/huge.bin", size)
    assert reason is not None
    assert "49.0 TiB" in reason and f"{size:,} bytes" in reason
    assert f"limit of 48.8 TiB ({tool.MAX_OBJECT_SIZE:,} bytes, 10,000 parts of 5 GiB)" in reason
    assert tool.why_uncopyable("huge.bin", "copy/huge.bin", tool.MAX_OBJECT_SIZE) is None


def test_part_size_never_goes_below_the_s3_minimum() -> None:
    assert tool.choose_part_size(200 * MiB, 1 * MiB) == tool.MIN_PART_SIZE


def test_filters_follow_aws_s3_rules_last_match_wins() -> None:
    rules = [
        tool.FilterRule(include=False, pattern="*"),
        tool.FilterRule(include=True, pattern="*.jpg"),
        tool.FilterRule(include=False, pattern="tmp/*"),
    ]
    assert tool.is_selected("a/b.jpg", rules)
    assert not tool.is_selected("a/b.png", rules)
    assert not tool.is_selected("tmp/c.jpg", rules)
    assert tool.is_selected("anything", [])
    assert not tool.is_selected("logs/x.log", [tool.FilterRule(include=False, pattern="*.log")])


def test_star_matches_across_slashes_as_in_aws_s3() -> None:
    assert tool.is_selected("deep/er/file.txt", [tool.FilterRule(False, "*"), tool.FilterRule(True, "*.txt")])


def test_key_mapping_replaces_the_source_prefix_with_the_destination_prefix() -> None:
    source = tool.S3Location("src", "data/2024/")
    assert tool.map_destination_key("data/2024/a/b.txt", source, tool.S3Location("dst", "")) == "a/b.txt"
    assert tool.map_destination_key("data/2024/a/b.txt", source, tool.S3Location("dst", "archive/")) == \
        "archive/a/b.txt"
    assert tool.map_destination_key("data/2024/x//y/", source, tool.S3Location("dst", "z/")) == "z/x//y/"
    with pytest.raises(ValueError):
        tool.map_destination_key("other/key", source, tool.S3Location("dst", ""))


@pytest.mark.parametrize("key", ["..", ".", "./x", "a/../../other/x", "a/./b", "a/..", "a/../", "../x"])
def test_keys_with_dot_segments_are_recognised(key: str) -> None:
    assert tool.has_dot_segments(key)


@pytest.mark.parametrize("key", ["a..b", "...", ".hidden", "a/.b/c", "a/b.", "x//y", "/x", "..x/y", "%2e%2e/x", ""])
def test_dots_inside_a_segment_and_empty_segments_are_not_dot_segments(key: str) -> None:
    assert not tool.has_dot_segments(key)


def test_a_key_with_dot_segments_is_refused_with_the_reason() -> None:
    # Path-style, this PUT would be /dst/copy/a/../../src/x: normalised, a write to s3://src/x.
    reason = tool.why_uncopyable("a/../../src/x", "copy/a/../../src/x", 10)
    assert reason is not None
    assert '".."' in reason and "outside the destination prefix" in reason
    assert tool.why_uncopyable("a/b..c/x", "copy/a/b..c/x", 10) is None


def test_a_key_too_long_for_the_destination_prefix_is_refused() -> None:
    reason = tool.why_uncopyable("k" * 1020, "prefix/" + "k" * 1020, 10)
    assert reason is not None and "1027 bytes" in reason and "1024-byte limit" in reason


@pytest.mark.parametrize("uri", ["s3://bucket/a/../b", "s3://bucket/./x", "s3://bucket/.."])
def test_a_prefix_with_dot_segments_is_refused(uri: str) -> None:
    with pytest.raises(tool.ConfigurationError, match="'.' or '..' segment"):
        tool.S3Location.parse(uri)


def test_plain_md5_etags_are_recognised_and_others_are_not() -> None:
    md5 = '"d41d8cd98f00b204e9800998ecf8427e"'
    assert tool.plain_md5_etag(md5, {}) == md5.strip('"')
    assert tool.plain_md5_etag('"d41d8cd98f00b204e9800998ecf8427e-3"', {}) is None
    assert tool.plain_md5_etag(md5, {"ServerSideEncryption": "aws:kms"}) is None
    assert tool.plain_md5_etag(md5, {"SSECustomerAlgorithm": "AES256"}) is None


def test_two_spellings_of_one_endpoint_are_recognised_as_the_same_server() -> None:
    assert tool.canonical_endpoint("http://127.0.0.1:9000/") == tool.canonical_endpoint("HTTP://127.0.0.1:9000")
    assert tool.canonical_endpoint("https://S3.example.com:443") == "https://s3.example.com"
    assert tool.canonical_endpoint("http://[::1]:9000/") == "http://[::1]:9000"
    assert tool.canonical_endpoint("http://127.0.0.1:9000") != tool.canonical_endpoint("http://127.0.0.1:9001")
    assert tool.canonical_endpoint(None) is None and tool.canonical_endpoint("") is None


# -- --shard, --max-bandwidth ---------------------------------------------------------------------

def test_a_key_falls_in_the_same_shard_in_every_process_and_shards_are_even() -> None:
    # A literal, so that a change of hash (which would re-split running jobs) cannot pass unnoticed.
    assert [tool.shard_of(f"photos/{index}.jpg", 3) for index in range(8)] == [0, 2, 1, 0, 1, 1, 0, 0]
    assert tool.shard_of("photos/0.jpg", 1000) == 105
    counts = [0, 0, 0]
    for index in range(3000):
        counts[tool.shard_of(f"logs/2024/{index:05d}.gz", 3)] += 1
    assert all(900 <= count <= 1100 for count in counts), counts


def test_shards_partition_the_keys() -> None:
    shards = [tool.Shard(index, 4, "hash") for index in range(4)]
    for index in range(500):
        key = f"k/{index}"
        assert sum(shard.owns(key) for shard in shards) == 1


def test_a_plan_gives_every_key_to_exactly_one_shard_in_runs_of_adjacent_ranges() -> None:
    points = [f"{letter}/" for letter in "bcdefghijk"]  # 11 ranges for 3 shards
    plan = tool.plan_shards(points, 3)
    shards = [tool.Shard(index, 3, "ranges", plan) for index in range(3)]
    assert [len(plan.ranges_of(index)) for index in range(3)] == [4, 4, 3]
    assert plan.owners == tuple(sorted(plan.owners))  # each shard's share is one interval of key order
    keys = ["", "a", "b/", "b/x", "c", "k/", "k/zz", "zzz", "\U0010ffff", *(f"{letter}/{n}" for letter in "abck"
                                                                      for n in range(5))]
    for key in keys:
        assert sum(shard.owns(key) for shard in shards) == 1, key
    # The ranges a shard lists hold exactly the keys it owns, boundaries included.
    every = tool.key_ranges(points)
    for shard in shards:
        listed = [key for key in keys if any((r.after is None or key > r.after) and (r.through is None or key <= r.through)
                                             for r in (every[number] for number in plan.ranges_of(shard.index)))]
        assert listed == [key for key in keys if shard.owns(key)]


def test_a_plan_survives_its_file_and_a_damaged_one_is_refused() -> None:
    plan = tool.plan_shards(["m"], 2)
    assert tool.ShardPlan.from_document(plan.document()) == plan
    assert tool.ShardPlan.from_document(tool.plan_shards([], 2).document()).by_hash
    with pytest.raises(ValueError):
        tool.ShardPlan.from_document({"shards": 3, "split": "ranges", "split_points": ["m"], "owners": [0, 1]})


def test_too_few_places_to_cut_make_a_hash_plan_so_no_shard_is_idle() -> None:
    plan = tool.plan_shards(["m"], 3)
    assert plan.by_hash
    shards = [tool.Shard(index, 3, "ranges", plan) for index in range(3)]
    owned = [[key for key in (f"k/{n}" for n in range(60)) if shard.owns(key)] for shard in shards]
    assert all(owned) and sum(map(len, owned)) == 60


@pytest.mark.parametrize(
    ("text", "environment", "expected"),
    [
        ("0/3", {}, (0, 3)),
        ("2/3", {}, (2, 3)),
        ("auto/4", {"AWS_BATCH_JOB_ARRAY_INDEX": "3"}, (3, 4)),
        ("auto/4", {"JOB_COMPLETION_INDEX": "1"}, (1, 4)),
    ],
)
def test_shard_is_read_from_the_option_or_the_array_index(text: str, environment: dict[str, str],
                                                          expected: tuple[int, int]) -> None:
    shard = tool.parse_shard(text, environment)
    assert (shard.index, shard.count) == expected


@pytest.mark.parametrize(
    ("text", "environment", "message"),
    [
        ("3/3", {}, "from 0 to 2"),
        ("1", {}, "is not I/N"),
        ("a/b", {}, "is not I/N"),
        ("1/0", {}, "is not I/N"),
        ("auto/3", {}, "neither is set"),
        ("auto/3", {"AWS_BATCH_JOB_ARRAY_INDEX": "7"}, "from 0 to 2"),
    ],
)
def test_a_wrong_shard_is_explained(text: str, environment: dict[str, str], message: str) -> None:
    with pytest.raises(tool.ConfigurationError, match=message):
        tool.parse_shard(text, environment)


def test_each_shard_gets_its_own_default_files() -> None:
    shard = tool.Shard(1, 3)
    assert tool.shard_plan_name(Path("state/transfer_progress.json"), 3) == \
        Path("state/transfer_progress.plan-of-3-shards.json")
    assert tool.shard_file_name(Path("transfer_progress.json"), shard) == Path("transfer_progress.shard-1-of-3.json")
    assert tool.shard_file_name(Path("s3_transfer.log"), shard) == Path("s3_transfer.shard-1-of-3.log")
    assert tool.shard_file_name(Path("transfer_progress.json"), None) == Path("transfer_progress.json")


@pytest.mark.parametrize(("text", "expected"), [("100MB/s", 100 * MiB), ("1.5GiB/s", int(1.5 * GiB)),
                                                ("50M", 50 * MiB), ("1048576", MiB)])
def test_bandwidth_is_read_in_binary_units_per_second(text: str, expected: int) -> None:
    assert tool.parse_rate(text) == expected


@pytest.mark.parametrize("text", ["fast", "0", "0MB/s", "-1MB/s"])
def test_a_bandwidth_that_is_not_a_rate_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        tool.parse_rate(text)


def test_bandwidth_limit_spaces_units_to_hold_the_average_rate() -> None:
    import threading

    limit = tool.TokenBucket(100, threading.Event(), now=0.0)
    # Four threads asking at once for 50 bytes each are let go 0.5 s apart: 200 bytes take 2 s.
    assert [limit.reserve(50, 0.0) for _ in range(4)] == [0.5, 1.0, 1.5, 2.0]
    # After an idle spell at most one second's worth goes without waiting, never more.
    assert limit.reserve(100, 10.0) == 0.0
    assert limit.reserve(100, 10.0) == 1.0
    # A unit larger than a second's worth waits in proportion.
    assert limit.reserve(300, 20.0) == 2.0


def test_a_given_progress_file_is_split_per_shard_too() -> None:
    # Every child of an array job gets the same command line, so the same --progress-file.
    args = tool.build_parser().parse_args(["s3://a", "s3://b", "--shard", "auto/8", "--progress-file",
                                           "/efs/progress.json"])
    tool.resolve_state_files(args, {"AWS_BATCH_JOB_ARRAY_INDEX": "2"})
    assert args.progress_file == Path("/efs/progress.shard-2-of-8.json")
    assert args.log_file == Path("s3_transfer.shard-2-of-8.log")
    assert args.shard_plan == Path("/efs/progress.plan-of-8-shards.json")  # one plan, shared by the eight


@pytest.mark.parametrize("text", ["2026-11-27T04:35:51.000Z", "2026-11-27T04:35:51Z", "2026-11-27T04:35:51.123456+02:00",
                                  "Fri, 27 Nov 2026 04:35:51 GMT", "1795848951"])
def test_timestamps_are_read_as_botocore_reads_them(text: str) -> None:
    # The quick path for ISO 8601 must give the instant botocore's own parser gives, for every
    # format S3 answers in (XML listings, HTTP headers).
    assert tool.parse_timestamp(text) == botocore.utils.parse_timestamp(text)
    assert tool.parse_timestamp(text).tzinfo is not None


def processes_of(tmp_path: Path, *extra: str) -> int:
    args = tool.build_parser().parse_args(["s3://source-bucket", "s3://dest-bucket", "--progress-file",
                                           str(tmp_path / "p.json"), "--log-file", str(tmp_path / "log"), *extra])
    tool.resolve_state_files(args, {})
    return tool.build_settings(args).tuning.processes


def test_processes_auto_is_one_per_core_up_to_a_few_and_one_on_two_cores(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert processes_of(tmp_path) == 1  # the default: one process
    for cores, workers, expected in [(1, 64, 1), (2, 64, 1), (4, 64, 4), (16, 64, tool.AUTO_PROCESSES_LIMIT),
                                     (16, 2, 3)]:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, cores=cores: set(range(cores)))
        assert processes_of(tmp_path, "--processes", "auto", "--max-workers", str(workers)) == expected, cores
    assert processes_of(tmp_path, "--processes", "auto", "--max-bandwidth", "10MB/s") == 1  # counted by one process
    assert processes_of(tmp_path, "--processes", "5", "--max-workers", "4") == 5  # four workers, one object each


@pytest.mark.parametrize(("extra", "sentence"), [
    (["--processes", "6", "--max-workers", "4"], "--processes 6 makes more worker processes than --max-workers 4"),
    (["--processes", "2", "--max-bandwidth", "10MB/s"], "--max-bandwidth is counted by one process"),
])
def test_processes_that_cannot_work_are_refused_with_a_sentence(tmp_path: Path, extra: list[str],
                                                                 sentence: str) -> None:
    with pytest.raises(tool.ConfigurationError, match=re.escape(sentence)):
        processes_of(tmp_path, *extra)


def test_processes_must_be_auto_or_a_number(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        tool.build_parser().parse_args(["s3://a", "s3://b", "--processes", "many"])
    assert "must be auto or a whole number from 1 to 64, not 'many'" in capsys.readouterr().err


@pytest.mark.parametrize(("body", "whole"), [
    # S3's answer to ListObjectsV2, and moto's to ListParts (another root name than S3's ListPartsResult)
    (b'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
     b"<Name>b</Name><Contents><Key>k</Key></Contents></ListBucketResult>\n", True),
    (b'<?xml version="1.0" encoding="utf-8"?>\n<ListPartsResponse xmlns="x"><Part/></ListPartsResponse>', True),
    (b"<ListBucketResult><Name>b</Name><Contents><Key>k</Ke", False),  # cut short
    (b"<ListBucketResult><Contents><Error><Code>InternalError</Code></Error>", False),  # cut, then an error
    (b'<?xml version="1.0"?><Error><Code>InternalError</Code></Error>', False),  # an error in a 200
    (b"", False),
])
def test_a_listing_answer_is_whole_when_it_closes_what_it_opened(body: bytes, whole: bool) -> None:
    assert tool.xml_answer_is_whole(body) is whole
