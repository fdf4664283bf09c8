"""A small HTTP fault injector on 127.0.0.1, placed between the tool and one S3 endpoint.

It speaks HTTP/1.1 naively, one request per connection: read the request head (and its
Content-Length body), forward it upstream with ``Connection: close``, read the whole response
until the upstream closes, perhaps damage it, send it back with ``Connection: close`` and close.
That is enough for botocore (urllib3 simply opens a new connection for the next request) and
keeps the proxy free of any HTTP framing logic beyond Content-Length.

Faults, chosen per object key (path-style requests, ``/BUCKET/KEY``):

* ``corrupt``: in every successful GetObject response for the key (whole or ranged), the byte in
  the middle of the body is inverted. Length and headers are left alone, so only a check of the
  bytes themselves (an MD5) can notice. GetObjectTagging (``?tagging``) is left alone.
* ``refuse_head``: every HeadObject for the key is answered ``403 Forbidden`` with no body, as S3
  answers a HEAD that is denied.

Bounded: at most ``max_connections`` connections are served at once (others wait in the listen
backlog), every socket has a timeout, and the proxy stops by itself after ``lifetime`` seconds
even if a test forgets to stop it. All threads are daemons.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from types import TracebackType
from typing import Optional

LOOPBACK = "127.0.0.1"
_HEAD_LIMIT = 64 * 1024


def flip_middle_byte(body: bytes) -> bytes:
    """What the proxy does to a body: invert the byte at len // 2. Tests use it to predict the
    hash of the damaged bytes."""
    if not body:
        return body
    middle = len(body) // 2
    return body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1:]


@dataclass
class FaultCounts:
    requests: int = 0
    corrupted: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read up to and including the blank line; returns (head, bytes already read past it)."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before the end of the request head")
        buffer += chunk
        if len(buffer) > _HEAD_LIMIT:
            raise ConnectionError("request head too long")
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def _header_lines(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    first, headers = lines[0], []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return first, headers


def _build_head(first: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [first] + [f"{name}: {value}" for name, value in headers if name.lower() not in {"connection",
                                                                                            "keep-alive"}]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class CorruptingProxy:
    """Forward to ``upstream_url``; damage GETs of ``corrupt`` keys, refuse HEADs of ``refuse_head`` keys.

    Keys are given as (bucket, key). ``counts`` shows what the proxy did, so a test can prove the
    fault was actually injected.
    """

    def __init__(self, upstream_url: str, *, corrupt: set[tuple[str, str]] = frozenset(),  # type: ignore[assignment]
                 refuse_head: set[tuple[str, str]] = frozenset(),  # type: ignore[assignment]
                 lifetime: float = 240.0, max_connections: int = 32) -> None:
        upstream = urllib.parse.urlsplit(upstream_url)
        assert upstream.hostname == LOOPBACK, "the proxy only ever talks to 127.0.0.1"
        self._upstream = (upstream.hostname, upstream.port or 80)
        self._corrupt = {self._path(bucket, key) for bucket, key in corrupt}
        self._refuse_head = {self._path(bucket, key) for bucket, key in refuse_head}
        self._deadline = time.monotonic() + lifetime
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.counts = FaultCounts()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self.endpoint_url = f"http://{LOOPBACK}:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, name="corrupting-proxy", daemon=True)
        self._thread.start()

    @staticmethod
    def _path(bucket: str, key: str) -> str:
        return f"/{bucket}/{key}"

    # -- serving ---------------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while not self._stopping.is_set() and time.monotonic() < self._deadline:
                try:
                    connection, _ = self._listener.accept()
                except socket.timeout:
                    continue
                except OSError:
                    return
                while not self._slots.acquire(timeout=0.2):
                    if self._stopping.is_set() or time.monotonic() >= self._deadline:
                        connection.close()
                        return
                threading.Thread(target=self._handle, args=(connection,), daemon=True).start()
        finally:
            with contextlib.suppress(OSError):
                self._listener.close()

    def _handle(self, client: socket.socket) -> None:
        try:
            client.settimeout(30)
            head, rest = _read_head(client)
            first, headers = _header_lines(head)
            method, target, _version = first.split(" ", 2)
            length = next((int(value) for name, value in headers if name.lower() == "content-length"), 0)
            body = rest
            while len(body) < length:
                chunk = client.recv(min(1 << 20, length - len(body)))
                if not chunk:
                    raise ConnectionError("connection closed in the request body")
                body += chunk
            split = urllib.parse.urlsplit(target)
            path = urllib.parse.unquote(split.path)
            query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
            with self._lock:
                self.counts.requests += 1
            if method == "HEAD" and path in self._refuse_head:
                with self._lock:
                    self.counts.refused += 1
                client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            response = self._forward(_build_head(first, headers) + body)
            if method == "GET" and path in self._corrupt and "tagging" not in query:
                response = self._damage(response)
            client.sendall(response)
        except Exception as error:  # noqa: BLE001 - recorded for the test to see, the connection is dropped
            with self._lock:
                self.counts.errors.append(f"{type(error).__name__}: {error}")
        finally:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            client.close()
            self._slots.release()

    def _forward(self, request: bytes) -> bytes:
        with socket.create_connection(self._upstream, timeout=60) as upstream:
            upstream.sendall(request)
            chunks = []
            while True:
                chunk = upstream.recv(1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        response = b"".join(chunks)
        head, separator, body = response.partition(b"\r\n\r\n")
        if not separator:
            raise ConnectionError("upstream closed before the end of the response head")
        first, headers = _header_lines(head + b"\r\n\r\n")
        return _build_head(first, headers) + body

    def _damage(self, response: bytes) -> bytes:
        head, _, body = response.partition(b"\r\n\r\n")
        first, headers = _header_lines(head + b"\r\n\r\n")
        status = int(first.split(" ", 2)[1])
        chunked = any(name.lower() == "transfer-encoding" for name, _ in headers)
        if status not in (200, 206) or not body or chunked:
            return response
        with self._lock:
            self.counts.corrupted += 1
        return head + b"\r\n\r\n" + flip_middle_byte(body)

    # -- lifetime --------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> "CorruptingProxy":
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.stop()
