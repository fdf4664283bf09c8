"""--copy-mode: S3 copies server-side where the destination's keys may read the source, the tool
streams where they may not, and ``auto`` finds out which; and what S3 does to server-side copies
that the local servers do not (the last tests, against moto behind tests/aws_behaviour.py).

SeaweedFS plays the accounts as in test_cross_account.py. Its ``dest_reads_source``
identity stands for destination keys that may also read the source (one account, or a
bucket policy granting the destination account): the one case where CopyObject and
UploadPartCopy can work. The ``dest`` identity may not read the source, as across accounts.
"""

from __future__ import annotations

import datetime
import uuid
from pathlib import Path
from typing import Any

import pytest
from aws_behaviour import CopyKeepsNoWebsiteRedirect, SseKmsBucket
from conftest import FAKE_KEYS
from fault_proxy import FaultProxy
from s3servers import DEST_BUCKET, SOURCE_BUCKET, MotoBuckets, SeaweedServer, incomplete_uploads, object_snapshot
from test_cross_account import CrossAccount
from toolcli import ToolJob, assert_usage_error, describe, error_lines, write_source_credentials
from units import KIB, MIB
from uploads import body, etag_of, md5_hex, plain_client, upload, upload_parts, verified_by

SERVER_SIDE_LINE = "Copied server-side by S3, no byte through this machine: 5 objects"
FALLBACK_LINE = "copy mode: streaming from now on (auto), because S3 refused a server-side copy"


@pytest.fixture
def accounts(seaweed: SeaweedServer, tool_env: dict[str, str], tmp_path: Path) -> CrossAccount:
    return CrossAccount(server=seaweed, prefix=f"modes-{uuid.uuid4().hex[:10]}/", workdir=tmp_path,
                        base_env=tool_env)


def put_mixed_objects(accounts: CrossAccount) -> None:
    """Three small objects with headers, metadata and tags; one object uploaded in four parts with
    CRC32 part checksums (copied along its own parts); one 13 MiB single PUT, above the 6 MiB
    threshold (copied in parts). boto3 gives the PUTs a CRC32 of their own."""
    for index in range(3):
        accounts.put(f"small/{index}.txt", body(1_000 + index, seed=index), ContentType="text/plain",
                     CacheControl="max-age=60", Metadata={"index": str(index)}, Tagging=f"n={index}")
    # The CRC32 is also what SeaweedFS needs: see test_parts_that_do_not_make_the_source_etag_are_never_completed.
    upload_parts(accounts.server.client(accounts.server.admin), SOURCE_BUCKET, accounts.prefix + "big/parts.bin",
                 body(17 * MIB, seed=10), [5 * MIB, 5 * MIB, 5 * MIB, 2 * MIB], checksum_algorithm="CRC32",
                 ContentType="application/x-parts", Metadata={"kind": "parts"}, Tagging="size=large")
    accounts.put("big/single.bin", body(13 * MIB, seed=11), Metadata={"kind": "single"})


def test_server_side_copy_is_identical_and_keeps_the_source_etag(accounts: CrossAccount) -> None:
    put_mixed_objects(accounts)
    job = accounts.job(accounts.server.source, accounts.server.dest_reads_source, copy_mode="server-side")

    result = job.run(accounts.source_uri, accounts.destination_uri)

    assert result.returncode == 0, describe(result)
    assert accounts.destination_snapshot() == accounts.source_snapshot()
    admin = accounts.server.client(accounts.server.admin)
    key = accounts.prefix + "big/parts.bin"
    assert etag_of(admin, DEST_BUCKET, key) == etag_of(admin, SOURCE_BUCKET, key)
    assert accounts.destination_uploads() == []
    assert SERVER_SIDE_LINE in result.stdout
    # Each copy is proven as far as S3 lets a server-side copy be: the small objects by their MD5
    # ETag, the parts by the ETag they make, the single PUT by S3 checking its full-object CRC32.
    assert verified_by(job.log_text()) == {
        **{f"{accounts.prefix}small/{index}.txt": "md5" for index in range(3)},
        key: "etag",
        accounts.prefix + "big/single.bin": "checksum",
    }


