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
