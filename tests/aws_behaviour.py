"""S3's behaviour where moto and SeaweedFS differ from it, emulated in front of them.

Each class here is a behaviour for ``FaultProxy.behave`` (tests/fault_proxy.py): it sees every
request on its way to the local server, as a parsed ``Request``, and may answer it itself, change
it, or rewrite the server's ``Answer``, so that a test meets what the tool would meet on AWS. Each
one names the part of the S3 API reference (or the S3 User Guide) it follows: a behaviour made up
here would prove nothing about S3.

Besides S3's own behaviours, ``Hold`` stops the world at a chosen request, for tests that kill the
tool at that exact moment.
"""

from __future__ import annotations

import re
import threading
import urllib.parse
from typing import Callable, Optional

from fault_proxy import Answer, Forward, Request

Predicate = Callable[[Request], bool]


def operation_is(name: str, *, key: Optional[str] = None, **query: str) -> Predicate:
    """A predicate: the request is this S3 operation (on this key, with these query values)."""

    def matches(request: Request) -> bool:
        return (request.operation == name and (key is None or request.key == key)
                and all(request.query.get(field) == [value] for field, value in query.items()))

    return matches


class Hold:
    """Hold the tool at one request, so a test can kill it there.

    Requests pass until one matches ``trigger``. With ``answer_trigger`` (the default) that one is
    answered; with ``answer_trigger=False`` the server carries it out but its answer is never sent,
    as when a machine dies after S3 acted and before the answer arrived. Every later request is held,
    never reaching the server, until ``close()`` (the proxy's stop), and then dropped unanswered, so
    that nothing the tool sent after the moment can change the server once the test has killed it.
    ``triggered`` is set at the moment.
    """

    def __init__(self, trigger: Predicate, *, answer_trigger: bool = True) -> None:
        self._trigger = trigger
        self._answer_trigger = answer_trigger
        self.triggered = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, request: Request, forward: Forward) -> Answer:
        with self._lock:
            holding = self.triggered.is_set()
            fires = not holding and self._trigger(request)
        if holding:
            self._closed.wait()
            raise ConnectionAbortedError("held until the proxy stopped")
        answer = forward(request)
        if fires:
            self.triggered.set()
            if not self._answer_trigger:
                self._closed.wait()
                raise ConnectionAbortedError("carried out, answer held until the proxy stopped")
        return answer

    def close(self) -> None:
        self._closed.set()


# =============================================================================================
# Issue 15, items 6 and 11b-d: where a bucket is, who pays for it, and access points in front of it
# =============================================================================================


def _signed_headers(request: Request) -> list[str]:
    """The header names a SigV4 signature covers (SignedHeaders=a;b;c in the Authorization header)."""
    match = re.search(r"SignedHeaders=([^,\s]+)", request.header("Authorization") or "")
    return match.group(1).split(";") if match else []


def _copy_source(request: Request) -> str:
    """x-amz-copy-source as S3 reads it: percent-decoded, without a leading slash."""
    return urllib.parse.unquote(request.header("x-amz-copy-source") or "").lstrip("/")


class BucketInRegion:
    """A bucket in ``region``, answering requests signed for another region as S3 does.

    S3 API reference, HeadBucket: a HeadBucket may be sent to any region and, whatever the caller may
    do, its answer carries ``x-amz-bucket-region``, the bucket's region; a HEAD answer has no body, so
    one signed for another region is a bare ``301 Moved Permanently`` with that header (the
    PermanentRedirect of the error codes list). S3 API reference, Error responses, List of error
    codes: any other request signed for another region is refused ``400 AuthorizationHeaderMalformed``
    ("the region 'us-east-1' is wrong; expecting 'eu-west-1'"), naming the right one in ``<Region>``.
    Every other HeadBucket answer for the bucket (200, 403) carries ``x-amz-bucket-region`` too.
    """

    def __init__(self, bucket: str, region: str) -> None:
        self.bucket = bucket
        self.region = region

    def __call__(self, request: Request, forward: Forward) -> Answer:
        if request.bucket != self.bucket:
            return forward(request)
        signed_for = request.signing_region
        if signed_for is not None and signed_for != self.region:
            if request.operation == "HeadBucket":
                return Answer(301, "Moved Permanently", [("x-amz-bucket-region", self.region),
                                                         ("Content-Length", "0")], to_head=True)
            return Answer.s3_error(400, "AuthorizationHeaderMalformed",
                                   f"The authorization header is malformed; the region '{signed_for}' is wrong; "
                                   f"expecting '{self.region}'", Region=self.region)
        answer = forward(request)
        if request.operation == "HeadBucket":
            answer.set_header("x-amz-bucket-region", self.region)
        return answer


