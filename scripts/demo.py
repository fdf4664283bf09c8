"""End-to-end demo of s3_bulk_transfer.py between two "accounts" on a local SeaweedFS.

Run it through ./scripts/demo.sh, which prepares the virtualenv. The demo
starts a private SeaweedFS server on 127.0.0.1, fills the source bucket as the
admin with a mixed data set, then runs the real CLI exactly as a user would:
source keys from a credentials file, destination keys from the environment.
The two identities are confined to their own bucket, so nothing can be copied
server-side and every byte has to stream through the tool. Finally it compares
both buckets object by object (MD5 of the bytes, HTTP headers, metadata, tags)
and exits non-zero unless the copy is exact and no multipart upload is left open.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from boto3.s3.transfer import TransferConfig
from botocore.client import BaseClient

REPO_ROOT = Path(__file__).resolve().parent.parent
# The tests directory itself goes on sys.path, not the repo root: a `tests`
# package that some other distribution installed into site-packages would
# shadow the repository's (namespace) `tests` directory.
sys.path.insert(0, str(REPO_ROOT / "tests"))

from s3servers import (  # noqa: E402  (needs the sys.path entry above)
    DEST_BUCKET,
    SOURCE_BUCKET,
    SeaweedServer,
    incomplete_uploads,
    object_snapshot,
)

WORK_DIR = REPO_ROOT / "demo-run"
KIB = 1024
MIB = 1024 * KIB
SMALL_OBJECT_COUNT = 200
SMALL_SIZE_RANGE = (2 * KIB, 1 * MIB)
LARGE_OBJECT_SIZE = 120 * MIB  # well above any multipart threshold, so the tool's multipart path runs
TRANSFER_WORKERS = 8

# Header combinations the copy must carry over unchanged; cycled through the small objects.
HEADER_PROFILES: list[dict[str, Any]] = [
    {"ContentType": "text/plain; charset=utf-8"},
    {"ContentType": "application/json", "CacheControl": "no-cache, max-age=0"},
    {"ContentType": "image/png", "ContentDisposition": 'attachment; filename="picture.png"'},
    {"ContentType": "text/csv", "ContentEncoding": "gzip"},
    {
        "ContentType": "text/html",
        "ContentLanguage": "de-DE",
        "Expires": datetime(2031, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
    },
    {"ContentType": "application/octet-stream"},
]
PREFIXES = ["logs/2024/12", "images/thumbnails", "exports/csv", "reports"]


@dataclass(frozen=True)
class DemoObject:
    """One object of the demo data set; its bytes are regenerated from ``seed`` when uploaded."""

    key: str
    size: int
    seed: int
    put_args: dict[str, Any] = field(default_factory=dict)

    def body(self) -> bytes:
        return random.Random(self.seed).randbytes(self.size)


def tagging(tags: dict[str, str]) -> str:
    """Tags in the URL-query form that PutObject's ``Tagging`` parameter takes."""
    return urlencode(tags)


def build_dataset(seed: int = 20241126) -> list[DemoObject]:
    """A reproducible mix of many small objects, awkward names, an empty object and one large object.

    Small sizes are log-uniform, so most objects are a few KiB as in real
    buckets, with some near 1 MiB. Keys avoid ``//`` and a trailing ``/``:
    SeaweedFS stores those differently from S3, and moto's tests cover them.
    """
    rng = random.Random(seed)
    low, high = (math.log(bound) for bound in SMALL_SIZE_RANGE)
    objects = []
    for index in range(SMALL_OBJECT_COUNT):
        put_args = dict(HEADER_PROFILES[index % len(HEADER_PROFILES)])
        put_args["Metadata"] = {"demo-index": str(index), "origin": "s3-bulk-transfer-demo"}
        if index % 3:
            put_args["Tagging"] = tagging({"project": "demo", "tier": f"t{index % 4}"})
        objects.append(
            DemoObject(
                key=f"{PREFIXES[index % len(PREFIXES)]}/object-{index:04d}.dat",
                size=int(math.exp(rng.uniform(low, high))),
                seed=rng.getrandbits(64),
                put_args=put_args,
            )
        )
    awkward = [
        DemoObject("empty/zero-bytes.dat", 0, 1, {"ContentType": "application/x-empty"}),
        DemoObject("names with spaces/quarterly report 2024.txt", 3 * KIB, 2, {"ContentType": "text/plain"}),
        DemoObject("unicode/café naïve – résumé.txt", 5 * KIB, 3, {"Tagging": tagging({"lang": "fr"})}),
        DemoObject("unicode/日本語/ファイル.json", 7 * KIB, 4, {"ContentType": "application/json"}),
        DemoObject("symbols/a+b=c&d;e,f@g (1).txt", 1 * KIB, 5, {"Metadata": {"note": "plus and ampersand"}}),
    ]
    large = DemoObject(
        "large/video-120MiB.mp4",
        LARGE_OBJECT_SIZE,
        6,
        {"ContentType": "video/mp4", "Metadata": {"camera": "demo"}, "Tagging": tagging({"size": "large"})},
    )
    return objects + awkward + [large]


def upload(client: BaseClient, item: DemoObject) -> None:
    """Upload one object as the admin; big ones go multipart, as real large objects usually are."""
    if item.size > 16 * MIB:
        client.upload_fileobj(
            io.BytesIO(item.body()),
            SOURCE_BUCKET,
            item.key,
            ExtraArgs=item.put_args,
            Config=TransferConfig(multipart_threshold=16 * MIB, multipart_chunksize=16 * MIB),
        )
    else:
        client.put_object(Bucket=SOURCE_BUCKET, Key=item.key, Body=item.body(), **item.put_args)


