"""Smoke tests of the local S3 servers the rest of the suite rests on.

The SeaweedFS tests pin down the permission model documented in
``s3servers._IDENTITY_ACTIONS``: if a SeaweedFS upgrade changes which action
an operation needs, they fail here rather than as a puzzling tool failure.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError
from s3servers import (
    DEST_BUCKET,
    SOURCE_BUCKET,
    MotoBuckets,
    SeaweedServer,
    incomplete_uploads,
    object_snapshot,
)
from units import MIB


def assert_denied(operation: Callable[[], Any]) -> None:
    """Assert that SeaweedFS refuses ``operation`` for lack of permission.

    Refused HEAD requests carry no error body, so they surface as a bare "403".
    """
    with pytest.raises(ClientError) as caught:
        operation()
    assert caught.value.response["Error"]["Code"] in {"AccessDenied", "403"}


def unique_prefix() -> str:
    """A key prefix of the test's own, since the SeaweedFS buckets are shared by the session."""
    return f"smoke-{uuid.uuid4().hex[:8]}/"


def test_moto_round_trip_with_metadata_and_tags(moto_buckets: MotoBuckets) -> None:
    client = moto_buckets.client
    client.put_object(
        Bucket=moto_buckets.source,
        Key="a b/ü.txt",
        Body=b"hello",
        ContentType="text/plain",
        CacheControl="max-age=60",
        Metadata={"origin": "test"},
        Tagging="team=blue",
    )
    snapshot = object_snapshot(client, moto_buckets.source)
    assert snapshot == {
        "a b/ü.txt": {
            "md5": "5d41402abc4b2a76b9719d911017c592",
            "size": 5,
            "content_type": "text/plain",
            "content_encoding": None,
            "content_disposition": None,
            "content_language": None,
            "cache_control": "max-age=60",
            "expires": None,
            "website_redirect_location": None,
            "metadata": {"origin": "test"},
            "tags": {"team": "blue"},
        }
    }
    assert object_snapshot(client, moto_buckets.dest) == {}
    assert incomplete_uploads(client, moto_buckets.dest) == []


def test_tool_env_is_hermetic(tool_env: dict[str, str]) -> None:
    assert tool_env["AWS_ACCESS_KEY_ID"] == "testing"
    assert tool_env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert "AWS_PROFILE" not in tool_env
    assert not [name for name in tool_env if name.startswith("AWS_ENDPOINT_URL")]
    assert not Path(tool_env["AWS_CONFIG_FILE"]).exists()


def test_seaweed_admin_sees_both_buckets(seaweed: SeaweedServer) -> None:
    names = {bucket["Name"] for bucket in seaweed.client(seaweed.admin).list_buckets()["Buckets"]}
    assert {SOURCE_BUCKET, DEST_BUCKET} <= names


@pytest.fixture
def source_object(seaweed: SeaweedServer) -> str:
    """A tagged object in the source bucket, written by the admin."""
    key = unique_prefix() + "object.bin"
    seaweed.client(seaweed.admin).put_object(
        Bucket=SOURCE_BUCKET, Key=key, Body=b"payload", Metadata={"k": "v"}, Tagging="t=1"
    )
    return key


def test_seaweed_source_reads_source_and_nothing_else(seaweed: SeaweedServer, source_object: str) -> None:
    source = seaweed.client(seaweed.source)
    source.head_bucket(Bucket=SOURCE_BUCKET)
    keys = [entry["Key"] for entry in source.list_objects_v2(Bucket=SOURCE_BUCKET, Prefix=source_object)["Contents"]]
    assert keys == [source_object]
    assert source.get_object(Bucket=SOURCE_BUCKET, Key=source_object, Range="bytes=0-2")["Body"].read() == b"pay"
    assert source.head_object(Bucket=SOURCE_BUCKET, Key=source_object)["Metadata"] == {"k": "v"}
    assert source.get_object_tagging(Bucket=SOURCE_BUCKET, Key=source_object)["TagSet"] == [{"Key": "t", "Value": "1"}]
    # Read-only on its own bucket, tags included ...
    assert_denied(lambda: source.put_object(Bucket=SOURCE_BUCKET, Key=source_object, Body=b"x"))
    assert_denied(lambda: source.delete_object(Bucket=SOURCE_BUCKET, Key=source_object))
    assert_denied(
        lambda: source.put_object_tagging(
            Bucket=SOURCE_BUCKET, Key=source_object, Tagging={"TagSet": [{"Key": "t", "Value": "2"}]}
        )
    )
    # ... and no access at all to the destination.
    assert_denied(lambda: source.put_object(Bucket=DEST_BUCKET, Key=unique_prefix() + "x", Body=b"x"))
    assert_denied(lambda: source.list_objects_v2(Bucket=DEST_BUCKET))
    assert_denied(lambda: source.head_bucket(Bucket=DEST_BUCKET))


