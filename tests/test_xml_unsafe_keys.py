"""Keys with characters XML 1.0 forbids (such as "\\x07"): copied with one PUT while they fit, refused
before any upload is created when they do not, and never the cause of an orphaned upload.

S3 echoes the key in its answer to CreateMultipartUpload, and writes a character XML 1.0 forbids as a
character reference that no XML parser accepts (boto/botocore#3496): the upload is created, its id
never reaches the client, nothing can abort it. botocore takes an unreadable 200 answer for a 500 and
sends the request again (handlers._handle_200_error), so each attempt creates one more upload. moto
gets there by another way (its XML writer fails: 500, the upload created all the same), which is the
same to the tool; these tests assert that no CreateMultipartUpload is sent for such a key at all.
Listings of uploads ask S3 to URL-encode their keys; tests/aws_behaviour.py's
``UploadsListedAsS3Lists`` answers as S3 does, which moto does not.

Sizes as tests/toolcli.py sets them: 6 MiB threshold, 5 MiB parts.
"""

from __future__ import annotations

import re
import urllib.parse
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aws_behaviour import UploadsListedAsS3Lists
from conftest import FAKE_KEYS
from fault_proxy import Answer, Forward, FaultProxy, Request
from s3servers import MotoBuckets, incomplete_uploads, object_snapshot
from test_errors import failure_lines
from toolcli import CHUNK_SIZE, MULTIPART_THRESHOLD, ToolJob, describe, read_progress, write_source_credentials

import s3_bulk_transfer as tool

GiB = 1024**3


# -- which characters, and what that decides (pure rules) --------------------------------------


def parses_as_xml(character: str) -> bool:
    """Whether the XML parser botocore uses (expat, through ElementTree) reads a key holding this
    character, written as S3 writes it: as a character reference."""
    try:
        ElementTree.fromstring(f"<Key>a&#x{ord(character):x};b</Key>")
    except ElementTree.ParseError:
        return False
    return True


BOUNDARIES = [chr(code) for code in (
    *range(0x00, 0x21), 0x7F, 0x80, 0x85, 0x9F, 0xA0, 0xD7FF, 0xD800, 0xDBFF, 0xDC00, 0xDFFF, 0xE000, 0xFFFC,
    0xFFFD, 0xFFFE, 0xFFFF, 0x10000, 0x1F642, 0x10FFFF)]


@pytest.mark.parametrize("character", BOUNDARIES, ids=lambda character: f"U+{ord(character):04X}")
def test_the_forbidden_characters_are_exactly_those_the_parser_refuses(character: str) -> None:
    assert (tool.xml_forbidden_characters(f"a{character}b") == "") == parses_as_xml(character)


def test_forbidden_characters_are_named_once_each_in_order() -> None:
    assert tool.xml_forbidden_characters("plain/ké y 🙂.txt") == ""
    assert tool.xml_forbidden_characters("a\x07b\x00c\x07\ufffe") == "\x07\x00\ufffe"


def test_a_carriage_return_is_allowed_but_read_back_as_a_line_feed() -> None:
    """XML 1.0 allows "\\r" (its Char production) but a parser normalises a literal one to "\\n": a key
    read back from XML is another key, which is why listings of uploads ask for URL-encoded keys. An
    upload is not refused for it: the tool reads no key from CreateMultipartUpload's answer."""
    assert tool.xml_forbidden_characters("a\rb") == ""
    assert ElementTree.fromstring("<Key>a\rb</Key>").text == "a\nb"
    assert ElementTree.fromstring("<Key>a%0Db</Key>").text == "a%0Db"  # what encoding-type=url sends