def test_auto_copies_server_side_when_the_destination_keys_may_read_the_source(accounts: CrossAccount) -> None:
    put_mixed_objects(accounts)
    job = accounts.job(accounts.server.source, accounts.server.dest_reads_source, copy_mode="auto")

    result = job.run(accounts.source_uri, accounts.destination_uri)

    assert result.returncode == 0, describe(result)
    assert accounts.destination_snapshot() == accounts.source_snapshot()
    assert SERVER_SIDE_LINE in result.stdout
    log = job.log_text()
    assert "copy mode: server-side first (auto)" in log
    assert FALLBACK_LINE not in log


def test_auto_streams_when_the_destination_keys_may_not_read_the_source(accounts: CrossAccount) -> None:
    put_mixed_objects(accounts)
    job = accounts.job(accounts.server.source, accounts.server.dest, copy_mode="auto")

    result = job.run(accounts.source_uri, accounts.destination_uri)

    assert result.returncode == 0, describe(result)
    assert accounts.destination_snapshot() == accounts.source_snapshot()
    assert accounts.destination_uploads() == []  # the refused server-side upload was aborted
    assert "Copied server-side" not in result.stdout
    assert FALLBACK_LINE in job.log_text()
    assert error_lines(result.stderr) == []  # falling back is not an error


def test_server_side_refused_stops_with_a_sentence(accounts: CrossAccount) -> None:
    for index in range(4):
        accounts.put(f"small/{index}.txt", body(100, seed=index))
    job = accounts.job(accounts.server.source, accounts.server.dest, copy_mode="server-side")

    result = job.run(accounts.source_uri, accounts.destination_uri)

    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr
    last = error_lines(result.stderr)[-1]
    assert "S3 refused the server-side copy (AccessDenied)" in last
    assert "s3:GetObject" in last and "--copy-mode stream" in last
    assert accounts.destination_snapshot() == {}


def test_parts_that_do_not_make_the_source_etag_are_never_completed(accounts: CrossAccount) -> None:
    # A real server answering wrong: SeaweedFS's UploadPartCopy into an upload created without a
    # checksum algorithm returns, for the first part, an ETag that is not the part's MD5 (it ends
    # in -N), and the object it completes has an ETag that is not the source's. S3 returns each
    # part's MD5. The check before completion must refuse the copy, not complete it.
    admin = accounts.server.client(accounts.server.admin)
    upload_parts(admin, SOURCE_BUCKET, accounts.prefix + "no-checksum.bin", body(11 * MIB, seed=3),
                 [5 * MIB, 5 * MIB, 1 * MIB])
    job = accounts.job(accounts.server.source, accounts.server.dest_reads_source, copy_mode="server-side")

    result = job.run(accounts.source_uri, accounts.destination_uri)

    assert result.returncode == 1, describe(result)
    assert "integrity mismatch: the parts S3 copied make the ETag" in result.stderr
    assert accounts.destination_snapshot() == {}
    assert accounts.destination_uploads() == []


def test_server_side_needs_both_buckets_on_one_endpoint(accounts: CrossAccount) -> None:
    job = accounts.job(accounts.server.source, accounts.server.dest_reads_source, copy_mode="server-side")
    # Another spelling of the server's address is, as far as the tool can know, another service.
    other = accounts.server.endpoint_url.replace("127.0.0.1", "localhost")
    write_source_credentials(job.credentials, accounts.server.source, other)

    result = job.run(accounts.source_uri, accounts.destination_uri)

    assert_usage_error(result, "--copy-mode server-side needs both buckets on one S3 endpoint", "--copy-mode stream")


# -- what S3 does that SeaweedFS and moto do not (tests/aws_behaviour.py), in front of moto ----------


def headers_of_every_kind(index: int) -> dict[str, Any]:
    """Every header the tool promises to carry over (docs/design.md, "Preserved"), with metadata and tags."""
    return {"ContentType": "text/x-test", "ContentEncoding": "identity", "ContentDisposition": f'attachment; n="{index}"',
            "ContentLanguage": "de-CH", "CacheControl": "max-age=60", "WebsiteRedirectLocation": f"/elsewhere/{index}",
            "Expires": datetime.datetime(2031, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc),
            "Metadata": {"index": str(index), "kind": "every-header"}, "Tagging": f"n={index}&k=v"}