class RequesterPays:
    """A Requester Pays bucket, reached by someone other than its owner.

    S3 User Guide, "Downloading objects in Requester Pays buckets": a request must carry
    ``x-amz-request-payer: requester``, included in its signature; without it S3 answers 403 (a HEAD
    with no body). That holds for every request on the bucket, and for a copy that reads from it
    (CopyObject, UploadPartCopy: S3 API reference, CopyObject, ``x-amz-request-payer``).
    """

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket

    def __call__(self, request: Request, forward: Forward) -> Answer:
        reads_bucket = (request.bucket == self.bucket
                        or _copy_source(request).partition("/")[0] == self.bucket)
        payer_signed = (request.header("x-amz-request-payer") == "requester"
                        and "x-amz-request-payer" in _signed_headers(request))
        if not reads_bucket or payer_signed:
            return forward(request)
        if request.method == "HEAD":
            return Answer(403, "Forbidden", [("Content-Length", "0")], to_head=True)
        return Answer.s3_error(403, "AccessDenied", "Access Denied")


class AccessPoint:
    """An S3 access point in front of a bucket, for a server that has none (moto).

    S3 User Guide, "Using access points": an access point ARN is
    ``arn:aws:s3:REGION:ACCOUNT:accesspoint/NAME``; SDKs send its requests to the host
    ``NAME-ACCOUNT.`` followed by the endpoint's (botocore's endpoint rules: ``NAME-ACCOUNT.localhost:PORT``
    for a custom endpoint), signed for REGION, and a request signed for another region is refused as
    BucketInRegion refuses it. S3 API reference, CopyObject: a copy names an object read through an
    access point as ``ARN/object/KEY`` in ``x-amz-copy-source``. Each such request is sent on to the
    bucket, path-style, as moto needs it.

    Such a host resolves nowhere, so the client reaches it through this proxy as its HTTP proxy
    (``HTTP_PROXY``, absolute-form request targets; see fault_proxy.py), with ``authority`` (the
    endpoint's ``localhost:PORT``) as its endpoint.
    """

    def __init__(self, arn: str, bucket: str, *, authority: str) -> None:
        match = re.fullmatch(r"arn:aws:s3:([^:]+):(\d{12}):accesspoint/([^/]+)", arn)
        assert match, arn
        self.region, account, name = match.groups()
        self.arn = arn
        self.bucket = bucket
        self.host = f"{name}-{account}.{authority}"
        self.authority = authority

    def __call__(self, request: Request, forward: Forward) -> Answer:
        headers = list(request.headers)
        through_host = request.header("Host") == self.host
        copy_source = _copy_source(request)
        through_copy = copy_source.startswith(self.arn + "/object/")
        if not (through_host or through_copy):
            return forward(request)
        if through_host and request.signing_region != self.region:
            return Answer.s3_error(400, "AuthorizationHeaderMalformed",
                                   f"The authorization header is malformed; the region '{request.signing_region}' "
                                   f"is wrong; expecting '{self.region}'", Region=self.region)
        target = request.target
        if through_host:
            target = f"/{urllib.parse.quote(self.bucket)}{target}"
            headers = [(name, self.authority if name.lower() == "host" else value) for name, value in headers]
        if through_copy:
            key = copy_source[len(self.arn + "/object/"):]
            headers = [(name, f"/{self.bucket}/{urllib.parse.quote(key)}" if name.lower() == "x-amz-copy-source"
                        else value) for name, value in headers]
        return forward(Request(request.method, target, headers, request.body))