@pytest.mark.parametrize(("key", "size", "one_request"), [
    ("plain.bin", MULTIPART_THRESHOLD - 1, True),
    ("plain.bin", MULTIPART_THRESHOLD, False),
    ("bell\x07.bin", MULTIPART_THRESHOLD - 1, True),
    ("bell\x07.bin", MULTIPART_THRESHOLD, True),
    ("bell\x07.bin", 5 * GiB, True),  # S3's largest PutObject
    ("bell\x07.bin", 5 * GiB + 1, False),  # refused by why_uncopyable instead
    ("return\r.bin", MULTIPART_THRESHOLD, False),
])
def test_a_key_xml_cannot_carry_is_copied_in_one_request_while_it_fits(key: str, size: int,
                                                                       one_request: bool) -> None:
    assert tool.copied_in_one_request(key, size, multipart_threshold=MULTIPART_THRESHOLD) is one_request


def test_a_key_xml_cannot_carry_over_5_gib_is_refused_with_a_sentence() -> None:
    assert tool.why_uncopyable("bell\x07.bin", "bell\x07.bin", 5 * GiB) is None
    refusal = tool.why_uncopyable("bell\x07.bin", "copy/bell\x07.bin", 5 * GiB + 1)
    assert refusal is not None and "U+0007" in refusal and "XML 1.0" in refusal and "5 GiB" in refusal
    assert tool.why_uncopyable("plain.bin", "copy/plain.bin", 5 * GiB + 1) is None


# -- end to end, against moto ------------------------------------------------------------------


@pytest.fixture
def proxy(moto_buckets: MotoBuckets) -> Iterator[FaultProxy]:
    with FaultProxy(moto_buckets.endpoint_url) as proxy:
        yield proxy


def job_through(proxy: FaultProxy, tool_env: dict[str, str], workdir: Path) -> ToolJob:
    """Both sides through the proxy, so that it sees (and counts) every request."""
    credentials = write_source_credentials(workdir / "source-credentials.json", FAKE_KEYS, proxy.endpoint_url)
    return ToolJob(workdir=workdir, env=tool_env, credentials=credentials, dest_endpoint_url=proxy.endpoint_url)


def uploads_created_for(proxy: FaultProxy, fragment: str) -> list[str]:
    return [seen.key for seen in proxy.counts.operations("CreateMultipartUpload") if fragment in seen.key]