@pytest.mark.parametrize("copy_mode", ["stream", "server-side"])
def test_every_preserved_header_arrives_whichever_way_the_bytes_travel(
        copy_mode: str, moto_buckets: MotoBuckets, tool_env: dict[str, str], tmp_path: Path) -> None:
    """S3 does not copy a website redirect under CopyObject's COPY directive unless the request names
    it; moto does, so the proxy answers as S3 would (CopyKeepsNoWebsiteRedirect)."""
    client, src, dst = moto_buckets.client, moto_buckets.source, moto_buckets.dest
    client.put_object(Bucket=src, Key="small.txt", Body=body(3 * KIB, seed=1), **headers_of_every_kind(1))
    upload_parts(client, src, "large.bin", body(12 * MIB, seed=2), [6 * MIB, 6 * MIB], **headers_of_every_kind(2))
    with FaultProxy(moto_buckets.endpoint_url) as proxy:
        proxy.behave(CopyKeepsNoWebsiteRedirect())
        job = ToolJob(workdir=tmp_path, env=tool_env, dest_endpoint_url=proxy.endpoint_url, copy_mode=copy_mode,
                      credentials=write_source_credentials(tmp_path / "creds.json", FAKE_KEYS, proxy.endpoint_url))
        result = job.run(f"s3://{src}", f"s3://{dst}")

    assert result.returncode == 0, describe(result)
    copied, source = object_snapshot(client, dst), object_snapshot(client, src)
    assert copied == source
    assert {key: entry["website_redirect_location"] for key, entry in copied.items()} == {
        "small.txt": "/elsewhere/1", "large.bin": "/elsewhere/2"}
    assert incomplete_uploads(client, dst) == []
    if copy_mode == "server-side":  # a redirect asked for by name: the behaviour really stood in the way
        copies = proxy.counts.operations("CopyObject")
        assert [dict(seen.headers).get("x-amz-website-redirect-location") for seen in copies] == ["/elsewhere/1"]


def test_server_side_copies_into_an_sse_kms_bucket_are_proven_by_checksum_or_size_not_failed(
        moto_buckets: MotoBuckets, tool_env: dict[str, str], tmp_path: Path) -> None:
    """A destination whose default encryption is SSE-KMS gives every copy and copied part an ETag that
    is no MD5, whatever the command line says (no --sse here): the copies must not be failed for it,
    and are proven by what S3 answers instead."""
    client, src, dst = moto_buckets.client, moto_buckets.source, moto_buckets.dest
    plain = plain_client(moto_buckets.endpoint_url)  # no CRC32 of botocore's own: nothing but the ETag
    data = {"plain.txt": body(2 * KIB, seed=3), "crc32.txt": body(2 * KIB, seed=4),
            "parts.bin": body(12 * MIB, seed=5)}
    upload(plain, src, "plain.txt", data["plain.txt"])
    client.put_object(Bucket=src, Key="crc32.txt", Body=data["crc32.txt"], ChecksumAlgorithm="CRC32")
    upload_parts(plain, src, "parts.bin", data["parts.bin"], [6 * MIB, 6 * MIB])
    with FaultProxy(moto_buckets.endpoint_url) as proxy:
        proxy.behave(SseKmsBucket(dst))
        job = ToolJob(workdir=tmp_path, env=tool_env, dest_endpoint_url=proxy.endpoint_url, copy_mode="server-side",
                      credentials=write_source_credentials(tmp_path / "creds.json", FAKE_KEYS, proxy.endpoint_url))
        result = job.run(f"s3://{src}", f"s3://{dst}")

    assert result.returncode == 0, describe(result)
    copied = object_snapshot(client, dst)
    assert {key: entry["md5"] for key, entry in copied.items()} == {key: md5_hex(value) for key, value in data.items()}
    assert incomplete_uploads(client, dst) == []
    log = job.log_text()
    assert verified_by(log) == {"plain.txt": "size-only", "crc32.txt": "checksum", "parts.bin": "size-only"}, log
    assert "an ETag is not an MD5 (SSE-KMS, DSSE-KMS or SSE-C" in log
    assert "whose encryption (SSE-KMS or SSE-C) makes part ETags no MD5s" in log
    # The checksum was asked for by name, so that S3 computed it for the bytes it copied.
    assert [dict(seen.headers).get("x-amz-checksum-algorithm") for seen in proxy.counts.operations("CopyObject")
            if seen.key == "crc32.txt"] == ["CRC32"]
