"""Putting source objects with a chosen part layout, and predicting the ETags S3 gives them.

Shared by test_integrity.py and test_audit.py. Uploads go through a client with botocore's
default CRC32 switched off (``request_checksum_calculation="when_required"``): the objects then
carry no additional checksum, so a damaged GET body can only be caught by the tool's own
MD5 / ETag check, never by botocore's response checksum validation.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
from typing import Any, Optional

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.client import BaseClient
from botocore.config import Config
from conftest import FAKE_KEYS

# A log line for one copied object ends with how it was verified:
#   ... INFO copied "KEY" 20.0 MiB in 0.52 s (38.3 MiB/s), verified by etag
_VERIFIED_LINE = re.compile(r' INFO copied ("(?:[^"\\]|\\.)*") .*, verified by (\S+)')


def plain_client(endpoint_url: str) -> BaseClient:
    """A path-style client that adds no CRC32 to uploads (only what S3 requires)."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=FAKE_KEYS.access_key,
        aws_secret_access_key=FAKE_KEYS.secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required"),
    )


def body(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def upload(client: BaseClient, bucket: str, key: str, data: bytes, *, part_size: Optional[int] = None) -> str:
    """PutObject (part_size None) or a multipart upload in equal parts of part_size, as boto3's
    upload_fileobj does it; returns the ETag S3 gave the object, unquoted."""
    if part_size is None:
        client.put_object(Bucket=bucket, Key=key, Body=data)
    else:
        config = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size, max_concurrency=4)
        client.upload_fileobj(io.BytesIO(data), bucket, key, Config=config)
    return client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')


def upload_parts(client: BaseClient, bucket: str, key: str, data: bytes, sizes: list[int], *,
                 checksum_algorithm: Optional[str] = None, **attributes: Any) -> str:
    """A multipart upload with exactly these part sizes (they need not be equal), each part with a
    checksum of checksum_algorithm (computed by botocore) if one is given."""
    assert sum(sizes) == len(data)
    checksum = {"ChecksumAlgorithm": checksum_algorithm} if checksum_algorithm else {}
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, **checksum, **attributes)["UploadId"]
    parts, start = [], 0
    for number, size in enumerate(sizes, start=1):
        response = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                      Body=data[start:start + size], **checksum)
        part = {"PartNumber": number, "ETag": response["ETag"]}
        if checksum_algorithm:
            part[f"Checksum{checksum_algorithm}"] = response[f"Checksum{checksum_algorithm}"]
        parts.append(part)
        start += size
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
    return client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # noqa: S324 - S3's ETag algorithm


def multipart_etag(data: bytes, part_size: int | tuple[int, ...]) -> str:
    """The ETag S3 gives `data` uploaded in parts of part_size, or of exactly these sizes: MD5 of
    the part MD5s, then -N."""
    sizes = (part_size,) * -(-len(data) // part_size) if isinstance(part_size, int) else part_size
    starts = [sum(sizes[:index]) for index in range(len(sizes))]
    digests = [hashlib.md5(data[start:start + size]).digest()  # noqa: S324
               for start, size in zip(starts, sizes)]
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"  # noqa: S324


def etag_of(client: BaseClient, bucket: str, key: str) -> str:
    return client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')


def verified_by(log_text: str) -> dict[str, str]:
    """key -> the method its "copied" log line says it was verified by (the last line per key)."""
    return {json.loads(match.group(1)): match.group(2) for match in _VERIFIED_LINE.finditer(log_text)}