@pytest.mark.parametrize("copy_mode", ["stream", "server-side"])
def test_a_large_object_whose_key_xml_cannot_carry_is_copied_with_one_put(
        proxy: FaultProxy, moto_buckets: MotoBuckets, tool_env: dict[str, str], tmp_path: Path,
        copy_mode: str) -> None:
    client, source, dest = moto_buckets.client, moto_buckets.source, moto_buckets.dest
    key = "bell\x07and\x1bescape.bin"
    client.put_object(Bucket=source, Key=key, Body=bytes(range(256)) * (2 * CHUNK_SIZE // 256 + 3),
                      ContentType="application/x-bell", Metadata={"kind": "bell"}, Tagging="odd=yes")
    client.put_object(Bucket=source, Key="plain.bin", Body=b"\x5a" * (2 * CHUNK_SIZE + 1))  # still in parts
    job = job_through(proxy, tool_env, tmp_path)

    result = job.run(f"s3://{source}", f"s3://{dest}/copy", "--copy-mode", copy_mode)

    assert result.returncode == 0, describe(result)
    assert uploads_created_for(proxy, "\x07") == []
    assert uploads_created_for(proxy, "plain.bin") == ["copy/plain.bin"]
    copied = object_snapshot(client, dest, "copy/")
    original = object_snapshot(client, source)
    assert copied == {f"copy/{name}": entry for name, entry in original.items()}  # bytes, headers, metadata, tags
    assert incomplete_uploads(client, dest) == []
    assert read_progress(job.progress_file)["summary"]["state"] == "complete"


def claimed_size(key: str, size: int) -> Callable[[Request, Forward], Answer]:
    """A listing that says ``key`` is ``size`` bytes (the object itself stays small): how a test shows
    the tool an object of many GiB, which it refuses from the listing alone."""

    def behaviour(request: Request, forward: Forward) -> Answer:
        answer = forward(request)
        if request.operation == "ListObjectsV2" and answer.status == 200:
            def resize(match: "re.Match[str]") -> str:
                listed = urllib.parse.unquote_plus(re.search(r"<Key>([^<]*)</Key>", match[0])[1])
                return re.sub(r"<Size>\d+</Size>", f"<Size>{size}</Size>", match[0]) if listed == key else match[0]

            answer.body = re.sub(r"<Contents>.*?</Contents>", resize, answer.body.decode(), flags=re.DOTALL).encode()
        return answer

    return behaviour


def test_a_key_xml_cannot_carry_over_5_gib_is_refused_before_any_upload_and_the_dry_run_says_so(
        proxy: FaultProxy, moto_buckets: MotoBuckets, tool_env: dict[str, str], tmp_path: Path) -> None:
    client, source, dest = moto_buckets.client, moto_buckets.source, moto_buckets.dest
    huge, large = "huge\x07.bin", "large\x07.bin"
    client.put_object(Bucket=source, Key=huge, Body=b"\x00" * 1024)
    client.put_object(Bucket=source, Key=large, Body=b"\x01" * (MULTIPART_THRESHOLD + 3))
    client.put_object(Bucket=source, Key="ok.txt", Body=b"fine")
    proxy.behave(claimed_size(huge, 6 * GiB))
    job = job_through(proxy, tool_env, tmp_path)

    planned = job.run(f"s3://{source}", f"s3://{dest}", "--dry-run")

    assert planned.returncode == 0, describe(planned)
    assert '  cannot copy "huge\\u0007.bin": its key contains U+0007' in planned.stdout, describe(planned)
    assert "multipart:    0 objects" in planned.stdout and "single PUT: 2" in planned.stdout, describe(planned)

    result = job.run(f"s3://{source}", f"s3://{dest}")

    assert result.returncode == 1, describe(result)
    failures = failure_lines(result)
    assert list(failures) == [huge], describe(result)
    assert "XML 1.0" in failures[huge] and "5 GiB" in failures[huge] and "6.0 GiB" in failures[huge]
    assert uploads_created_for(proxy, "\x07") == []
    assert sorted(seen.key for seen in proxy.counts.operations("PutObject")) == sorted([large, "ok.txt"])
    assert sorted(object_snapshot(client, dest)) == sorted([large, "ok.txt"])
    assert incomplete_uploads(client, dest) == []


def test_an_orphaned_upload_is_found_among_uploads_whose_keys_xml_cannot_carry(
        proxy: FaultProxy, moto_buckets: MotoBuckets, tool_env: dict[str, str], tmp_path: Path) -> None:
    """A kill -9 between CreateMultipartUpload and the progress save leaves an upload no progress file
    records; the next upload of that key lists the uploads under it to abort that one. Another
    upload under the same prefix, of a key XML cannot carry, must not make that listing unreadable."""
    client, source, dest = moto_buckets.client, moto_buckets.source, moto_buckets.dest
    client.put_object(Bucket=source, Key="big", Body=b"\x5a" * (2 * CHUNK_SIZE + 7))
    orphan = client.create_multipart_upload(Bucket=dest, Key="copy/big")["UploadId"]
    client.upload_part(Bucket=dest, Key="copy/big", UploadId=orphan, PartNumber=1, Body=b"\x00" * CHUNK_SIZE)
    proxy.behave(UploadsListedAsS3Lists(dest, foreign_key="copy/big\x07.part"))
    job = job_through(proxy, tool_env, tmp_path)

    result = job.run(f"s3://{source}", f"s3://{dest}/copy")

    assert result.returncode == 0, describe(result)
    assert object_snapshot(client, dest, "copy/")["copy/big"]["md5"] == object_snapshot(client, source)["big"]["md5"]
    assert incomplete_uploads(client, dest) == []
    assert "no progress file records" in job.log_text()
    [listing] = proxy.counts.operations("ListMultipartUploads")
    assert listing.query.get("encoding-type") == ["url"]
