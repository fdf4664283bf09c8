"""A small HTTP fault injector on 127.0.0.1, placed between the tool and one S3 endpoint.

It speaks HTTP/1.1 naively, one request per connection: read the request head (and its
Content-Length body), forward it upstream with ``Connection: close``, read the whole response
until the upstream closes, perhaps damage it, send it back with ``Connection: close`` and close.
That is enough for botocore (urllib3 simply opens a new connection for the next request) and
keeps the proxy free of any HTTP framing logic beyond Content-Length.

Targeted faults, chosen per object key (path-style requests, ``/BUCKET/KEY``):

* ``corrupt``: in every successful GetObject response for the key (whole or ranged), the byte in
  the middle of the body is inverted. Length and headers are left alone, so only a check of the
  bytes themselves (an MD5) can notice. GetObjectTagging (``?tagging``) is left alone.
* ``refuse_head``: every HeadObject for the key is answered ``403 Forbidden`` with no body, as S3
  answers a HEAD that is denied.

Random faults, at a rate per kind (``rates``), what a long migration meets on a real network:

* ``reset_before``: the connection is reset (RST) before the request reaches the server.
* ``reset_mid_body``: the server handles the request; the client gets the response head and half
  of its body, then a reset.
* ``truncate``: the response ends (FIN) a few bytes short of its Content-Length.
* ``slowdown`` / ``internal_error``: ``503 SlowDown`` / ``500 InternalError``, as S3 sends them.
* ``flip_response``: one byte of a GetObject body inverted, as ``corrupt`` does.
* ``flip_request``: one byte of a PUT body (PutObject, UploadPart) inverted on its way up, which
  S3 must refuse by its Content-MD5 or checksum header.
* ``stall``: the server handles the request, but its response is held back for ``stall_seconds``
  (set it past the client's read timeout): the client gives up and retries a request that in
  fact succeeded, the case that makes retried requests need to be idempotent.

Expiring credentials: ``expire_token(token, after_requests=N)``: from the Nth request on, every
request signed with that session token (``X-Amz-Security-Token``) is answered ``400 ExpiredToken``,
as S3 answers once a session has expired; other tokens (a renewed session) still pass.
``expire_sessions_after(N)``: every token expires N requests after the proxy first sees it, so a
client that renews its session goes on and one that cannot is stopped.

Each request's fate is drawn from a hash of the seed, the request line (with its Range, less the
test's unique ``key_prefix``) and how many times that same request was seen, not from the order
threads happen to run in: a seed always injects the same faults into the same requests, as long as
the client retries the same way (the crt engine retries some faults inside a request, the threads
engine in the tool, so one seed gives each engine its own run).

S3's own behaviour, where the local servers differ from it (``behave``): each request that reaches
the server passes through the behaviours a test installs, in the order installed, as a ``Request``
(parsed: operation, bucket, key, signing region) that a behaviour may answer itself, change, or
forward, and whose ``Answer`` (status, headers, body) it may rewrite. tests/aws_behaviour.py holds
the behaviours, each with the S3 API reference it follows. ``counts.log`` records every request
that was answered (operation, key, status, bytes of the answer's body) for assertions on what the
tool asked.

A client may also use the proxy as its HTTP proxy (``HTTP_PROXY``): a request line naming the
whole URL (absolute-form) is read as the path it names, its Host header left as sent, so that a
behaviour can route by host names that do not resolve here (tests/aws_behaviour.py, AccessPoint).

Bounded: at most ``max_connections`` connections are served at once (others wait in the listen
backlog), every socket has a timeout, and the proxy stops by itself after ``lifetime`` seconds
even if a test forgets to stop it. All threads are daemons.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import struct
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from typing import Callable, Optional

LOOPBACK = "127.0.0.1"
_HEAD_LIMIT = 64 * 1024


def flip_middle_byte(body: bytes) -> bytes:
    """What the proxy does to a body: invert the byte at len // 2. Tests use it to predict the
    hash of the damaged bytes."""
    if not body:
        return body
    middle = len(body) // 2
    return body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1:]


FAULT_KINDS = ("reset_before", "reset_mid_body", "truncate", "slowdown", "internal_error", "flip_response",
               "flip_request", "stall")

_ERROR_RESPONSES = {
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "internal_error": (500, "Internal Server Error", "InternalError",
                       "We encountered an internal error. Please try again."),
}


@dataclass
class FaultCounts:
    requests: int = 0
    corrupted: int = 0
    refused: int = 0
    injected: Counter[str] = field(default_factory=Counter)  # random faults, by kind
    expired: int = 0  # requests refused for an expired session token
    tokens: list[str] = field(default_factory=list)  # session tokens, in the order first seen
    uploaded_bytes: int = 0  # request bodies of PUTs that reached the server (PutObject, UploadPart)
    errors: list[str] = field(default_factory=list)
    log: list["Seen"] = field(default_factory=list)  # every request answered by way of the server

    def operations(self, name: str) -> list["Seen"]:
        return [seen for seen in self.log if seen.operation == name]


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


def _with_body(response: bytes, rewrite: Callable[[bytes], bytes]) -> bytes:
    """``response`` with its body rewritten and its Content-Length to match."""
    head, _, body = response.partition(b"\r\n\r\n")
    first, headers = _header_lines(head + b"\r\n\r\n")
    body = rewrite(body)
    headers = [(name, str(len(body)) if name.lower() == "content-length" else value) for name, value in headers]
    return _build_head(first, headers) + body


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (RST), as a dropped connection looks to the client."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _error_response(status: int, reason: str, code: str, message: str) -> bytes:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            "<RequestId>FAULTPROXY</RequestId></Error>").encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body



# -- requests and answers, for the behaviours -----------------------------------------------


@dataclass
class Request:
    """One request as the proxy read it. Path-style addressing (``/BUCKET/KEY``), as the tool uses
    with a custom endpoint; ``target`` is the request line's target, percent-encoded as sent."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    @property
    def path(self) -> str:
        return urllib.parse.unquote(urllib.parse.urlsplit(self.target).path)

    @property
    def query(self) -> dict[str, list[str]]:
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.target).query, keep_blank_values=True)

    @property
    def bucket(self) -> str:
        return self.path.lstrip("/").partition("/")[0]

    @property
    def key(self) -> str:
        return self.path.lstrip("/").partition("/")[2]

    def header(self, name: str) -> Optional[str]:
        return next((value for header, value in self.headers if header.lower() == name.lower()), None)

    @property
    def signing_region(self) -> Optional[str]:
        """The region of a SigV4 signature's credential scope (Credential=KEY/DATE/REGION/SERVICE/...)."""
        match = re.search(r"Credential=[^/,]+/\d{8}/([^/,]+)/", self.header("Authorization") or "")
        return match.group(1) if match else None

    @property
    def operation(self) -> str:
        """The S3 (or STS) operation this request is, from its method, query and headers."""
        query, copy = self.query, self.header("x-amz-copy-source") is not None
        if self.method == "POST" and not self.bucket and b"Action=AssumeRole" in self.body:
            return "AssumeRole"
        if not self.key:
            if self.method == "HEAD":
                return "HeadBucket"
            if self.method == "GET":
                return ("ListMultipartUploads" if "uploads" in query else "ListObjectsV2" if "list-type" in query
                        else "GetBucketLocation" if "location" in query else "ListObjects")
            return {"PUT": "CreateBucket", "POST": "DeleteObjects", "DELETE": "DeleteBucket"}.get(self.method, "")
        if self.method == "HEAD":
            return "HeadObject"
        if self.method == "GET":
            return "GetObjectTagging" if "tagging" in query else "ListParts" if "uploadId" in query else "GetObject"
        if self.method == "PUT":
            if "uploadId" in query:
                return "UploadPartCopy" if copy else "UploadPart"
            return "PutObjectTagging" if "tagging" in query else "CopyObject" if copy else "PutObject"
        if self.method == "POST":
            return "CreateMultipartUpload" if "uploads" in query else "CompleteMultipartUpload"
        if self.method == "DELETE":
            return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
        return ""

    def to_bytes(self) -> bytes:
        """The request as sent upstream, its Content-Length that of its body (which a behaviour may
        have changed: only moto, which checks no signature, takes a changed request)."""
        headers = [(name, value) for name, value in self.headers if name.lower() != "content-length"]
        if self.body or self.header("Content-Length") is not None:
            headers.append(("Content-Length", str(len(self.body))))
        return _build_head(f"{self.method} {self.target} HTTP/1.1", headers) + self.body