def fill_source(client: BaseClient, objects: list[DemoObject]) -> None:
    """Upload the data set with a few threads, so that setting up takes seconds, not minutes."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        # list() re-raises the first upload error here.
        list(pool.map(lambda item: upload(client, item), objects))


def write_source_credentials(server: SeaweedServer, path: Path) -> None:
    """The source account's keys in the file format of --source-credentials, readable by the owner only."""
    document = {
        "aws_access_key_id": server.source.access_key,
        "aws_secret_access_key": server.source.secret_key,
        "region": "us-east-1",
        "endpoint_url": server.endpoint_url,
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle, indent=2)


def transfer_environment(server: SeaweedServer) -> dict[str, str]:
    """The caller's environment with the destination account's keys and nothing else from AWS.

    A developer's own AWS_PROFILE, endpoint overrides or ~/.aws files must not
    leak into the demo; instance-metadata lookups are switched off so that no
    request ever leaves the loopback interface.
    """
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=server.dest.access_key,
        AWS_SECRET_ACCESS_KEY=server.dest.secret_key,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(WORK_DIR / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(WORK_DIR / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def transfer_command(server: SeaweedServer) -> list[str]:
    work = WORK_DIR.relative_to(REPO_ROOT)
    return [
        sys.executable,
        "s3_bulk_transfer.py",
        f"s3://{SOURCE_BUCKET}",
        f"s3://{DEST_BUCKET}",
        "--source-credentials", str(work / "source_credentials.json"),
        "--dest-endpoint-url", server.endpoint_url,
        "--progress-file", str(work / "transfer_progress.json"),
        "--log-file", str(work / "s3_transfer.log"),
        "--max-workers", str(TRANSFER_WORKERS),
        "--verify", "--report", str(work / "verify_report.json"),
    ]  # fmt: skip


def differences(source: dict[str, dict[str, Any]], dest: dict[str, dict[str, Any]]) -> list[str]:
    """Human-readable differences between two object snapshots; empty when identical."""
    found = [f"missing in destination: {key!r}" for key in sorted(source.keys() - dest.keys())]
    found += [f"unexpected in destination: {key!r}" for key in sorted(dest.keys() - source.keys())]
    for key in sorted(source.keys() & dest.keys()):
        for name, value in source[key].items():
            if dest[key].get(name) != value:
                found.append(f"{key!r}: {name} is {dest[key].get(name)!r}, source has {value!r}")
    return found


def print_lines(title: str, lines: Iterable[str], limit: int = 20) -> None:
    """Print a titled list, cut at ``limit`` lines so that a total failure stays readable."""
    lines = list(lines)
    print(title)
    for line in lines[:limit]:
        print(f"  {line}")
    if len(lines) > limit:
        print(f"  ... and {len(lines) - limit} more")


def main() -> int:
    if not (REPO_ROOT / "s3_bulk_transfer.py").is_file():
        print(f"error: {REPO_ROOT / 's3_bulk_transfer.py'} not found", file=sys.stderr)
        return 2
    # A progress file from an earlier run would describe another server's buckets.
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    WORK_DIR.mkdir()

    started = time.monotonic()
    print("Starting a local SeaweedFS server (127.0.0.1 only) ...", flush=True)
    with SeaweedServer() as server:
        print(f"  ready in {time.monotonic() - started:.1f} s at {server.endpoint_url}")
        admin = server.client(server.admin)
        dataset = build_dataset()
        total = sum(item.size for item in dataset)
        print(
            f"Uploading {len(dataset)} objects ({total / MIB:.1f} MiB) to s3://{SOURCE_BUCKET} as the admin ...",
            flush=True,
        )
        upload_started = time.monotonic()
        fill_source(admin, dataset)
        print(f"  done in {time.monotonic() - upload_started:.1f} s")

        write_source_credentials(server, WORK_DIR / "source_credentials.json")
        command = transfer_command(server)
        print("Running, with the destination account's keys in the environment:")
        print("  " + " ".join(command[1:]), flush=True)
        print("-" * 72, flush=True)
        transfer_started = time.monotonic()
        result = subprocess.run(command, cwd=REPO_ROOT, env=transfer_environment(server), check=False)
        elapsed = time.monotonic() - transfer_started
        print("-" * 72, flush=True)

        print("Comparing source and destination (MD5 of every object's bytes, headers, metadata, tags) ...", flush=True)
        source = object_snapshot(admin, SOURCE_BUCKET)
        dest = object_snapshot(admin, DEST_BUCKET)
        open_uploads = incomplete_uploads(admin, DEST_BUCKET)

    problems = differences(source, dest)
    copied_bytes = sum(entry["size"] for entry in dest.values())
    rate = copied_bytes / MIB / elapsed if elapsed > 0 else 0.0
    print()
    print("Demo verdict")
    print(f"  tool exit code:     {result.returncode}")
    print(f"  objects:            {len(source)} in source, {len(dest)} in destination")
    print(f"  bytes:              {copied_bytes:,} in destination ({copied_bytes / MIB:.1f} MiB)")
    print(f"  transfer time:      {elapsed:.1f} s ({rate:.1f} MiB/s)")
    print(f"  identical:          {'yes' if not problems else 'NO'}")
    print(f"  incomplete uploads: {len(open_uploads)}")
    print(f"  tool log:           {(WORK_DIR / 's3_transfer.log').relative_to(REPO_ROOT)}")
    if problems:
        print_lines("Differences:", problems)
    if open_uploads:
        print_lines("Open multipart uploads:", (f"{upload['Key']!r} {upload['UploadId']}" for upload in open_uploads))
    return 0 if result.returncode == 0 and not problems and not open_uploads else 1


if __name__ == "__main__":
    sys.exit(main())
