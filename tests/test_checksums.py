"""Additional checksums (CRC32, CRC32C, CRC64NVME, SHA1, SHA256) survive a cross-account copy.

Against SeaweedFS (4.48), which stores additional checksums, returns them with
HeadObject(ChecksumMode=ENABLED), gives multipart uploads a COMPOSITE value ``xxx==-N`` and keeps a
FULL_OBJECT CRC of a multipart upload completed with one. moto is not used here: its HeadObject
drops the ``-N`` of composite values and it validates no checksum values.

One copy run moves every source object of this module (the runs cost seconds, the uploads more),
the tests then inspect what it left behind. As in test_cross_account.py, the sources are uploaded
by the ``admin`` identity, the tool reads with the ``source`` identity (credentials file) and writes
with the ``dest`` identity (environment), and everything lives under a key prefix of its own.

The expected checksums are computed here from the bytes, independently of the tool: zlib for CRC32,
hashlib for SHA1/SHA256, awscrt for CRC32C/CRC64NVME; a composite value is the checksum of the
concatenated part checksums followed by ``-N``.

SeaweedFS accepted all five algorithms on PutObject when this was written; a small object whose
upload SeaweedFS refuses is skipped with the reason rather than failed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import subprocess
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from botocore.client import BaseClient
from botocore.exceptions import ClientError
from s3servers import DEST_BUCKET, SOURCE_BUCKET, SeaweedServer, incomplete_uploads, object_snapshot
from toolcli import ToolJob, describe, write_source_credentials
from units import MIB

awscrt_checksums = pytest.importorskip("awscrt.checksums", reason="CRC32C / CRC64NVME need awscrt (requirements.txt)")

# The sizes the brief fixes; appended after ToolJob's own size arguments, so they win.
CHUNK = 5 * MIB
SIZES = ["--chunk-size", "5MiB", "--multipart-threshold", "15MiB"]

SMALL_ALGORITHMS = ("SHA256", "CRC32", "CRC32C", "SHA1", "CRC64NVME")

# Case 2: one PutObject above the threshold, with boto3's default CRC32 (a FULL_OBJECT value).
LARGE_SINGLE = "large-single.bin"
LARGE_SINGLE_SIZE = 21 * MIB
# Case 3: 5 MiB parts with SHA256, small enough (<= 4 x chunk) to be copied along the same parts.
SHA256_PARTS = "multipart-sha256.bin"
SHA256_PARTS_SIZE = 4 * CHUNK + 2 * MIB
SHA256_PART_SIZE = 5 * MIB
# Case 4: 25 MiB parts with CRC32, larger than the memory limit: kept all the same, each copied alone.
CRC32_PARTS = "multipart-crc32.bin"
CRC32_PARTS_SIZE = 35 * MIB
CRC32_PART_SIZE = 25 * MIB

# ... INFO copied "KEY" 21.0 MiB in 0.52 s (38.3 MiB/s), verified by md5 and CRC32
_VERIFIED_LINE = re.compile(r' INFO copied ("(?:[^"\\]|\\.)*") .*, (verified by .*)$', re.MULTILINE)


# -- checksums computed here, without the tool -------------------------------------------------

def _crc(function: Callable[[bytes, int], int], width: int) -> Callable[[bytes], bytes]:
    return lambda data: function(data, 0).to_bytes(width, "big")


RAW_CHECKSUM: dict[str, Callable[[bytes], bytes]] = {
    "CRC32": _crc(zlib.crc32, 4),
    "CRC32C": _crc(awscrt_checksums.crc32c, 4),
    "CRC64NVME": _crc(awscrt_checksums.crc64nvme, 8),
    "SHA1": lambda data: hashlib.sha1(data).digest(),  # noqa: S324 - S3's algorithm
    "SHA256": lambda data: hashlib.sha256(data).digest(),
}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def full_checksum(algorithm: str, data: bytes) -> str:
    return b64(RAW_CHECKSUM[algorithm](data))


def composite_checksum(algorithm: str, data: bytes, part_size: int) -> str:
    parts = [RAW_CHECKSUM[algorithm](data[start:start + part_size]) for start in range(0, len(data), part_size)]
    return f"{b64(RAW_CHECKSUM[algorithm](b''.join(parts)))}-{len(parts)}"


def checksums_of(head: dict[str, Any]) -> dict[str, str]:
    """The Checksum* fields of a HeadObject response (value per algorithm, and ChecksumType if any)."""
    return {name: value for name, value in head.items() if name.startswith("Checksum")}


def upload_in_parts(client: BaseClient, bucket: str, key: str, data: bytes, part_size: int, algorithm: str, *,
                    full_object: bool = False) -> None:
    """A multipart upload in equal parts of part_size, each sent with its own checksum; completed
    with the full-object CRC when full_object, else left to S3 to make a COMPOSITE value."""
    extra = {"ChecksumType": "FULL_OBJECT"} if full_object else {}
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm=algorithm,
                                               **extra)["UploadId"]
    parts = []
    for number, start in enumerate(range(0, len(data), part_size), start=1):
        body = data[start:start + part_size]
        value = full_checksum(algorithm, body)
        etag = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body,
                                  **{f"Checksum{algorithm}": value})["ETag"]
        parts.append({"PartNumber": number, "ETag": etag, f"Checksum{algorithm}": value})
    completion = {"ChecksumType": "FULL_OBJECT", f"Checksum{algorithm}": full_checksum(algorithm, data)} \
        if full_object else {}
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts},
                                     **completion)


# -- the one copy run ------------------------------------------------------------------------------

@dataclass
class ChecksumCopy:
    server: SeaweedServer
    prefix: str
    root: Path
    env: dict[str, str]
    bodies: dict[str, bytes] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # small-object algorithm -> why SeaweedFS refused it
    result: subprocess.CompletedProcess[str] | None = None
    log: str = ""

    @property
    def admin(self) -> BaseClient:
        return self.server.client(self.server.admin)

    @property
    def source_uri(self) -> str:
        return f"s3://{SOURCE_BUCKET}/{self.prefix}"

    @property
    def destination_uri(self) -> str:
        return f"s3://{DEST_BUCKET}/{self.prefix}"

    def job(self, name: str) -> ToolJob:
        workdir = self.root / name
        workdir.mkdir()
        credentials = write_source_credentials(workdir / "source-credentials.json", self.server.source,
                                               self.server.endpoint_url)
        env = {**self.env, "AWS_ACCESS_KEY_ID": self.server.dest.access_key,
               "AWS_SECRET_ACCESS_KEY": self.server.dest.secret_key}
        return ToolJob(workdir=workdir, env=env, credentials=credentials, dest_endpoint_url=self.server.endpoint_url)

    def head(self, bucket: str, name: str) -> dict[str, Any]:
        return self.admin.head_object(Bucket=bucket, Key=self.prefix + name, ChecksumMode="ENABLED")

    def verified(self) -> dict[str, str]:
        """relative key -> the "verified by ..." tail of its copied line."""
        return {json.loads(match.group(1))[len(self.prefix):]: match.group(2)
                for match in _VERIFIED_LINE.finditer(self.log)}


def small_name(algorithm: str) -> str:
    return f"small/{algorithm.lower()}.txt"


@pytest.fixture(scope="module")
def copied(seaweed: SeaweedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChecksumCopy]:
    root = tmp_path_factory.mktemp("checksums")
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env.update(AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=str(root / "no-aws-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(root / "no-aws-credentials"), AWS_EC2_METADATA_DISABLED="true")
    setup = ChecksumCopy(server=seaweed, prefix=f"cksum-{uuid.uuid4().hex[:10]}/", root=root, env=env)
    admin = setup.admin

    for index, algorithm in enumerate(SMALL_ALGORITHMS):
        name = small_name(algorithm)
        data = f"small body checked by {algorithm}\n".encode() + random.Random(index).randbytes(1_000)
        # CRC32 is what boto3 adds by itself: that object is uploaded without naming an algorithm.
        arguments = {} if algorithm == "CRC32" else {"ChecksumAlgorithm": algorithm}
        try:
            admin.put_object(Bucket=SOURCE_BUCKET, Key=setup.prefix + name, Body=data, **arguments)
        except ClientError as error:
            setup.refused[algorithm] = str(error)
            continue
        setup.bodies[name] = data

    setup.bodies[LARGE_SINGLE] = random.Random(21).randbytes(LARGE_SINGLE_SIZE)
    admin.put_object(Bucket=SOURCE_BUCKET, Key=setup.prefix + LARGE_SINGLE, Body=setup.bodies[LARGE_SINGLE])
    setup.bodies[SHA256_PARTS] = random.Random(3).randbytes(SHA256_PARTS_SIZE)
    upload_in_parts(admin, SOURCE_BUCKET, setup.prefix + SHA256_PARTS, setup.bodies[SHA256_PARTS],
                    SHA256_PART_SIZE, "SHA256")
    setup.bodies[CRC32_PARTS] = random.Random(4).randbytes(CRC32_PARTS_SIZE)
    upload_in_parts(admin, SOURCE_BUCKET, setup.prefix + CRC32_PARTS, setup.bodies[CRC32_PARTS],
                    CRC32_PART_SIZE, "CRC32")

    job = setup.job("copy")
    setup.result = job.run(setup.source_uri, setup.destination_uri, *SIZES)
    setup.log = job.log_text()
    yield setup


def assert_copy_ran(copied: ChecksumCopy) -> None:
    assert copied.result is not None and copied.result.returncode == 0, describe(copied.result)


# -- the run as a whole -----------------------------------------------------------------------------

def test_copy_is_complete_and_identical(copied: ChecksumCopy) -> None:
    assert_copy_ran(copied)
    admin = copied.admin
    source = object_snapshot(admin, SOURCE_BUCKET, copied.prefix)
    destination = object_snapshot(admin, DEST_BUCKET, copied.prefix)
    assert len(source) == len(copied.bodies)
    assert {key[len(copied.prefix):]: value for key, value in destination.items()} == \
           {key[len(copied.prefix):]: value for key, value in source.items()}
    assert [upload for upload in incomplete_uploads(admin, DEST_BUCKET) if upload["Key"].startswith(copied.prefix)] \
        == []
    smalls = len(copied.bodies) - 3
    # md5: the small objects and the large single-part one; etag: both multipart sources.
    report = f"Verified before completing: {smalls + 1} by md5, 2 by etag, 0 by checksum, 0 by size-only."
    assert report in copied.result.stdout.splitlines(), describe(copied.result)


# -- 1. small objects: same algorithm and value -----------------------------------------------------

@pytest.mark.parametrize("algorithm", SMALL_ALGORITHMS)
def test_small_object_keeps_algorithm_and_value(copied: ChecksumCopy, algorithm: str) -> None:
    if algorithm in copied.refused:
        pytest.skip(f"SeaweedFS refused a PutObject with {algorithm}: {copied.refused[algorithm]}")
    assert_copy_ran(copied)
    name = small_name(algorithm)
    expected = full_checksum(algorithm, copied.bodies[name])
    source = checksums_of(copied.head(SOURCE_BUCKET, name))
    assert source.get(f"Checksum{algorithm}") == expected  # what the source really carries

    destination = checksums_of(copied.head(DEST_BUCKET, name))

    assert destination == source
    assert copied.verified()[name] == f"verified by md5 and {algorithm}"


# -- 2. a large single-part object: copied in parts, full-object CRC32 kept ---------------------------

def test_large_single_part_object_keeps_full_object_crc32(copied: ChecksumCopy) -> None:
    assert_copy_ran(copied)
    expected = full_checksum("CRC32", copied.bodies[LARGE_SINGLE])
    source_head = copied.head(SOURCE_BUCKET, LARGE_SINGLE)
    assert source_head.get("ChecksumCRC32") == expected
    assert "-" not in source_head["ETag"]

    destination_head = copied.head(DEST_BUCKET, LARGE_SINGLE)

    assert destination_head["ETag"].strip('"').endswith("-5")  # 21 MiB in 5 MiB parts
    assert destination_head.get("ChecksumType") == "FULL_OBJECT"
    assert destination_head.get("ChecksumCRC32") == expected
    assert "started multipart upload of " + json.dumps(copied.prefix + LARGE_SINGLE) in copied.log
    assert copied.verified()[LARGE_SINGLE] == "verified by md5 and CRC32"


# -- 3. multipart SHA256 in parts that fit: ETag and composite value identical --------------------------

def test_multipart_sha256_source_is_copied_along_its_parts(copied: ChecksumCopy) -> None:
    assert_copy_ran(copied)
    expected = composite_checksum("SHA256", copied.bodies[SHA256_PARTS], SHA256_PART_SIZE)
    source_head = copied.head(SOURCE_BUCKET, SHA256_PARTS)
    assert source_head.get("ChecksumSHA256") == expected
    assert source_head.get("ChecksumType") == "COMPOSITE"

    destination_head = copied.head(DEST_BUCKET, SHA256_PARTS)

    assert destination_head["ETag"] == source_head["ETag"]
    assert destination_head.get("ChecksumSHA256") == expected
    assert destination_head.get("ChecksumType") == "COMPOSITE"
    assert copied.verified()[SHA256_PARTS] == "verified by etag and SHA256"


# -- 4. multipart CRC32 in parts larger than the memory limit: kept, so ETag and composite value identical

def test_multipart_crc32_source_with_large_parts_keeps_them(copied: ChecksumCopy) -> None:
    assert_copy_ran(copied)
    data = copied.bodies[CRC32_PARTS]
    source_head = copied.head(SOURCE_BUCKET, CRC32_PARTS)
    assert source_head.get("ChecksumCRC32") == composite_checksum("CRC32", data, CRC32_PART_SIZE)

    destination_head = copied.head(DEST_BUCKET, CRC32_PARTS)

    assert destination_head["ETag"] == source_head["ETag"]  # 35 MiB in its own 25 + 10 MiB parts
    assert destination_head.get("ChecksumType") == "COMPOSITE"
    assert destination_head.get("ChecksumCRC32") == source_head["ChecksumCRC32"]
    assert f'"{copied.prefix + CRC32_PARTS}" keeps its source\'s parts of up to 25.0 MiB' in copied.log
    got = copied.admin.get_object(Bucket=DEST_BUCKET, Key=copied.prefix + CRC32_PARTS)["Body"].read()
    assert got == data
    assert copied.verified()[CRC32_PARTS] == "verified by etag and CRC32"


# -- 5. --verify-only ---------------------------------------------------------------------------------

def test_verify_only_compares_by_checksum_where_etags_differ(copied: ChecksumCopy) -> None:
    """Runs last: it overwrites the destination object of case 2."""
    assert_copy_ran(copied)
    smalls = len(copied.bodies) - 3
    first = copied.job("verify-1").run(copied.source_uri, copied.destination_uri, *SIZES, "--verify-only")

    assert first.returncode == 0, describe(first)
    # Identical: the small objects and both multipart ones by their ETags (their parts were kept), the
    # large single-part one by its full-object CRC32 (its ETag is now "-5").
    assert (f"{smalls + 3} identical by ETag or checksum, 0 equal in size (ETags not comparable), 0 missing, "
            "0 size mismatches, 0 ETag mismatches, 0 checksum mismatches, 0 only in the destination.") \
        in first.stdout, describe(first)

    # Same size, other bytes, as a FULL_OBJECT CRC32 multipart upload in 7 MiB parts: the source is one
    # part, the destination parts of another size than the tool's copy had, so the ETags cannot be
    # compared and the full-object CRC32 is what tells them apart.
    other = random.Random(99).randbytes(LARGE_SINGLE_SIZE)
    upload_in_parts(copied.admin, DEST_BUCKET, copied.prefix + LARGE_SINGLE, other, 7 * MIB, "CRC32",
                    full_object=True)
    overwritten = copied.head(DEST_BUCKET, LARGE_SINGLE)
    assert overwritten.get("ChecksumType") == "FULL_OBJECT"
    assert overwritten.get("ChecksumCRC32") == full_checksum("CRC32", other)
    assert overwritten["ETag"].strip('"').endswith("-3")

    second = copied.job("verify-2").run(copied.source_uri, copied.destination_uri, *SIZES, "--verify-only")

    assert second.returncode == 1, describe(second)
    assert (f"{smalls + 2} identical by ETag or checksum, 0 equal in size (ETags not comparable), 0 missing, "
            "0 size mismatches, 0 ETag mismatches, 1 checksum mismatches, 0 only in the destination.") \
        in second.stderr, describe(second)
    source_crc = full_checksum("CRC32", copied.bodies[LARGE_SINGLE])
    assert (f'  checksum mismatch: "{LARGE_SINGLE}" (source CRC32 {source_crc}, destination '
            f'{full_checksum("CRC32", other)})') in second.stdout, describe(second)