@dataclass
class Answer:
    """One answer: status, headers and body. ``to_bytes`` sets Content-Length to the body's, except
    for the answer to a HEAD, which keeps the length of the body it describes."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    to_head: bool = False

    @classmethod
    def parse(cls, raw: bytes, *, to_head: bool = False) -> "Answer":
        head, _, body = raw.partition(b"\r\n\r\n")
        first, headers = _header_lines(head + b"\r\n\r\n")
        _version, status, reason = (first.split(" ", 2) + [""])[:3]
        return cls(int(status), reason, headers, body, to_head)

    @classmethod
    def s3_error(cls, status: int, code: str, message: str, *, headers: Optional[list[tuple[str, str]]] = None,
                 **elements: str) -> "Answer":
        """An error as S3 writes it: <Error><Code/><Message/>, any further elements (BucketName, Region,
        Key...), <RequestId/>."""
        extra = "".join(f"<{name}>{value}</{name}>" for name, value in elements.items())
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                f"{extra}<RequestId>FAULTPROXY</RequestId></Error>").encode()
        return cls(status, _REASONS.get(status, "Error"), [("Content-Type", "application/xml"), *(headers or [])],
                   body)

    def header(self, name: str) -> Optional[str]:
        return next((value for header, value in self.headers if header.lower() == name.lower()), None)

    def set_header(self, name: str, value: str) -> None:
        self.drop_header(name)
        self.headers.append((name, value))

    def drop_header(self, name: str) -> None:
        self.headers = [(header, value) for header, value in self.headers if header.lower() != name.lower()]

    def to_bytes(self) -> bytes:
        headers = self.headers if self.to_head else [
            *((name, value) for name, value in self.headers if name.lower() != "content-length"),
            ("Content-Length", str(len(self.body)))]
        return _build_head(f"HTTP/1.1 {self.status} {self.reason}", headers) + (b"" if self.to_head else self.body)


_REASONS = {200: "OK", 301: "Moved Permanently", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            409: "Conflict", 412: "Precondition Failed", 500: "Internal Server Error", 503: "Slow Down"}

# A behaviour: given a request and the way on (to the next behaviour, and in the end to the server),
# its answer. It may answer without going on, change the request, or rewrite the answer.
Forward = Callable[[Request], Answer]
Behaviour = Callable[[Request, Forward], Answer]


@dataclass(frozen=True)
class Seen:
    """One answered request, as ``counts.log`` records it."""

    operation: str
    bucket: str
    key: str
    query: dict[str, list[str]]
    status: int
    body_bytes: int  # of the answer (a GET's object bytes; 0 for a HEAD)
    signing_region: Optional[str]
    headers: tuple[tuple[str, str], ...]  # of the request


class FaultProxy:
    """Forward to ``upstream_url``; damage GETs of ``corrupt`` keys, refuse HEADs of ``refuse_head`` keys,
    and inject random faults at ``rates``.

    Keys are given as (bucket, key). ``counts`` shows what the proxy did, so a test can prove the
    fault was actually injected.
    """

    def __init__(self, upstream_url: str, *, corrupt: set[tuple[str, str]] = frozenset(),  # type: ignore[assignment]
                 refuse_head: set[tuple[str, str]] = frozenset(),  # type: ignore[assignment]
                 rates: Optional[dict[str, float]] = None, seed: int = 0, stall_seconds: float = 3.0,
                 lifetime: float = 240.0, max_connections: int = 32, key_prefix: str = "") -> None:
        assert set(rates or {}) <= set(FAULT_KINDS), rates
        self._rates = dict(rates or {})
        self._seed = seed
        # A test's own key prefix (unique to each run) is left out of the draw, so that a seed damages
        # the same requests in every run.
        self._unique_part = urllib.parse.quote(key_prefix) if key_prefix else ""
        self._stall_seconds = stall_seconds
        self._seen: Counter[str] = Counter()
        upstream = urllib.parse.urlsplit(upstream_url)
        assert upstream.hostname == LOOPBACK, "the proxy only ever talks to 127.0.0.1"
        self._upstream = (upstream.hostname, upstream.port or 80)
        self._corrupt = {self._path(bucket, key) for bucket, key in corrupt}
        self._refuse_head = {self._path(bucket, key) for bucket, key in refuse_head}
        self._token_expiry: dict[str, int] = {}  # session token -> request count from which it is refused
        self._session_lifetime: Optional[int] = None
        self._denial: Optional[tuple[int, bytes]] = None  # (requests let through, the answer to all after)
        self._rewrite: Optional[Callable[[bytes], bytes]] = None  # applied to the body of every answer
        self._behaviours: list[Behaviour] = []
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
        self._thread = threading.Thread(target=self._serve, name="fault-proxy", daemon=True)
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
            if not target.startswith("/"):
                # A client that has this proxy as its HTTP_PROXY names the whole URL (absolute-form,
                # RFC 9112 section 3.2.2); its Host header names the same authority. The server is
                # sent the origin-form, as a forward proxy does.
                absolute = urllib.parse.urlsplit(target)
                target = urllib.parse.urlunsplit(("", "", absolute.path or "/", absolute.query, ""))
            length = next((int(value) for name, value in headers if name.lower() == "content-length"), 0)
            if any(name.lower() == "expect" and value.lower() == "100-continue" for name, value in headers):
                # Answer for the server, or the client waits a second (botocore's timeout) for it.
                client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                headers = [(name, value) for name, value in headers if name.lower() != "expect"]
            body = rest
            while len(body) < length:
                chunk = client.recv(min(1 << 20, length - len(body)))
                if not chunk:
                    raise ConnectionError("connection closed in the request body")
                body += chunk
            split = urllib.parse.urlsplit(target)
            path = urllib.parse.unquote(split.path)
            query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
            token = next((value for name, value in headers if name.lower() == "x-amz-security-token"), None)
            with self._lock:
                self.counts.requests += 1
                if token is not None and token not in self.counts.tokens:
                    self.counts.tokens.append(token)
                    if self._session_lifetime is not None:
                        self._token_expiry[token] = self.counts.requests + self._session_lifetime
                expired = token is not None and self.counts.requests >= self._token_expiry.get(token, 1 << 62)
                if expired:
                    self.counts.expired += 1
                denial = self._denial[1] if self._denial and self.counts.requests > self._denial[0] else None
                if denial is not None:
                    self.counts.refused += 1
            if expired:
                client.sendall(_error_response(400, "Bad Request", "ExpiredToken", "The provided token has expired."))
                return
            if denial is not None:
                client.sendall(denial)
                return
            if method == "HEAD" and path in self._refuse_head:
                with self._lock:
                    self.counts.refused += 1
                client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            # The ranged GETs of one object's parts share a request line: their Range tells them apart,
            # so which part meets which fault does not depend on which thread sends first.
            ranges = [value for name, value in headers if name.lower() == "range"]
            drawn_for = " ".join([first, *ranges])
            fault = self._draw_fault(drawn_for.replace(self._unique_part, "") if self._unique_part else drawn_for,
                                     method, body)
            if fault == "reset_before":
                _reset(client)
                return
            if fault in _ERROR_RESPONSES:
                client.sendall(_error_response(*_ERROR_RESPONSES[fault]))
                return
            if fault == "flip_request":
                body = flip_middle_byte(body)
            request = Request(method, target, headers, body)
            answer = self._through_behaviours(request)
            response = answer.to_bytes()
            with self._lock:
                self.counts.log.append(Seen(request.operation, request.bucket, request.key, request.query,
                                            answer.status, 0 if method == "HEAD" else len(answer.body),
                                            request.signing_region, tuple(request.headers)))
            with self._lock:
                rewrite = self._rewrite
            if rewrite is not None:
                response = _with_body(response, rewrite)
            if method == "PUT":
                with self._lock:
                    self.counts.uploaded_bytes += len(body)
            if method == "GET" and "tagging" not in query and (path in self._corrupt or fault == "flip_response"):
                response = self._damage(response)
            if fault == "stall":
                self._stopping.wait(self._stall_seconds)
            if fault in ("reset_mid_body", "truncate"):
                head, _, response_body = response.partition(b"\r\n\r\n")
                cut = len(response_body) // 2 if fault == "reset_mid_body" else max(len(response_body) - 3, 0)
                client.sendall(head + b"\r\n\r\n" + response_body[:cut])
                if fault == "reset_mid_body":
                    _reset(client)
                return
            client.sendall(response)
        except Exception as error:  # noqa: BLE001 - recorded for the test to see, the connection is dropped
            with self._lock:
                self.counts.errors.append(f"{type(error).__name__}: {error}")
        finally:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            client.close()
            self._slots.release()

    def expire_token(self, token: str, *, after_requests: int) -> None:
        """Refuse ``token`` as expired once ``after_requests`` more requests have arrived."""
        with self._lock:
            self._token_expiry[token] = self.counts.requests + after_requests

    def expire_sessions_after(self, requests: int) -> None:
        """From now on, every session token is refused ``requests`` requests after it first arrives."""
        with self._lock:
            self._session_lifetime = requests

    def set_rates(self, rates: dict[str, float]) -> None:
        """Change the fault rates from now on ({} for none): a rerun through the same endpoint."""
        with self._lock:
            self._rates = dict(rates)

    def deny_after(self, requests: int, answer: bytes) -> None:
        """Let ``requests`` requests through (counted from the first), then answer every later one
        with ``answer``, a whole HTTP response: a permission withdrawn in the middle of a run."""
        with self._lock:
            self._denial = (requests, answer)

    def rewrite_answers(self, rewrite: Callable[[bytes], bytes]) -> None:
        """Pass the body of every answer from now on through ``rewrite`` (its length may change)."""
        with self._lock:
            self._rewrite = rewrite

    def behave(self, *behaviours: Behaviour) -> None:
        """Pass every request from now on through these behaviours too (after those already
        installed), each an S3 behaviour the server lacks (tests/aws_behaviour.py)."""
        with self._lock:
            self._behaviours.extend(behaviours)

    def behave_only(self, *behaviours: Behaviour) -> None:
        """Replace the behaviours installed so far by these (a rerun after a kill at a held request:
        the held requests, which the killed tool sent, are dropped unanswered)."""
        with self._lock:
            previous, self._behaviours = self._behaviours, list(behaviours)
        for behaviour in previous:
            if behaviour not in behaviours:
                getattr(behaviour, "close", lambda: None)()

    def _through_behaviours(self, request: Request) -> Answer:
        with self._lock:
            behaviours = list(self._behaviours)

        def at(index: int) -> Forward:
            if index == len(behaviours):
                return lambda sent: Answer.parse(self._forward(sent.to_bytes()), to_head=sent.method == "HEAD")
            return lambda sent: behaviours[index](sent, at(index + 1))

        return at(0)(request)

    def heal(self) -> None:
        """No fault of any kind from now on, random or targeted, and no denial."""
        with self._lock:
            self._rates = {}
            self._corrupt = set()
            self._denial = None

    def _draw_fault(self, request_line: str, method: str, body: bytes) -> Optional[str]:
        """The random fault for this request, if any: the same for a given seed, request line and
        repetition of it, whichever thread asks first."""
        with self._lock:
            rates = self._rates
            self._seen[request_line] += 1
            seen = self._seen[request_line]
        if not rates:
            return None
        digest = hashlib.sha256(f"{self._seed}|{request_line}|{seen}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
        for kind in FAULT_KINDS:
            if kind == "flip_request" and not (method == "PUT" and body):
                continue
            if kind == "flip_response" and method != "GET":
                continue
            draw -= rates.get(kind, 0.0)
            if draw < 0:
                with self._lock:
                    self.counts.injected[kind] += 1
                return kind
        return None

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
        for behaviour in self._behaviours:  # one that holds requests lets them go (unanswered)
            getattr(behaviour, "close", lambda: None)()
        self._thread.join(timeout=5)

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.stop()
