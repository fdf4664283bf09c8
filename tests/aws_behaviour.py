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


# -- items 9, 10, 11a and 13 of issue 15: throttling, KMS denials, archive tiers, a vanished copy source --

# A key ARN and a principal for the KMS denials below; the account is AWS's documentation example.
KMS_KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
KMS_CALLER_ARN = "arn:aws:iam::111122223333:user/migration"


def _error_for(request: Request, status: int, code: str, message: str, **elements: str) -> Answer:
    """An S3 error answer; to a HEAD, the status alone, with no body, as S3 answers a HEAD."""
    answer = Answer.s3_error(status, code, message, **elements)
    if request.method == "HEAD":
        answer.body = b""
        answer.drop_header("Content-Type")
    return answer


class SlowDownStorm:
    """S3 throttling: ``503 SlowDown`` ("Please reduce your request rate.") to requests beyond the
    rate a prefix supports, while S3 scales it up (S3 API reference, "Error responses", SlowDown;
    S3 User Guide, "Best practices design patterns: optimizing Amazon S3 performance": back off and
    retry). A HEAD gets the bare 503.

    Count-based, so the same storm meets the same requests in every run: each distinct request
    (method, target and Range) that ``which`` selects is answered SlowDown its first ``times``
    times, then goes through. ``answered`` counts the SlowDowns sent.
    """

    def __init__(self, which: Predicate, *, times: int) -> None:
        self._which = which
        self._times = times
        self._seen: dict[tuple[str, str, Optional[str]], int] = {}
        self._lock = threading.Lock()
        self.answered = 0

    def __call__(self, request: Request, forward: Forward) -> Answer:
        if self._which(request):
            identity = (request.method, request.target, request.header("Range"))
            with self._lock:
                self._seen[identity] = self._seen.get(identity, 0) + 1
                throttled = self._seen[identity] <= self._times
                if throttled:
                    self.answered += 1
            if throttled:
                return _error_for(request, 503, "SlowDown", "Please reduce your request rate.")
        return forward(request)


def kms_denial_message(action: str) -> str:
    """S3's message for a request the caller's KMS permissions refuse, as S3 words it (seen in the
    field, for example in ministryofjustice/modernisation-platform#11726 for GetObject and
    aws/copilot-cli#5500 for PutObject)."""
    return (f"User: {KMS_CALLER_ARN} is not authorized to perform: {action} on resource: {KMS_KEY_ARN} "
            f"because no identity-based policy allows the {action} action")


class KmsDenied:
    """Objects encrypted with an SSE-KMS key the caller may not use: S3 answers ``403 AccessDenied``
    with a message naming the kms: action and the key (S3 User Guide, "Troubleshoot access denied
    (403 Forbidden) errors in Amazon S3", AWS KMS encryption settings). Reading needs kms:Decrypt
    (GetObject of ``reads``); writing needs kms:GenerateDataKey (PutObject and
    CreateMultipartUpload of ``writes``). HeadObject needs no KMS permission and goes through.
    Keys are (bucket, key)."""

    def __init__(self, *, reads: frozenset[tuple[str, str]] = frozenset(),
                 writes: frozenset[tuple[str, str]] = frozenset()) -> None:
        self._reads = reads
        self._writes = writes

    def __call__(self, request: Request, forward: Forward) -> Answer:
        target = (request.bucket, request.key)
        if request.operation == "GetObject" and target in self._reads:
            return Answer.s3_error(403, "AccessDenied", kms_denial_message("kms:Decrypt"))
        if request.operation in ("PutObject", "CreateMultipartUpload") and target in self._writes:
            return Answer.s3_error(403, "AccessDenied", kms_denial_message("kms:GenerateDataKey"))
        return forward(request)


class IntelligentTieringArchived:
    """Objects of the INTELLIGENT_TIERING storage class that S3 moved to an archive tier: HeadObject
    says so in ``x-amz-archive-status`` (ARCHIVE_ACCESS or DEEP_ARCHIVE_ACCESS; S3 API reference,
    HeadObject), and GetObject answers ``403 InvalidObjectState`` with the StorageClass and
    AccessTier elements until the object is restored (S3 API reference, GetObject, and the
    InvalidObjectState error). ``tiers`` maps (bucket, key) to the tier."""

    def __init__(self, tiers: dict[tuple[str, str], str]) -> None:
        self._tiers = tiers

    def __call__(self, request: Request, forward: Forward) -> Answer:
        tier = self._tiers.get((request.bucket, request.key))
        if tier is None or request.operation not in ("HeadObject", "GetObject"):
            return forward(request)
        if request.operation == "GetObject":
            return Answer.s3_error(403, "InvalidObjectState", "The operation is not valid for the current state of "
                                   "the object.", StorageClass="INTELLIGENT_TIERING", AccessTier=tier)
        answer = forward(request)
        if answer.status == 200:
            answer.set_header("x-amz-storage-class", "INTELLIGENT_TIERING")
            answer.set_header("x-amz-archive-status", tier)
        return answer


class CopySourceBucketGone:
    """The source bucket of a server-side copy deleted (or renamed) mid-run: CopyObject and
    UploadPartCopy naming it in x-amz-copy-source are answered ``404 NoSuchBucket``, whose
    BucketName element names the missing bucket, here the source and not the bucket the request
    writes to (S3 API reference, "Error responses", NoSuchBucket)."""

    def __init__(self, bucket: str) -> None:
        self._bucket = bucket

    def __call__(self, request: Request, forward: Forward) -> Answer:
        if request.operation in ("CopyObject", "UploadPartCopy"):
            copy_source = urllib.parse.unquote(request.header("x-amz-copy-source") or "")
            if copy_source.lstrip("/").partition("/")[0] == self._bucket:
                return Answer.s3_error(404, "NoSuchBucket", "The specified bucket does not exist",
                                       BucketName=self._bucket)
        return forward(request)