def run_tagged_multipart_upload(client: BaseClient, key: str) -> None:
    """Every multipart call a resumable copier makes, tags and metadata included."""
    upload_id = client.create_multipart_upload(
        Bucket=DEST_BUCKET, Key=key, ContentType="application/x-test", Metadata={"m": "1"}, Tagging="t=mpu"
    )["UploadId"]
    first = client.upload_part(Bucket=DEST_BUCKET, Key=key, UploadId=upload_id, PartNumber=1, Body=b"a" * 5 * MIB)
    last = client.upload_part(Bucket=DEST_BUCKET, Key=key, UploadId=upload_id, PartNumber=2, Body=b"b")
    assert [upload["UploadId"] for upload in incomplete_uploads(client, DEST_BUCKET) if upload["Key"] == key] == [
        upload_id
    ]
    parts = client.list_parts(Bucket=DEST_BUCKET, Key=key, UploadId=upload_id)["Parts"]
    assert [(part["PartNumber"], part["Size"]) for part in parts] == [(1, 5 * MIB), (2, 1)]
    client.complete_multipart_upload(
        Bucket=DEST_BUCKET,
        Key=key,
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": first["ETag"]}, {"PartNumber": 2, "ETag": last["ETag"]}]},
    )


def test_seaweed_dest_writes_dest_but_cannot_read_source(seaweed: SeaweedServer, source_object: str) -> None:
    dest = seaweed.client(seaweed.dest)
    prefix = unique_prefix()
    dest.head_bucket(Bucket=DEST_BUCKET)
    dest.put_object(Bucket=DEST_BUCKET, Key=prefix + "small", Body=b"small", Metadata={"m": "2"}, Tagging="t=small")
    run_tagged_multipart_upload(dest, prefix + "large")
    aborted = dest.create_multipart_upload(Bucket=DEST_BUCKET, Key=prefix + "aborted")["UploadId"]
    dest.abort_multipart_upload(Bucket=DEST_BUCKET, Key=prefix + "aborted", UploadId=aborted)

    snapshot = object_snapshot(seaweed.client(seaweed.admin), DEST_BUCKET, prefix)
    assert sorted(snapshot) == [prefix + "large", prefix + "small"]
    assert (snapshot[prefix + "small"]["metadata"], snapshot[prefix + "small"]["tags"]) == ({"m": "2"}, {"t": "small"})
    large = snapshot[prefix + "large"]
    assert (large["size"], large["content_type"]) == (5 * MIB + 1, "application/x-test")
    assert (large["metadata"], large["tags"]) == ({"m": "1"}, {"t": "mpu"})
    assert not [upload for upload in incomplete_uploads(dest, DEST_BUCKET) if upload["Key"].startswith(prefix)]

    assert_denied(lambda: dest.get_object(Bucket=SOURCE_BUCKET, Key=source_object))
    assert_denied(lambda: dest.head_object(Bucket=SOURCE_BUCKET, Key=source_object))
    assert_denied(lambda: dest.list_objects_v2(Bucket=SOURCE_BUCKET))
    assert_denied(
        lambda: dest.copy_object(
            Bucket=DEST_BUCKET, Key=prefix + "copy", CopySource={"Bucket": SOURCE_BUCKET, "Key": source_object}
        )
    )
    assert_denied(lambda: dest.create_bucket(Bucket=f"new-{uuid.uuid4().hex[:8]}"))


def test_seaweed_source_no_list_is_denied_listing_only(seaweed: SeaweedServer, source_object: str) -> None:
    client = seaweed.client(seaweed.source_no_list)
    assert client.get_object(Bucket=SOURCE_BUCKET, Key=source_object)["Body"].read() == b"payload"
    client.get_object_tagging(Bucket=SOURCE_BUCKET, Key=source_object)
    client.head_bucket(Bucket=SOURCE_BUCKET)
    assert_denied(lambda: client.list_objects_v2(Bucket=SOURCE_BUCKET))


def test_seaweed_source_no_read_is_denied_reading_only(seaweed: SeaweedServer, source_object: str) -> None:
    client = seaweed.client(seaweed.source_no_read)
    assert client.list_objects_v2(Bucket=SOURCE_BUCKET, Prefix=source_object)["KeyCount"] == 1
    assert_denied(lambda: client.get_object(Bucket=SOURCE_BUCKET, Key=source_object))
    assert_denied(lambda: client.head_object(Bucket=SOURCE_BUCKET, Key=source_object))
    assert_denied(lambda: client.get_object_tagging(Bucket=SOURCE_BUCKET, Key=source_object))
    assert_denied(lambda: client.head_bucket(Bucket=SOURCE_BUCKET))


def test_seaweed_dest_no_write_is_denied_writing_only(seaweed: SeaweedServer) -> None:
    client = seaweed.client(seaweed.dest_no_write)
    key = unique_prefix() + "object"
    client.head_bucket(Bucket=DEST_BUCKET)
    client.list_objects_v2(Bucket=DEST_BUCKET)
    incomplete_uploads(client, DEST_BUCKET)
    assert_denied(lambda: client.put_object(Bucket=DEST_BUCKET, Key=key, Body=b"x"))
    assert_denied(lambda: client.create_multipart_upload(Bucket=DEST_BUCKET, Key=key))


def test_two_seaweed_servers_run_side_by_side(seaweed: SeaweedServer) -> None:
    with SeaweedServer() as second:
        assert second.endpoint_url != seaweed.endpoint_url
        second.client(second.admin).put_object(Bucket=SOURCE_BUCKET, Key="only-here", Body=b"2")
        assert seaweed.client(seaweed.admin).list_objects_v2(Bucket=SOURCE_BUCKET, Prefix="only-here")["KeyCount"] == 0
        data_dir = second.log_path.parent
    assert not data_dir.exists()
