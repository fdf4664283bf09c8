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

import hashlib
import html
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
    as when a machine dies after S3 acted and before the answer arrived. Every later request (that
    ``holds`` selects: by default all) is held,
    never reaching the server, until ``close()`` (the proxy's stop), and then dropped unanswered, so
    that nothing the tool sent after the moment can change the server once the test has killed it;
    or until ``release()``, which sends them on, for a tool that is to go on. ``triggered`` is set
    at the moment.
    """

    def __init__(self, trigger: Predicate, *, answer_trigger: bool = True, holds: Predicate = lambda _: True) -> None:
        self._trigger = trigger
        self._answer_trigger = answer_trigger
        self._holds = holds
        self.triggered = threading.Event()
        self._closed = threading.Event()
        self._released = False
        self._lock = threading.Lock()

    def __call__(self, request: Request, forward: Forward) -> Answer:
        with self._lock:
            holding = self.triggered.is_set() and not self._released and self._holds(request)
            fires = not self.triggered.is_set() and self._trigger(request)
        if holding:
            self._closed.wait()
            if self._released:
                return forward(request)
            raise ConnectionAbortedError("held until the proxy stopped")
        answer = forward(request)
        if fires:
            self.triggered.set()
            if not self._answer_trigger:
                self._closed.wait()
                raise ConnectionAbortedError("carried out, answer held until the proxy stopped")
        return answer

    def release(self) -> None:
        with self._lock:
            self._released = True
        self._closed.set()

    def close(self) -> None:
        self._closed.set()


# -- lead: integrity on resume, SSE-KMS ETags, the website redirect of a copy (items 1, 2, 12, 14) --


class DamageOnce:
    """One GetObject answer damaged on its way, once: the middle byte of the first successful answer
    to a GET of `key` whose Range header is `byte_range` ("bytes=A-B"; None for any) is inverted, as
    a faulty network or NIC would. Length and headers are left alone: only a hash can tell."""

    def __init__(self, bucket: str, key: str, byte_range: Optional[str] = None) -> None:
        self._target = (bucket, key)
        self._range = byte_range
        self.damaged = 0

    def __call__(self, request: Request, forward: Forward) -> Answer:
        answer = forward(request)
        if (self.damaged == 0 and request.operation == "GetObject" and (request.bucket, request.key) == self._target
                and (self._range is None or request.header("Range") == self._range)
                and answer.status in (200, 206) and answer.body):
            self.damaged += 1
            middle = len(answer.body) // 2
            answer.body = answer.body[:middle] + bytes([answer.body[middle] ^ 0xFF]) + answer.body[middle + 1:]
        return answer


class SseKmsBucket:
    """A bucket whose default encryption is SSE-KMS, as S3 answers for it: every object and part
    written there is encrypted with a KMS key, whatever the request asked, so the answers to
    PutObject, CopyObject, CreateMultipartUpload, UploadPart, UploadPartCopy, CompleteMultipartUpload,
    HeadObject and GetObject carry `x-amz-server-side-encryption: aws:kms` and its key id, and every
    ETag (in headers and in the XML of CopyObjectResult, CopyPartResult, CompleteMultipartUploadResult,
    ListParts and ListObjectsV2) is not an MD5 of the bytes. S3 API reference, Object (ETag): "Objects
    created by the PUT Object, POST Object, or Copy operation ... encrypted by SSE-C or SSE-KMS, have
    ETags that are not an MD5 digest of their object data"; the same holds for parts.

    The opaque ETags are a fixed function of the server's own, so that they are stable (ListParts gives
    a part the ETag UploadPart gave it) and can be turned back into the server's where a request
    names them (the parts of CompleteMultipartUpload, If-Match). That changes signed requests: in front
    of moto only, which checks no signature."""

    KEY_ID = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    _WRITES_AND_READS = {"PutObject", "CopyObject", "CreateMultipartUpload", "UploadPart", "UploadPartCopy",
                         "CompleteMultipartUpload", "HeadObject", "GetObject"}

    def __init__(self, bucket: str) -> None:
        self._bucket = bucket
        self._server_etag: dict[str, str] = {}  # opaque -> the server's
        self._lock = threading.Lock()

    def _opaque(self, etag: str) -> str:
        value = etag.strip('"').replace("&quot;", "")
        digest, dash, count = value.partition("-")
        opaque = hashlib.md5(b"sse-kms:" + digest.encode()).hexdigest() + dash + count  # noqa: S324
        with self._lock:
            self._server_etag[opaque] = value
        return opaque

    def _server(self, etag: str) -> str:
        value = etag.strip('"').replace("&quot;", "")
        with self._lock:
            return self._server_etag.get(value, value)

    def __call__(self, request: Request, forward: Forward) -> Answer:
        if request.bucket != self._bucket:
            return forward(request)
        if request.operation == "CompleteMultipartUpload":
            request.body = re.sub(rb"<ETag>([^<]*)</ETag>",
                                  lambda match: f'<ETag>"{self._server(match.group(1).decode())}"</ETag>'.encode(),
                                  request.body)
        for name in ("If-Match", "If-None-Match"):
            if request.header(name):
                request.headers = [(header, f'"{self._server(value)}"' if header.lower() == name.lower() else value)
                                   for header, value in request.headers]
        answer = forward(request)
        if answer.status >= 300:
            return answer
        if request.operation in self._WRITES_AND_READS:
            answer.set_header("x-amz-server-side-encryption", "aws:kms")
            answer.set_header("x-amz-server-side-encryption-aws-kms-key-id", self.KEY_ID)
        if answer.header("ETag"):
            answer.set_header("ETag", f'"{self._opaque(answer.header("ETag") or "")}"')
        if request.operation in {"CopyObject", "UploadPartCopy", "CompleteMultipartUpload", "ListParts",
                                 "ListObjectsV2", "ListObjects"}:
            answer.body = re.sub(rb"<ETag>([^<]*)</ETag>",
                                 lambda match: f"<ETag>&quot;{self._opaque(match.group(1).decode())}&quot;</ETag>"
                                 .encode(), answer.body)
        return answer


class CopyKeepsNoWebsiteRedirect:
    """S3's CopyObject does not copy an object's website redirect: "x-amz-website-redirect-location is
    unique to each object and is not copied when using the x-amz-metadata-directive header. To copy the
    value, you must specify x-amz-website-redirect-location in the request header" (CopyObject, S3 API
    reference). moto copies it. So a CopyObject that does not name one is sent on with
    MetadataDirective REPLACE and the source's other headers and metadata, read with a HeadObject: what
    S3 would store."""

    _KEPT = ("content-type", "content-encoding", "content-disposition", "content-language", "cache-control",
             "expires")

    def __call__(self, request: Request, forward: Forward) -> Answer:
        if (request.operation != "CopyObject" or request.header("x-amz-website-redirect-location")
                or (request.header("x-amz-metadata-directive") or "COPY").upper() != "COPY"):
            return forward(request)
        source = urllib.parse.unquote(request.header("x-amz-copy-source") or "").lstrip("/")
        credentials = [(name, value) for name, value in request.headers if name.lower() in ("authorization", "host")]
        head = forward(Request("HEAD", "/" + urllib.parse.quote(source), credentials))
        if head.status != 200:
            return forward(request)
        kept = [(name, value) for name, value in head.headers
                if name.lower() in self._KEPT or name.lower().startswith("x-amz-meta-")]
        request.headers = [*((name, value) for name, value in request.headers
                             if name.lower() not in self._KEPT and name.lower() != "x-amz-metadata-directive"),
                           ("x-amz-metadata-directive", "REPLACE"), *kept]
        return forward(request)


# -- items 4 and 7 of issue 15: tags a caller may not read; keys XML 1.0 forbids -----------------


class TagsHiddenFrom:
    """A caller allowed s3:GetObject but not s3:GetObjectTagging on ``bucket``, which neither local
    server can model (moto has one identity; SeaweedFS's Read action includes GetObjectTagging, see
    tests/s3servers.py).

    S3 sends ``x-amz-tagging-count`` with GetObject (and HeadObject) only "when you have the relevant
    permission to read object tags" (GetObject, S3 API reference: x-amz-tagging-count / TagCount), so such
    a caller sees no count on any object, tagged or not; GetObjectTagging needs "permission to perform
    the s3:GetObjectTagging action" (GetObjectTagging, S3 API reference) and is answered 403 AccessDenied.
    """

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket

    def __call__(self, request: Request, forward: Forward) -> Answer:
        if request.bucket != self.bucket:
            return forward(request)
        if request.operation == "GetObjectTagging":
            return Answer.s3_error(403, "AccessDenied", "Access Denied")
        answer = forward(request)
        if request.operation in ("GetObject", "HeadObject"):
            answer.drop_header("x-amz-tagging-count")
        return answer


def xml_character_data(text: str) -> str:
    """``text`` as S3 writes it between XML tags: escaped, and a character XML 1.0 forbids as a
    character reference (``&#x7;``), which is as unreadable to a parser as the raw character."""
    def written(character: str) -> str:
        code = ord(character)
        allowed = code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD or code >= 0x10000
        return html.escape(character, quote=False) if allowed else f"&#x{code:x};"

    return "".join(written(character) for character in text)


class UploadsListedAsS3Lists:
    """ListMultipartUploads of ``bucket`` as S3 answers it, with one more upload than moto holds: of
    ``foreign_key``, a key with a character XML 1.0 forbids (moto can create such an upload, but then
    its own XML writer fails every listing of the bucket with a 500).

    S3 echoes such a key as a character reference (``&#x7;``: aws/aws-sdk-go#5056, aws/aws-sdk-java#3112),
    which no XML parser accepts, unless the request asks ``encoding-type=url``; S3 then URL-encodes
    Delimiter, KeyMarker, Prefix, NextKeyMarker and Key, and says so with ``<EncodingType>url</EncodingType>``
    (ListMultipartUploads, S3 API reference: EncodingType). moto ignores ``encoding-type`` there.
    """

    ENCODED = ("Delimiter", "KeyMarker", "Prefix", "NextKeyMarker", "Key")

    def __init__(self, bucket: str, *, foreign_key: str) -> None:
        self.bucket = bucket
        self.foreign_key = foreign_key

    def __call__(self, request: Request, forward: Forward) -> Answer:
        answer = forward(request)
        if request.bucket != self.bucket or request.operation != "ListMultipartUploads" or answer.status != 200:
            return answer
        encoded = request.query.get("encoding-type") == ["url"]
        document = answer.body.decode("utf-8")
        if encoded:
            document = re.sub(f"<({'|'.join(self.ENCODED)})>([^<]*)</\\1>",
                              lambda match: f"<{match[1]}>{url_encoded(html.unescape(match[2]))}</{match[1]}>",
                              document)
            document = document.replace("</ListMultipartUploadsResult>",
                                        "<EncodingType>url</EncodingType></ListMultipartUploadsResult>")
        if self.foreign_key.startswith((request.query.get("prefix") or [""])[0]):
            key = url_encoded(self.foreign_key) if encoded else xml_character_data(self.foreign_key)
            upload = (f"<Upload><Key>{key}</Key><UploadId>FOREIGN-UPLOAD</UploadId><StorageClass>STANDARD"
                      "</StorageClass><Initiated>2010-11-10T20:48:33.000Z</Initiated></Upload>")
            document = document.replace("</ListMultipartUploadsResult>", upload + "</ListMultipartUploadsResult>")
        answer.body = document.encode("utf-8")
        return answer


def url_encoded(key: str) -> str:
    """A key as S3 writes it under ``encoding-type=url``, as botocore reads it back (``unquote_plus``)."""
    return urllib.parse.quote_plus(key, safe="/")


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


class AnswerCutShortOnce:
    """The first 200 answer to `operation` ends halfway, in an <Error>: what S3 sends when a request
    fails after its answer began ("If the error occurs during the copy operation, the error response
    is embedded in the 200 OK response", CopyObject reference; likewise UploadPartCopy and
    CompleteMultipartUpload), and what a client must refuse of any answer, a listing's too."""

    def __init__(self, operation: str) -> None:
        self._operation = operation
        self.cut = 0

    def __call__(self, request: Request, forward: Forward) -> Answer:
        answer = forward(request)
        if self.cut == 0 and request.operation == self._operation and answer.status == 200 and answer.body:
            self.cut += 1
            error = Answer.s3_error(500, "InternalError", "We encountered an internal error. Please try again.")
            answer.body = answer.body[:len(answer.body) // 2] + error.body.split(b"?>", 1)[1]
        return answer


class ObjectRetentionAsS3Answers:
    """GetObjectRetention (``GET /BUCKET/KEY?retention``) answered as S3 answers it, from the object's
    own HeadObject: ``<Retention><Mode/><RetainUntilDate/></Retention>``, or ``404
    NoSuchObjectLockConfiguration`` for an object without retention (S3 API Reference,
    GetObjectRetention). moto answers every such request 500."""

    def __call__(self, request: Request, forward: Forward) -> Answer:
        if not (request.method == "GET" and "retention" in request.query):
            return forward(request)
        head = forward(Request("HEAD", request.target.split("?", 1)[0], [
            (name, value) for name, value in request.headers if name.lower() not in ("content-length",)]))
        mode, until = head.header("x-amz-object-lock-mode"), head.header("x-amz-object-lock-retain-until-date")
        if head.status != 200:
            return head
        if not mode:
            return Answer.s3_error(404, "NoSuchObjectLockConfiguration", "The specified object does not have a "
                                   "ObjectLock configuration")
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Retention xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                f"<Mode>{mode}</Mode><RetainUntilDate>{until}</RetainUntilDate></Retention>").encode()
        return Answer(200, "OK", [("Content-Type", "application/xml")], body)
