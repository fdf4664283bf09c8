#!/usr/bin/env python3
"""s3_bulk_transfer: copy every object of one S3 bucket (or prefix) to another, across accounts,
streaming through memory only, resumable after any interruption.

How the data moves
------------------
    ListObjectsV2 on the source (source credentials): the keyspace cut into key ranges at folder
      boundaries, --list-concurrency ranges listed at once, each in key order, a bounded window ahead;
      or no listing: --from-inventory merges the data files of an S3 Inventory report (or reads a key
      list) in key order, streaming them from S3 or a local copy
      -> include/exclude filters, size and age filters, --shard (the shard's own key ranges, of a plan the shards share;
         or a stable hash of the key), key mapping (destination prefix + key minus source prefix)
      -> plan: below --multipart-threshold one GET then one PUT (so too, up to 5 GiB, a key with a
               character XML 1.0 forbids, which multipart answers could not carry);
               at or above it CreateMultipartUpload, ranged GETs of one part each (If-Match the
               listed ETag) feeding UploadPart, then CompleteMultipartUpload; a resumed upload
               keeps the parts S3 has that its saved digest covers, and reads again the others
               to compare them with what S3 holds;
               or, when the destination's keys may read the source (--copy-mode), the same plan
               with CopyObject and UploadPartCopy: S3 moves the bytes, none pass through here
      -> --max-bandwidth: one token bucket before every GET, shared by all workers; so too
         --max-requests-per-second, before every request that reads the source
      -> at most --max-workers units of work in flight, a unit being one part or one small object, so
         the parts of one large object spread across all of them; with --processes N, the small
         objects go in batches to N worker processes, each with its own engine, still within the
         job's --max-workers and --memory-limit, and their outcomes come back to this process
      -> the bodies' GETs and PUTs go through one of two engines (--engine): crt, awscrt's S3 client
         (signing, HTTP and retries in C), or threads, boto3 in a worker thread that waits; under
         crt, small objects move from awscrt's completion callbacks (a GET's starts its PUT, a PUT's
         the next GET) and a worker takes over only what needs waiting: tags, a retry; listing,
         multipart bookkeeping and server-side copies are boto3's under both
      -> the progress store: per key range a watermark in key order and the few keys done beyond it;
         failed keys, and every multipart upload in flight with its digest so far ->
         transfer_progress.json (atomic rewrite, every 2 s and before each completion; one run per
         job at a time, by a lock beside it), or an object in a bucket (--progress-file s3://...:
         one conditional PutObject per save, which a second run of the job makes fail)

Promises
--------
* No object byte ever touches the local disk: bodies live in memory between GET and PUT.
* Memory bound: at most --max-workers units of object data in flight, where a unit is one part
  (--chunk-size, raised only when an object would otherwise need more than 10,000 parts; or the
  source's own part size, which keeps its ETag) or one object below the multipart threshold; and
  at most --memory-limit of them, a larger unit running alone. About max_workers x unit size,
  plus what Python and its libraries take themselves (bench/README.md, the memory scenario).
* What is uploaded is proven against the source before it is completed: its MD5 ETag, its
  multipart ETag along the source's parts, or its additional checksum; the digest of a multipart
  copy is of the bytes uploaded, across crashes too. Every PUT carries Content-MD5 and every
  UploadPart a checksum (the source's algorithm, else CRC64NVME), so S3 rejects a body damaged on
  the way up.
* Rerunning the same command resumes: finished keys are not copied again, half-done multipart
  uploads continue with only their missing parts (ListParts is the authority), and a retry or a
  rerun never fails an object for S3's throttling while the run makes progress.

Sections, in the order data moves
---------------------------------
 1. Limits and exit codes
 2. Errors and retries: every exception, the named code tables, classify(), the sentences a
    person reads (explain_error), backoff and Retries, the one retry loop
 3. Pure rules: sizes, locations and access points, filters, shards and their plans, key mapping,
    part plans
 4. Configuration: how each side is reached (SideAccess), RunSettings (JobDefinition, Tuning,
    WriteOptions, OutputSettings, RunMode), the credentials file
 5. Connecting to each side: sessions and role credentials, clients, regions, preflight checks
 6. Object sources: ListObjectsV2, keyspace-parallel listing (ListingWindow), inventory reports
    and key lists (--from-inventory), the selection (filters, --shard)
 7. Integrity: MD5 and multipart ETags, checksums and their combination, resumable digests,
    IntegrityCheck and the HEAD-based IntegrityPlanner
 8. Moving bodies: the BodyTransport interface, the threads engine (boto3) and the crt engine
    (awscrt), what each object carries (ObjectAttributes)
 9. Progress and resume: where state documents live (StateStore: files, or objects in a bucket),
    ProgressStore, the progress file, its lock; the plan that shards share
10. Status: the log, the live status line, the final report; the status command (every shard's)
11. The transfer engine: UnitScheduler, FailurePolicy, SmallObjectCopier (and its callback-driven
    SmallObjectPipeline), MultipartUploads and MultipartCopy over CopyServices, composed by
    TransferEngine (build_engine); WorkerProcesses (--processes) and what runs inside a worker
12. Comparing source and destination: the merge join behind --verify, --verify-only,
    --skip-existing and --report
13. Command line: argparse, build_settings, the dry run, signals, main
"""

from __future__ import annotations

import argparse
import base64
import bisect
import collections
import concurrent.futures
import contextlib
import csv
import ctypes
import dataclasses
import datetime
import email.utils
import enum
import fcntl
import fnmatch
import functools
import glob
import hashlib
import importlib.metadata
import io
import itertools
import heapq
import json
import logging
import math
import multiprocessing
import os
import pickle
import queue
import random
import re
import resource
import signal
import socket
import ssl
import stat
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol, Sequence, TypeVar, Union

import boto3
import botocore.awsrequest
import botocore.credentials
import botocore.exceptions
import botocore.handlers
import botocore.loaders
import botocore.parsers
import botocore.serialize
import botocore.session
import botocore.utils
from botocore.config import Config

try:  # urllib3 is botocore's HTTP layer; its protocol error is what a reset mid-body raises.
    from urllib3.exceptions import ProtocolError as _Urllib3ProtocolError
except ImportError:  # pragma: no cover - urllib3 always comes with botocore
    _Urllib3ProtocolError = ConnectionError  # type: ignore[misc,assignment]

LOG = logging.getLogger("s3_bulk_transfer")
T = TypeVar("T")


# =============================================================================================
# 1. Limits and exit codes
# =============================================================================================

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB
MIN_PART_SIZE = 5 * MiB  # S3: every part but the last must be at least 5 MiB
MAX_PART_SIZE = 5 * GiB  # S3: no part may exceed 5 GiB
MAX_PARTS = 10_000  # S3: at most 10,000 parts per multipart upload
MAX_SINGLE_PUT_SIZE = 5 * GiB  # S3: PutObject takes at most 5 GiB


# S3: the largest object is what its part limits allow, 10,000 parts of 5 GiB ("Maximum object size
# 48.8 TiB", Amazon S3 multipart upload limits, S3 User Guide; older copies of that page say 5 TiB).
MAX_OBJECT_SIZE = MAX_PARTS * MAX_PART_SIZE


MAX_KEY_BYTES = 1024  # S3: keys are at most 1,024 bytes of UTF-8
DEFAULT_CHUNK_SIZE = 8 * MiB
DEFAULT_MAX_WORKERS = 10
DEFAULT_MULTIPART_THRESHOLD = 100 * MiB
DEFAULT_PROGRESS_FILE = "transfer_progress.json"
DEFAULT_LOG_FILE = "s3_transfer.log"
DEFAULT_CREDENTIALS_FILE = "source_credentials.json"
DEFAULT_STATUS_INTERVAL = 10.0


# Seconds S3 may stay silent before a request is abandoned and retried: long enough for a 5 GiB
# CompleteMultipartUpload to answer, short enough that a dead connection costs minutes, not hours.
DEFAULT_READ_TIMEOUT = 120.0


MAX_PROCESSES = 64  # --processes: beyond this the parent's bookkeeping is the bottleneck, on any machine
# --processes auto: the first process lists and keeps the books of every object, for a fraction of
# what a worker spends copying one, so a few workers are all it can keep busy (bench/README.md).
AUTO_PROCESSES_LIMIT = 5
MAX_WORKERS_LIMIT = 256  # beyond this S3 throttles a prefix and memory grows past any sane EC2 size
PROGRESS_SAVE_INTERVAL = 2.0  # seconds between progress file rewrites
# A running job rewrites its progress file at least this often, changed or not, so that `status`
# can tell a run that is alive from one that was killed.
PROGRESS_HEARTBEAT_SECONDS = 30.0
LISTING_WINDOW = 2_000  # listed objects buffered ahead of the workers


# A source of unequal parts has each part's size read by one HeadObject(PartNumber), up to this many:
# a bounded wait for HEADs, against copying the object with nothing but its size checked.
LAYOUT_PROBE_LIMIT = 1_000


BODY_ATTEMPTS = 5  # tries for one GET/PUT whose body broke mid-transfer
DEFAULT_MAX_ATTEMPTS = 10  # botocore's (and awscrt's) attempts per request, unless the user set AWS_MAX_ATTEMPTS


# Whole-object attempts, after the source changed under us or the bytes did not make its ETag. As many
# as a body gets: a byte flipped in any one part costs the whole object, so an object of many parts on a
# lossy path needs more whole attempts the more parts it has (tests/test_faults.py's soak is such a path).
OBJECT_ATTEMPTS = 5


DENIALS_BEFORE_STOP = 3  # AccessDenied on an action never yet allowed, this many times, stops the run
TICK_SECONDS = 0.2  # how often the main thread redraws status and considers saving progress
COPY_MODES = ("auto", "stream", "server-side")
EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_CODES_HELP = """exit codes:
  0    every selected object was copied (or was already done)
  1    the run finished but some objects failed; they are listed, and a rerun retries them
  2    usage, configuration or preflight error, or a failure that dooms every request
       (bad or expired credentials, missing bucket, missing permission); rerun to resume
  130  interrupted (Ctrl-C or SIGTERM); progress saved, rerun the same command to resume

s3_bulk_transfer.py status [PATH] prints a job's progress, every shard's, from its progress files
(see s3_bulk_transfer.py status --help)."""


# =============================================================================================
# 2. Errors and retries
# =============================================================================================


class ConfigurationError(Exception):
    """A mistake in the command line, a file or the environment, found before any copying.

    The message is a sentence for a person: what is wrong and what to do.
    """


class FatalTransferError(Exception):
    """A failure that dooms every further request (bad credentials, missing bucket or permission)."""


class StateTakenOver(FatalTransferError):
    """Another run of the same job (or shard) wrote its state since this run last read or wrote it."""


class ObjectFailure(Exception):
    """One object could not be copied; the rest of the run carries on."""


class SourceChanged(Exception):
    """The source object changed while it was being copied (If-Match failed): copy it again whole."""


class StopRequested(Exception):
    """The run is stopping (Ctrl-C): abandon this unit of work without marking anything."""


class BodyMismatch(Exception):
    """A downloaded body does not match what the source says it is (length or MD5)."""


class TransportError(ConnectionError):
    """A request the crt engine could not complete after awscrt's own retries (refused or reset
    connections, no answer within --read-timeout): retried as a broken body is."""


class IntegrityMismatch(Exception):
    """The bytes downloaded do not hash to the source's ETag: never completed, copied again whole."""


class ServerSideRefused(Exception):
    """S3 refused a server-side copy in --copy-mode auto: the object is copied again by streaming."""


class UploadGone(Exception):
    """The multipart upload a progress file recorded no longer exists at the destination."""


class PartsToRecheck(Exception):
    """The uploaded parts do not make the source's ETag or checksum: read each again from the source
    and upload again those S3 holds differently, rather than start the whole object over."""


class S3CallFailed(Exception):
    """An S3 request refused after every retry, with the action it needed ("s3:GetObject") and the
    role of the side it went to ("source", "destination"): the innermost call knows both best, and
    the message a person reads names them. Raised from S3's answer (`cause`, a botocore ClientError),
    which classify and error_code read through it; its text is the cause's."""

    def __init__(self, cause: botocore.exceptions.ClientError, *, action: str, role: str) -> None:
        super().__init__(cause, action, role)
        self.action = action
        self.role = role
        self.cause = cause

    def __str__(self) -> str:
        return str(self.cause)


def s3_answer(error: BaseException) -> BaseException:
    """The error S3's answer is in: the cause of an S3CallFailed, else the error itself."""
    return error.cause if isinstance(error, S3CallFailed) else error


CREDENTIALS_EXPIRED = "credentials expired: refresh them and rerun to resume"
EXPIRED_CREDENTIAL_CODES = {"ExpiredToken", "ExpiredTokenException", "TokenRefreshRequired"}
CREDENTIAL_ERROR_CODES = {
    "InvalidAccessKeyId": "the access key is not known to S3",
    "SignatureDoesNotMatch": "the secret key does not match the access key",
    **{code: CREDENTIALS_EXPIRED for code in EXPIRED_CREDENTIAL_CODES},
    "InvalidToken": "the session token is not valid",
    "AccountProblem": "the AWS account has a problem that stops S3 from answering",
    "AllAccessDisabled": "all access to this resource has been disabled",
}


ARCHIVE_STORAGE_CLASSES = {"GLACIER", "DEEP_ARCHIVE"}  # readable only after a restore


# The archive tiers of INTELLIGENT_TIERING, as HeadObject's x-amz-archive-status (ArchiveStatus) and
# InvalidObjectState's AccessTier name them: readable only after a restore too.
ARCHIVE_ACCESS_TIERS = {"ARCHIVE_ACCESS": "Archive Access", "DEEP_ARCHIVE_ACCESS": "Deep Archive Access"}


DENIED_CODES = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"}


# An AccessDenied whose message names a KMS action refuses the object's KMS key, not the bucket: S3
# says "... is not authorized to perform: kms:Decrypt on resource: arn:aws:kms:...", or, reading with a
# key the caller cannot use, that "The ciphertext refers to a customer master key" it may not access.
KMS_ACTION = re.compile(r"\bkms:[A-Za-z]+")


# S3 refused a body because it does not match its Content-MD5, checksum or signed payload hash:
# damaged on the way up, so the same bytes (still in memory) are sent again.
DAMAGED_UPLOAD_CODES = {"BadDigest", "XAmzContentSHA256Mismatch", "XAmzContentChecksumMismatch"}


MISSING_BUCKET_CODES = {"NoSuchBucket"}
MISSING_OBJECT_CODES = {"404", "NoSuchKey", "NotFound"}  # NoSuchKey from a GET, a bare 404 from a HEAD
PRECONDITION_FAILED_CODES = {"PreconditionFailed", "412"}  # If-Match failed: the source changed
NO_SUCH_UPLOAD_CODES = {"NoSuchUpload"}
ARCHIVED_CODES = {"InvalidObjectState"}  # an archived object not restored (GLACIER, DEEP_ARCHIVE...)


# S3 asks for the request again later (S3 User Guide, "Amazon S3 error best practices": slow down on
# SlowDown, retry InternalError; S3 API reference, "Error responses"): throttled (these codes, or the
# 503 that is all the answer to a HEAD carries), or failed inside. botocore retries both within its
# attempts and its retry quota; Retries goes on after that.
THROTTLED_CODES = {"SlowDown", "ServiceUnavailable"}


THROTTLED_STATUSES = {503}
# ConditionalRequestConflict (409): another conditional write of the same key was in progress; S3 asks
# for the request to be sent again (S3 API Reference, PutObject, If-Match and If-None-Match).
SERVER_ERROR_CODES = {"InternalError", "ConditionalRequestConflict"}
SERVER_ERROR_STATUSES = {500, 502, 504}


# While any request of the run succeeds, a request S3 throttles is only waiting its turn: it is given
# up only once nothing at all has succeeded, on either side, for this long.
THROTTLE_PATIENCE = 15 * 60.0  # seconds


# A request S3 keeps failing inside is a fault of that request (an object S3 cannot serve), which
# waiting does not mend while others succeed: the tool's own attempts at it, after botocore's.
SERVER_ERROR_ATTEMPTS = 10


MAX_BACKOFF = 8.0  # seconds: the longest pause before sending a request again, before jitter
RETRYABLE_BODY_ERRORS: tuple[type[BaseException], ...] = (
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.FlexibleChecksumError,  # botocore's own check of a GET body against its CRC
    # An answer that is not the XML it should be (damaged on the way, or cut short and then ended):
    # botocore says further retries may succeed. check_listings_by_their_end leaves such listing
    # pages to it.
    botocore.parsers.ResponseParserError,
    _Urllib3ProtocolError,
    ConnectionError,
    BodyMismatch,
)


def error_code(error: BaseException) -> str:
    """S3's error code in an answer ("NoSuchKey", "403"...); "" for an error S3 did not answer with."""
    error = s3_answer(error)
    if isinstance(error, botocore.exceptions.ClientError):
        return str(error.response.get("Error", {}).get("Code", ""))
    return ""


def error_detail(error: BaseException, element: str) -> str:
    """An element of S3's error answer (Message, BucketName, StorageClass...); "" when it has none."""
    error = s3_answer(error)
    if isinstance(error, botocore.exceptions.ClientError):
        return str(error.response.get("Error", {}).get(element) or "")
    return ""


def _answered(error: BaseException, codes: set[str], statuses: set[int]) -> bool:
    error = s3_answer(error)
    if not isinstance(error, botocore.exceptions.ClientError):
        return False
    return error_code(error) in codes or error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in statuses


class ErrorKind(enum.Enum):
    """What an error means, as classify reads it; what each means for an object and for the run is
    the failure policy's (FailurePolicy), and for sending it again, Retries'."""

    THROTTLED = "throttled"  # SlowDown, 503: sent again for as long as the run progresses
    SERVER_ERROR = "failed inside"  # InternalError, 500, 502, 504: sent again, SERVER_ERROR_ATTEMPTS in all
    CREDENTIALS = "credentials refused"  # or none found: no request of that side can succeed, the run stops
    MISSING_BUCKET = "missing bucket"  # the run stops too
    KMS_DENIED = "KMS key denied"  # the object's KMS key: other objects, under other keys, may be readable
    DENIED = "access denied"  # this object's, or a permission the run lacks (PermissionBreaker tells)
    SOURCE_CHANGED = "precondition failed"  # If-Match failed: the source changed, copied again whole
    NOT_FOUND = "not found"  # an object (a source deleted since it was listed) or a bucket's HEAD
    UPLOAD_GONE = "no such upload"  # the multipart upload is no longer at the destination
    DAMAGED_UPLOAD = "damaged upload"  # S3 refused a body as damaged on the way up: the same bytes again
    ARCHIVED = "archived"  # an archived object not restored
    BROKEN_BODY = "broken body"  # a body broken off mid-transfer, or not matching its ETag: read again
    OTHER = "other"


# The codes of S3's answers, by what they mean, in the order classify tries them.
ERROR_CODE_TABLE: tuple[tuple[ErrorKind, frozenset[str]], ...] = (
    (ErrorKind.CREDENTIALS, frozenset(CREDENTIAL_ERROR_CODES)),
    (ErrorKind.MISSING_BUCKET, frozenset(MISSING_BUCKET_CODES)),
    (ErrorKind.DENIED, frozenset(DENIED_CODES)),
    (ErrorKind.SOURCE_CHANGED, frozenset(PRECONDITION_FAILED_CODES)),
    (ErrorKind.NOT_FOUND, frozenset(MISSING_OBJECT_CODES)),
    (ErrorKind.UPLOAD_GONE, frozenset(NO_SUCH_UPLOAD_CODES)),
    (ErrorKind.DAMAGED_UPLOAD, frozenset(DAMAGED_UPLOAD_CODES)),
    (ErrorKind.ARCHIVED, frozenset(ARCHIVED_CODES)),
)


# The errors that no other object would escape: bad, expired or missing credentials, missing bucket.
FATAL_KINDS = {ErrorKind.CREDENTIALS, ErrorKind.MISSING_BUCKET}


def classify(error: BaseException) -> ErrorKind:
    """What an error means: S3's answer (through an S3CallFailed too) by its status for throttling and
    failures inside, else by its code (ERROR_CODE_TABLE); botocore's own errors by their type."""
    if _answered(error, THROTTLED_CODES, THROTTLED_STATUSES):
        return ErrorKind.THROTTLED
    if _answered(error, SERVER_ERROR_CODES, SERVER_ERROR_STATUSES):
        return ErrorKind.SERVER_ERROR
    answer = s3_answer(error)
    if isinstance(answer, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)):
        return ErrorKind.CREDENTIALS
    code = error_code(answer)
    for kind, codes in ERROR_CODE_TABLE:
        if code in codes:
            if kind is ErrorKind.DENIED and kms_permission_denied(answer):
                return ErrorKind.KMS_DENIED
            return kind
    if isinstance(answer, RETRYABLE_BODY_ERRORS):
        return ErrorKind.BROKEN_BODY
    return ErrorKind.OTHER


def is_busy(error: BaseException) -> bool:
    """S3 refused the request for being busy or failing inside: worth sending again later."""
    return classify(error) in (ErrorKind.THROTTLED, ErrorKind.SERVER_ERROR)


def kms_permission_denied(error: BaseException) -> Optional[str]:
    """The KMS permission an AccessDenied refuses (kms:Decrypt to read an SSE-KMS object,
    kms:GenerateDataKey to write one), when S3's message says it is about a KMS key; else None."""
    if error_code(error) not in DENIED_CODES:
        return None
    message = error_detail(error, "Message")
    found = KMS_ACTION.search(message)
    if found:
        return found.group(0)
    return "kms:Decrypt" if "customer master key" in message else None


def archived_in(storage_class: str, access_tier: str) -> str:
    """Where an archived object waits and how to have it back, as the end of a sentence about it."""
    if access_tier in ARCHIVE_ACCESS_TIERS or storage_class == "INTELLIGENT_TIERING":
        tier = ARCHIVE_ACCESS_TIERS.get(access_tier, "Archive Access or Deep Archive Access")
        return (f"archived in the Intelligent-Tiering {tier} tier and not restored: restore it (aws s3api "
                "restore-object --restore-request '{}', without Days), and rerun once it is back in the Frequent "
                "Access tier")
    where = storage_class if storage_class in ARCHIVE_STORAGE_CLASSES else "GLACIER or DEEP_ARCHIVE"
    return f"archived in {where} and not restored: restore it (aws s3api restore-object) and rerun to copy it"


def unrestored_archive(head: dict[str, Any]) -> Optional[str]:
    """How a HeadObject answer says the object is archived and not yet readable (archived_in), or None."""
    if 'ongoing-request="false"' in head.get("Restore", ""):
        return None
    if head.get("ArchiveStatus") in ARCHIVE_ACCESS_TIERS:
        return archived_in("INTELLIGENT_TIERING", head["ArchiveStatus"])
    if head.get("StorageClass") in ARCHIVE_STORAGE_CLASSES:
        return archived_in(head["StorageClass"], "")
    return None


def certificate_failure(error: Optional[BaseException]) -> Optional[ssl.SSLCertVerificationError]:
    """The failed certificate check behind an error (botocore's SSLError wraps urllib3's, which wraps
    ssl's), or None when the error is something else."""
    for _ in range(8):  # a bounded walk down the chain, in case it ever loops
        if error is None or isinstance(error, ssl.SSLCertVerificationError):
            return error
        error = error.__cause__ or error.__context__
    return None


def error_line(error: BaseException) -> str:
    """What a log line or a sentence shows of an error: its first line. botocore's ResponseParserError
    goes on with the whole answer it could not read, a listing page of a thousand keys."""
    return (str(error).splitlines() or [""])[0]


def explain_error(error: BaseException, *, access: SideAccess, bucket: str, action: str, key: str = "") -> str:
    """One sentence naming the side, the bucket, the action and what to do about it."""
    where = f"s3://{bucket}/{key}" if key else bucket_or_access_point(bucket)
    error = s3_answer(error)
    code = error_code(error)
    kind = classify(error)
    if kind is ErrorKind.CREDENTIALS and code:
        return f"The {access.role} credentials ({access.origin}) were refused: {CREDENTIAL_ERROR_CODES[code]}."
    if kind is ErrorKind.KMS_DENIED:
        kms = kms_permission_denied(error)
        return (f"Access denied by AWS KMS: the {access.role} credentials ({access.origin}) may not use {kms} "
                f"with the KMS key of {where} (S3: {error_detail(error, 'Message')}); grant {kms} on that key to "
                "them, in the key's policy (and in their IAM policy when the key is another account's).")
    if kind is ErrorKind.DENIED:
        return (
            f"Access denied: the {access.role} credentials ({access.origin}) may not {action} on {where}; "
            f"grant {action} to them (see the README's IAM policies)."
        )
    if kind is ErrorKind.MISSING_BUCKET or (kind is ErrorKind.NOT_FOUND and code != "NoSuchKey" and not key):
        # S3 names the missing bucket, which for a server-side copy may be the source it reads from.
        named = error_detail(error, "BucketName") or bucket
        whose = f"The {access.role} bucket" if named == bucket else "The bucket"
        return f"{whose} {named} does not exist (or is not reachable at this endpoint and region)."
    if kind is ErrorKind.ARCHIVED:
        return f"{where} is {archived_in(error_detail(error, 'StorageClass'), error_detail(error, 'AccessTier'))}."
    if isinstance(error, botocore.exceptions.NoCredentialsError):
        return f"No {access.role} credentials were found ({access.origin}); see the README's quick start."
    untrusted = certificate_failure(error)
    if untrusted is not None:
        endpoint = explicit_endpoint(access) or "(AWS)"
        return (
            f"The TLS certificate of the {access.role} S3 endpoint {endpoint} could not be verified "
            f"({untrusted.verify_message or untrusted.reason}): for a private endpoint, set AWS_CA_BUNDLE to the "
            "PEM file of the CA that signed its certificate, and rerun."
        )
    if isinstance(error, botocore.exceptions.EndpointConnectionError):
        return f"Cannot reach the {access.role} S3 endpoint for {where}: {error}. Check the endpoint URL and network."
    if kind in (ErrorKind.THROTTLED, ErrorKind.SERVER_ERROR):
        return (f"S3 stayed too busy to answer {action} on {where} ({access.role}): {code}: "
                f"{error_detail(error, 'Message') or code}, after every retry; rerun later to copy it (fewer "
                "--max-workers ask less of S3).")
    if isinstance(error, botocore.exceptions.ClientError):
        message = error.response.get("Error", {}).get("Message") or code
        return f"{action} on {where} ({access.role}) failed: {code}: {message}"
    return f"{action} on {where} ({access.role}) failed: {type(error).__name__}: {error_line(error)}"



def backoff_delay(attempt: int) -> float:
    """Seconds to wait before sending a request again for the `attempt`-th time: doubling from half a
    second up to MAX_BACKOFF, each between half and one and a half times that, so that workers
    refused together do not all come back together."""
    return min(0.5 * 2 ** min(attempt - 1, 8), MAX_BACKOFF) * (0.5 + random.random())


class Retries:
    """The tool's one retry loop, around requests that botocore (or awscrt) has already retried as far
    as its own attempts and retry quota allow. A request is sent again, after backoff_delay:

    * while S3 throttles it (SlowDown, 503): for as long as any request of the run
      succeeds, so that no object fails for throttling while the run makes progress. Only once
      nothing at all has succeeded for THROTTLE_PATIENCE is it given up.
    * while S3 fails inside (InternalError, 500, 502, 504): up to SERVER_ERROR_ATTEMPTS attempts.
      Neither kind of retry uses up the attempts below.
    * with `retry_bodies`, up to BODY_ATTEMPTS attempts in all: a body broken after the headers
      arrived (which botocore does not retry), a body that does not match its ETag, or one that S3
      refused as damaged on its way up (the same bytes, still in memory, are sent again).

    Anything else, and the last error when it gives up, is raised for the caller to word. One
    instance serves both sides and every thread; `on_throttle` and `on_retry` count what it does for
    the status line, and a wait ends with StopRequested when `stopping` is set (Ctrl-C).
    """

    def __init__(self, stopping: Optional[threading.Event] = None, *, on_throttle: Callable[[], None] = lambda: None,
                 on_retry: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.monotonic) -> None:
        self._stopping = stopping or threading.Event()
        self._on_throttle = on_throttle
        self._on_retry = on_retry
        self._clock = clock
        self._last_success = clock()  # of any request of the run: one float, replaced whole

    def call(self, operation: Callable[[], T], *, what: str, retry_bodies: bool = False,
             failed_once: Optional[BaseException] = None) -> T:
        """`operation()`, sent again as long as the rules above allow; `what` names it in the log.
        `failed_once` is an attempt made already (by SmallObjectPipeline) and the error it came to:
        counted as the first attempt when the rules would send it again; otherwise the operation is
        simply tried, since that error may be one the request mends itself (an expired role session)."""
        attempt = throttled = failed_inside = 0
        earlier = failed_once if failed_once is not None and self.would_retry(failed_once, retry_bodies) else None
        while True:
            error: BaseException
            try:
                if earlier is not None:
                    error, earlier = earlier, None
                    raise error
                result = operation()
            except botocore.exceptions.ClientError as refused:
                kind = classify(refused)
                if kind is ErrorKind.THROTTLED:
                    throttled += 1
                    self._wait_while_busy(refused, what=what, times=throttled)
                    continue
                if kind is ErrorKind.SERVER_ERROR:
                    failed_inside += 1
                    if failed_inside == SERVER_ERROR_ATTEMPTS:
                        raise
                    self._wait_while_busy(refused, what=what, times=failed_inside)
                    continue
                if not (retry_bodies and kind is ErrorKind.DAMAGED_UPLOAD):
                    raise
                error = refused
            except RETRYABLE_BODY_ERRORS as broken:
                if not retry_bodies:
                    raise
                error = broken
            else:
                self._last_success = self._clock()
                return result
            attempt += 1
            if attempt == BODY_ATTEMPTS:
                raise error
            self._on_retry()
            delay = backoff_delay(attempt)
            LOG.warning("%s: %s; retrying in %.1f s (attempt %d of %d)", what, error_line(error), delay,
                        attempt + 1, BODY_ATTEMPTS)
            self._wait(delay, error)

    @staticmethod
    def would_retry(error: BaseException, retry_bodies: bool) -> bool:
        """Whether the rules above send a request that failed with `error` again."""
        if isinstance(error, botocore.exceptions.ClientError):
            kind = classify(error)
            return kind in (ErrorKind.THROTTLED, ErrorKind.SERVER_ERROR) or (
                retry_bodies and kind is ErrorKind.DAMAGED_UPLOAD)
        return retry_bodies and isinstance(error, RETRYABLE_BODY_ERRORS)

    def succeeded(self) -> None:
        """A request of the run succeeded outside call() (SmallObjectPipeline's): S3 is not stuck."""
        self._last_success = self._clock()

    def _wait_while_busy(self, error: botocore.exceptions.ClientError, *, what: str, times: int) -> None:
        idle = self._clock() - self._last_success
        if idle >= THROTTLE_PATIENCE:
            LOG.warning("%s: S3 answered %s %d times, and no request of this run has succeeded for %.0f minutes; "
                        "giving up on it", what, error_code(error), times, idle / 60)
            raise error
        self._on_throttle()
        delay = backoff_delay(times)
        LOG.info("%s: S3 is busy (%s); sending it again in %.1f s (%d so far)", what, error_code(error), delay, times)
        self._wait(delay, error)

    def _wait(self, delay: float, error: BaseException) -> None:
        if self._stopping.wait(delay):
            raise StopRequested() from error


# =============================================================================================
# 3. Pure rules: sizes, locations, filters, shards, key mapping, part plans
# =============================================================================================

_SIZE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": TiB}


def parse_size(text: str) -> int:
    """Parse '8388608', '8MiB', '16MB' or '1.5G' into bytes.

    Units are binary whether or not the 'i' is written, as in the AWS CLI's s3 settings
    (multipart_chunksize = 16MB means 16 MiB): people who type 5MB mean S3's 5 MiB minimum.
    """
    match = _SIZE_PATTERN.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size: use bytes or a unit such as 8MiB, 16MB, 1GiB")
    number, unit, _, _ = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.lower()])


def parse_rate(text: str) -> int:
    """Parse a bandwidth such as '100MB/s', '1.5GiB/s' or '50M' into bytes per second (binary units,
    as parse_size)."""
    stripped = text.strip()
    per_second = stripped[:-2] if stripped.lower().endswith("/s") else stripped
    rate = parse_size(per_second)
    if rate <= 0:
        raise ValueError(f"{text!r} is not a positive rate")
    return rate


def format_size(size: float) -> str:
    """Human-readable binary size: 1.5 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def has_dot_segments(key: str) -> bool:
    """Whether a key has a "." or ".." segment between its slashes (./x, a/../b, x/..).

    S3 stores such keys as they are, and botocore sends them as they are (PUT /bucket/a/../b), but
    anything on the way that normalises URLs as RFC 3986 says (a proxy, a load balancer, an
    S3-compatible server) resolves them first: with path-style addressing /dst/copy/a/../../../src/x is
    a write to s3://src/x, outside the destination prefix and in another bucket. SeaweedFS and MinIO
    refuse such keys outright. "//" is not a dot segment: servers that fold it stay inside the prefix.
    """
    return any(segment in (".", "..") for segment in key.split("/"))


# An access point's ARN (S3 User Guide, "Using access points"): partition, region, account, name.
ACCESS_POINT_ARN = re.compile(
    r"arn:(aws[a-z-]*):s3:([a-z0-9-]+):(\d{12}):accesspoint/([a-z0-9][a-z0-9-]{1,48}[a-z0-9])")


MULTI_REGION_ACCESS_POINT_ARN = re.compile(r"arn:aws[a-z-]*:s3::\d{12}:accesspoint/[^/]+")


def access_point_region(bucket: str) -> Optional[str]:
    """The region of an access point named by its ARN; None for a bucket name."""
    match = ACCESS_POINT_ARN.fullmatch(bucket)
    return match.group(2) if match else None


def split_access_point_arn(path: str, uri: str) -> tuple[str, str]:
    """The access point ARN at the start of an S3 URI's path and the prefix after it, as `aws s3`
    reads s3://arn:aws:s3:REGION:ACCOUNT:accesspoint/NAME/PREFIX. botocore sends requests for the
    ARN to the access point's own host, signed for its region, and names it in a copy's source."""
    head, _, rest = path.partition("/")
    name, _, prefix = rest.partition("/")
    arn = f"{head}/{name}"
    if MULTI_REGION_ACCESS_POINT_ARN.fullmatch(arn):
        raise ConfigurationError(
            f"{arn} in {uri!r} is a Multi-Region Access Point, which needs SigV4A signing (not done here) and may "
            "serve each request from another of its buckets: give one of its buckets, or a single-Region access "
            "point (arn:aws:s3:REGION:ACCOUNT:accesspoint/NAME), instead.")
    if not ACCESS_POINT_ARN.fullmatch(arn):
        raise ConfigurationError(
            f"{arn!r} in {uri!r} is not an S3 access point ARN: write it as "
            "s3://arn:aws:s3:REGION:ACCOUNT:accesspoint/NAME[/PREFIX] (ACCOUNT of 12 digits, NAME of 3-50 lowercase "
            "letters, digits and hyphens); Object Lambda and Outposts access points are not supported.")
    return arn, prefix


def check_bucket_name(bucket: str, uri: str) -> None:
    """Refuse, in a sentence, a bucket name S3 would refuse."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", bucket):
        raise ConfigurationError(f"{bucket!r} in {uri!r} is not a valid bucket name: bucket names are 3-63 lowercase "
                                 "letters, digits, dots and hyphens.")


@dataclasses.dataclass(frozen=True)
class S3Location:
    """A bucket (or an access point's ARN) and a key prefix. A non-empty prefix always ends in '/', as
    a folder does in `aws s3 cp --recursive` and rclone: s3://b/photos means the keys under photos/."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, uri: str) -> "S3Location":
        if not uri.startswith("s3://"):
            raise ConfigurationError(f"{uri!r} is not an S3 URI: write it as s3://BUCKET or s3://BUCKET/PREFIX.")
        path = uri[len("s3://"):]
        if path.startswith("arn:"):
            bucket, prefix = split_access_point_arn(path, uri)
        else:
            bucket, _, prefix = path.partition("/")
            check_bucket_name(bucket, uri)
        if has_dot_segments(prefix):
            raise ConfigurationError(
                f"The prefix of {uri!r} has a '.' or '..' segment, which a server that normalises URLs would "
                "resolve to another prefix: write the prefix without them."
            )
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return cls(bucket=bucket, prefix=prefix)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


# S3 Express One Zone directory buckets are named BASE--ZONE-ID--x-s3 (S3 User Guide, "Directory bucket
# naming rules"); general purpose bucket names may not end so.
DIRECTORY_BUCKET_SUFFIX = "--x-s3"


def refuse_directory_bucket(location: S3Location) -> None:
    """A directory bucket breaks what the copy rests on: its ListObjectsV2 is not in key order and takes
    no StartAfter (the key ranges and watermarks of resume), its ETags are not MD5s (the integrity
    checks) and it has no object tags. Support, designed for those rules, may come later."""
    if location.bucket.endswith(DIRECTORY_BUCKET_SUFFIX):
        raise ConfigurationError(
            f"{location} is an S3 Express One Zone directory bucket (its name ends in {DIRECTORY_BUCKET_SUFFIX}), "
            "which this tool cannot copy from or to yet: a directory bucket lists keys not in key order and without "
            "StartAfter, and has ETags that are not MD5s and no object tags, where the tool's resumable listing and "
            "integrity checks need all of these; copy it with a tool that supports directory buckets, such as "
            "aws s3 cp --recursive.")


def canonical_endpoint(url: Optional[str]) -> Optional[str]:
    """One spelling per endpoint (case, default port, trailing slash), so that two spellings of the
    same server are recognised as one when checking for overlap or matching a progress file."""
    if not url:
        return None
    parts = urllib.parse.urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    default_port = {"http": 80, "https": 443}.get(scheme)
    port = f":{parts.port}" if parts.port and parts.port != default_port else ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    return f"{scheme}://{host}{port}{parts.path.rstrip('/')}"


@dataclasses.dataclass(frozen=True)
class FilterRule:
    """One --include or --exclude glob, matched against the key relative to the source prefix."""

    include: bool
    pattern: str


def is_selected(relative_key: str, rules: Iterable[FilterRule]) -> bool:
    """aws s3 semantics: everything is included, then each rule in order may flip it; the last match wins.
    '*' matches across '/' too, as in aws s3."""
    selected = True
    for rule in rules:
        if fnmatch.fnmatchcase(relative_key, rule.pattern):
            selected = rule.include
    return selected


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_moment(text: str, now: datetime.datetime) -> datetime.datetime:
    """--newer-than and --older-than: a duration back from `now` (30d, 12h, 90m, 2w, 45s), a date
    (2026-01-31, midnight UTC) or a time (2026-01-31T12:00:00Z, or with an offset; UTC if none)."""
    stripped = text.strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", stripped)
    if match:
        return now - datetime.timedelta(seconds=float(match.group(1)) * DURATION_UNITS[match.group(2)])
    try:
        moment = datetime.datetime.fromisoformat(stripped.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (30d, 12h, 90m, 2w, 45s) nor a date (2026-01-31) or a "
                         "time (2026-01-31T12:00:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


@dataclasses.dataclass(frozen=True)
class ObjectFilter:
    """--min-size and --max-size (inclusive, as rclone's), --newer-than and --older-than (its
    LastModified after, or before, that moment): which objects are copied by their size and age,
    applied after --include/--exclude, to a listing and to an inventory report alike. `given` is
    the options as typed, which the job's identity keeps: a duration is counted from the start of
    each run, so that a rerun of "--older-than 30d" is the same job."""

    min_size: Optional[int] = None
    max_size: Optional[int] = None
    newer_than: Optional[datetime.datetime] = None
    older_than: Optional[datetime.datetime] = None
    given: tuple[str, ...] = ()

    def active(self) -> bool:
        return any(bound is not None for bound in (self.min_size, self.max_size, self.newer_than, self.older_than))

    def needs_age(self) -> bool:
        return self.newer_than is not None or self.older_than is not None

    def admits(self, size: int, last_modified: Optional[datetime.datetime]) -> bool:
        """Whether an object of this size and LastModified is selected (None: its age unknown, which
        no age bound admits)."""
        if (self.min_size is not None and size < self.min_size) or (self.max_size is not None and size > self.max_size):
            return False
        if not self.needs_age():
            return True
        if last_modified is None:
            return False
        return ((self.newer_than is None or last_modified > self.newer_than)
                and (self.older_than is None or last_modified < self.older_than))

    def describe(self) -> str:
        """For the log: 'at least 1.0 KiB, modified before 2026-01-01T00:00:00+00:00'."""
        parts = [f"{label} {value}" for label, value in (
            ("at least", self.min_size is not None and format_size(self.min_size)),
            ("at most", self.max_size is not None and format_size(self.max_size)),
            ("modified after", self.newer_than and self.newer_than.isoformat(timespec="seconds")),
            ("modified before", self.older_than and self.older_than.isoformat(timespec="seconds"))) if value]
        return ", ".join(parts)


@dataclasses.dataclass(frozen=True)
class RequestPrices:
    """S3 Standard list prices the dry run's estimate uses (--price-*): US East (N. Virginia), as
    AWS publishes them at https://aws.amazon.com/s3/pricing/ (PRICES_AS_OF). Other regions differ
    by a few percent, transfer between some region pairs by more."""

    write_per_1000: float = 0.005  # PUT, COPY, POST, LIST (CreateMultipartUpload, UploadPart, Complete...)
    read_per_1000: float = 0.0004  # GET, SELECT and all other requests (HEAD, GetObjectTagging)
    transfer_per_gb: float = 0.02  # data transferred from S3 to another region


PRICES_AS_OF = "2026-12"


@dataclasses.dataclass(frozen=True)
class CostEstimate:
    """The requests a copy makes, by who pays (each bucket's owner pays for the requests to it, and
    the source's for the bytes leaving its region), and what they cost at `prices`."""

    source_lists: int  # ListObjectsV2 pages
    source_gets: int  # a GET per small object, a ranged GET per part
    source_heads: int  # a HeadObject per multipart object (its part layout)
    tagged_at_most: int  # a GetObjectTagging per tagged object: a listing does not tell which are
    destination_writes: int  # a PUT per small object; per multipart: create, a part each, complete
    bytes_out_of_region: int  # 0 when the source's region is the destination's (the machine's)
    prices: RequestPrices = RequestPrices()

    @classmethod
    def of(cls, *, small: int, multipart: int, parts: int, listing_pages: int, total_bytes: int,
           cross_region: bool, prices: RequestPrices = RequestPrices()) -> "CostEstimate":
        return cls(source_lists=listing_pages, source_gets=small + parts, source_heads=multipart,
                   tagged_at_most=small + multipart, destination_writes=small + parts + 2 * multipart,
                   bytes_out_of_region=total_bytes if cross_region else 0, prices=prices)

    def source_cost(self, *, with_tags: bool) -> float:
        reads = self.source_gets + self.source_heads + (self.tagged_at_most if with_tags else 0)
        return (self.source_lists * self.prices.write_per_1000 / 1000 + reads * self.prices.read_per_1000 / 1000
                + self.bytes_out_of_region / GiB * self.prices.transfer_per_gb)

    def destination_cost(self) -> float:
        return self.destination_writes * self.prices.write_per_1000 / 1000


SHARD_SPLITS = ("ranges", "hash", "files")
# As the progress file names each split but hash (whose files, older than the others, name none): the
# splits give a key to different shards, so a file of one never resumes under another.
SHARD_SPLIT_NAMES = {"ranges": "key ranges", "files": "report files"}


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """How the shards of one job divide its keyspace: contiguous key ranges (relative to the source
    prefix, cut at `split_points`), range i owned by shard owners[i]; or, where the bucket offered
    too few places to cut, a stable hash of each key (`by_hash`). Every shard of a job must use the
    same plan: two plans made at different moments of a changing bucket could give a key to two
    shards or to none."""

    count: int
    split_points: tuple[str, ...] = ()
    owners: tuple[int, ...] = (0,)
    by_hash: bool = False

    def owner_of(self, relative_key: str) -> int:
        if self.by_hash:
            return shard_of(relative_key, self.count)
        return self.owners[range_index(self.split_points, relative_key)]

    def ranges_of(self, index: int) -> list[int]:
        """The indices of the ranges shard `index` lists (none under a hash split: it lists everything)."""
        return [number for number, owner in enumerate(self.owners) if owner == index and not self.by_hash]

    def document(self) -> dict[str, Any]:
        if self.by_hash:
            return {"shards": self.count, "split": "hash"}
        return {"shards": self.count, "split": "ranges", "split_points": list(self.split_points),
                "owners": list(self.owners)}

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> "ShardPlan":
        count = int(document["shards"])
        if document["split"] == "hash":
            return cls(count, by_hash=True)
        plan = cls(count, tuple(document["split_points"]), tuple(int(owner) for owner in document["owners"]))
        if len(plan.owners) != len(plan.split_points) + 1 or list(plan.split_points) != sorted(set(plan.split_points)) \
                or sorted(set(plan.owners)) != list(range(count)):
            raise ValueError("the ranges do not cover the keyspace once, shared among every shard")
        return plan


def plan_shards(split_points: list[str], count: int) -> ShardPlan:
    """Give each of `count` shards a run of adjacent ranges cut at these (sorted, relative) points,
    as many ranges each as can be (the split points already spread the bucket's folders evenly);
    a hash split when there are fewer ranges than shards, so that no shard is left idle."""
    ranges = len(split_points) + 1
    if ranges < count:
        return ShardPlan(count, by_hash=True)
    return ShardPlan(count, tuple(split_points), tuple(number * count // ranges for number in range(ranges)))


def share_report_files(sizes: Sequence[int], count: int) -> Optional[list[int]]:
    """The shard of each data file of an inventory report (by their sizes, in the manifest's order),
    so that each of `count` shards reads about an equal share: the largest first, each to the shard
    with the fewest bytes so far (the lowest index on a tie). The manifest never changes, so every
    shard and every rerun computes the same shares. None for fewer files than shards, where some
    would read nothing: a hash of each key then."""
    if len(sizes) < count:
        return None
    owners = [0] * len(sizes)
    loads = [(0, shard) for shard in range(count)]  # a heap of (bytes so far, shard)
    for number in sorted(range(len(sizes)), key=lambda number: (-sizes[number], number)):
        load, shard = heapq.heappop(loads)
        owners[number] = shard
        heapq.heappush(loads, (load + sizes[number], shard))
    return owners


@dataclasses.dataclass(frozen=True)
class Shard:
    """--shard I/N: this process copies only shard I (0-based) of N, so N machines split one job and
    no key is copied twice. `split` "ranges": the shards share a ShardPlan of key ranges and each
    lists only its own (the plan is read at connection time, see shard_plan_for); "hash": a stable
    hash of each key, every shard listing the whole bucket, with no plan to share; "files": with
    --from-inventory, each shard reads only its share of the report's data files
    (share_report_files), which hold each key once."""

    index: int
    count: int
    split: str = "ranges"
    plan: Optional[ShardPlan] = None

    def owns(self, relative_key: str) -> bool:
        if self.count == 1 or self.split == "files":  # a shard of a report's files reads only its own
            return True
        if self.split == "hash":
            return shard_of(relative_key, self.count) == self.index
        assert self.plan is not None, "a shard of key ranges knows its plan before it reads a listing"
        return self.plan.owner_of(relative_key) == self.index

    def needs_plan(self) -> bool:
        return self.split == "ranges" and self.count > 1 and self.plan is None

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


SHARD_INDEX_VARIABLES = ("AWS_BATCH_JOB_ARRAY_INDEX", "JOB_COMPLETION_INDEX")  # AWS Batch, Kubernetes Jobs


def shard_of(relative_key: str, count: int) -> int:
    """The shard a key belongs to: a hash of its UTF-8 bytes (not Python's hash(), which is salted per
    process), taken relative to the prefix so the source and destination listings agree."""
    digest = hashlib.blake2b(relative_key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def parse_shard(text: str, environment: dict[str, str], split: str = "ranges") -> Shard:
    """'I/N' with 0 <= I < N, or 'auto/N', which takes I from AWS Batch's or a Kubernetes indexed Job's
    array index variable."""
    index_text, slash, count_text = text.partition("/")
    if not slash or not count_text.isdigit() or int(count_text) < 1:
        raise ConfigurationError(f"--shard {text!r} is not I/N: write e.g. 0/3 for the first of three shards, "
                                 "or auto/3 to take I from AWS_BATCH_JOB_ARRAY_INDEX or JOB_COMPLETION_INDEX.")
    count = int(count_text)
    if index_text == "auto":
        found = [(name, environment[name]) for name in SHARD_INDEX_VARIABLES if environment.get(name)]
        if not found:
            raise ConfigurationError(f"--shard auto/{count} needs the shard index in AWS_BATCH_JOB_ARRAY_INDEX "
                                     "(an AWS Batch array job) or JOB_COMPLETION_INDEX (a Kubernetes indexed "
                                     f"Job); neither is set. Give the index yourself: --shard 0/{count}.")
        name, index_text = found[0]
        if not index_text.isdigit():
            raise ConfigurationError(f"{name}={index_text!r} is not a shard index (a whole number).")
    if not index_text.isdigit() or not 0 <= int(index_text) < count:
        raise ConfigurationError(f"--shard {text!r}: the index must be a whole number from 0 to {count - 1}.")
    return Shard(int(index_text), count, split)


@dataclasses.dataclass(frozen=True)
class S3StatePath:
    """An object holding one of the job's state documents (--progress-file s3://BUCKET/KEY), named
    as a file path is (name, stem, suffix, with_name), so that the names made from it (a shard's
    progress, the shard plan) are made alike for a file and for an object."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> "S3StatePath":
        """s3://BUCKET/KEY; a folder (s3://BUCKET/jobs/, or the bucket alone) holds the default name."""
        bucket, _, key = uri[len("s3://"):].partition("/")
        check_bucket_name(bucket, uri)
        if has_dot_segments(key):
            raise ConfigurationError(f"{uri!r} has a '.' or '..' segment: write the key without them.")
        return cls(bucket, key + DEFAULT_PROGRESS_FILE if not key or key.endswith("/") else key)

    @property
    def folder(self) -> str:
        """The key prefix the object is in ("" or ending in '/')."""
        return self.key[:self.key.rfind("/") + 1]

    @property
    def name(self) -> str:
        return self.key[len(self.folder):]

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    def with_name(self, name: str) -> "S3StatePath":
        return S3StatePath(self.bucket, self.folder + name)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


# Where a state document (a progress file, the shard plan) is: a file, or an object in a bucket.
StateLocation = Union[Path, S3StatePath]


def state_location(text: str) -> StateLocation:
    """--progress-file and --shard-plan: an s3:// location or a file path."""
    return S3StatePath.parse(text) if text.startswith("s3://") else Path(text)


def shard_file_name(path: StateLocation, shard: Optional[Shard]) -> StateLocation:
    """The state file of one shard: transfer_progress.json -> transfer_progress.shard-1-of-3.json,
    so shards sharing a directory never share a file."""
    if shard is None or shard.count == 1:
        return path
    return path.with_name(f"{path.stem}.shard-{shard.index}-of-{shard.count}{path.suffix}")


@dataclasses.dataclass(frozen=True)
class ListedObject:
    """One object as listed (or as HEAD told us after a change)."""

    key: str
    size: int
    etag: str
    storage_class: str = "STANDARD"
    last_modified: Optional[datetime.datetime] = None


def map_destination_key(source_key: str, source: S3Location, destination: S3Location) -> str:
    """Destination prefix + (source key minus source prefix)."""
    if not source_key.startswith(source.prefix):
        raise ValueError(f"key {source_key!r} is not under the source prefix {source.prefix!r}")
    return destination.prefix + source_key[len(source.prefix):]


def why_uncopyable(relative_key: str, destination_key: str, size: int) -> Optional[str]:
    """Why this object cannot be copied as mapped, or None. Decided from the listing alone, so that
    nothing at all is written for such an object (no PutObject, no CreateMultipartUpload)."""
    if has_dot_segments(relative_key):
        return ('its key has a "." or ".." path segment, which a proxy or S3-compatible server that normalises '
                "URLs would resolve, so the copy could land outside the destination prefix or in another bucket; "
                "rename it at the source, or copy it by hand where you know nothing normalises URLs")
    key_bytes = len(destination_key.encode("utf-8"))
    if key_bytes > MAX_KEY_BYTES:
        return (f"the destination key would be {key_bytes} bytes, over S3's {MAX_KEY_BYTES}-byte limit; "
                "use a shorter destination prefix")
    if size > MAX_OBJECT_SIZE:
        return (f"it is {format_size(size)} ({size:,} bytes), over S3's limit of {format_size(MAX_OBJECT_SIZE)} "
                f"({MAX_OBJECT_SIZE:,} bytes, 10,000 parts of 5 GiB) for one object, so S3 cannot store it and "
                "nothing was written for it")
    forbidden = xml_forbidden_characters(destination_key)
    if forbidden and size > MAX_SINGLE_PUT_SIZE:
        named = ", ".join(f"U+{ord(character):04X}" for character in forbidden)
        return (f"its key contains {named}, which XML 1.0 forbids, so S3's answer to CreateMultipartUpload "
                "(which echoes the key) cannot be read and the upload could be neither continued nor aborted, "
                f"and at {format_size(size)} ({size:,} bytes) it is over the 5 GiB one PutObject takes; nothing "
                "was written for it: rename it at the source to copy it")
    return None


# XML 1.0's Char production (https://www.w3.org/TR/xml/#charsets). S3 writes any other character of a
# key as a character reference (&#x7;), which no XML parser accepts either (boto/botocore#3496).
_XML_FORBIDDEN = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_forbidden_characters(text: str) -> str:
    """The characters of `text` that XML 1.0 forbids, each once, in order of appearance ("" for none):
    the C0 controls but tab, line feed and carriage return, the surrogates, U+FFFE and U+FFFF.

    A carriage return is allowed, though a parser reads a literal one back as a line feed: that changes
    a key read back from XML, never what S3 does with it, so it is answered by asking listings for
    URL-encoded keys (EncodingType=url), not by avoiding multipart uploads."""
    return "".join(dict.fromkeys(_XML_FORBIDDEN.findall(text)))


def copied_in_one_request(destination_key: str, size: int, *, multipart_threshold: int) -> bool:
    """Whether an object is copied with one PutObject (or CopyObject) rather than in parts: below the
    threshold, and also above it up to 5 GiB when its key holds a character XML 1.0 forbids, since
    S3's answer to CreateMultipartUpload for such a key cannot be read (see why_uncopyable for larger ones)."""
    if size < multipart_threshold:
        return True
    return size <= MAX_SINGLE_PUT_SIZE and bool(xml_forbidden_characters(destination_key))


@dataclasses.dataclass(frozen=True)
class PartRange:
    """One part of a multipart copy: its 1-based number and inclusive byte range."""

    number: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start + 1


def choose_part_size(object_size: int, requested: int) -> int:
    """The part size for an object: the requested chunk size, raised (to a whole MiB) only when the
    object would otherwise need more than 10,000 parts; never below 5 MiB, never above 5 GiB. A 5 TiB
    object gets 525 MiB parts, and the largest object S3 can hold (MAX_OBJECT_SIZE, 48.8 TiB) parts of
    exactly 5 GiB, so no object S3 can hold is ever refused for its part count."""
    if object_size > MAX_OBJECT_SIZE:
        raise ValueError(f"an object of {object_size:,} bytes is over S3's {format_size(MAX_OBJECT_SIZE)} limit "
                         "for one object (10,000 parts of 5 GiB)")
    part_size = max(requested, MIN_PART_SIZE)
    if math.ceil(object_size / part_size) > MAX_PARTS:
        part_size = math.ceil(object_size / MAX_PARTS / MiB) * MiB
    return part_size


def plan_parts(object_size: int, part_size: int) -> list[PartRange]:
    """Split [0, object_size) into parts of part_size bytes; only the last may be shorter."""
    if object_size == 0:
        return [PartRange(1, 0, -1)]
    return [
        PartRange(number, start, min(start + part_size, object_size) - 1)
        for number, start in enumerate(range(0, object_size, part_size), start=1)
    ]


def plan_layout(part_sizes: Sequence[int]) -> list[PartRange]:
    """Parts of these sizes, in order: a source's own unequal layout, repeated."""
    starts = itertools.accumulate(part_sizes, initial=0)
    return [PartRange(number, start, start + size - 1)
            for number, (start, size) in enumerate(zip(starts, part_sizes), start=1)]


def layout_fits_s3(part_sizes: Sequence[int]) -> bool:
    """Whether S3 takes an upload in parts of these sizes: at most 10,000, each of 5 MiB to 5 GiB but
    the last, which may be smaller."""
    return (0 < len(part_sizes) <= MAX_PARTS and all(MIN_PART_SIZE <= size <= MAX_PART_SIZE
                                                      for size in part_sizes[:-1])
            and 0 < part_sizes[-1] <= MAX_PART_SIZE)


# =============================================================================================
# 4. Configuration
# =============================================================================================


@dataclasses.dataclass(frozen=True)
class SideAccess:
    """How to reach one side (source or destination): its endpoint and credentials. Secrets are kept
    out of repr()."""

    role: str  # "source" or "destination", used in every message about this side
    origin: str  # where the credentials come from, for messages: a file, a profile, the default chain
    profile: Optional[str] = None
    endpoint_url: Optional[str] = None
    region: Optional[str] = None
    access_key_id: Optional[str] = dataclasses.field(default=None, repr=False)
    secret_access_key: Optional[str] = dataclasses.field(default=None, repr=False)
    session_token: Optional[str] = dataclasses.field(default=None, repr=False)
    role_arn: Optional[str] = None
    external_id: Optional[str] = dataclasses.field(default=None, repr=False)
    request_payer: Optional[str] = None  # --request-payer: "requester" declares that this account pays


def on_one_endpoint(first: SideAccess, second: SideAccess) -> bool:
    """Both sides talk to one S3 service: the only case where S3 can copy server-side, and where
    a source and destination can overlap."""
    return canonical_endpoint(first.endpoint_url) == canonical_endpoint(second.endpoint_url)


class RunMode(enum.Enum):
    """What a run does with the job: copy it, only say what a copy would do, or only compare."""

    COPY = "copy"
    DRY_RUN = "dry run"  # --dry-run
    VERIFY_ONLY = "verify only"  # --verify-only


@dataclasses.dataclass(frozen=True)
class JobDefinition:
    """What makes a job: which objects go where. A progress file is only ever reused for the same job."""

    source: S3Location
    destination: S3Location
    source_access: SideAccess
    destination_access: SideAccess
    filters: tuple[FilterRule, ...] = ()
    object_filter: ObjectFilter = ObjectFilter()
    shard: Optional[Shard] = None
    inventory: Optional[str] = None  # --from-inventory: a manifest.json or key list, local (absolute) or s3://
    copy_tags: bool = True  # --no-tags turns it off
    object_lock: bool = False  # --object-lock copy: each object's retention and legal hold go with it

    def identity(self) -> dict[str, Any]:
        """The job as the progress file records it, to refuse a file written for another job."""
        return {
            "source": str(self.source),
            "destination": str(self.destination),
            "source_endpoint_url": canonical_endpoint(self.source_access.endpoint_url),
            "destination_endpoint_url": canonical_endpoint(self.destination_access.endpoint_url),
            "filters": [["include" if rule.include else "exclude", rule.pattern] for rule in self.filters],
            **({"object_filters": list(self.object_filter.given)} if self.object_filter.given else {}),
            **({"shard": str(self.shard)} if self.shard else {}),
            **({"shard_split": SHARD_SPLIT_NAMES[self.shard.split]} if self.shard and self.shard.split != "hash"
               else {}),
            # A watermark is a place in one listing's key order: a listing's and a report's do not mix.
            **({"inventory": self.inventory} if self.inventory else {}),
            # Resumed without it, an upload begun without tags would complete without them, unsaid.
            **({"tags": "not copied (--no-tags)"} if not self.copy_tags else {}),
            # Likewise an upload begun without the lock headers would complete unlocked.
            **({"object_lock": "copied"} if self.object_lock else {}),
        }


@dataclasses.dataclass(frozen=True)
class Tuning:
    """How hard and in what way the job is done; a rerun may change any of it and still resume."""

    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_workers: int = DEFAULT_MAX_WORKERS
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD
    memory_limit: int = DEFAULT_MAX_WORKERS * DEFAULT_CHUNK_SIZE
    list_concurrency: int = 1
    max_bandwidth: Optional[int] = None  # bytes per second of object data through this machine
    max_requests_per_second: Optional[float] = None  # of the requests that read the source
    read_timeout: float = DEFAULT_READ_TIMEOUT
    engine: str = "auto"
    copy_mode: str = "auto"
    processes: int = 1  # --processes: the processes the job runs in; all but this one copy small objects

    def memory_bound(self) -> str:
        return (
            f"at most {self.max_workers} units and {format_size(self.memory_limit)} of object data in flight "
            f"(a unit is one part, or one object copied with one PUT: below the "
            f"{format_size(self.multipart_threshold)} threshold; "
            "a single unit larger than the limit runs alone)"
        )


@dataclasses.dataclass(frozen=True)
class WriteOptions:
    """What every destination object is written with, beyond what it carries over from its source."""

    storage_class: Optional[str] = None
    sse: Optional[str] = None
    sse_kms_key_id: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class OutputSettings:
    """Where the run keeps its state and tells its story."""

    progress_file: StateLocation = Path(DEFAULT_PROGRESS_FILE)
    log_file: Path = Path(DEFAULT_LOG_FILE)
    shard_plan_file: Optional[StateLocation] = None  # --shard I/N of key ranges: the plan every shard shares
    report_file: Optional[Path] = None
    status_interval: float = DEFAULT_STATUS_INTERVAL
    quiet: bool = False
    verbose: bool = False


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Everything one run needs, validated once (build_settings, in the command line section)."""

    job: JobDefinition
    mode: RunMode = RunMode.COPY
    tuning: Tuning = Tuning()
    writes: WriteOptions = WriteOptions()
    output: OutputSettings = OutputSettings()
    restart: bool = False  # --restart: forget the progress file and begin again
    verify: bool = False  # --verify: compare source and destination after copying
    verify_metadata: bool = False  # --verify-metadata: the comparison compares headers, metadata and tags too
    skip_existing: bool = False  # --skip-existing: leave alone what the destination already holds
    delete: bool = False  # --delete: after a complete copy, remove what the source no longer has
    max_delete: Optional[int] = None  # --max-delete: refuse to delete more than this many
    prices: RequestPrices = RequestPrices()  # what the dry run's cost estimate counts with


def read_json_file(path: Path, *, what: str, when_invalid: str) -> Any:
    """Parse a JSON file, turning every way it can be unreadable into a sentence for a person.
    A missing file raises FileNotFoundError: what that means depends on the file."""
    return parse_json_document(read_file_bytes(path, what=what), where=str(path), what=what, when_invalid=when_invalid)


def read_file_bytes(path: Path, *, what: str) -> bytes:
    """A file's bytes; a file that exists but cannot be read is a sentence. A missing file raises
    FileNotFoundError: what that means depends on the file."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as error:
        raise ConfigurationError(f"The {what} {path} cannot be read ({error.strerror or error}): check that it is a "
                                 "file this user may read.") from None


def parse_json_document(data: bytes, *, where: str, what: str, when_invalid: str) -> Any:
    """Parse a JSON document read from `where` (a file, an object), every way it can be unreadable a
    sentence for a person."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigurationError(f"The {what} {where} is not UTF-8 text (byte {error.object[error.start]:#04x} at "
                                 f"offset {error.start}); {when_invalid}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigurationError(
            f"The {what} {where} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); "
            f"{when_invalid}"
        ) from None


CREDENTIAL_FILE_FIELDS = {
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "region",
    "endpoint_url",
    "role_arn",
    "external_id",
}


def load_credentials_file(path: Path) -> dict[str, str]:
    """Read and check the source credentials JSON; warn, as ssh does, when others can read it."""
    try:
        data = read_json_file(path, what="source credentials file",
                              when_invalid="compare it with source_credentials.json.example.")
    except FileNotFoundError:
        raise ConfigurationError(
            f"The source credentials file {path} does not exist: create it from "
            "source_credentials.json.example, or omit --source-credentials to use the default credential chain."
        ) from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"The source credentials file {path} must hold a JSON object with named fields.")
    unknown = sorted(set(data) - CREDENTIAL_FILE_FIELDS)
    if unknown:
        raise ConfigurationError(
            f"The source credentials file {path} has unknown field(s) {', '.join(unknown)}; "
            f"the known fields are {', '.join(sorted(CREDENTIAL_FILE_FIELDS))}."
        )
    not_text = sorted(name for name, value in data.items() if not isinstance(value, str))
    if not_text:
        raise ConfigurationError(f"In the source credentials file {path}, {', '.join(not_text)} must be text.")
    values = {name: value.strip() for name, value in data.items() if value.strip()}
    if ("aws_access_key_id" in values) != ("aws_secret_access_key" in values):
        raise ConfigurationError(
            f"The source credentials file {path} must give both aws_access_key_id and aws_secret_access_key, "
            "or neither (to use the default credential chain with role_arn)."
        )
    if "aws_session_token" in values and "aws_access_key_id" not in values:
        raise ConfigurationError(f"The source credentials file {path} has a session token without keys.")
    if not values.get("aws_access_key_id") and not values.get("role_arn"):
        raise ConfigurationError(
            f"The source credentials file {path} gives neither keys nor a role_arn: fill in "
            "aws_access_key_id and aws_secret_access_key."
        )
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        LOG.warning(
            "The source credentials file %s can be read by other users (mode %o): run chmod 600 %s.",
            path, stat.S_IMODE(mode), path,
        )
    return values


# =============================================================================================
# 5. Connecting to each side (credentials, clients, regions, preflight checks)
# =============================================================================================


class RenewableRoleCredentials(botocore.credentials.RefreshableCredentials):
    """Assumed-role credentials that botocore renews before they expire, and that can also be
    renewed at once when S3 calls them expired earlier than their stated expiry (a session revoked
    by an administrator, a clock that is off): waiting for botocore's renewal window would fail
    every request until then.

    ``generation`` counts those early renewals, so that of the requests in flight when a session
    ends, only one renews it: a request signed before the last renewal only needs to be retried.
    """

    generation = 0

    def renew_unless_renewed_since(self, generation: int) -> bool:
        """Assume the role again, unless it was renewed after ``generation``; True if renewed now.

        Library seam (botocore): RefreshableCredentials renews only inside its expiry window, and has
        no public way to renew now. Its ``_refresh_lock`` is the lock its own renewals take, and
        ``_protected_refresh(is_mandatory=True)`` the renewal they run under it, which raises when the
        role cannot be assumed."""
        with self._refresh_lock:
            if generation != self.generation:
                return False
            self._protected_refresh(is_mandatory=True)
            self.generation += 1
            return True


def parse_timestamp(value: Any) -> datetime.datetime:
    """A timestamp of an S3 answer. Listing XML has ISO 8601 ("2026-11-27T04:35:51.000Z"), which
    datetime reads at once; headers have HTTP dates (Last-Modified of every GET and HEAD), which the
    standard library reads; only anything else goes to botocore's own parser, which tries dateutil's
    many formats and, for every key of a listing, cost more than the rest of parsing the page
    (bench/listing_parse_cost.py)."""
    if isinstance(value, str):
        try:
            return datetime.datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
        except ValueError:
            pass
        with contextlib.suppress(TypeError, ValueError):  # an HTTP date: "Fri, 27 Nov 2026 07:20:12 GMT"
            return email.utils.parsedate_to_datetime(value)
    return botocore.utils.parse_timestamp(value)


@functools.lru_cache(maxsize=None)
def shared_data_loader(data_path: Optional[str]) -> botocore.loaders.Loader:
    """One loader of botocore's data files for every session of the run. Each session would load and
    parse S3's model (a large JSON file) and the endpoint rules anew, a good part of the tool's
    start-up."""
    return botocore.loaders.create_loader(data_path)


def quick_timestamps_parsers() -> botocore.parsers.ResponseParserFactory:
    """Response parsers that read timestamps with parse_timestamp (botocore's documented parser
    default, as the AWS CLI sets its own)."""
    factory = botocore.parsers.ResponseParserFactory()
    factory.set_parser_defaults(timestamp_parser=parse_timestamp)
    return factory


def quick_timestamps_session() -> botocore.session.Session:
    """A botocore session whose responses are read by quick_timestamps_parsers."""
    core = botocore.session.get_session()
    core.register_component("data_loader", shared_data_loader(core.get_config_variable("data_path")))
    core.register_component("response_parser_factory", quick_timestamps_parsers())
    return core


def build_session(settings: SideAccess) -> boto3.Session:
    """A boto3 session for one side's own credentials: its keys, its profile or the default chain.
    With a role_arn, these are what assume the role (role_session)."""
    try:
        if settings.access_key_id:
            base = boto3.Session(
                aws_access_key_id=settings.access_key_id,
                aws_secret_access_key=settings.secret_access_key,
                aws_session_token=settings.session_token,
                region_name=settings.region,
                botocore_session=quick_timestamps_session(),
            )
        else:
            base = boto3.Session(profile_name=settings.profile, region_name=settings.region,
                                 botocore_session=quick_timestamps_session())
    except botocore.exceptions.ProfileNotFound:
        raise ConfigurationError(
            f"The {settings.role} profile {settings.profile!r} is not in ~/.aws/config or ~/.aws/credentials."
        ) from None
    return base


def role_session(base: boto3.Session, settings: SideAccess, *, region: str) -> boto3.Session:
    """A boto3 session whose credentials are settings.role_arn assumed with the base session's, and
    refresh by themselves.

    A transfer of terabytes outlives the one-hour default of an assumed role, so the role is
    assumed through botocore's RefreshableCredentials, which renews shortly before expiry. STS is
    asked in the bucket's region (its regional endpoint, as AWS advises, rather than the global one
    in us-east-1), which the caller learnt from S3 with the base credentials.
    """
    core = botocore_session_of(base)
    if not (os.environ.get("AWS_STS_REGIONAL_ENDPOINTS") or core.get_scoped_config().get("sts_regional_endpoints")):
        # Only botocore 1.40 and later default to "regional"; the older releases requirements.txt
        # allows default to "legacy", which sends most regions to the global endpoint.
        core.set_config_variable("sts_regional_endpoints", "regional")
    sts = base.client("sts", region_name=region)
    session_name = f"s3-bulk-transfer-{os.getpid()}"

    def assume() -> dict[str, str]:
        request = {"RoleArn": settings.role_arn, "RoleSessionName": session_name}
        if settings.external_id:
            request["ExternalId"] = settings.external_id
        try:
            credentials = sts.assume_role(**request)["Credentials"]
        except botocore.exceptions.ClientError as error:
            raise FatalTransferError(
                f"Could not assume the {settings.role} role {settings.role_arn} with {settings.origin}: "
                f"{error.response.get('Error', {}).get('Message', error)}. Check the role's trust policy "
                "and external_id."
            ) from None
        return {
            "access_key": credentials["AccessKeyId"],
            "secret_key": credentials["SecretAccessKey"],
            "token": credentials["SessionToken"],
            "expiry_time": credentials["Expiration"].isoformat(),
        }

    refreshing = RenewableRoleCredentials.create_from_metadata(
        metadata=assume(), refresh_using=assume, method="assume-role"
    )
    return session_with_credentials(refreshing, region=region)


class GivenCredentialsProvider(botocore.credentials.CredentialProvider):
    """A credential chain of one link, as a botocore session's credential_provider component (public:
    Session.register_component and CredentialResolver, the chain the AWS CLI adds its own providers
    to): credentials the tool made itself (an assumed role's), which the session hands to its
    clients as it would any provider's."""

    METHOD = "assume-role"
    CANONICAL_NAME = "custom-s3-bulk-transfer"

    def __init__(self, credentials: botocore.credentials.Credentials) -> None:
        super().__init__()
        self.credentials = credentials

    def load(self) -> botocore.credentials.Credentials:
        return self.credentials


def session_with_credentials(credentials: botocore.credentials.Credentials, *, region: str) -> boto3.Session:
    """A boto3 session whose clients sign with these credentials, and only these: its credential
    chain is GivenCredentialsProvider alone, so refreshable credentials stay the very object that
    renews itself."""
    core = quick_timestamps_session()
    core.register_component("credential_provider",
                            botocore.credentials.CredentialResolver([GivenCredentialsProvider(credentials)]))
    return boto3.Session(botocore_session=core, region_name=region)


# -- library seams: where boto3 or botocore offer no public way -------------------------------
#
# Each private name of a library that the tool relies on is reached in one function here (and in
# RenewableRoleCredentials.renew_unless_renewed_since; logging's is skip_caller_lookup_in_log_records,
# in the status section), each saying why there is no public way;
# tests/test_library_seams.py fails, naming the attribute, when an installed release changes it.


def botocore_session_of(session: boto3.Session) -> botocore.session.Session:
    """The botocore session a boto3 session wraps, for what only botocore resolves (a profile's
    retry_mode and sts_regional_endpoints, the ca_bundle) and sets (sts_regional_endpoints).

    Library seam (boto3): boto3.Session keeps it as ``_session`` and has no public getter."""
    return session._session


def explicit_endpoint(settings: SideAccess) -> Optional[str]:
    """The endpoint URL this side will use when it is not AWS: our flag, else botocore's env vars."""
    return settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def retry_settings(session: boto3.Session) -> dict[str, Any]:
    """botocore's retries for a side's clients: the user's retry mode and attempts where they chose
    them (AWS_RETRY_MODE, AWS_MAX_ATTEMPTS, the profile's retry_mode and max_attempts), which botocore
    then applies itself; else standard mode with DEFAULT_MAX_ATTEMPTS. botocore's own default mode
    is legacy in the older releases requirements.txt allows, so "not chosen" is read from the
    environment and the profile rather than from botocore's resolved value."""
    core = botocore_session_of(session)
    retries: dict[str, Any] = {}
    if not (os.environ.get("AWS_RETRY_MODE") or core.get_scoped_config().get("retry_mode")):
        retries["mode"] = "standard"
    if core.get_config_variable("max_attempts") is None:
        retries["total_max_attempts"] = DEFAULT_MAX_ATTEMPTS
    return retries


def make_s3_client(session: boto3.Session, settings: SideAccess, *, region: str, max_workers: int,
                   read_timeout: float = DEFAULT_READ_TIMEOUT) -> Any:
    """An S3 client tuned for many threads.

    The pool is sized to the workers plus a few for bookkeeping calls: botocore's default of 10
    throws connections away under load ("Connection pool is full"). botocore retries as the user
    configured it (retry_settings); what it gives up on while S3 is busy, the tool's Retries sends
    again. Request checksums are left to the tool's own (Content-MD5, and the checksums it sends
    with each part) instead of a second CRC32 pass over every body.
    """
    config = Config(
        region_name=region,
        max_pool_connections=max_workers + 4,
        retries=retry_settings(session),
        connect_timeout=10,
        read_timeout=read_timeout,
        tcp_keepalive=True,
        request_checksum_calculation="when_required",
        # A custom endpoint (MinIO, SeaweedFS, a proxy) rarely serves virtual-hosted bucket names.
        s3={"addressing_style": "path"} if explicit_endpoint(settings) else None,
    )
    client = session.client("s3", endpoint_url=settings.endpoint_url, config=config)
    client.meta.events.register_last("before-call.s3", _expect_continue_for_large_bodies_only)
    client.meta.events.register_first("needs-retry.s3", _no_retry_for_an_unverifiable_certificate)
    for operation in RAW_EXPIRES_OPERATIONS:
        client.meta.events.register(f"provide-client-params.s3.{operation}", _take_raw_expires)
        client.meta.events.register(f"before-call.s3.{operation}", _send_raw_expires)
    if settings.request_payer:
        client.meta.events.register("before-sign.s3", functools.partial(_declare_request_payer, settings.request_payer))
    check_listings_by_their_end(client)
    credentials = session.get_credentials()
    if isinstance(credentials, RenewableRoleCredentials):
        renewal = RoleRenewalOnExpiry(credentials, role=settings.role)
        client.meta.events.register_first("request-created.s3", renewal.note_generation)
        client.meta.events.register_first("needs-retry.s3", renewal.retry_if_expired)
    return client


# Listing answers: botocore's whole second parse of each 200 answer is replaced by a look at its ends.
LISTING_OPERATIONS = frozenset({"ListObjectsV2", "ListObjects", "ListObjectVersions", "ListMultipartUploads",
                                "ListParts"})
XML_ROOT = re.compile(rb"\s*(?:<\?xml[^>]*\?>\s*)?<([A-Za-z][\w.:-]*)")


def xml_answer_is_whole(body: bytes) -> bool:
    """Whether an XML answer ends with the closing tag of the element it opened with, and that
    element is not an <Error>: a body cut short, or cut and ended with an error, is not."""
    root = XML_ROOT.match(body)
    return bool(root) and root.group(1) != b"Error" and body.rstrip().endswith(b"</" + root.group(1) + b">")


def check_listings_by_their_end(client: Any) -> None:
    """botocore parses every 200 answer of S3 once more, whole, before parsing it, to catch the
    error S3 embeds in a 200 when a request fails after its answer began (CopyObject, UploadPartCopy
    and CompleteMultipartUpload, S3 API reference) and a body cut short: for a page of 1,000 listed
    keys that costs a large part of what the parse itself does, on each of the 100,000 pages of a
    big bucket. A listing answer is proven whole, and not an error, by its ends (xml_answer_is_whole);
    every other answer is still checked by botocore's own handler, as before.

    Library seam (botocore.handlers._handle_200_error, registered for before-parse.s3.*): a
    botocore without it (older ones checked the copy operations only) is left as it is."""
    whole_check = getattr(botocore.handlers, "_handle_200_error", None)
    if whole_check is None:
        return

    def check(operation_model: Any, response_dict: Optional[dict[str, Any]] = None, **kwargs: Any) -> None:
        if operation_model.name not in LISTING_OPERATIONS:
            whole_check(operation_model=operation_model, response_dict=response_dict, **kwargs)
        elif response_dict and response_dict.get("status_code") == 200 \
                and not xml_answer_is_whole(bytes(response_dict.get("body") or b"")):
            response_dict["status_code"] = 500  # retried, as botocore's check would have it

    client.meta.events.unregister("before-parse.s3.*", whole_check)
    client.meta.events.register_first("before-parse.s3", check)


class RoleRenewalOnExpiry:
    """botocore hooks that answer S3's ExpiredToken by renewing the role's session and retrying.

    Each attempt is signed afresh, with the credentials current at that moment, so a retry after a
    renewal carries the new session.
    """

    ATTEMPTS = 3  # an attempt with a just-renewed session that is still refused will not be helped by more

    def __init__(self, credentials: RenewableRoleCredentials, *, role: str) -> None:
        self.credentials = credentials
        self.role = role

    def note_generation(self, request: Any, **_: Any) -> None:
        request.context["credentials_generation"] = self.credentials.generation

    def retry_if_expired(self, response: Optional[tuple[Any, dict[str, Any]]], attempts: int,
                         request_dict: dict[str, Any], **_: Any) -> Optional[float]:
        if response is None or attempts >= self.ATTEMPTS:
            return None
        code = response[1].get("Error", {}).get("Code", "")
        generation = request_dict["context"].get("credentials_generation", 0)
        return 0 if self.renew_if_expired(code, generation) else None

    def renew_if_expired(self, code: str, generation: int) -> bool:
        """For a request signed at credentials ``generation`` and refused with ``code``: True when it is
        worth sending again, the session having been renewed (by this call or by another's)."""
        if code not in EXPIRED_CREDENTIAL_CODES:
            return False
        if self.credentials.renew_unless_renewed_since(generation):
            LOG.warning("S3 called the %s role session expired (%s): renewed the %s role credentials; retrying",
                        self.role, code, self.role)
        return True


def _no_retry_for_an_unverifiable_certificate(caught_exception: Optional[BaseException] = None,
                                              **_: Any) -> Optional[bool]:
    """botocore retries a failed TLS handshake like a dropped connection, through all its attempts, but a
    certificate that cannot be verified will not become verifiable: False (botocore's "do not retry",
    which later handlers cannot overrule) lets the person read why at once. Verification stays on."""
    return False if certificate_failure(caught_exception) is not None else None


def _declare_request_payer(payer: str, request: Any, **_: Any) -> None:
    """--request-payer on every request of the client, signed with it, as a Requester Pays bucket
    wants it (S3 User Guide, "Downloading objects in Requester Pays buckets"): S3 answers 403 to
    any request without it, listing, HEAD, GET, tagging and a copy reading such a bucket alike."""
    request.headers["x-amz-request-payer"] = payer


EXPECT_CONTINUE_MIN_BODY = 2 * MiB


def _expect_continue_for_large_bodies_only(model: Any, params: dict[str, Any], **_: Any) -> None:
    """botocore sends every PutObject and UploadPart with "Expect: 100-continue" and waits for S3's
    go-ahead before the body: one more round trip per request, a large part of a small object's copy
    time far from S3. Like the AWS Go SDK (rclone), ask only for bodies over 2 MiB,
    where a refusal would waste more than the round trip costs."""
    if params.get("headers", {}).get("Expect") != "100-continue":
        return
    length = botocore.utils.determine_content_length(params.get("body"))
    if length is not None and length < EXPECT_CONTINUE_MIN_BODY:
        del params["headers"]["Expect"]


# S3 stores an object's Expires header as whatever string it was sent ("5d" as readily as a date) and
# answers with it as stored; botocore's answers carry it so as ExpiresString (handle_expires_header in
# botocore/handlers.py). But botocore's Expires parameter is a timestamp, which its validator refuses
# unless it is a date and its serializer spells its own way: so the tool sends the raw value as a
# parameter of its own of that name, which these hooks make the request's header (HeaderWriter does
# the same for the crt engine).
RAW_EXPIRES = "ExpiresString"


RAW_EXPIRES_OPERATIONS = ("PutObject", "CreateMultipartUpload")


def _take_raw_expires(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    """provide-client-params: keep the raw Expires out of the parameters botocore validates."""
    if RAW_EXPIRES in params:
        context[RAW_EXPIRES] = params.pop(RAW_EXPIRES)


def _send_raw_expires(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    """before-call: the raw Expires, byte for byte, as the request's header (signed with the rest)."""
    if RAW_EXPIRES in context:
        params["headers"]["Expires"] = context[RAW_EXPIRES]


def detect_bucket_region(session: boto3.Session, settings: SideAccess, bucket: str, *, retries: Retries) -> str:
    """The region every request to the bucket is signed for: the one S3 states.

    S3 refuses a request signed for another region than its bucket's (AuthorizationHeaderMalformed).
    boto3 recovers from that by its region redirector, awscrt does not, so a configured region is
    not trusted (one copied from an example or from another bucket's settings is easily wrong). One that
    differs from S3's is a warning. An access point is in the region its ARN names; a bucket's is
    HeadBucket's x-amz-bucket-region, which S3 sends on 200, 301 and 403 answers alike, whatever
    the request was signed for (HeadBucket, S3 API reference). Only where the endpoint sends no
    such header (some S3-compatible servers) is the region the configured one, else the session's,
    else us-east-1.
    """
    fallback = settings.region or session.region_name or "us-east-1"
    stated = access_point_region(bucket) or stated_bucket_region(session, settings, bucket, asking_in=fallback,
                                                                 retries=retries)
    if not stated:
        return fallback
    if settings.region and settings.region != stated:
        LOG.warning("The %s %s is in region %s, not %s as configured: its requests are signed for %s, the region "
                    "S3 states (correct the configured region to silence this warning).",
                    settings.role, bucket_or_access_point(bucket), stated, settings.region, stated)
    return stated


def stated_bucket_region(session: boto3.Session, settings: SideAccess, bucket: str, *,
                         asking_in: str, retries: Retries) -> Optional[str]:
    """HeadBucket's x-amz-bucket-region, signed for ``asking_in`` (botocore follows a 301 to the
    bucket's region); None when the endpoint sends none, or cannot be asked."""
    probe = make_s3_client(session, settings, region=asking_in, max_workers=1)
    try:
        response = retries.call(lambda: probe.head_bucket(Bucket=bucket), what=f"HeadBucket of {bucket}")
        headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    except botocore.exceptions.ClientError as error:
        headers = error.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    except botocore.exceptions.BotoCoreError:
        headers = {}
    return headers.get("x-amz-bucket-region")


def bucket_or_access_point(bucket: str) -> str:
    """How messages name what a side reaches: "bucket NAME", or "access point ARN"."""
    return f"access point {bucket}" if access_point_region(bucket) else f"bucket {bucket}"


@dataclasses.dataclass(frozen=True)
class ConnectedSide:
    """A connected side: its settings, its client and its bucket; and for the crt engine, which
    signs and sends on its own, the credentials, the URL of the bucket's objects as botocore
    resolved it (virtual-hosted or path-style, the regional endpoint) and the CA bundle to trust.
    `retries` is the run's Retries (one for both sides), which every request to the side goes
    through."""

    access: SideAccess
    client: Any
    bucket: str
    region: str
    credentials: Any = dataclasses.field(default=None, repr=False)
    objects_url: str = ""  # ends with "/": a key, percent-encoded, follows
    ca_bundle: Optional[str] = None
    first_key: Optional[str] = None  # the first key under the prefix the preflight listed, if any
    retries: Retries = dataclasses.field(default_factory=Retries, repr=False, compare=False)
    # --max-requests-per-second: waits for a request's turn; boto3's requests wait in a before-send handler
    pace: Optional[Callable[[], None]] = dataclasses.field(default=None, repr=False, compare=False)


def connect_side(settings: SideAccess, bucket: str, *, max_workers: int, list_prefix: str,
                 read_timeout: float = DEFAULT_READ_TIMEOUT, retries: Optional[Retries] = None) -> ConnectedSide:
    """Build the client and prove the bucket is there and usable, before anything is copied; every
    request to the side goes through `retries` (the run's), from the first."""
    retries = retries or Retries()
    session = build_session(settings)
    region = detect_bucket_region(session, settings, bucket, retries=retries)
    if settings.role_arn:
        session = role_session(session, settings, region=region)
    try:
        client = make_s3_client(session, settings, region=region, max_workers=max_workers,
                                read_timeout=read_timeout)
        action = "s3:ListBucket"
        urls: list[str] = []
        client.meta.events.register("before-send.s3.ListObjectsV2", lambda request, **_: urls.append(request.url))
        # ListObjectsV2 rather than HeadBucket: a HEAD answer has no body, so a wrong secret key would
        # arrive as a bare 403 and be mistaken for a missing permission.
        first = retries.call(lambda: client.list_objects_v2(Bucket=bucket, Prefix=list_prefix, MaxKeys=1),
                             what=f"ListObjectsV2 of {bucket}", retry_bodies=True)
        credentials = session.get_credentials()
    except FatalTransferError as error:
        raise ConfigurationError(str(error)) from None
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError,
            botocore.parsers.ResponseParserError) as error:
        message = explain_error(error, access=settings, bucket=bucket, action=action)
        if error_code(error) in DENIED_CODES and not settings.request_payer:
            # S3 refuses a Requester Pays bucket's requests that do not declare who pays as it refuses
            # a missing permission, and nothing in its answer tells the two apart.
            message = (f"{message.rstrip('.')}, or, if {bucket} is a Requester Pays bucket, rerun with "
                       "--request-payer requester.")
        raise ConfigurationError(message) from None
    LOG.info("%s: %s in region %s, credentials from %s", settings.role, bucket_or_access_point(bucket), region,
             settings.origin)
    # AWS_CA_BUNDLE or the profile's ca_bundle, as botocore resolved it.
    ca_bundle = botocore_session_of(session).get_config_variable("ca_bundle")
    return ConnectedSide(access=settings, client=client, bucket=bucket, region=region, credentials=credentials,
                objects_url=objects_url(urls[-1]), ca_bundle=ca_bundle,
                first_key=next((entry["Key"] for entry in first.get("Contents", ())), None), retries=retries)


@dataclasses.dataclass(frozen=True)
class SideReach:
    """What a worker process (--processes) needs to reach a side the parent connected, without the
    preflight's requests: the settings and what connecting learnt (the region, the objects' URL)."""

    access: SideAccess
    bucket: str
    region: str
    objects_url: str
    ca_bundle: Optional[str]

    @classmethod
    def of(cls, side: ConnectedSide) -> "SideReach":
        return cls(side.access, side.bucket, side.region, side.objects_url, side.ca_bundle)

    def connect(self, *, max_workers: int, read_timeout: float, retries: Retries) -> ConnectedSide:
        session = build_session(self.access)
        if self.access.role_arn:
            session = role_session(session, self.access, region=self.region)
        client = make_s3_client(session, self.access, region=self.region, max_workers=max_workers,
                                read_timeout=read_timeout)
        return ConnectedSide(access=self.access, client=client, bucket=self.bucket, region=self.region,
                             credentials=session.get_credentials(), objects_url=self.objects_url,
                             ca_bundle=self.ca_bundle, retries=retries)


def objects_url(listing_url: str) -> str:
    """The URL under which a bucket's objects are, from the URL of a ListObjectsV2 of it: the bucket's
    own ("https://b.s3.eu-west-1.amazonaws.com/?list-type=2") or a path ("http://host:9000/b?list-type=2")."""
    parts = urllib.parse.urlsplit(listing_url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/", "", ""))


def tag_access_refusal(config: RunSettings, source: ConnectedSide) -> Optional[str]:
    """Why the tags cannot be copied, as the sentence that stops the run, or None.

    S3 tells how many tags an object has (x-amz-tagging-count) only to a caller allowed
    s3:GetObjectTagging, so to credentials that may read objects but not their tags every object looks
    untagged, and would be copied without its tags and without a word: asked here, of the first object
    under the source prefix (connect_side's preflight found it), before anything is written. No object,
    nothing to ask (and no tag to lose); with --no-tags, no question. Any other answer is left to the
    copy, which meets it object by object.
    """
    key = source.first_key
    if not config.job.copy_tags or key is None:
        return None
    try:
        source.retries.call(lambda: source.client.get_object_tagging(Bucket=source.bucket, Key=key),
                            what=f"GetObjectTagging of {key}")
        return None
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
        LOG.debug("asking for the tags of an object in the source: %s", error)
        if error_code(error) not in DENIED_CODES or not _may_read(source, key):
            return None
    return (f"The source credentials ({config.job.source_access.origin}) may not read object tags (s3:GetObjectTagging "
            f"on {bucket_or_access_point(source.bucket)}), so S3 would hide every object's tags and the copies "
            "would lose them: grant "
            "s3:GetObjectTagging on the source objects to them, or rerun with --no-tags to copy without tags.")


def object_lock_refusal(config: RunSettings, source: ConnectedSide, destination: ConnectedSide) -> Optional[str]:
    """Why --object-lock copy cannot work, as the sentence that stops the run, or None: the
    destination bucket without Object Lock, or source credentials that may not read an object's
    retention or legal hold (S3 would then leave the lock headers out of every answer, and the copies
    would go unlocked without a word), asked of the first object under the source prefix."""
    if not config.job.object_lock:
        return None
    try:
        found = destination.retries.call(lambda: destination.client.get_object_lock_configuration(
            Bucket=destination.bucket), what=f"GetObjectLockConfiguration of {destination.bucket}")
        enabled = found.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
        if error_code(error) in DENIED_CODES:
            return explain_error(error, access=destination.access, bucket=destination.bucket,
                                 action="s3:GetBucketObjectLockConfiguration")
        enabled = False  # ObjectLockConfigurationNotFoundError
    if not enabled:
        return (f"The destination {bucket_or_access_point(destination.bucket)} does not have Object Lock "
                "enabled, so it cannot keep the sources' retention and legal holds (--object-lock copy): copy into "
                "a bucket created with Object Lock (or enable it on this one), or drop --object-lock.")
    key = source.first_key
    if key is None:  # no object to ask, and none whose lock could be lost
        return None
    for action, ask in (("s3:GetObjectRetention", source.client.get_object_retention),
                        ("s3:GetObjectLegalHold", source.client.get_object_legal_hold)):
        try:
            source.retries.call(lambda: ask(Bucket=source.bucket, Key=key), what=f"{action} of {key}")
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
            if error_code(error) in DENIED_CODES:
                return (f"The source credentials ({config.job.source_access.origin}) may not read the Object Lock of "
                        f"objects ({action} on {bucket_or_access_point(source.bucket)}), so S3 would hide every "
                        f"object's retention and legal hold and the copies would go unlocked: grant {action} to "
                        "them, or drop --object-lock.")
    return None


def _may_read(source: ConnectedSide, key: str) -> bool:
    """Whether these credentials may read the object (HeadObject is not denied): a missing
    s3:GetObject is told by the copy itself, naming that permission."""
    try:
        source.retries.call(lambda: source.client.head_object(Bucket=source.bucket, Key=key),
                            what=f"HeadObject of {key}")
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
        return error_code(error) not in DENIED_CODES
    return True


# =============================================================================================
# 6. Object sources: listing, keyspace-parallel listing, inventory reports, selection
# =============================================================================================


def listed_key(key: str, listing: dict[str, Any]) -> str:
    """A key as a listing answer holds it, decoded when S3 URL-encoded it (EncodingType=url), the way
    botocore decodes the keys of ListObjects and ListObjectsV2 itself; other listings it leaves to us."""
    return urllib.parse.unquote_plus(key) if listing.get("EncodingType") == "url" else key


# The request field that asks for the next page, and the answer's field that gives it, per listing.
PAGE_MARKERS = {"list_objects_v2": ("ContinuationToken", "NextContinuationToken"),
                "list_parts": ("PartNumberMarker", "NextPartNumberMarker")}


def pages(side: ConnectedSide, operation: str, **request: Any) -> Iterator[dict[str, Any]]:
    """The pages of a listing (`operation`, a boto3 method name), one request each, fetched as they are
    wanted and each sent through the side's Retries: a page S3 refuses as busy, or whose body breaks
    off, is asked for again (the same request: a page is read whole before it is used)."""
    call = getattr(side.client, operation)
    sent, received = PAGE_MARKERS[operation]
    while True:
        page = side.retries.call(lambda: call(**request), what=f"{operation} of {bucket_or_access_point(side.bucket)}",
                                 retry_bodies=True)
        yield page
        if not page.get("IsTruncated") or not page.get(received):
            return
        request = {**request, sent: page[received]}


def list_objects(side: ConnectedSide, location: S3Location, start_after: Optional[str],
                 through: Optional[str] = None) -> Iterator[ListedObject]:
    """Stream a listing in key order, one page in memory at a time, after `start_after` and up to
    and including `through` (None: to the end)."""
    request: dict[str, Any] = {"Bucket": location.bucket, "Prefix": location.prefix}
    if start_after:
        request["StartAfter"] = start_after
    for page in pages(side, "list_objects_v2", **request):
        for entry in page.get("Contents", ()):
            if through is not None and entry["Key"] > through:
                return  # and no further page is asked for
            yield ListedObject(
                key=entry["Key"], size=entry["Size"], etag=entry["ETag"],
                storage_class=entry.get("StorageClass", "STANDARD"), last_modified=entry.get("LastModified"),
            )


# -- keyspace-parallel listing ----------------------------------------------------------------
#
# ListObjectsV2 answers 1,000 keys per call, one call after another: 100 million keys are 100,000
# round trips, over an hour before the last object can start. So the keyspace is cut into ranges
# at split points, each range listed page by page on its own (StartAfter, then stop past its end), a
# few at a time. Ranges are intervals of key order, not prefixes, so that they cover every key,
# including keys created under new prefixes between two runs of the job.

MAX_LIST_CONCURRENCY = 64


DEFAULT_LISTERS_LIMIT = 16  # by default half the workers list, up to this many
RANGES_PER_LISTER = 4  # more ranges than listers, so that a lister done early takes another
SPLIT_DISCOVERY_DEPTH = 3  # folder levels explored for split points
SPLIT_DISCOVERY_PREFIXES = 10_000  # folders gathered at most, a few dozen ListObjectsV2 pages


# For keys without folders (hashes, UUIDs, numbered files): split on the next character.
SPLIT_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@dataclasses.dataclass(frozen=True)
class KeyRange:
    """The keys k with after < k <= through; None is unbounded. The ranges of a job, one after another,
    cover the whole keyspace: a key equal to a split point belongs to the range that ends there."""

    after: Optional[str]
    through: Optional[str]


def key_ranges(split_points: list[str]) -> list[KeyRange]:
    """The ranges that these (sorted, distinct) split points cut the keyspace into."""
    bounds: list[Optional[str]] = [None, *split_points, None]
    return [KeyRange(after=bounds[index], through=bounds[index + 1]) for index in range(len(split_points) + 1)]


def range_index(split_points: Sequence[str], key: str) -> int:
    """Which of the ranges cut at `split_points` holds `key`."""
    return bisect.bisect_left(split_points, key)


def choose_split_points(candidates: Iterable[str], ranges_wanted: int) -> list[str]:
    """At most ranges_wanted - 1 split points, spread evenly over the sorted candidates (folders):
    folders are the best guess there is of where a bucket's keys gather."""
    ordered = sorted(set(candidates))
    if ranges_wanted <= 1 or not ordered:
        return []
    if len(ordered) < ranges_wanted:
        return ordered
    step = len(ordered) / ranges_wanted
    return sorted({ordered[int(step * index)] for index in range(1, ranges_wanted)})


def discover_split_points(side: ConnectedSide, location: S3Location, ranges_wanted: int) -> list[str]:
    """Split points for a listing in `ranges_wanted` ranges: folders (CommonPrefixes of a listing with
    Delimiter "/"), one level deeper while there are too few, else the next character after the
    deepest single folder."""
    if ranges_wanted <= 1:
        return []
    # A listing of one page gains nothing from ranges, each of which reads a page of its own.
    first = next(pages(side, "list_objects_v2", Bucket=location.bucket, Prefix=location.prefix))
    if not first.get("IsTruncated"):
        return []
    level = [location.prefix]
    for _ in range(SPLIT_DISCOVERY_DEPTH):
        found = list_folders(side, location.bucket, level, limit=SPLIT_DISCOVERY_PREFIXES)
        if not found:
            break
        level = found
        if len(found) >= ranges_wanted - 1 or len(found) >= SPLIT_DISCOVERY_PREFIXES:
            break
    if len(level) > 1:
        return choose_split_points(level, ranges_wanted)
    return choose_split_points((level[0] + character for character in SPLIT_ALPHABET), ranges_wanted)


def list_folders(side: ConnectedSide, bucket: str, prefixes: list[str], *, limit: int) -> list[str]:
    """The folders (CommonPrefixes with Delimiter "/") directly under each of `prefixes`, at most `limit`.

    One page of each prefix only: a prefix of a million keys and no folder would otherwise be listed
    in full, one page after another, before the copy starts, only to find nothing. Folders beyond
    the first 1,000 names of a prefix are not seen, which makes the ranges less even, never wrong."""
    found: list[str] = []
    for prefix in prefixes:
        page = next(pages(side, "list_objects_v2", Bucket=bucket, Prefix=prefix, Delimiter="/"))
        found.extend(entry["Prefix"] for entry in page.get("CommonPrefixes", ()))
        if len(found) >= limit:
            return found[:limit]
    return found


class ListingWindow:
    """Runs the listing in threads of its own, at most `window` objects ahead of the scheduler, so the
    workers never wait for a ListObjectsV2 round trip and a bucket of 100 million keys uses the
    same memory as one of a thousand.

    `streams` are the listings of the job's key ranges (one for a plain listing), started lazily;
    `listers` threads list them, each taking the next stream when its own ends. Each stream stays
    in key order; streams interleave, which the progress store follows range by range.
    """

    _END = object()

    def __init__(self, streams: Iterable[Callable[[], Iterator[ListedObject]]], *, listers: int = 1, window: int,
                 stopping: threading.Event) -> None:
        self._streams: "queue.SimpleQueue[Callable[[], Iterator[ListedObject]]]" = queue.SimpleQueue()
        for stream in streams:
            self._streams.put(stream)
        self._queue: "queue.Queue[Any]" = queue.Queue(maxsize=window)
        self._stopping = stopping
        self._running = max(1, listers)
        self._running_lock = threading.Lock()
        for number in range(self._running):
            threading.Thread(target=self._run, name=f"lister-{number}", daemon=True).start()

    def _offer(self, item: Any) -> bool:
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=TICK_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            while True:
                try:
                    stream = self._streams.get_nowait()
                except queue.Empty:
                    break
                for item in stream():
                    if not self._offer(item):
                        return
        except BaseException as error:  # handed to the scheduler, which raises it on the main thread
            self._offer(error)
            return
        with self._running_lock:
            self._running -= 1
            last = self._running == 0
        if last:
            self._offer(self._END)

    def next(self, on_wait: Callable[[], None]) -> Optional[ListedObject]:
        """The next listed object, None at the end of the listing or when stopping."""
        while not self._stopping.is_set():
            try:
                item = self._queue.get(timeout=TICK_SECONDS)
            except queue.Empty:
                on_wait()
                continue
            if item is self._END:
                return None
            if isinstance(item, BaseException):
                raise item
            return item
        return None


# -- inventory reports and key lists (--from-inventory) ---------------------------------------
#
# An S3 Inventory report lists a bucket without a single ListObjectsV2 call: its manifest.json
# names gzip'd CSV data files of one row per object (bucket, URL-encoded key, size, ETag, ...).
# Everything downstream wants keys in the order a listing gives them, because the progress file's
# watermark is a key ("everything up to here is settled"): so the data files are read side by side
# and merged (heapq.merge), each one checked to be in key order as it streams, and each read a
# chunk at a time (one ranged GET, or one read of a local file opened for it), so that hundreds of
# files hold no connection or descriptor between reads and memory stays at a chunk or two a file.

INVENTORY_READ_CHUNK = 256 * KiB  # compressed bytes per read of a data file


INVENTORY_TEXT_BLOCK = 256 * KiB  # text taken out of zlib at a time, however well a chunk compresses
INVENTORY_MAX_LINE = MiB  # a row is a few KiB at most: keys are 1,024 bytes, 3 KiB URL-encoded
INVENTORY_HEAD_THREADS = 4  # HeadObject requests in flight for rows that lack a size or an ETag
INVENTORY_HEAD_WINDOW = 4 * INVENTORY_HEAD_THREADS  # rows waiting behind the oldest unanswered one
INVENTORY_SCHEMA_REQUIRED = ("Bucket", "Key")


@dataclasses.dataclass(frozen=True)
class InventoryRow:
    """One object as an inventory report or a key list names it; size and ETag are None when it
    does not say (a key list without them, a report configured without those fields)."""

    key: str
    size: Optional[int] = None
    etag: Optional[str] = None  # quoted, as ListObjectsV2 gives it
    storage_class: str = "STANDARD"
    last_modified: Optional[datetime.datetime] = None


@dataclasses.dataclass(frozen=True)
class InventoryFile:
    """One file to read: a local path or s3://BUCKET/KEY, its size, and the MD5 a manifest gives."""

    location: str
    size: int
    md5: Optional[str] = None
    gzipped: bool = True


@dataclasses.dataclass(frozen=True)
class Inventory:
    """--from-inventory after its checks: the files to read, and how one line of them reads."""

    location: str  # as the person gave it, for messages
    files: tuple[InventoryFile, ...]
    columns: tuple[str, ...] = ()  # an S3 Inventory's fileSchema; empty for a key list
    csv_key_list: bool = False  # a key list of CSV rows key[,size[,etag]], not one whole key per line

    def records(self, lines: Iterable[str]) -> Iterator[list[str]]:
        """The fields of each line: CSV for a report or a .csv key list, the whole line for another."""
        if self.columns or self.csv_key_list:
            return csv.reader(lines)
        return ([line.removesuffix("\r")] for line in lines)

    def describe(self, file: InventoryFile) -> str:
        return f"the inventory data file {file.location}" if self.columns else f"the key list {file.location}"

    def out_of_order(self, name: str, number: int, key: str, previous: str) -> str:
        """The sentence for a file whose rows are not in key order."""
        where = (f"{name} is not in key order: line {number} ({json.dumps(key, ensure_ascii=False)}) comes after "
                 f"{json.dumps(previous, ensure_ascii=False)}")
        if self.columns:
            return (f"The inventory data file {where}. The tool needs a report's rows in key order to resume where "
                    "it stopped, so it cannot use this report: use another one, or a key list sorted by key.")
        # The C locale sorts by bytes, and the byte order of UTF-8 is S3's key order (and Python's str
        # order); any other locale sorts by language rules ("a" before "B"), which S3 does not.
        command = "LC_ALL=C sort -t, -k1,1 -u" if self.csv_key_list else "LC_ALL=C sort -u"
        return (f"The key list {where}. Sort it in byte order, the order S3 lists keys in, with "
                f"`{command} KEYS -o KEYS`, and rerun.")


def parse_inventory_schema(file_schema: str) -> tuple[str, ...]:
    """The columns of a CSV report, from the manifest's fileSchema ("Bucket, Key, Size, ...")."""
    columns = tuple(name.strip() for name in file_schema.split(","))
    missing = [name for name in INVENTORY_SCHEMA_REQUIRED if name not in columns]
    if missing:
        raise ValueError(f"its fileSchema {file_schema!r} has no {' or '.join(missing)} column")
    return columns


def make_inventory_row(key: str, size: str = "", etag: str = "", storage_class: str = "",
                     last_modified: str = "") -> InventoryRow:
    """An InventoryRow from the text of its fields; empty fields are unknown."""
    if not key:
        raise ValueError("its key is empty, and no S3 key is")
    if size and not size.isdigit():
        raise ValueError(f"its size {size!r} is not a whole number of bytes")
    try:  # Python before 3.11 does not read the "Z" that S3 writes for UTC
        modified = (datetime.datetime.fromisoformat(last_modified.removesuffix("Z") + "+00:00"
                                                    if last_modified.endswith("Z") else last_modified)
                    if last_modified else None)
    except ValueError:
        raise ValueError(f"its last-modified date {last_modified!r} is not an ISO 8601 time") from None
    return InventoryRow(key=key, size=int(size) if size else None,
                        etag=(etag if etag.startswith('"') else f'"{etag}"') if etag else None,
                        storage_class=storage_class or "STANDARD", last_modified=modified)


def inventory_row_key(fields: list[str], positions: dict[str, int]) -> str:
    """The key of a row of an S3 Inventory CSV data file (`positions`: each column's index), read
    apart from the rest because rows up to a rerun's watermark need nothing else. Keys are
    URL-encoded as an HTML form is: a space as "+", a "+" as %2B."""
    if len(fields) != len(positions):
        raise ValueError(f"it has {len(fields)} fields, where the manifest's fileSchema names {len(positions)}")
    return urllib.parse.unquote_plus(fields[positions["Key"]], errors="strict")


def parse_inventory_row(fields: list[str], positions: dict[str, int], key: str, *,
                        bucket: str) -> Optional[InventoryRow]:
    """The rest of a row whose key is read; None for an older version or a delete marker (a report
    of all versions has IsLatest and IsDeleteMarker columns)."""
    if fields[positions["Bucket"]] != bucket:
        raise ValueError(f"it names an object of the bucket {fields[positions['Bucket']]!r}, not of the source "
                         f"bucket {bucket}: give the report of the source bucket")
    latest, marker = positions.get("IsLatest"), positions.get("IsDeleteMarker")
    if (latest is not None and fields[latest].lower() != "true") or (
            marker is not None and fields[marker].lower() == "true"):
        return None
    size, etag, storage_class, modified = (fields[positions[name]] if name in positions else ""
                                           for name in ("Size", "ETag", "StorageClass", "LastModifiedDate"))
    return make_inventory_row(key, size, etag, storage_class, modified)


def parse_key_list_row(fields: list[str]) -> InventoryRow:
    """One row of a key list: the key as it is (not URL-encoded), then optionally its size and ETag."""
    if len(fields) > 3:
        raise ValueError(f"it has {len(fields)} fields, and a key list has at most three: key, size, ETag "
                         "(quote a key that holds a comma)")
    return make_inventory_row(*fields)


def _s3_parts(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def _read_inventory_range(location: str, start: int, length: int, source: ConnectedSide) -> bytes:
    """`length` bytes of a file from `start`: a local read, or a ranged GET with the source's client,
    sent again when its body breaks off (botocore retries only what fails before the body) or S3 is busy."""
    if not location.startswith("s3://"):
        with open(location, "rb") as handle:
            handle.seek(start)
            return handle.read(length)
    bucket, key = _s3_parts(location)

    def read() -> bytes:
        response = source.client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{start + length - 1}")
        return read_exact(response, length)

    return source.retries.call(read, what=f"reading {location}", retry_bodies=True)


def inventory_chunks(file: InventoryFile, source: ConnectedSide, *, name: str) -> Iterator[tuple[bytes, bool]]:
    """The file's bytes a chunk at a time, each with whether it is the last. The MD5 the manifest
    gives is checked before the last chunk is handed on, so a file of one chunk is proven before
    any of its rows is used."""
    digest = hashlib.md5()  # what the manifest's MD5checksum is
    offset = 0
    while offset < file.size:
        try:
            chunk = _read_inventory_range(file.location, offset, min(INVENTORY_READ_CHUNK, file.size - offset), source)
        except OSError as error:
            raise FatalTransferError(f"{_capital(name)} cannot be read any more "
                                     f"({error.strerror or error}); rerun to resume once it can.") from None
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
            bucket, key = _s3_parts(file.location)
            raise FatalTransferError(explain_error(error, access=source.access, bucket=bucket, action="s3:GetObject",
                                                   key=key)) from None
        if not chunk:
            raise FatalTransferError(f"{_capital(name)} ends after {offset:,} bytes, not the {file.size:,} "
                                     "it had when the run began: it was cut short; use a complete copy of it.")
        digest.update(chunk)
        offset += len(chunk)
        if offset == file.size and file.md5 and digest.hexdigest() != file.md5.lower():
            raise FatalTransferError(f"{_capital(name)} does not match the MD5 its manifest gives "
                                     f"({file.md5}): it is damaged or is not the file the report wrote; use a complete "
                                     "copy of the report.")
        yield chunk, offset == file.size


def inventory_lines(chunks: Iterable[tuple[bytes, bool]], *, name: str, gzipped: bool) -> Iterator[bytes]:
    """The lines of a file (gzip'd or not) fed a chunk at a time, without their line ends. A gzip
    stream that stops short is refused before the lines of its last block are handed on. `name`
    says what the file is, for messages: "the key list keys.txt"."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS) if gzipped else None
    pending = b""
    for chunk, last in chunks:
        data = chunk
        while data:
            if inflater is None:
                text, data = data, b""
            else:
                try:
                    text = inflater.decompress(data, INVENTORY_TEXT_BLOCK)
                except zlib.error as error:
                    raise FatalTransferError(f"{_capital(name)} is not a readable gzip file ({error}): use a "
                                             "complete copy of it.") from None
                data = inflater.unconsumed_tail
                if inflater.eof and inflater.unused_data:  # a gzip file may hold several members
                    data = inflater.unused_data
                    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                if last and not data and not inflater.eof:
                    raise _truncated(name)
            lines = (pending + text).split(b"\n")
            pending = lines.pop()
            if len(pending) > INVENTORY_MAX_LINE:
                raise FatalTransferError(f"{_capital(name)} has a line longer than "
                                         f"{format_size(INVENTORY_MAX_LINE)}: it is not an inventory data file or "
                                         "a key list.")
            yield from lines
    if inflater is not None and not inflater.eof:
        raise _truncated(name)
    if pending:
        yield pending


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _truncated(name: str) -> FatalTransferError:
    return FatalTransferError(f"{_capital(name)} ends in the middle of its gzip stream: it is truncated; "
                              "use a complete copy of it.")


def inventory_file_rows(inventory: Inventory, file: InventoryFile, source: ConnectedSide, *,
                        after: Optional[str] = None) -> Iterator[InventoryRow]:
    """The rows of one file that name a current object after `after` (a rerun's watermark), every
    row checked to be in key order as it streams; a key may repeat (one object in two rows)."""
    name = inventory.describe(file)
    positions = {column: index for index, column in enumerate(inventory.columns)}
    number = 0

    def texts() -> Iterator[str]:
        nonlocal number
        for number, line in enumerate(inventory_lines(inventory_chunks(file, source, name=name), name=name,
                                                      gzipped=file.gzipped), start=1):
            yield line.decode("utf-8")

    previous: Optional[str] = None
    try:
        for fields in inventory.records(texts()):
            if not fields or fields == [""]:
                continue
            key = inventory_row_key(fields, positions) if positions else fields[0]
            if not key:
                raise ValueError("its key is empty, and no S3 key is")
            if previous is not None and key < previous:
                raise FatalTransferError(inventory.out_of_order(file.location, number, key, previous))
            previous = key
            if after is not None and key <= after:
                continue
            row = parse_inventory_row(fields, positions, key, bucket=source.bucket) if positions else \
                parse_key_list_row(fields)
            if row is not None:
                yield row
    except (ValueError, csv.Error) as error:
        raise FatalTransferError(f"Line {number} of {name} cannot be read: {error}.") from None


def inventory_rows(inventory: Inventory, source: ConnectedSide, location: S3Location, start_after: Optional[str],
                   through: Optional[str] = None) -> Iterator[InventoryRow]:
    """Every file's rows merged into key order, each key once, those under the source prefix after
    start_after and up to through. Rows up to a rerun's watermark cost reading, but no request."""
    merged = heapq.merge(*(inventory_file_rows(inventory, file, source, after=start_after)
                           for file in inventory.files), key=lambda row: row.key)
    previous: Optional[str] = None
    for row in merged:
        if row.key == previous:  # in two data files, or twice in a key list
            continue
        previous = row.key
        if not row.key.startswith(location.prefix):
            if row.key > location.prefix:
                return  # past the keys under the prefix, and so is every later row
            continue
        if through is not None and row.key > through:
            return
        yield row


def inventory_objects(rows: Iterable[InventoryRow], source: ConnectedSide, *, on_missing: Callable[[str], None],
                      need_etag: bool = True) -> Iterator[ListedObject]:
    """The rows as listed objects, in their order.

    A row without a size or ETag (a key list, or a report configured without those fields) is
    completed with a HeadObject, here rather than in the engine: the engine needs the size before
    it can choose a single PUT or parts and take the memory for it, and the ETag for If-Match on
    every ranged GET and server-side copy. A few HEADs are in flight at once, so that a key list
    is not read at one round trip per key. A key the HEAD finds gone is handed to on_missing.
    """

    def head(key: str) -> Optional[ListedObject]:
        try:
            response = source.retries.call(lambda: source.client.head_object(Bucket=source.bucket, Key=key),
                                           what=f"HeadObject of {key}")
        except botocore.exceptions.ClientError as error:
            if classify(error) is ErrorKind.NOT_FOUND:
                return None
            raise FatalTransferError(explain_error(error, access=source.access, bucket=source.bucket,
                                                   action="s3:GetObject", key=key)) from None
        except botocore.exceptions.BotoCoreError as error:
            raise FatalTransferError(explain_error(error, access=source.access, bucket=source.bucket,
                                                   action="s3:GetObject", key=key)) from None
        return ListedObject(key=key, size=response["ContentLength"], etag=response["ETag"],
                            storage_class=response.get("StorageClass", "STANDARD"),
                            last_modified=response.get("LastModified"))

    def settle(key: str, future: concurrent.futures.Future[Optional[ListedObject]]) -> Iterator[ListedObject]:
        listed = future.result()
        if listed is None:
            on_missing(key)
        else:
            yield listed

    with concurrent.futures.ThreadPoolExecutor(INVENTORY_HEAD_THREADS, thread_name_prefix="inventory-head") as pool:
        waiting: collections.deque[tuple[str, concurrent.futures.Future[Optional[ListedObject]]]] = \
            collections.deque()
        for row in rows:
            future: concurrent.futures.Future[Optional[ListedObject]]
            if row.size is not None and (row.etag is not None or not need_etag):
                known = ListedObject(row.key, row.size, row.etag or "", row.storage_class, row.last_modified)
                if not waiting:
                    yield known
                    continue
                future = concurrent.futures.Future()  # in line behind the rows still waiting for a HEAD
                future.set_result(known)
            else:
                future = pool.submit(head, row.key)
            waiting.append((row.key, future))
            while waiting and (waiting[0][1].done() or len(waiting) > INVENTORY_HEAD_WINDOW):
                yield from settle(*waiting.popleft())
        while waiting:
            yield from settle(*waiting.popleft())


def _read_inventory_document(location: str, source: ConnectedSide, *, what: str) -> Optional[bytes]:
    """A small file of --from-inventory (a manifest, its checksum), whole; None when there is none."""
    if not location.startswith("s3://"):
        try:
            return Path(location).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise ConfigurationError(f"The {what} {location} cannot be read ({error.strerror or error}): check that "
                                     "it is a file this user may read.") from None
    bucket, key = _s3_parts(location)
    try:
        return source.retries.call(lambda: source.client.get_object(Bucket=bucket, Key=key)["Body"].read(),
                                   what=f"reading {location}", retry_bodies=True)
    except botocore.exceptions.ClientError as error:
        if classify(error) is ErrorKind.NOT_FOUND:
            return None
        raise ConfigurationError(explain_error(error, access=source.access, bucket=bucket, action="s3:GetObject",
                                               key=key)) from None
    except botocore.exceptions.BotoCoreError as error:
        raise ConfigurationError(explain_error(error, access=source.access, bucket=bucket, action="s3:GetObject",
                                               key=key)) from None


def _inventory_file_size(location: str, source: ConnectedSide) -> Optional[int]:
    """The size of a file of --from-inventory; None when it does not exist."""
    if not location.startswith("s3://"):
        path = Path(location)
        return path.stat().st_size if path.is_file() else None
    bucket, key = _s3_parts(location)
    try:
        return int(source.retries.call(lambda: source.client.head_object(Bucket=bucket, Key=key),
                                       what=f"HeadObject of {location}")["ContentLength"])
    except botocore.exceptions.ClientError as error:
        if classify(error) is ErrorKind.NOT_FOUND:
            return None
        raise ConfigurationError(explain_error(error, access=source.access, bucket=bucket, action="s3:GetObject",
                                               key=key)) from None
    except botocore.exceptions.BotoCoreError as error:
        raise ConfigurationError(explain_error(error, access=source.access, bucket=bucket, action="s3:GetObject",
                                               key=key)) from None


def parse_inventory_manifest(document: bytes, *, where: str, bucket: str
                             ) -> tuple[tuple[str, ...], list[tuple[str, int, Optional[str]]]]:
    """The columns and the data files (key in the report's bucket, size, MD5) of an S3 Inventory
    manifest.json, checked field by field."""

    def refused(why: str) -> ConfigurationError:
        return ConfigurationError(f"The inventory manifest {where} {why}: give the manifest.json of a complete "
                                  "S3 Inventory report in CSV format.")

    try:
        manifest = json.loads(document.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise refused(f"is not valid JSON ({error}); it may have been cut short") from None
    if not isinstance(manifest, dict):
        raise refused("is not a JSON object")
    file_format = manifest.get("fileFormat")
    if isinstance(file_format, str) and file_format.upper() in ("ORC", "PARQUET"):
        raise ConfigurationError(
            f"The inventory report {where} is in {file_format} format, which this tool does not read (it would "
            "need pyarrow): set the inventory's output format to CSV and use its next report, or give a key list.")
    if file_format != "CSV":
        raise refused(f"has the fileFormat {file_format!r}, not \"CSV\"")
    if manifest.get("sourceBucket") != bucket:
        raise ConfigurationError(
            f"The inventory report {where} lists the bucket {manifest.get('sourceBucket')!r}, not the source bucket "
            f"{bucket}: give the report of {bucket}.")
    if not isinstance(manifest.get("fileSchema"), str):
        raise refused('has no "fileSchema" string')
    try:
        columns = parse_inventory_schema(manifest["fileSchema"])
    except ValueError as error:
        raise refused(str(error)) from None
    files = manifest.get("files")
    if not isinstance(files, list):
        raise refused('has no "files" list')
    entries: list[tuple[str, int, Optional[str]]] = []
    for number, entry in enumerate(files, start=1):
        if not (isinstance(entry, dict) and isinstance(entry.get("key"), str) and entry["key"]
                and type(entry.get("size")) is int and entry["size"] >= 0):
            raise refused(f'has a "files" entry (number {number}) without a key and a size')
        md5 = entry.get("MD5checksum")
        if md5 is not None and not (isinstance(md5, str) and re.fullmatch(r"[0-9a-fA-F]{32}", md5)):
            raise refused(f'has a "files" entry (number {number}) whose MD5checksum is not an MD5')
        entries.append((entry["key"], entry["size"], md5))
    return columns, entries


def local_data_file(manifest: Path, key: str) -> Optional[Path]:
    """Where a local copy of a report holds the data file its manifest names by its key in the
    report's bucket: the first ending of the key (longest first) that is a file below the manifest's
    folder, then below the folder above it. So a copy of the report's folder (CONFIG-ID/, which
    holds the dated folders of the manifests beside data/) finds CONFIG-ID/data/NAME.csv.gz, and
    so does a mirror of the whole bucket."""
    if has_dot_segments(key):
        return None
    parts = [part for part in key.split("/") if part]
    for root in (manifest.parent, manifest.parent.parent):
        for start in range(len(parts)):
            candidate = root.joinpath(*parts[start:])
            if candidate.is_file():
                return candidate
    return None


def open_inventory(location: str, source: ConnectedSide) -> Inventory:
    """Check --from-inventory before anything is copied: a manifest is read and checked (against
    its manifest.checksum, when there is one) and every data file it names found, at the size it
    gives; a key list is read through once, to find it in key order."""
    if location.endswith(".json"):
        return _open_manifest(location, source)
    size = _inventory_file_size(location, source)
    if size is None:
        raise ConfigurationError(f"The key list {location} given to --from-inventory does not exist: give a file of "
                                 "keys (.txt, .csv, or either gzip'd) or an inventory report's manifest.json.")
    inventory = Inventory(location, (InventoryFile(location, size, gzipped=location.endswith(".gz")),),
                          csv_key_list=location.removesuffix(".gz").endswith(".csv"))
    # Found out of order halfway, a key list would leave a watermark past keys it had not reached
    # yet, which a rerun with the list sorted would then skip: so the whole list is checked first.
    count = 0
    try:
        for _ in inventory_file_rows(inventory, inventory.files[0], source):
            count += 1
    except FatalTransferError as error:
        raise ConfigurationError(str(error)) from None
    LOG.info("key list %s: %d keys, in key order", location, count)
    return inventory


def _open_manifest(location: str, source: ConnectedSide) -> Inventory:
    document = _read_inventory_document(location, source, what="inventory manifest")
    if document is None:
        raise ConfigurationError(f"The inventory manifest {location} given to --from-inventory does not exist: give "
                                 "the manifest.json of an S3 Inventory report, or a key list.")
    columns, entries = parse_inventory_manifest(document, where=location, bucket=source.bucket)
    if location.endswith("/manifest.json"):
        checksum = _read_inventory_document(location.removesuffix("json") + "checksum", source,
                                            what="inventory manifest checksum")
        if checksum is not None and checksum.decode("ascii", "replace").strip().lower() != \
                hashlib.md5(document).hexdigest():
            raise ConfigurationError(f"The inventory manifest {location} does not match its manifest.checksum: it is "
                                     "damaged or was replaced; use a complete copy of the report.")
    # From S3, the data files are read from the bucket the manifest is in: its destinationBucket says the
    # same, unless the report was copied elsewhere, and then its data files were copied with it.
    bucket = _s3_parts(location)[0] if location.startswith("s3://") else None
    files = []
    for key, size, md5 in entries:
        if bucket is not None:
            found = f"s3://{bucket}/{key}"
            actual = _inventory_file_size(found, source)
        else:
            path = local_data_file(Path(location), key)
            found = str(path) if path else key
            actual = path.stat().st_size if path else None
        if actual is None:
            place = f"in s3://{bucket}" if bucket else f"below {Path(location).parent} or the folder above it"
            raise ConfigurationError(f"The inventory data file {key} that the manifest {location} names is not "
                                     f"{place}: the report may be incomplete, or a local copy may not keep its layout "
                                     "(copy the report's folder whole).")
        if actual != size:
            raise ConfigurationError(f"The inventory data file {found} is {actual:,} bytes, but the manifest "
                                     f"{location} says {size:,}: it is truncated or is not the file the report "
                                     "wrote; use a complete copy of the report.")
        files.append(InventoryFile(found, size, md5))
    LOG.info("inventory report %s: %d data files, %s, columns %s", location, len(files),
             format_size(sum(file.size for file in files)), ", ".join(columns))
    return Inventory(location, tuple(files), columns)


def report_share(config: RunSettings, inventory: Optional[Inventory]) -> tuple[RunSettings, Optional[Inventory]]:
    """A shard of a report's files: the settings, and the report reduced to the shard's own data
    files; a report of fewer files than shards is split by a hash of each key instead."""
    shard = config.job.shard
    if inventory is None or shard is None or shard.split != "files":
        return config, inventory
    owners = share_report_files([file.size for file in inventory.files], shard.count)
    if owners is None:
        LOG.info("%s has %d data files, fewer than the %d shards: each shard reads it whole and keeps the keys a "
                 "hash gives it", inventory.location, len(inventory.files), shard.count)
        hashed = dataclasses.replace(shard, split="hash")
        return dataclasses.replace(config, job=dataclasses.replace(config.job, shard=hashed)), inventory
    own = tuple(file for file, owner in zip(inventory.files, owners) if owner == shard.index)
    LOG.info("shard %s reads %d of the %d data files of %s (%s of %s)", shard, len(own), len(inventory.files),
             inventory.location, format_size(sum(file.size for file in own)),
             format_size(sum(file.size for file in inventory.files)))
    return config, dataclasses.replace(inventory, files=own)


def is_wanted(relative_key: str, config: RunSettings) -> bool:
    """Whether --include/--exclude and --shard keep a key (relative to its side's prefix)."""
    shard = config.job.shard
    return is_selected(relative_key, config.job.filters) and (shard is None or shard.owns(relative_key))


def selected_objects(objects: Iterable[ListedObject], config: RunSettings, *,
                     side: str = "source") -> Iterator[ListedObject]:
    """Apply --include/--exclude and --shard to a listing of either side (keys relative to that side's
    prefix); listing errors stop the run with a clear sentence."""
    location, settings = ((config.job.source, config.job.source_access) if side == "source"
                          else (config.job.destination, config.job.destination_access))
    try:
        for listed in objects:
            if is_wanted(listed.key[len(location.prefix):], config):
                yield listed
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
        if isinstance(error, RETRYABLE_BODY_ERRORS):
            raise FatalTransferError(f"Listing the {side} failed after botocore's retries: {error}. "
                                     "Rerun to resume.") from None
        raise FatalTransferError(explain_error(error, access=settings, bucket=location.bucket,
                                               action="s3:ListBucket")) from None


def source_objects(config: RunSettings, source: ConnectedSide, start_after: Optional[str],
                   through: Optional[str] = None, *, inventory: Optional[Inventory], on_missing: Callable[[str], None],
                   need_etag: bool = True) -> Iterator[ListedObject]:
    """The selected source objects in key order, after start_after and up to through: listed with
    ListObjectsV2, or read from --from-inventory, where the filters apply before any HeadObject a
    row without a size or ETag costs (see inventory_objects)."""
    bounds = config.job.object_filter
    if inventory is None:
        listed = selected_objects(list_objects(source, config.job.source, start_after, through), config)
        return (entry for entry in listed if bounds.admits(entry.size, entry.last_modified))
    rows = (row for row in inventory_rows(inventory, source, config.job.source, start_after, through)
            if is_wanted(row.key[len(config.job.source.prefix):], config)
            # A row that tells its size (and its age, if asked) is decided before any HeadObject.
            and (row.size is None or (bounds.needs_age() and row.last_modified is None)
                 or bounds.admits(row.size, row.last_modified)))
    completed = inventory_objects(rows, source, on_missing=on_missing, need_etag=need_etag)
    return (entry for entry in completed if bounds.admits(entry.size, entry.last_modified))


def listing_split_points(config: RunSettings, source: ConnectedSide, ranges_wanted: Optional[int] = None) -> list[str]:
    """Where to cut the source's keyspace in about `ranges_wanted` ranges (default: enough for the
    --list-concurrency listers); refusals as a listing's."""
    if ranges_wanted is None:
        ranges_wanted = config.tuning.list_concurrency * RANGES_PER_LISTER
    try:
        return discover_split_points(source, config.job.source, ranges_wanted)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
        raise FatalTransferError(explain_error(error, access=config.job.source_access, bucket=config.job.source.bucket,
                                               action="s3:ListBucket")) from None


# =============================================================================================
# 7. Integrity: the proofs that what arrived is what left
# =============================================================================================


def md5_digest(body: bytes) -> bytes:
    return hashlib.md5(body).digest()  # noqa: S324 - S3's integrity header and ETag


def content_md5(digest: bytes) -> str:
    """The Content-MD5 header (base64) for a body of this MD5, with which S3 rejects a body damaged
    on the way up."""
    return base64.b64encode(digest).decode("ascii")


# Encryption under which S3's ETag of an object or a part is no MD5 of its bytes (Object, ETag: "encrypted by
# SSE-C or SSE-KMS, have ETags that are not an MD5 digest"); DSSE-KMS is KMS's double layer.
OPAQUE_ETAG_ENCRYPTION = {"aws:kms", "aws:kms:dsse"}


def etag_is_opaque(response: dict[str, Any]) -> bool:
    """Whether an answer (HeadObject, GetObject, PutObject, CopyObject, CreateMultipartUpload,
    UploadPart, UploadPartCopy) says its object or part is encrypted so that its ETag is no hash of
    its bytes: SSE-KMS, DSSE-KMS or SSE-C. Decided from what S3 answered, never from our own flags: a
    bucket's default encryption applies whatever we asked."""
    return response.get("ServerSideEncryption") in OPAQUE_ETAG_ENCRYPTION or bool(response.get("SSECustomerAlgorithm"))


def plain_md5_etag(etag: str, response: dict[str, Any]) -> Optional[str]:
    """The MD5 an ETag stands for, or None when it is not one (multipart, SSE-KMS, SSE-C)."""
    value = etag.strip('"')
    if "-" in value or len(value) != 32:
        return None
    if etag_is_opaque(response):
        return None
    return value


def equal_part_layout(size: int, parts_count: int, first: int, last: int) -> Optional[tuple[int, ...]]:
    """The source's part sizes, from its first and last part, when they describe equal parts and a
    shorter last one (as every S3 tool uploads); None when they cannot, so nothing is assumed."""
    if parts_count < 1 or first <= 0 or last <= 0 or last > first:
        return None
    if (parts_count - 1) * first + last != size:
        return None
    return (first,) * (parts_count - 1) + (last,)


CHECKSUM_ALGORITHMS = ("CRC64NVME", "CRC32C", "CRC32", "SHA256", "SHA1")  # S3's additional checksums
FULL_OBJECT_MULTIPART_ALGORITHMS = {"CRC64NVME", "CRC32C", "CRC32"}  # S3 combines only CRCs of parts


# S3's CRCs, all reflected with an initial value and final XOR of all ones: (reflected polynomial, width in
# bits). The polynomials are what makes part CRCs combine into the CRC of the whole (CrcCombiner).
CRC_POLYNOMIALS = {"CRC32": (0xEDB88320, 32), "CRC32C": (0x82F63B78, 32), "CRC64NVME": (0x9A6C9329AC4BC9B5, 64)}


def _crc_functions() -> dict[str, Callable[[Any, int], int]]:
    """CRC algorithm -> incremental function. CRC32C and CRC64NVME come from awscrt (requirements.txt);
    without it, objects carrying them are checked by their ETag alone."""
    functions: dict[str, Callable[[Any, int], int]] = {"CRC32": zlib.crc32}
    try:
        from awscrt import checksums
    except ImportError:
        return functions
    functions["CRC32C"] = checksums.crc32c
    functions["CRC64NVME"] = checksums.crc64nvme
    return functions


CRC_FUNCTIONS = _crc_functions()


# The checksum every part of a streamed multipart copy carries when the source has none of its own: so
# that S3 checks each part as it arrives, and so that a part uploaded before a crash can be compared with
# the source's bytes even where its ETag is no MD5 (SSE-KMS). S3 gives every new object a full-object
# CRC64NVME when the uploader names none, so the destination ends up with what it would have had anyway.
OWN_PART_CHECKSUM = "CRC64NVME" if "CRC64NVME" in CRC_FUNCTIONS else "CRC32"


class Crc:
    """One of S3's CRCs, fed incrementally; its state is its value, which a progress file can keep."""

    def __init__(self, algorithm: str, state: Optional[str] = None) -> None:
        self._crc = CRC_FUNCTIONS[algorithm]
        self._width = CRC_POLYNOMIALS[algorithm][1] // 8
        self._value = int(state) if state else 0

    def update(self, data: bytes, start: int = 0, stop: Optional[int] = None) -> None:
        whole = start == 0 and (stop is None or stop == len(data))
        self._value = self._crc(data if whole else memoryview(data)[start:stop], self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(self._width, "big")

    def state(self) -> Optional[str]:
        return str(self._value)


@functools.lru_cache(maxsize=None)
def _libcrypto() -> Optional[ctypes.CDLL]:
    """The OpenSSL library that hashlib itself uses (already loaded with it), or None."""
    import ctypes.util

    import _hashlib  # noqa: F401 - loads the libcrypto hashlib is built on, which is the one to share

    candidates: list[str] = []
    with contextlib.suppress(OSError):  # on Linux, the library hashlib loaded; elsewhere the usual search
        with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
            candidates += sorted({line.split()[-1] for line in maps if "libcrypto" in line})
    candidates += [name for name in (ctypes.util.find_library("crypto"),) if name]
    for candidate in candidates:
        try:
            library = ctypes.CDLL(candidate)  # CDLL releases the GIL for each call: workers hash in parallel
        except OSError:
            continue
        if all(hasattr(library, f"{name}_{step}") for name, _ in _OPENSSL_CONTEXTS.values()
               for step in ("Init", "Update", "Final")):
            for name, _ in _OPENSSL_CONTEXTS.values():
                getattr(library, f"{name}_Update").argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
            return library
    return None


# hashlib name -> (OpenSSL's name for the low-level functions, size of their context struct: MD5_CTX,
# SHA_CTX, SHA256_CTX, as declared in OpenSSL's md5.h and sha.h and unchanged since OpenSSL 0.9).
_OPENSSL_CONTEXTS = {"md5": ("MD5", 92), "sha1": ("SHA1", 96), "sha256": ("SHA256", 112)}


class ResumableHash:
    """MD5, SHA1 or SHA256 whose running state can be saved and taken up again in another process.

    hashlib cannot export its state, and the digest of a multipart copy must be of the bytes that were
    uploaded, not of a fresh read after a crash. OpenSSL's own context for these functions is a plain
    struct of a few dozen bytes, so the hash runs in OpenSSL (the library hashlib uses) and the struct
    is what is saved. Where that library cannot be found, hashlib does the hashing and `state()` is
    None: a rerun then compares each uploaded part with a fresh read instead (see MultipartCopy)."""

    def __init__(self, name: str, state: Optional[str] = None) -> None:
        library = _libcrypto()
        self._name = name
        self.exportable = library is not None
        if library is None:
            if state is not None:
                raise ValueError("a saved hash state needs OpenSSL's libcrypto, which is not loadable here")
            self._hashlib = hashlib.new(name)
            return
        function, size = _OPENSSL_CONTEXTS[name]
        self._update = getattr(library, f"{function}_Update")
        self._final = getattr(library, f"{function}_Final")
        self._size = size
        self._context = ctypes.create_string_buffer(size)
        if state is None:
            getattr(library, f"{function}_Init")(self._context)
        else:
            saved = base64.b64decode(state)
            if len(saved) != size:
                raise ValueError(f"a saved {name} state of {len(saved)} bytes, not {size}")
            ctypes.memmove(self._context, saved, size)

    def update(self, data: bytes, start: int = 0, stop: Optional[int] = None) -> None:
        stop = len(data) if stop is None else stop
        if not self.exportable:
            self._hashlib.update(memoryview(data)[start:stop])
            return
        if not isinstance(data, bytes):
            data = bytes(data)
        # c_char_p points into the bytes object itself (no copy); it lives as long as `data` does here.
        address = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0
        self._update(self._context, address + start, stop - start)

    def digest(self) -> bytes:
        if not self.exportable:
            return self._hashlib.digest()
        final = ctypes.create_string_buffer(self._context.raw, self._size)  # Final consumes its context
        output = ctypes.create_string_buffer(64)
        self._final(output, final)
        return output.raw[:hashlib.new(self._name).digest_size]

    def state(self) -> Optional[str]:
        return base64.b64encode(self._context.raw).decode("ascii") if self.exportable else None


def new_hasher(algorithm: str, state: Optional[str] = None) -> Any:
    """A hasher (update, digest, state) for "MD5" (ETags) or one of S3's additional checksums,
    started afresh or from a saved `state`."""
    if algorithm in CRC_POLYNOMIALS:
        return Crc(algorithm, state)
    return ResumableHash(algorithm.lower(), state)


def checksum_of(algorithm: str, body: bytes) -> str:
    """A body's checksum as S3 writes it in a Checksum<ALGORITHM> header: base64."""
    hasher = new_hasher(algorithm)
    hasher.update(body)
    return base64.b64encode(hasher.digest()).decode("ascii")


class CrcCombiner:
    """The CRC of a concatenation from the CRCs of its pieces and their lengths, without the bytes:
    how S3 makes a full-object CRC out of part CRCs, and how the tool checks an upload that was
    completed before a crash against what it uploaded. zlib's crc32_combine, for any of S3's CRCs:
    appending n zero bytes is a linear map of the CRC register, computed by squaring the map of one
    zero bit; the map for each length is kept, since parts share one length but for the last."""

    def __init__(self, algorithm: str) -> None:
        self._polynomial, self._width = CRC_POLYNOMIALS[algorithm]
        self._zero_bytes: dict[int, list[int]] = {}

    @staticmethod
    def _times(matrix: list[int], vector: int) -> int:
        total, row = 0, 0
        while vector:
            if vector & 1:
                total ^= matrix[row]
            vector >>= 1
            row += 1
        return total

    def _square(self, matrix: list[int]) -> list[int]:
        return [self._times(matrix, column) for column in matrix]

    def _after_zero_bytes(self, length: int) -> list[int]:
        if length not in self._zero_bytes:
            power = [self._polynomial] + [1 << bit for bit in range(self._width - 1)]  # one zero bit
            for _ in range(3):  # ... then two, four and eight: one zero byte
                power = self._square(power)
            result = [1 << bit for bit in range(self._width)]  # the identity
            remaining = length
            while remaining:
                if remaining & 1:
                    result = [self._times(power, column) for column in result]
                remaining >>= 1
                if remaining:
                    power = self._square(power)
            self._zero_bytes[length] = result
        return self._zero_bytes[length]

    def combine(self, first: int, second: int, second_length: int) -> int:
        """The CRC of A + B, given crc(A), crc(B) and len(B)."""
        return self._times(self._after_zero_bytes(second_length), first) ^ second if second_length else first


def combined_checksum(algorithm: str, part_checksums: Iterable[str], part_sizes: Iterable[int], *,
                      full_object: bool) -> str:
    """The checksum S3 gives an object of these parts: the CRC of the whole (full-object), or the
    checksum of the concatenated part checksums and "-N" (composite)."""
    digests = [base64.b64decode(value) for value in part_checksums]
    if not full_object:
        return f"{checksum_of(algorithm, b''.join(digests))}-{len(digests)}"
    combiner, total = CrcCombiner(algorithm), 0
    for digest, size in zip(digests, part_sizes):
        total = combiner.combine(total, int.from_bytes(digest, "big"), size)
    return base64.b64encode(total.to_bytes(CRC_POLYNOMIALS[algorithm][1] // 8, "big")).decode("ascii")


@dataclasses.dataclass(frozen=True)
class SourceChecksum:
    """The additional checksum S3 keeps for a source object: algorithm, value as S3 returns it
    (base64, ending in -N when composite), and whether it is composite (a checksum of part checksums)."""

    algorithm: str
    value: str
    composite: bool


def computable(algorithm: str) -> bool:
    """Whether this build computes the checksum algorithm (CRC32C and CRC64NVME need awscrt)."""
    return algorithm in CRC_FUNCTIONS or algorithm in ("SHA1", "SHA256")


def find_source_checksum(response: dict[str, Any], etag: str) -> Optional[SourceChecksum]:
    """The additional checksum a GetObject or HeadObject with ChecksumMode=ENABLED reported, when this
    build can compute it."""
    for algorithm in CHECKSUM_ALGORITHMS:
        value = response.get(f"Checksum{algorithm}")
        if not value:
            continue
        if not computable(algorithm):
            return None
        kind = response.get("ChecksumType")
        if kind is None:
            # Server quirk (moto): S3 answers ChecksumType beside the checksum, and a composite value
            # ends in "-N"; moto leaves ChecksumType out, and its HeadObject drops the
            # "-N" of a composite value. So without ChecksumType the value is believed only where it
            # cannot be misread.
            if "-" in value:
                kind = "COMPOSITE"
            elif "-" not in etag:
                kind = "FULL_OBJECT"
            else:
                return None
        return SourceChecksum(algorithm, value, composite=kind == "COMPOSITE")
    return None


class LayoutHash:
    """One algorithm over one object: of the whole body, or S3's composite form, the hash of the
    concatenated hashes of the source's parts (its multipart ETag, or a composite checksum).

    Its state (where it is in the layout, the digests of the source's parts so far, the running hash)
    can be saved and restored, when the running hash can (see ResumableHash)."""

    def __init__(self, algorithm: str, part_sizes: tuple[int, ...], *, composite: bool,
                 state: Optional[dict[str, Any]] = None) -> None:
        self._algorithm = algorithm
        self._sizes = part_sizes
        self._composite = composite
        self._index = 0
        self._left = part_sizes[0] if composite else 0
        self._part_digests: list[bytes] = []
        self._current = new_hasher(algorithm, state["current"] if state else None)
        if state:
            self._index, self._left = state["index"], state["left"]
            blob, width = base64.b64decode(state["parts"]), len(self._current.digest())
            self._part_digests = [blob[start:start + width] for start in range(0, len(blob), width)]

    def update(self, body: bytes, part_digest: Optional[bytes] = None) -> None:
        """Feed the next bytes. `part_digest`, when the bytes are exactly one of the source's parts,
        is their digest computed already (for Content-MD5 or the part checksum): not hashed twice."""
        if not self._composite:
            self._current.update(body)
            return
        if part_digest is not None and len(body) == self._left == self._sizes[self._index]:
            self._finish_part(part_digest)
            return
        start = 0
        while start < len(body):
            take = min(self._left, len(body) - start)
            self._current.update(body, start, start + take)
            self._left -= take
            start += take
            if self._left == 0:
                self._finish_part(self._current.digest())

    def _finish_part(self, digest: bytes) -> None:
        self._part_digests.append(digest)
        self._index += 1
        if self._index < len(self._sizes):
            self._left = self._sizes[self._index]
            self._current = new_hasher(self._algorithm)

    def value(self) -> tuple[bytes, str]:
        """The digest, and the "-N" suffix S3 writes after a composite one (an upload of one part too)."""
        if not self._composite:
            return self._current.digest(), ""
        digests = self._part_digests
        if len(digests) < len(self._sizes):  # fewer bytes than the layout: a mismatch, whatever they hash to
            digests = [*digests, self._current.digest()]
        combined = new_hasher(self._algorithm)
        combined.update(b"".join(digests))
        return combined.digest(), f"-{len(self._sizes)}"

    def state(self) -> Optional[dict[str, Any]]:
        """What a rerun needs to go on from here, or None when the running hash cannot be saved."""
        current = self._current.state()
        if current is None:
            return None
        return {"index": self._index, "left": self._left, "current": current,
                "parts": base64.b64encode(b"".join(self._part_digests)).decode("ascii")}


class OrderedDigest:
    """Hashes the parts of one object in order, whatever order the workers finish in: the ETag
    (MD5, or MD5 of part MD5s) and the source's additional checksum, if it has one.

    A worker whose part is not next waits here with its body (already counted in the memory
    budget) until the parts before it are hashed; parts are submitted in order, so the part it
    waits for is always in flight. `state()` is what the progress file keeps of it, so that a rerun
    takes the digest up after the last part hashed instead of reading the uploaded parts again.
    """

    def __init__(self, etag: Optional[LayoutHash], checksum: Optional[LayoutHash], *, next_part: int = 1) -> None:
        self._etag = etag
        self._checksum = checksum
        self._next = next_part
        self._turn = threading.Condition()

    @property
    def parts_hashed(self) -> int:
        with self._turn:
            return self._next - 1

    def update(self, body: bytes, *, part_md5: Optional[bytes] = None, part_checksum: Optional[bytes] = None) -> None:
        """Feed the next bytes of the object (no ordering: the caller feeds them in order), with their
        MD5 and checksum if already computed."""
        if self._etag is not None:
            self._etag.update(body, part_md5)
        if self._checksum is not None:
            self._checksum.update(body, part_checksum)

    def feed(self, number: int, body: bytes, *, cancelled: Callable[[], bool], part_md5: Optional[bytes] = None,
             part_checksum: Optional[bytes] = None) -> None:
        """Feed our part `number` once every part before it has been fed."""
        with self._turn:
            while self._next != number:
                if cancelled():
                    raise StopRequested()
                self._turn.wait(TICK_SECONDS)
            # Under the lock, so that state() never sees a part half fed.
            self.update(body, part_md5=part_md5, part_checksum=part_checksum)
            self._next = number + 1
            self._turn.notify_all()

    def etag(self) -> str:
        """The ETag the bytes fed so far make, without quotes: hex MD5, or hex MD5 of MD5s + '-N'."""
        assert self._etag is not None
        digest, suffix = self._etag.value()
        return digest.hex() + suffix

    def checksum(self) -> str:
        """The additional checksum the bytes fed so far make, as S3 writes it."""
        assert self._checksum is not None
        digest, suffix = self._checksum.value()
        return base64.b64encode(digest).decode("ascii") + suffix

    def state(self) -> Optional[dict[str, Any]]:
        """The digest after the parts fed so far, for the progress file; None when it cannot be saved."""
        with self._turn:
            saved: dict[str, Any] = {"next_part": self._next}
            for name, layout in (("etag", self._etag), ("checksum", self._checksum)):
                if layout is not None:
                    saved[name] = layout.state()
                    if saved[name] is None:
                        return None
            return saved


@dataclasses.dataclass(frozen=True)
class UploadChecksum:
    """The additional checksum of a multipart upload: its algorithm, and whether S3 combines the part
    checksums into one of the whole object (FULL_OBJECT, CRCs only) or keeps a checksum of them
    (COMPOSITE)."""

    algorithm: str
    full_object: bool

    def create_arguments(self) -> dict[str, str]:
        """For CreateMultipartUpload."""
        return {"ChecksumAlgorithm": self.algorithm, "ChecksumType": "FULL_OBJECT" if self.full_object else "COMPOSITE"}


@dataclasses.dataclass(frozen=True)
class IntegrityCheck:
    """How one object's bytes are proven equal to the source's before it is completed.

    method, the strongest check there is: "md5" (the ETag is the MD5 of the whole body), "etag"
    (the ETag is the MD5 of the part MD5s, checked along the source's part boundaries), "checksum"
    (the ETag proves nothing, as with SSE-KMS, but the source has an additional checksum) or
    "size-only" (`reason` says why). An additional checksum is checked too whenever there is one.
    """

    method: str
    expected: str = ""  # the ETag the bytes must make, without quotes ("" unless md5 or etag)
    source_part_sizes: tuple[int, ...] = ()
    checksum: Optional[SourceChecksum] = None
    reason: str = ""

    def new_digest(self, saved: Optional[dict[str, Any]] = None) -> Optional[OrderedDigest]:
        """A digest computing what is expected, fresh or taken up from a `saved` state (see
        OrderedDigest.state); None when there is nothing to compute."""
        sizes = self.source_part_sizes or (1,)
        saved = saved or {}
        etag = (LayoutHash("MD5", sizes, composite=self.method == "etag", state=saved.get("etag"))
                if self.expected else None)
        checksum = None
        if self.checksum is not None:
            checksum = LayoutHash(self.checksum.algorithm, sizes, composite=self.checksum.composite,
                                  state=saved.get("checksum"))
        if not (etag or checksum):
            return None
        return OrderedDigest(etag, checksum, next_part=saved.get("next_part", 1))

    def identity(self) -> str:
        """What a saved digest must have been computing to be taken up by this check."""
        checksum = self.checksum
        described = [self.method, self.expected, list(self.source_part_sizes),
                     [checksum.algorithm, checksum.value, checksum.composite] if checksum else None]
        return hashlib.blake2b(json.dumps(described).encode(), digest_size=12).hexdigest()

    @property
    def checksum_algorithm(self) -> Optional[str]:
        return self.checksum.algorithm if self.checksum else None

    @property
    def uniform_parts(self) -> bool:
        """Whether the source's parts are equal but for a shorter last one: the only layout a copy in
        parts of one size can repeat, and so keep the source's ETag."""
        sizes = self.source_part_sizes
        return bool(sizes) and all(size == sizes[0] for size in sizes[:-1]) and sizes[-1] <= sizes[0]

    @property
    def full_object_checksum(self) -> bool:
        """Whether the copy keeps a full-object checksum, as the source has: only CRCs of parts combine."""
        return (self.checksum is not None and not self.checksum.composite
                and self.checksum.algorithm in FULL_OBJECT_MULTIPART_ALGORITHMS)

    def upload_checksum(self, *, server_side: bool) -> Optional[UploadChecksum]:
        """The checksum a multipart copy's parts carry: the source's algorithm, so that the destination
        keeps it; else, for a copy streamed through here, OWN_PART_CHECKSUM as a full-object CRC; a
        server-side copy of a source without one asks for none (S3 computes its parts' bytes)."""
        if self.checksum is not None:
            return UploadChecksum(self.checksum.algorithm, full_object=self.full_object_checksum)
        return None if server_side else UploadChecksum(OWN_PART_CHECKSUM, full_object=True)

    def mismatch(self, digest: OrderedDigest) -> Optional[str]:
        """What does not match, as a sentence with both values; None when everything does."""
        if self.expected and digest.etag() != self.expected:
            return (f"integrity mismatch: the downloaded bytes hash to {digest.etag()}, "
                    f"the source ETag says {self.expected}")
        if self.checksum is not None and digest.checksum() != self.checksum.value:
            return (f"integrity mismatch: the downloaded bytes have {self.checksum.algorithm} {digest.checksum()}, "
                    f"the source says {self.checksum.value}")
        return None


def etag_of_parts(part_etags: Iterable[str]) -> Optional[str]:
    """The ETag S3 gives a multipart object made of parts with these ETags (MD5 of their MD5s, then
    -N), or None when a part's ETag is not an MD5 and so proves nothing."""
    digests = []
    for etag in part_etags:
        value = etag.strip('"')
        if not re.fullmatch(r"[0-9a-f]{32}", value):
            return None
        digests.append(bytes.fromhex(value))
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"  # noqa: S324 - S3's ETag


def server_side_check(check: IntegrityCheck, *, along_source_parts: bool) -> IntegrityCheck:
    """What a server-side multipart copy (UploadPartCopy) can be checked against, no byte passing
    through us: the source's multipart ETag, from the ETags S3 returns for our parts cut along the
    same boundaries; or a full-object CRC, which S3 itself checks on completion; else nothing."""
    if check.method == "etag" and along_source_parts:
        return check
    if check.full_object_checksum and check.checksum is not None:
        return IntegrityCheck("checksum", "", (), check.checksum)
    if check.method == "md5":
        reason = ("it was copied server-side in parts, and its ETag is the MD5 of the whole object, which "
                  "S3 does not return for copied parts")
    elif check.method == "etag":
        reason = ("it was copied server-side in parts other than its own, so the ETags S3 returns for them "
                  "cannot make the source's")
    else:
        reason = check.reason or "it was copied server-side and has neither a multipart ETag nor a full-object CRC"
    return IntegrityCheck("size-only", reason=reason)


def server_side_parts_check(check: IntegrityCheck, *, part_etags: dict[int, str], part_checksums: dict[int, str],
                            part_sizes: Iterable[int], part_etags_are_md5: Optional[bool]) -> IntegrityCheck:
    """How the parts S3 copied (UploadPartCopy) are proven to make the source: their ETags make its
    multipart ETag, where the destination's encryption leaves part ETags MD5s (CreateMultipartUpload's
    and each UploadPartCopy's answer say); else their checksums make its checksum; else only the size."""
    numbers = sorted(part_etags)
    if check.method == "etag" and part_etags_are_md5 is not False:
        made = etag_of_parts(part_etags[number] for number in numbers) or "none (a part ETag is not an MD5)"
        if made != check.expected:
            raise IntegrityMismatch(f"integrity mismatch: the parts S3 copied make the ETag {made}, "
                                    f"the source ETag says {check.expected}")
        return check
    source_checksum = check.checksum
    if source_checksum is not None and all(number in part_checksums for number in numbers):
        if source_checksum.composite and check.method == "etag":  # the copy repeats the source's parts
            made = combined_checksum(source_checksum.algorithm, (part_checksums[n] for n in numbers),
                                     part_sizes, full_object=False)
            if made != source_checksum.value:
                raise IntegrityMismatch(f"integrity mismatch: the parts S3 copied make the "
                                        f"{source_checksum.algorithm} {made}, the source says "
                                        f"{source_checksum.value}")
            return IntegrityCheck("checksum", checksum=source_checksum)
        if check.full_object_checksum:  # S3 checks the combined value at completion
            return IntegrityCheck("checksum", checksum=source_checksum)
    if check.method == "etag":
        return IntegrityCheck("size-only", reason="it was copied server-side into a bucket whose encryption "
                                                  "(SSE-KMS or SSE-C) makes part ETags no MD5s, and S3 gave no "
                                                  "checksums that make the source's")
    return check


class IntegrityPlanner:
    """How an object's bytes are to be proven, read from the source: HeadObject of the listed version
    (with its checksum), and of its parts where its ETag is of a multipart upload, to learn the part
    layout its multipart ETag (or composite checksum) is computed along."""

    def __init__(self, source: ConnectedSide) -> None:
        self.source = source

    def head(self, listed: ListedObject) -> dict[str, Any]:
        """HeadObject of the listed version of a source object, with its checksum; an object archived
        and not restored fails here, before anything is written for it."""
        try:
            head = self.source.retries.call(lambda: self.source.client.head_object(
                Bucket=self.source.bucket, Key=listed.key, IfMatch=listed.etag, ChecksumMode="ENABLED"),
                what=f"HeadObject of {listed.key}")
        except botocore.exceptions.ClientError as error:
            if classify(error) is ErrorKind.SOURCE_CHANGED:
                raise SourceChanged() from None
            raise S3CallFailed(error, action="s3:GetObject", role="source") from error
        archived = unrestored_archive(head)
        if archived:
            raise ObjectFailure(f"it is {archived}")
        return head

    def check(self, key: str, etag: str, response: dict[str, Any], size: int) -> IntegrityCheck:
        """What the object's bytes can be checked against: its MD5 ETag, or for an object uploaded
        in parts, its MD5-of-MD5s along the part layout that HeadObject(PartNumber) reveals; and its
        additional checksum, if it has one (the only proof when SSE-KMS makes the ETag opaque)."""
        value = etag.strip('"')
        checksum = find_source_checksum(response, value)
        plain = plain_md5_etag(etag, response)
        if plain is not None:
            return IntegrityCheck("md5", plain, (max(size, 1),), checksum)
        encrypted = etag_is_opaque(response)
        counted = self.parts_counted(etag, response)
        layout = self.part_layout(key, size, counted) if counted else None
        if checksum is not None and checksum.composite and layout is None:
            checksum = None  # a composite checksum cannot be recomputed without the part layout
        if not encrypted and re.fullmatch(r"[0-9a-f]{32}-\d+", value) and layout is not None:
            return IntegrityCheck("etag", value, layout, checksum)
        if checksum is not None:
            return IntegrityCheck("checksum", "", layout or (), checksum)
        if encrypted:
            return IntegrityCheck("size-only", reason="its ETag is not an MD5 (SSE-KMS or SSE-C encryption) and "
                                                      "it has no additional checksum")
        if layout is None and re.fullmatch(r"[0-9a-f]{32}-\d+", value):
            return IntegrityCheck("size-only", reason=f"the source's parts are of unequal sizes and more than "
                                                      f"{LAYOUT_PROBE_LIMIT:,}, too many to read each one's size")
        return IntegrityCheck("size-only", reason=f"its ETag {etag} is in no format S3 documents")

    @staticmethod
    def parts_counted(etag: str, response: dict[str, Any]) -> int:
        """How many parts the source's ETag (or composite checksum) says it was uploaded in, whose
        layout check() must then ask the source for; 0 when it needs no request."""
        value = etag.strip('"')
        if plain_md5_etag(etag, response) is not None:
            return 0
        checksum = find_source_checksum(response, value)
        counted = re.search(r"-(\d+)$", checksum.value if checksum and checksum.composite else value)
        return int(counted.group(1)) if counted else 0

    def part_layout(self, key: str, size: int, parts_count: int) -> Optional[tuple[int, ...]]:
        """The source's part sizes, from HeadObject(PartNumber) of its first and last part, or of
        every part when those two do not describe equal parts (up to LAYOUT_PROBE_LIMIT parts).

        Server quirk (moto): moto answers HeadObject(PartNumber) with the part's own ETag, which would
        fail an If-Match of the object's; so none is sent, to S3 either. A version that changed since
        is caught anyway: its sizes would not add up, or the If-Match of the ranged GETs fails, or the
        bytes do not hash to the ETag.
        """

        def part_head(number: int) -> dict[str, Any]:
            return self.source.retries.call(lambda: self.source.client.head_object(
                Bucket=self.source.bucket, Key=key, PartNumber=number), what=f"HeadObject of part {number} of {key}")

        first = part_head(1)
        last = first if parts_count == 1 else part_head(parts_count)
        if int(first.get("PartsCount") or parts_count) != parts_count:
            return None
        layout = equal_part_layout(size, parts_count, first["ContentLength"], last["ContentLength"])
        if layout is None and 2 <= parts_count <= LAYOUT_PROBE_LIMIT:
            middle = tuple(part_head(number)["ContentLength"] for number in range(2, parts_count))
            layout = (first["ContentLength"], *middle, last["ContentLength"])
            if sum(layout) != size:
                return None
        return layout


def copy_part_plan(listed: ListedObject, check: IntegrityCheck, config: RunSettings, *,
                   server_side: bool) -> tuple[int, Optional[tuple[int, ...]]]:
    """The parts a multipart copy is cut in: (part size, None) for parts of one size, or (first
    part's size, every part's size) to repeat a source's unequal layout. The source's own parts
    whenever S3 takes them, so that the destination's ETag (and composite checksum) is the source's,
    whatever --chunk-size says; a part larger than --memory-limit then runs alone (MemoryBudget). Our
    own parts only when the source has no layout to keep (one PUT, SSE-KMS, too many parts to read)
    or one part would hold more than half this machine's memory."""
    sizes = check.source_part_sizes if check.method in ("etag", "checksum") else ()
    kept = bool(sizes) and layout_fits_s3(sizes)
    if kept and (server_side or max(sizes) <= MEMORY_FOR_ONE_PART):
        if not server_side and max(sizes) > max(config.tuning.memory_limit, config.tuning.chunk_size):
            LOG.info("%s keeps its source's parts of up to %s, larger than the %s memory limit: they are copied "
                     "one at a time (raise --memory-limit to copy several at once)",
                     json.dumps(listed.key, ensure_ascii=False), format_size(max(sizes)),
                     format_size(config.tuning.memory_limit))
        return sizes[0], None if check.uniform_parts else tuple(sizes)
    if kept:
        LOG.warning("%s: its source's parts of up to %s would take more than half this machine's memory at once, "
                    "so it is copied in parts of its own and its ETag will differ from the source's (its bytes are "
                    "checked along the source's parts all the same)", json.dumps(listed.key, ensure_ascii=False),
                    format_size(max(sizes)))
    part_size = choose_part_size(listed.size, config.tuning.chunk_size)  # the engine refused what is too large
    if part_size != config.tuning.chunk_size and not server_side:
        LOG.warning("%s (%s) needs %s parts to stay within S3's 10,000 parts; %d of them fit the %s memory "
                    "limit at once (raise --memory-limit to copy more of them in parallel)",
                    json.dumps(listed.key, ensure_ascii=False), format_size(listed.size), format_size(part_size),
                    max(config.tuning.memory_limit // part_size, 1), format_size(config.tuning.memory_limit))
    return part_size, None


def physical_memory() -> int:
    """This machine's memory in bytes (16 GiB where it cannot be told)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * GiB


MEMORY_FOR_ONE_PART = physical_memory() // 2  # the largest source part a copy holds whole to keep its ETag


# =============================================================================================
# 8. Moving bodies: the BodyTransport interface and its two engines
# =============================================================================================

PRESERVED_HEADERS = (
    "ContentType",
    "ContentEncoding",
    "ContentDisposition",
    "ContentLanguage",
    "CacheControl",
    RAW_EXPIRES,  # as S3 stores it, which need not be a date
    "WebsiteRedirectLocation",
)


@dataclasses.dataclass(frozen=True)
class ObjectAttributes:
    """What travels with the bytes: the headers a user would otherwise lose silently, user metadata
    and tags (URL-encoded, as PutObject's Tagging parameter takes them)."""

    headers: dict[str, Any]
    metadata: dict[str, str]
    tagging: str = ""
    lock: dict[str, Any] = dataclasses.field(default_factory=dict)  # its Object Lock fields, as S3 told them

    @classmethod
    def from_response(cls, response: dict[str, Any], tags: list[dict[str, str]]) -> "ObjectAttributes":
        return cls(
            headers={name: response[name] for name in PRESERVED_HEADERS if response.get(name)},
            metadata=dict(response.get("Metadata") or {}),
            tagging=urllib.parse.urlencode([(tag["Key"], tag["Value"]) for tag in tags]),
            lock={name: response[name] for name in OBJECT_LOCK_FIELDS if response.get(name)},
        )

    def upload_arguments(self, config: RunSettings) -> dict[str, Any]:
        """Keyword arguments for PutObject / CreateMultipartUpload."""
        arguments: dict[str, Any] = dict(self.headers)
        arguments["Metadata"] = self.metadata
        if self.tagging:
            arguments["Tagging"] = self.tagging
        return {**arguments, **storage_arguments(config), **lock_arguments(self.lock, config)}


# GetObject and HeadObject answer with these only to a caller allowed s3:GetObjectRetention and
# s3:GetObjectLegalHold (S3 API Reference, HeadObject: x-amz-object-lock-mode, -retain-until-date,
# -legal-hold), which object_lock_refusal checks before anything is written.
OBJECT_LOCK_FIELDS = ("ObjectLockMode", "ObjectLockRetainUntilDate", "ObjectLockLegalHoldStatus")


def lock_to_copy(lock: dict[str, Any], now: Optional[datetime.datetime] = None) -> dict[str, Any]:
    """What a copy carries of its source's Object Lock: its legal hold when on, and its retention
    while the retain-until date is still ahead (S3 refuses a date in the past, and a retention that
    has run out protects nothing any more)."""
    arguments = {"ObjectLockLegalHoldStatus": "ON"} if lock.get("ObjectLockLegalHoldStatus") == "ON" else {}
    until = lock.get("ObjectLockRetainUntilDate")
    if lock.get("ObjectLockMode") and until and until > (now or datetime.datetime.now(datetime.timezone.utc)):
        arguments.update(ObjectLockMode=lock["ObjectLockMode"], ObjectLockRetainUntilDate=until)
    return arguments


def lock_arguments(lock: dict[str, Any], config: RunSettings) -> dict[str, Any]:
    """The Object Lock arguments of a write: lock_to_copy under --object-lock copy, else none."""
    return lock_to_copy(lock) if config.job.object_lock else {}


def storage_arguments(config: RunSettings) -> dict[str, str]:
    """How the copies are stored (--storage-class, --sse), for every request that writes an object."""
    arguments = {}
    if config.writes.storage_class:
        arguments["StorageClass"] = config.writes.storage_class
    if config.writes.sse:
        arguments["ServerSideEncryption"] = config.writes.sse
    if config.writes.sse_kms_key_id:
        arguments["SSEKMSKeyId"] = config.writes.sse_kms_key_id
    return arguments


@dataclasses.dataclass(frozen=True)
class FetchedObject:
    """A whole small object in memory, with what GetObject said about it."""

    body: bytes
    etag: str
    response: dict[str, Any]


class BodyTransport(Protocol):
    """The only calls that move object bodies. Scheduling, progress and integrity never look past
    this interface: Boto3Transport (--engine threads) and CrtTransport (--engine crt) replace each
    other whole. `expected_size` is the listed size, for a timeout that allows for it."""

    def get_object(self, bucket: str, key: str, *, expected_size: int) -> FetchedObject: ...

    def get_range(self, bucket: str, key: str, part: PartRange, *, if_match: str) -> bytes: ...

    def put_object(self, bucket: str, key: str, body: bytes, *, content_md5: str, arguments: dict[str, Any]) -> str: ...

    def upload_part(self, bucket: str, key: str, *, upload_id: str, part_number: int, body: bytes,
                    content_md5: Optional[str], checksum: dict[str, str]) -> str: ...

    # Itself, if it can also send whole objects with no thread waiting on them; else None.
    callbacks: Optional["CallbackTransport"]


class SentRequest(Protocol):
    """A request of a CallbackTransport, in flight."""

    def cancel_if_silent(self, now: float) -> bool: ...


class CallbackTransport(Protocol):
    """The whole-object calls of a BodyTransport, started without waiting: `then(outcome)` runs once
    the request has ended, on a thread of the transport's own where nothing may wait, and
    `outcome()` returns what the blocking call would have returned, or raises what it would have
    raised. Each returns the request in flight, for a watchdog to cancel if it falls silent."""

    def start_get_object(self, bucket: str, key: str, *, expected_size: int,
                         then: Callable[[Callable[[], FetchedObject]], None]) -> SentRequest: ...

    def start_put_object(self, bucket: str, key: str, body: bytes, *, content_md5: str, arguments: dict[str, Any],
                         then: Callable[[Callable[[], str]], None]) -> SentRequest: ...


def exact_length(body: bytes, expected: int) -> bytes:
    """A GetObject body, insisting on the length S3 promised: a short body is retried."""
    if len(body) != expected:
        raise BodyMismatch(f"expected {expected} bytes, received {len(body)}")
    return body


def read_exact(response: dict[str, Any], expected: int) -> bytes:
    """Read a boto3 GetObject body whole, of exactly the length S3 promised."""
    return exact_length(response["Body"].read(), expected)


class Boto3Transport:
    """BodyTransport over two boto3 clients: GETs with the source's, PUTs with the destination's."""

    callbacks = None

    def __init__(self, source_client: Any, destination_client: Any) -> None:
        self._source = source_client
        self._destination = destination_client

    def get_object(self, bucket: str, key: str, *, expected_size: int) -> FetchedObject:
        response = self._source.get_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        body = read_exact(response, response["ContentLength"])
        return FetchedObject(body=body, etag=response["ETag"], response=response)

    def get_range(self, bucket: str, key: str, part: PartRange, *, if_match: str) -> bytes:
        response = self._source.get_object(
            Bucket=bucket, Key=key, Range=f"bytes={part.start}-{part.end}", IfMatch=if_match
        )
        return read_exact(response, part.size)

    def put_object(self, bucket: str, key: str, body: bytes, *, content_md5: str, arguments: dict[str, Any]) -> str:
        return self._destination.put_object(
            Bucket=bucket, Key=key, Body=body, ContentMD5=content_md5, **arguments
        )["ETag"]

    def upload_part(self, bucket: str, key: str, *, upload_id: str, part_number: int, body: bytes,
                    content_md5: Optional[str], checksum: dict[str, str]) -> str:
        md5 = {"ContentMD5": content_md5} if content_md5 else {}
        return self._destination.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=part_number, Body=body, **md5, **checksum,
        )["ETag"]


# -- the crt engine: the same four calls through AWS's C runtime ------------------------------

ENGINES = ("auto", "threads", "crt")


# The crt client hands over a body only when the whole of it has arrived, and reports nothing while
# one is sent: silence is expected for as long as the body takes at this (slow) rate, on top of
# --read-timeout, before a request counts as stalled.
CRT_SLOWEST_EXPECTED_RATE = 1 * MiB  # bytes per second


# awscrt's own errors for a request it gave up on while S3 refused it as busy, when it does not hand
# over S3's answer itself: read as that answer's status, so that Retries sends the request again.
CRT_BUSY_ERRORS = {"AWS_ERROR_S3_SLOW_DOWN": 503, "AWS_ERROR_S3_INTERNAL_ERROR": 500}


@dataclasses.dataclass(frozen=True)
class EngineChoice:
    """Which engine moves the bodies (--engine), for whole objects (below --multipart-threshold) and
    for parts, and why, for the log and the final report."""

    whole_objects: str  # "threads" or "crt"
    parts: str
    reason: str

    def describe(self) -> str:
        if self.whole_objects == self.parts:
            return f"the {self.parts} engine"
        return f"the {self.whole_objects} engine for whole objects and the {self.parts} engine for parts"


# The crt engine's S3Client takes a retry_config (awscrt 0.37) and a connect_timeout_ms (0.38);
# requirements.txt asks for such an awscrt, but one installed otherwise may be older.
CRT_ENGINE_AWSCRT = (0, 38)


def awscrt_too_old(version: str) -> bool:
    """Whether an awscrt of this version lacks what the crt engine uses."""
    numbers = re.match(r"(\d+)\.(\d+)", version)
    return numbers is not None and (int(numbers[1]), int(numbers[2])) < CRT_ENGINE_AWSCRT


def crt_unavailable(sides: Iterable[ConnectedSide]) -> str:
    """Why the crt engine cannot serve these sides, as a clause; "" when it can."""
    try:
        import awscrt.s3  # noqa: F401 - only whether it imports
    except ImportError:
        return "awscrt is not installed (pip install -r requirements.txt installs it)"
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):  # run from a source tree: trust it
        version = importlib.metadata.version("awscrt")
        if awscrt_too_old(version):
            return (f"awscrt {version} is older than {'.'.join(map(str, CRT_ENGINE_AWSCRT))}, which the crt engine "
                    "needs (pip install -r requirements.txt upgrades it)")
    for side in sides:
        # botocore honours HTTPS_PROXY/HTTP_PROXY; awscrt's S3 client in Python takes no proxy.
        if botocore.utils.get_environ_proxies(side.objects_url):
            return f"the {side.access.role} endpoint is reached through a proxy (HTTPS_PROXY), which awscrt's S3 " \
                   "client cannot use"
    return ""


def choose_engine(requested: str, sides: Iterable[ConnectedSide]) -> EngineChoice:
    """--engine. "auto" takes crt for whole objects, where a request's CPU is most of an object's
    cost and crt saves most of it, and threads for parts, where crt saves less and costs more than
    the memory bound allows (awscrt holds each body in C too: see docs/design.md, Engines, and
    bench/README.md). "threads" is always possible."""
    if requested == "threads":
        return EngineChoice("threads", "threads", "as --engine asks")
    missing = crt_unavailable(sides)
    if requested == "crt":
        if missing:
            raise ConfigurationError(f"--engine crt cannot run here: {missing}. Use --engine threads.")
        return EngineChoice("crt", "crt", "as --engine asks")
    if missing:
        return EngineChoice("threads", "threads", f"auto, because {missing}")
    return EngineChoice("crt", "threads", "auto: awscrt is installed")


class HeaderReader:
    """Reads a successful answer's headers into the dict boto3 returns, by the operation's output
    shape in botocore's model: what botocore's parser does, in a fraction of its time, which matters
    when a small object's whole cost is a few requests. Error answers, rare and with an XML body, go
    to botocore's parser itself.

    Like botocore (handle_expires_header), it gives the Expires header raw as ExpiresString too,
    and leaves Expires out when the value is no date rather than failing the answer."""

    CONVERSIONS: dict[str, Callable[[str], Any]] = {
        "integer": int, "long": int, "boolean": lambda value: value.lower() == "true",
        "timestamp": lambda value: parse_timestamp(value),
    }

    def __init__(self, shape: Any) -> None:
        # header -> its members (a model may give one header to two members), each with its conversion
        self._members: dict[str, list[tuple[str, Callable[[str], Any]]]] = {}
        self._prefixes: list[tuple[str, str]] = []  # x-amz-meta- -> Metadata
        for name, member in shape.members.items():
            location, header = member.serialization.get("location"), member.serialization.get("name", "")
            if location == "header":
                self._members.setdefault(header.lower(), []).append(
                    (name, self.CONVERSIONS.get(member.type_name, str)))
            elif location == "headers":
                self._prefixes.append((header.lower(), name))
        expires = shape.members.get("Expires")
        if (expires is not None and expires.serialization.get("location") == "header"
                and expires.serialization.get("name") == "Expires" and RAW_EXPIRES not in shape.members):
            self._members["expires"].append((RAW_EXPIRES, str))

    def read(self, headers: list[tuple[str, str]]) -> dict[str, Any]:
        parsed: dict[str, Any] = {prefix_member: {} for _, prefix_member in self._prefixes}
        for header, value in headers:
            lowered = header.lower()
            members = self._members.get(lowered)
            if members is not None:
                for name, convert in members:
                    try:
                        parsed[name] = convert(value)
                    except (ValueError, RuntimeError):
                        if name != "Expires":
                            raise
                continue
            for prefix, prefix_member in self._prefixes:
                if lowered.startswith(prefix):
                    parsed[prefix_member][header[len(prefix):]] = value
        return parsed


class HeaderWriter:
    """Writes a request's headers and query string from its parameters by the operation's input
    shape in botocore's model, as botocore's rest-xml serializer does for the kinds of value this
    tool sends (strings, integers, booleans, user metadata), in a fraction of its time. Any other
    kind of value (a timestamp, a list), and a parameter the installed botocore's model lacks, sends
    the whole request through botocore's serializer itself, which refuses what boto3 would refuse
    (give it a validating one). The raw Expires (RAW_EXPIRES) is written as it is, either way."""

    SIMPLE_TYPES = frozenset({"string", "integer", "long", "boolean"})

    def __init__(self, model: Any, serializer: Any) -> None:
        self._model = model
        self._serializer = serializer
        # parameter -> (location, name on the wire, type); location "" leaves the request to botocore
        self._members: dict[str, tuple[str, str, str]] = {}
        for name, member in model.input_shape.members.items():
            location = member.serialization.get("location", "")
            if member.type_name == "map":
                written_here = location == "headers"
            else:
                written_here = (member.type_name in self.SIMPLE_TYPES and location in ("header", "querystring")
                                and not member.serialization.get("jsonvalue"))
            self._members[name] = (location if written_here else "", member.serialization.get("name", name),
                                   member.type_name)
        expires = model.input_shape.members.get("Expires")
        self._raw_expires_header = expires.serialization.get("name", "Expires") if (
            expires is not None and expires.serialization.get("location") == "header") else None
        if self._raw_expires_header is not None:
            self._members[RAW_EXPIRES] = ("header", self._raw_expires_header, "string")

    def write(self, bucket: str, key: str, parameters: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        headers: dict[str, Any] = {}
        query: dict[str, Any] = {}
        for name, value in parameters.items():
            if value is None:
                continue
            location, wire_name, type_name = self._members.get(name, ("", name, ""))
            if location in ("header", "querystring"):
                if type_name == "boolean":
                    value = str(value).lower()
                elif location == "header":
                    value = str(value)
                (headers if location == "header" else query)[wire_name] = value
            elif location == "headers":
                headers.update((wire_name + suffix, text) for suffix, text in value.items())
            else:
                return self._serialized(bucket, key, parameters)
        return headers, query

    def _serialized(self, bucket: str, key: str, parameters: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        modelled = {name: value for name, value in parameters.items() if value is not None}  # None: not given
        raw_expires = modelled.pop(RAW_EXPIRES, None) if self._raw_expires_header else None
        serialized = self._serializer.serialize_to_request({"Bucket": bucket, "Key": key, **modelled}, self._model)
        if raw_expires is not None:
            serialized["headers"][self._raw_expires_header] = raw_expires
        return serialized["headers"], serialized["query_string"]


class CrtAnswer:
    """What the crt client reported of one request, gathered from its callbacks (on its own threads)."""

    def __init__(self) -> None:
        self.last_heard = time.monotonic()
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.chunks: list[bytes] = []

    def on_headers(self, status_code: int, headers: list[tuple[str, str]], **_: Any) -> None:
        self.status = status_code
        self.headers = headers
        self.last_heard = time.monotonic()

    def on_body(self, chunk: bytes, **_: Any) -> None:
        self.chunks.append(chunk)
        self.last_heard = time.monotonic()

    def body(self) -> bytes:
        return self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)


class CrtSideClient:
    """One side's awscrt S3Client, which signs (SigV4, in C), pools connections and retries
    (5xx, SlowDown, dropped connections) on its own threads, one request at a time as we ask: never
    split into parts of its own, so the part plan, ETags and resume stay ours.

    What it must agree on with boto3 it takes from botocore: the bucket's URL as botocore resolved
    it, the side's credentials (a delegate provider for refreshable ones, so a role botocore renews
    is used at once), its model for the headers sent (HeaderWriter) and the answers read
    (HeaderReader), and its parser for error answers, so that headers sent and answers read, errors
    included, are the very ones of the threads engine.
    """

    def __init__(self, side: ConnectedSide, *, read_timeout: float) -> None:
        from awscrt import auth, s3
        from awscrt import io as crt_io

        url = urllib.parse.urlsplit(side.objects_url)
        self.side = side
        self._host = url.netloc
        self._path = url.path
        # What the boto3 clients add to every request (_declare_request_payer), signed by the crt client.
        self._declared = [("x-amz-request-payer", side.access.request_payer)] if side.access.request_payer else []
        self.read_timeout = read_timeout
        self._credentials = side.credentials
        self._credentials_failure: Optional[BaseException] = None
        self._renewal = (RoleRenewalOnExpiry(side.credentials, role=side.access.role)
                         if isinstance(side.credentials, RenewableRoleCredentials) else None)
        tls_options = None
        if url.scheme == "https":
            tls = crt_io.TlsContextOptions()
            if side.ca_bundle:
                tls.override_default_trust_store_from_path(ca_filepath=side.ca_bundle)
            tls_options = crt_io.ClientTlsContext(tls).new_connection_options()
        if isinstance(side.credentials, botocore.credentials.RefreshableCredentials):
            provider = auth.AwsCredentialsProvider.new_delegate(self._current_credentials)
            keep_delegate_failures_off_stderr()
        else:  # keys that never change: signing need not call into Python for each request
            frozen = side.credentials.get_frozen_credentials()
            provider = auth.AwsCredentialsProvider.new_static(frozen.access_key, frozen.secret_key, frozen.token)
        self._client = s3.S3Client(
            region=side.region,
            tls_mode=s3.S3RequestTlsMode.ENABLED if url.scheme == "https" else s3.S3RequestTlsMode.DISABLED,
            tls_connection_options=tls_options,
            signing_config=s3.create_default_s3_signing_config(region=side.region, credential_provider=provider),
            # As many attempts as the side's boto3 client makes (the user's AWS_MAX_ATTEMPTS, if set), but
            # at least two: awscrt reads max_retries=0 as its default of 5.
            retry_config=s3.S3RetryConfig(
                max_retries=max(side.client.meta.config.retries["total_max_attempts"] - 1, 1)),
            connect_timeout_ms=10_000,
        )
        self._service = side.client.meta.service_model
        # Validating, as boto3's own: HeaderWriter hands it only what it does not write itself.
        serializer = botocore.serialize.create_serializer("rest-xml", include_validation=True)
        self._parser = quick_timestamps_parsers().create_parser("rest-xml")
        operations = ("GetObject", "PutObject", "UploadPart")
        self._writers = {name: HeaderWriter(self._service.operation_model(name), serializer) for name in operations}
        self._readers = {name: HeaderReader(self._service.operation_model(name).output_shape) for name in operations}

    def _current_credentials(self) -> Any:
        from awscrt import auth

        try:
            frozen = self._credentials.get_frozen_credentials()
        except Exception as error:  # noqa: BLE001 - raised again in the workers that wait (see _exchange)
            self._credentials_failure = error
            raise
        self._credentials_failure = None
        return auth.AwsCredentials(frozen.access_key, frozen.secret_key, frozen.token or None)

    def send(self, operation: str, bucket: str, key: str, parameters: dict[str, Any], *,
             body: Optional[bytes] = None, expected_size: int = 0,
             then: Optional[Callable[["CrtExchange"], None]] = None) -> "CrtExchange":
        """Start one request and return at once; `then(exchange)` runs when it has ended, on crt's
        event-loop thread (where nothing may wait on crt), or in this thread if it ended at once."""
        from awscrt import http, s3

        written_headers, query = self._writers[operation].write(bucket, key, parameters)
        path = self._path + botocore.utils.percent_encode(key, safe="/~")
        if query:
            path += "?" + botocore.utils.percent_encode_sequence(query)
        headers = [("Host", self._host), *self._declared,
                   *((name, str(value)) for name, value in written_headers.items())]
        if body is not None:
            headers.append(("Content-Length", str(len(body))))
        exchange = CrtExchange(self, operation, allowed_silence=self.read_timeout + max(
            len(body or b""), expected_size) / CRT_SLOWEST_EXPECTED_RATE)
        request = http.HttpRequest(self._service.operation_model(operation).http["method"], path,
                                   http.HttpHeaders(headers), io.BytesIO(body) if body is not None else None)
        if self.side.pace is not None:  # never in a callback: a paced run has no SmallObjectPipeline
            self.side.pace()
        exchange.sent = self._client.make_request(
            type=s3.S3RequestType.DEFAULT, request=request, operation_name=operation,
            on_headers=exchange.answer.on_headers, on_body=exchange.answer.on_body)
        if then is not None:
            exchange.sent.finished_future.add_done_callback(lambda finished: exchange.end(finished, then))
        return exchange

    def request(self, operation: str, bucket: str, key: str, parameters: dict[str, Any], *,
                body: Optional[bytes] = None, expected_size: int = 0) -> tuple[dict[str, Any], bytes]:
        """Send one request and wait for it: its answer as boto3 would return it (less the body) and
        its body. An error answer raises botocore's ClientError; an expired role session is renewed
        and the request sent again."""
        for attempt in range(1, RoleRenewalOnExpiry.ATTEMPTS + 1):
            generation = getattr(self._credentials, "generation", 0)
            exchange = self.send(operation, bucket, key, parameters, body=body, expected_size=expected_size)
            exchange.wait()
            try:
                return exchange.result()
            except botocore.exceptions.ClientError as error:
                if not (self._renewal and attempt < RoleRenewalOnExpiry.ATTEMPTS
                        and self._renewal.renew_if_expired(error_code(error), generation)):
                    raise
        raise AssertionError("unreachable")

    def answer_of(self, operation: str, status: int, headers: list[tuple[str, str]],
                  body: bytes) -> tuple[dict[str, Any], bytes]:
        """An answer as boto3 would return it (less the body) and its body; an error answer raises
        botocore's ClientError, parsed as boto3 parses it."""
        if status < 300:
            return self._readers[operation].read(headers), body
        output_shape = self._service.operation_model(operation).output_shape
        parsed = self._parser.parse({"status_code": status, "headers": botocore.awsrequest.HeadersDict(headers),
                                     "body": body}, output_shape)
        raise botocore.exceptions.ClientError(parsed, operation)

    def failure_of(self, operation: str, error: BaseException) -> tuple[int, list[tuple[str, str]], bytes]:
        """The S3 answer (status, headers, body) of a request that awscrt ended with `error`; raises
        what it came to when S3 did not answer."""
        from awscrt import exceptions, s3

        if isinstance(error, s3.S3ResponseError):
            return error.status_code, error.headers or [], error.body or b""
        # The CRT says only that signing failed, not why, nor for which request: every request
        # that fails while the last attempt to get credentials failed is told that reason,
        # until an attempt succeeds (a renewed role), rather than a bare transport error.
        if self._credentials_failure is not None:
            raise self._credentials_failure
        name = error.name if isinstance(error, exceptions.AwsCrtError) else type(error).__name__
        if name in CRT_BUSY_ERRORS:
            return CRT_BUSY_ERRORS[name], [], b""
        raise TransportError(f"{operation} to the {self.side.access.role} endpoint failed: {name}: {error}")


class CrtExchange:
    """One request sent through a CrtSideClient: its answer as it arrives, and its outcome once it
    has ended (result(): the answer, or the exception it came to). A request held open but silent,
    which awscrt would wait out for ever, is cancelled (cancel_if_silent) and given up like
    botocore's read timeout: every call sent this way is idempotent, so the caller may send it again."""

    def __init__(self, client: CrtSideClient, operation: str, *, allowed_silence: float) -> None:
        self.client = client
        self.operation = operation
        self.answer = CrtAnswer()
        self.allowed_silence = allowed_silence
        self.sent: Any = None  # the awscrt S3Request, until end() lets go of it
        self._error: Optional[BaseException] = None  # what it ended with, once end() has let go of it
        self._silence = 0.0  # how long it had been silent when cancelled; 0 while not

    def end(self, finished: "concurrent.futures.Future[None]", then: Callable[["CrtExchange"], None]) -> None:
        """The request has ended: its outcome kept and the request let go of (its callbacks refer
        back to this exchange, a cycle that only the garbage collector would free, with the bodies in
        it), then `then(self)`."""
        self._error = finished.exception()
        self.sent = None
        then(self)

    def cancel_if_silent(self, now: float) -> bool:
        """Cancel the request if nothing was heard of it for longer than allowed; whether it was."""
        sent = self.sent
        silence = now - self.answer.last_heard
        if sent is None or silence < self.allowed_silence or sent.finished_future.done():
            return False
        self._silence = silence
        sent.cancel()
        return True

    def wait(self) -> None:
        """Wait for the request to end, cancelling it once it has been silent for too long."""
        finished = self.sent.finished_future
        while not finished.done():
            if self.cancel_if_silent(time.monotonic()):
                finished.exception()
                return
            silence = time.monotonic() - self.answer.last_heard
            with contextlib.suppress(concurrent.futures.TimeoutError):  # woken to look at the silence again
                finished.exception(timeout=max(self.allowed_silence - silence, 0.01))

    def result(self) -> tuple[dict[str, Any], bytes]:
        """The answer of the ended request, as CrtSideClient.request returns it, or its exception."""
        error = self._error if self.sent is None else self.sent.finished_future.exception()
        if error is None:
            return self.client.answer_of(self.operation, self.answer.status, self.answer.headers, self.answer.body())
        if self._silence:
            raise TransportError(f"{self.operation}: no answer from the {self.client.side.access.role} endpoint "
                                 f"for {self._silence:.0f} s (--read-timeout {self.client.read_timeout:g} s)")
        return self.client.answer_of(self.operation, *self.client.failure_of(self.operation, error))


def keep_delegate_failures_off_stderr() -> None:
    """awscrt reports an exception raised in a delegate credentials provider as "unraisable", which
    Python prints as a traceback on stderr. Ours is kept and raised again in the workers whose
    requests it failed (CrtSideClient._exchange), where it becomes one sentence, so only those are
    kept quiet; anything else unraisable goes to the hook that was in place, which reports it. Once
    in place, not again (the hook may have been replaced since, by a host that runs main() itself)."""
    report = sys.unraisablehook
    if getattr(report, "keeps_delegate_failures_quiet", False):
        return

    def hook(unraisable: Any) -> None:
        if getattr(unraisable.object, "__func__", None) is not CrtSideClient._current_credentials:
            report(unraisable)

    hook.keeps_delegate_failures_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


class CrtTransport:
    """BodyTransport over awscrt (--engine crt). Each BodyTransport call blocks its worker while the
    request runs in C, so the thread pool, memory budget, progress and integrity checks are the
    threads engine's, and only the costly part of a request (signing, HTTP, TLS: most of its CPU in
    botocore) leaves Python. It is also a CallbackTransport: SmallObjectPipeline sends whole
    objects with no thread waiting on them."""

    def __init__(self, source: ConnectedSide, destination: ConnectedSide, *, read_timeout: float) -> None:
        self._source = CrtSideClient(source, read_timeout=read_timeout)
        self._destination = CrtSideClient(destination, read_timeout=read_timeout)
        self.callbacks: Optional[CallbackTransport] = self

    def get_object(self, bucket: str, key: str, *, expected_size: int) -> FetchedObject:
        return self._fetched(*self._source.request("GetObject", bucket, key, {"ChecksumMode": "ENABLED"},
                                                   expected_size=expected_size))

    @staticmethod
    def _fetched(response: dict[str, Any], body: bytes) -> FetchedObject:
        return FetchedObject(body=exact_length(body, response["ContentLength"]), etag=response["ETag"],
                             response=response)

    def start_get_object(self, bucket: str, key: str, *, expected_size: int,
                         then: Callable[[Callable[[], FetchedObject]], None]) -> CrtExchange:
        return self._source.send("GetObject", bucket, key, {"ChecksumMode": "ENABLED"}, expected_size=expected_size,
                                 then=lambda sent: then(lambda: self._fetched(*sent.result())))

    def get_range(self, bucket: str, key: str, part: PartRange, *, if_match: str) -> bytes:
        _, body = self._source.request("GetObject", bucket, key,
                                       {"Range": f"bytes={part.start}-{part.end}", "IfMatch": if_match},
                                       expected_size=part.size)
        return exact_length(body, part.size)

    def put_object(self, bucket: str, key: str, body: bytes, *, content_md5: str, arguments: dict[str, Any]) -> str:
        response, _ = self._destination.request("PutObject", bucket, key, {"ContentMD5": content_md5, **arguments},
                                                body=body)
        return response["ETag"]

    def start_put_object(self, bucket: str, key: str, body: bytes, *, content_md5: str, arguments: dict[str, Any],
                         then: Callable[[Callable[[], str]], None]) -> CrtExchange:
        return self._destination.send("PutObject", bucket, key, {"ContentMD5": content_md5, **arguments}, body=body,
                                      then=lambda sent: then(lambda: sent.result()[0]["ETag"]))

    def upload_part(self, bucket: str, key: str, *, upload_id: str, part_number: int, body: bytes,
                    content_md5: Optional[str], checksum: dict[str, str]) -> str:
        md5 = {"ContentMD5": content_md5} if content_md5 else {}
        response, _ = self._destination.request(
            "UploadPart", bucket, key, {"UploadId": upload_id, "PartNumber": part_number, **md5, **checksum}, body=body)
        return response["ETag"]


class SplitTransport:
    """BodyTransport of --engine auto: whole objects through one engine, parts through another."""

    def __init__(self, whole_objects: BodyTransport, parts: BodyTransport) -> None:
        self._whole = whole_objects
        self._parts = parts
        self.callbacks = whole_objects.callbacks

    def get_object(self, bucket: str, key: str, *, expected_size: int) -> FetchedObject:
        return self._whole.get_object(bucket, key, expected_size=expected_size)

    def put_object(self, bucket: str, key: str, body: bytes, *, content_md5: str, arguments: dict[str, Any]) -> str:
        return self._whole.put_object(bucket, key, body, content_md5=content_md5, arguments=arguments)

    def get_range(self, bucket: str, key: str, part: PartRange, *, if_match: str) -> bytes:
        return self._parts.get_range(bucket, key, part, if_match=if_match)

    def upload_part(self, bucket: str, key: str, *, upload_id: str, part_number: int, body: bytes,
                    content_md5: Optional[str], checksum: dict[str, str]) -> str:
        return self._parts.upload_part(bucket, key, upload_id=upload_id, part_number=part_number, body=body,
                                       content_md5=content_md5, checksum=checksum)


def make_transport(choice: EngineChoice, source: ConnectedSide, destination: ConnectedSide,
                   config: RunSettings) -> BodyTransport:
    engines: dict[str, BodyTransport] = {"threads": Boto3Transport(source.client, destination.client)}
    if "crt" in (choice.whole_objects, choice.parts):
        engines["crt"] = CrtTransport(source, destination, read_timeout=config.tuning.read_timeout)
    if choice.whole_objects == choice.parts:
        return engines[choice.parts]
    return SplitTransport(engines[choice.whole_objects], engines[choice.parts])


# =============================================================================================
# 9. Progress and resume
# =============================================================================================

PROGRESS_FORMAT = "s3-bulk-transfer progress, version 1"


def _durable_temporary(path: Path, text: str) -> str:
    """A temporary file beside `path` holding `text`, on disk (fsync) before it is given a name."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:  # mkstemp made it mode 0600
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return temporary


def _sync_directory(path: Path) -> None:
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_atomically(path: Path, text: str) -> None:
    """Replace a file so that it is valid at every instant, even after kill -9 or a power cut:
    write a temporary file in the same directory, fsync it, rename it over, fsync the directory."""
    temporary = _durable_temporary(path, text)
    try:
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _sync_directory(path)


def create_once(path: Path, text: str) -> bool:
    """Create `path` holding `text` unless it exists; False if it did. Of several processes racing
    (the shards of an array job start together) exactly one wins, and no reader ever sees a part of
    the file: the text is written under a temporary name and then hard-linked to `path`, and link(2)
    fails on an existing name, on a local disk as over NFS (EFS), where O_EXCL alone was not atomic
    before NFSv3 and a file created empty would be read half-written."""
    temporary = _durable_temporary(path, text)
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(temporary)
    _sync_directory(path)
    return True


@contextlib.contextmanager
def progress_file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside the progress file while the job runs; the kernel releases it when
    the process ends, even by kill -9. Two runs of one job (a second terminal, a cron job that fires
    while the last one still runs) would copy everything twice and overwrite each other's progress."""
    descriptor = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise ConfigurationError(
            f"Another run is using the progress file {path} right now: let it finish, or stop it (Ctrl-C) "
            "and rerun this command to resume."
        ) from None
    try:
        yield
    finally:
        os.close(descriptor)  # which releases the lock


def remove_temporary_files_of_killed_runs(path: Path) -> None:
    """A run killed between creating a temporary progress file and renaming it leaves the temporary
    file behind (the progress file itself is intact); under the lock, none can be in use."""
    prefix, suffix = f".{path.name}.", ".tmp"
    for name in os.listdir(path.parent):
        if name.startswith(prefix) and name.endswith(suffix):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path.parent / name)
            LOG.info("removed %s, a temporary progress file left by a killed run", name)


class StateStore(Protocol):
    """Where the job's state documents live (the progress files, the shard plan): files on a disk
    (LocalStateFiles) or objects in a bucket (S3StateObjects). Each document is replaced whole, so a
    reader sees the old one or the new one, never a part."""

    def read(self, location: Any, *, what: str) -> Optional[bytes]:
        """The document, None if there is none."""

    def replace(self, location: Any, text: str) -> None:
        """Write the document whole (the run's own, which only this run writes)."""

    def create_once(self, location: Any, text: str) -> bool:
        """Write the document unless it exists; False if it did (another process made it first)."""

    def remove(self, location: Any) -> None:
        """Remove the document, if it is there."""

    def age(self, location: Any) -> Optional[float]:
        """Seconds since the document was last written, None if there is none."""

    def siblings(self, location: Any) -> list[Any]:
        """The documents beside `location` (in its folder) whose names begin with its stem."""

    def held(self, location: Any) -> contextlib.AbstractContextManager[None]:
        """Run the job with this progress document as the only run that writes it."""


class LocalStateFiles:
    """State documents as files, on this machine's disk or a shared one (EFS) that shards on several
    machines reach alike: rewritten atomically (write_atomically), made once by a hard link
    (create_once), one run per progress file by a lock beside it (progress_file_lock)."""

    def read(self, location: Path, *, what: str) -> Optional[bytes]:
        try:
            return read_file_bytes(location, what=what)
        except FileNotFoundError:
            return None

    def replace(self, location: Path, text: str) -> None:
        write_atomically(location, text)

    def create_once(self, location: Path, text: str) -> bool:
        return create_once(location, text)

    def remove(self, location: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            location.unlink()

    def age(self, location: Path) -> Optional[float]:
        try:
            return time.time() - location.stat().st_mtime
        except FileNotFoundError:
            return None

    def siblings(self, location: Path) -> list[Path]:
        return sorted(location.parent.glob(f"{glob.escape(location.stem)}*"))

    @contextlib.contextmanager
    def held(self, location: Path) -> Iterator[None]:
        with progress_file_lock(location):
            remove_temporary_files_of_killed_runs(location)
            yield


LOCAL_STATE_FILES = LocalStateFiles()


class S3StateObjects:
    """State documents as objects in one bucket (--progress-file s3://BUCKET/KEY), for runs with no
    disk that outlives them: a retried AWS Batch child, a rescheduled pod, resumes from there.
    Reached with the destination's credentials and endpoint.

    One PutObject writes a document whole. Each write of a run is conditional on the object being as
    the run last read or wrote it: If-Match with that ETag, If-None-Match: * where it saw none (S3
    API Reference, PutObject: a failed condition is 412 Precondition Failed, an If-Match on a missing
    key 404 NoSuchKey; If-Match needs s3:GetObject besides s3:PutObject). So of two runs of one
    shard, the first to write after the other read makes the other's next write fail, and that run
    stops (StateTakenOver) instead of overwriting the progress of the run that goes on. A write that
    S3 applied but whose answer was lost is sent again by botocore and refused too: an object holding
    exactly the text this run sent tells the two cases apart.

    A server that ignores the conditions (held() checks, with an object of its own) leaves that
    guard out: the run warns once, and writes anyway.
    """

    def __init__(self, side: ConnectedSide) -> None:
        self._side = side
        self._seen: dict[str, Optional[str]] = {}  # key -> ETag this run last read or wrote; None: none there
        self._lost: Optional[StateTakenOver] = None
        self.guarded = True

    def _call(self, operation: Callable[[], T], *, action: str, location: S3StatePath) -> T:
        return self._side.retries.call(operation, what=f"{action} of {location}", retry_bodies=True)

    def _refused(self, error: BaseException, action: str) -> FatalTransferError:
        return FatalTransferError(explain_error(error, access=self._side.access, bucket=self._side.bucket,
                                                action=action))

    def read(self, location: S3StatePath, *, what: str) -> Optional[bytes]:
        client = self._side.client

        def get() -> tuple[bytes, str]:
            answer = client.get_object(Bucket=location.bucket, Key=location.key)
            return answer["Body"].read(), answer["ETag"]

        try:
            body, etag = self._call(get, action="GetObject", location=location)
        except botocore.exceptions.ClientError as error:
            if error_code(error) not in MISSING_OBJECT_CODES:
                raise ConfigurationError(str(self._refused(error, "s3:GetObject"))) from None
            self._seen[location.key] = None
            return None
        self._seen[location.key] = etag
        return body

    def replace(self, location: S3StatePath, text: str) -> None:
        if self._lost is not None:
            LOG.debug("not saving %s: %s", location, self._lost)
            return
        if location.key not in self._seen:
            head = self._head(location)
            self._seen[location.key] = head["ETag"] if head else None
        etag = self._seen[location.key]
        if self._write(location, text, {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}):
            return
        self._lost = StateTakenOver(
            f"Another run of this job wrote its progress at {location} after this run last saved it: two runs of "
            "one shard were going at once (a retried Batch child, or a pod started again while the first still "
            "ran). This run stops so that the two do not overwrite each other's progress; the other goes on. "
            "If none is running any more, rerun this command to resume.")
        raise self._lost

    def create_once(self, location: S3StatePath, text: str) -> bool:
        return self._write(location, text, {"IfNoneMatch": "*"})

    def _write(self, location: S3StatePath, text: str, condition: dict[str, str]) -> bool:
        """PutObject under `condition` (none once the server is known to ignore them); False if the
        condition failed on another writer's object."""
        body = text.encode("utf-8")
        client = self._side.client
        try:
            answer = self._call(lambda: client.put_object(
                Bucket=location.bucket, Key=location.key, Body=body, ContentType="application/json",
                **(condition if self.guarded else {})), action="PutObject", location=location)
        except botocore.exceptions.ClientError as error:
            if error_code(error) not in PRECONDITION_FAILED_CODES | MISSING_OBJECT_CODES:
                raise self._refused(error, "s3:PutObject") from None
            return self.read(location, what="state") == body  # this very text: an answer lost, sent again
        self._seen[location.key] = answer["ETag"]
        return True

    def _head(self, location: S3StatePath) -> Optional[dict[str, Any]]:
        """HeadObject of the document, None if there is none."""
        try:
            return self._call(lambda: self._side.client.head_object(Bucket=location.bucket, Key=location.key),
                              action="HeadObject", location=location)
        except botocore.exceptions.ClientError as error:
            if error_code(error) in MISSING_OBJECT_CODES:
                return None
            raise self._refused(error, "s3:GetObject") from None

    def remove(self, location: S3StatePath) -> None:
        try:
            self._call(lambda: self._side.client.delete_object(Bucket=location.bucket, Key=location.key),
                       action="DeleteObject", location=location)
        except botocore.exceptions.ClientError as error:
            raise self._refused(error, "s3:DeleteObject") from None
        self._seen[location.key] = None

    def age(self, location: S3StatePath) -> Optional[float]:
        head = self._head(location)
        return None if head is None else (datetime.datetime.now(datetime.timezone.utc)
                                          - head["LastModified"]).total_seconds()

    def siblings(self, location: S3StatePath) -> list[S3StatePath]:
        listing = pages(self._side, "list_objects_v2", Bucket=location.bucket,
                        Prefix=location.folder + location.stem, Delimiter="/")
        try:
            keys = [entry["Key"] for page in listing for entry in page.get("Contents", ())]
        except botocore.exceptions.ClientError as error:
            raise ConfigurationError(str(self._refused(error, "s3:ListBucket"))) from None
        return [S3StatePath(location.bucket, key) for key in sorted(keys)]

    @contextlib.contextmanager
    def held(self, location: S3StatePath) -> Iterator[None]:
        self._check_conditions_are_kept(location)
        yield

    def _check_conditions_are_kept(self, location: S3StatePath) -> None:
        """Create an object of this run's own twice with If-None-Match: *: a server that keeps the
        condition refuses the second write, one that ignores it takes both."""
        check = location.with_name(f".{location.name}.check-{uuid.uuid4().hex[:12]}")
        client = self._side.client

        def put() -> None:
            self._call(lambda: client.put_object(Bucket=check.bucket, Key=check.key, Body=b"", IfNoneMatch="*"),
                       action="PutObject", location=check)

        try:
            put()
            put()
            self.guarded = False
        except botocore.exceptions.ClientError as error:
            if error_code(error) not in PRECONDITION_FAILED_CODES:
                raise self._refused(error, "s3:PutObject") from None
        with contextlib.suppress(FatalTransferError):
            self.remove(check)
        if not self.guarded:
            LOG.warning("The server of %s ignores conditional writes (If-None-Match): nothing stops two runs of one "
                        "shard from overwriting each other's progress there, so make sure only one runs at a time; "
                        "and make the shard plan before the shards start (run one shard with --dry-run).", location)


def state_store(location: StateLocation, access: SideAccess, retries: Retries) -> StateStore:
    """The store of a state location: the files on this machine, or a bucket reached with `access`
    (the destination's credentials and endpoint)."""
    if isinstance(location, Path):
        return LOCAL_STATE_FILES
    side = connect_side(dataclasses.replace(access, request_payer=None), location.bucket, max_workers=2,
                        list_prefix=location.folder, retries=retries)
    return S3StateObjects(side)


def in_one_store(first: StateLocation, second: StateLocation) -> bool:
    """Whether two state locations are in one store: both files, or objects in one bucket."""
    if isinstance(first, Path) or isinstance(second, Path):
        return isinstance(first, Path) and isinstance(second, Path)
    return first.bucket == second.bucket


def read_state_document(store: StateStore, location: StateLocation, *, what: str,
                        when_invalid: str) -> Optional[Any]:
    """A state document parsed, None if there is none; unreadable, a sentence."""
    data = store.read(location, what=what)
    if data is None:
        return None
    return parse_json_document(data, where=str(location), what=what, when_invalid=when_invalid)


def read_progress_file(path: StateLocation, store: StateStore = LOCAL_STATE_FILES) -> Optional[dict[str, Any]]:
    """The saved progress, None when there is none; a damaged file is an error, never ignored."""
    data = read_state_document(store, path, what="progress file", when_invalid=(
        "it may have been cut short by a full disk. It was left untouched: move it aside, or rerun with "
        "--restart to discard it and start over."))
    if data is None:
        return None
    if not isinstance(data, dict) or data.get("format") != PROGRESS_FORMAT or not isinstance(data.get("resume"), dict):
        raise ConfigurationError(
            f"The progress file {path} was not written by this tool (or by an incompatible version). It was left "
            "untouched: point --progress-file elsewhere, or rerun with --restart to discard it."
        )
    return data


class RangeProgress:
    """One key range's completion: a watermark ("every key of the range up to and including K is
    done or failed"), the few keys done beyond it while an earlier one is still in flight, and the
    keys listed but not yet settled, in listing order."""

    def __init__(self, key_range: KeyRange, watermark: Optional[str] = None, done_beyond: Iterable[str] = ()) -> None:
        self.key_range = key_range
        self.watermark = watermark
        self.done_beyond = set(done_beyond)
        self.pending: collections.OrderedDict[str, bool] = collections.OrderedDict()  # key -> accounted for

    def start_after(self) -> Optional[str]:
        """Where a rerun's listing of this range starts (exclusive)."""
        return self.watermark or self.key_range.after

    def advance(self) -> bool:
        """Move the watermark past every settled key at the head of the listing; True if it moved."""
        moved = False
        while self.pending:
            key, accounted = next(iter(self.pending.items()))
            if not accounted:
                break
            self.pending.popitem(last=False)
            self.done_beyond.discard(key)
            self.watermark = key
            moved = True
        return moved

    def document(self) -> dict[str, Any]:
        return {"after": self.key_range.after, "through": self.key_range.through, "watermark": self.watermark,
                "done_beyond_watermark": sorted(self.done_beyond)}


class UploadsInFlight:
    """The multipart uploads kept for resume, by source key: each one's record (an UploadRecord's
    document, with the parts S3 confirmed and what it is being completed into) and its digest so
    far. A part of the progress file, under ProgressStore's lock; `changed` tells the store that the
    file needs a save."""

    def __init__(self, saved: dict[str, dict[str, Any]], lock: threading.RLock, changed: Callable[[], None]) -> None:
        self.records: dict[str, dict[str, Any]] = dict(saved)  # serialised as they are, under the lock
        self._digests: dict[str, tuple[str, OrderedDigest]] = {}  # (the identity of its check, the digest)
        self._saved_ids = self.upload_ids()  # of the uploads the file held when last written (or read)
        self._lock = lock
        self._changed = changed

    def record_for(self, key: str) -> Optional[UploadRecord]:
        with self._lock:
            document = self.records.get(key)
            return UploadRecord.from_document(document) if document else None

    def record(self, key: str, upload: UploadRecord, *, digest: Optional[tuple[str, OrderedDigest]] = None) -> None:
        """Keep an upload for resume, and its digest: saved with it each time the file is written, so
        that a rerun goes on hashing after the parts it hashed instead of reading them again."""
        with self._lock:
            self.records[key] = upload.document()
            if digest is not None:
                self._digests[key] = digest
            self._changed()

    def recheck(self, key: str) -> None:
        """The parts of this upload do not make the source: the next attempt compares each with the
        source again, so the digest saved so far, of those very parts, must not be taken up."""
        with self._lock:
            self._digests.pop(key, None)
            if key in self.records:
                self.records[key].pop("digest", None)
                self.records[key]["recheck"] = True
                self._changed()

    def completing(self, key: str, expected: dict[str, Any]) -> None:
        """The upload is about to be completed into this object (see MultipartUploads._completed_before_the_stop)."""
        with self._lock:
            if key in self.records:
                self.records[key]["completing"] = expected
                self._changed()

    def record_part(self, key: str, number: int, etag: str, checksum: Optional[str]) -> None:
        with self._lock:
            if key in self.records:
                self.records[key]["parts"][str(number)] = etag
                if checksum is not None:
                    self.records[key].setdefault("part_checksums", {})[str(number)] = checksum
                self._changed()

    def forget(self, key: str) -> None:
        with self._lock:
            self._digests.pop(key, None)
            if self.records.pop(key, None) is not None:
                self._changed()

    def keys(self) -> list[str]:
        with self._lock:
            return list(self.records)

    def unsaved(self) -> dict[str, dict[str, Any]]:
        """The uploads begun since the file was last written: only this run knows of them."""
        with self._lock:
            return {key: entry for key, entry in self.records.items() if entry.get("upload_id") not in self._saved_ids}

    def upload_ids(self) -> set[Any]:
        return {entry.get("upload_id") for entry in self.records.values()}

    def saved(self, upload_ids: set[Any]) -> None:
        with self._lock:
            self._saved_ids = upload_ids

    def digest_states(self) -> list[tuple[str, str, Optional[dict[str, Any]]]]:
        """Each digest's state, taken outside the lock (a digest waits for the part being hashed)."""
        with self._lock:
            digests = list(self._digests.items())
        return [(key, identity, digest.state()) for key, (identity, digest) in digests]

    def take_digest_states(self, states: list[tuple[str, str, Optional[dict[str, Any]]]]) -> None:
        """Put the states into the records about to be written (under the lock)."""
        for key, identity, state in states:
            if key in self.records and key in self._digests and state is not None:
                self.records[key]["digest"] = {"identity": identity, **state}


class ProgressStore:
    """What is done, in a form that does not grow with the bucket.

    Listing is in key order within each key range (one range unless the listing runs in parallel),
    so completion is a RangeProgress per range; failed keys with their reasons; and every multipart
    upload in flight with its parts and its digest so far. Workers report here under a lock; the main
    thread writes the file (and a worker about to complete an upload: see save). Its size is bounded
    by the ranges and the work in flight, never by the bucket.
    """

    def __init__(self, path: StateLocation, job_identity: dict[str, Any], saved: Optional[dict[str, Any]] = None, *,
                 store: StateStore = LOCAL_STATE_FILES) -> None:
        saved = saved or {}
        resume = saved.get("resume", {})
        totals = saved.get("summary", {})
        self.path = path
        self._store = store
        self.job_identity = job_identity
        self._lock = threading.RLock()
        # A file of one listing (no "ranges", a single watermark in "resume") is one range over every key.
        ranges = resume.get("ranges") or [{"after": None, "through": None, "watermark": resume.get("watermark"),
                                           "done_beyond_watermark": resume.get("done_beyond_watermark", ())}]
        self._split_points: list[str] = [entry["through"] for entry in ranges[:-1]]
        self._ranges = [RangeProgress(KeyRange(entry["after"], entry["through"]), entry.get("watermark"),
                                      entry.get("done_beyond_watermark", ())) for entry in ranges]
        self._failed: dict[str, str] = dict(resume.get("failed", {}))
        self.uploads = UploadsInFlight(resume.get("multipart_uploads", {}), self._lock, self._touch)
        # One writer at a time, in the order their texts were made. Re-entrant: the second Ctrl-C's
        # handler saves on the main thread, which it may have interrupted in the middle of a save.
        self._writing = threading.RLock()
        self._listing_complete = False
        self._objects_done = int(totals.get("objects_done", 0))
        self._bytes_done = int(totals.get("bytes_done", 0))
        self._first_started = totals.get("first_started_at") or _utc_now()
        self._state = "running"
        self._last_save = 0.0
        self._dirty = True

    @classmethod
    def open(cls, path: StateLocation, job_identity: dict[str, Any], *, restart: bool,
             store: StateStore = LOCAL_STATE_FILES) -> "ProgressStore":
        """Load the progress of this job, refusing a file that belongs to another one."""
        saved = None if restart else read_progress_file(path, store)
        if saved is not None and saved.get("job") != job_identity:
            theirs = saved.get("job", {})
            # Name only what differs: two jobs between the same buckets may differ in endpoint alone.
            differences = "; ".join(
                f"{name.replace('_', ' ')} {theirs.get(name)!r} there, {job_identity.get(name)!r} here"
                for name in sorted(set(theirs) | set(job_identity)) if theirs.get(name) != job_identity.get(name)
            )
            raise ConfigurationError(
                f"The progress file {path} belongs to another job ({theirs.get('source')} -> "
                f"{theirs.get('destination')}; {differences}). Use another --progress-file for this job, or "
                "rerun with --restart to discard that progress and start over."
            )
        return cls(path, job_identity, saved, store=store)

    # -- what workers and the scheduler report ---------------------------------------------

    def splittable(self) -> bool:
        """Whether the job has not started, so that it may still be cut into ranges: a job that has
        keeps its own, whatever --list-concurrency a rerun gives."""
        with self._lock:
            return len(self._ranges) == 1 and not any(state.watermark or state.done_beyond for state in self._ranges)

    def split(self, split_points: list[str]) -> None:
        """Cut a job that has not started into ranges at these points."""
        self.take_ranges(key_ranges(split_points))

    def take_ranges(self, ranges: list[KeyRange]) -> None:
        """Make a job that has not started these adjacent ranges: the whole keyspace, or a shard's
        share of it (a key outside them is never listed, so never reported)."""
        with self._lock:
            assert self.splittable(), "a started job keeps its ranges"
            self._split_points = [key_range.through for key_range in ranges[:-1]]  # type: ignore[misc]
            self._ranges = [RangeProgress(key_range) for key_range in ranges]
            self._dirty = True

    def key_ranges(self) -> list[KeyRange]:
        with self._lock:
            return [state.key_range for state in self._ranges]

    def listing_plan(self) -> list[tuple[KeyRange, Optional[str]]]:
        """Each range, with where a rerun's listing of it starts (exclusive)."""
        with self._lock:
            return [(state.key_range, state.start_after()) for state in self._ranges]

    def _range_of(self, key: str) -> RangeProgress:
        return self._ranges[range_index(self._split_points, key)]

    def retry_keys(self) -> list[str]:
        """Failed keys the listing will not see again (at or before their range's watermark): retried first."""
        with self._lock:
            return sorted(key for key in self._failed
                          if (watermark := self._range_of(key).watermark) is not None and key <= watermark)

    def is_done_beyond_watermark(self, key: str) -> bool:
        with self._lock:
            return key in self._range_of(key).done_beyond

    def counts_as_done(self, key: str) -> bool:
        """Whether the file counts `key` as copied: beyond its range's watermark as done, or at or
        before the watermark and not failed."""
        with self._lock:
            state = self._range_of(key)
            return key in state.done_beyond or (state.watermark is not None and key <= state.watermark
                                                and key not in self._failed)

    def listed(self, key: str, *, already_done: bool = False) -> None:
        with self._lock:
            state = self._range_of(key)
            state.pending[key] = already_done
            self._dirty |= state.advance()

    def mark_done(self, key: str, size: int) -> None:
        with self._lock:
            self._objects_done += 1
            self._bytes_done += size
            self._failed.pop(key, None)
            state = self._range_of(key)
            if key in state.pending:
                state.done_beyond.add(key)  # until the watermark passes it, which _settle may do at once
            self._settle(key)

    def mark_failed(self, key: str, reason: str) -> None:
        with self._lock:
            self._failed[key] = reason
            self._settle(key)

    def vanished(self, key: str) -> None:
        """A key deleted from the source since it was listed or failed: nothing left to do for it."""
        with self._lock:
            self._failed.pop(key, None)
            self._settle(key)

    def listing_finished(self) -> None:
        with self._lock:
            self._listing_complete = True
            self._dirty = True

    def _settle(self, key: str) -> None:
        state = self._range_of(key)
        if key in state.pending:
            state.pending[key] = True
            state.advance()
        self._dirty = True

    def _touch(self) -> None:
        self._dirty = True

    def failures(self) -> dict[str, str]:
        with self._lock:
            return dict(self._failed)

    # -- the file --------------------------------------------------------------------------

    def totals(self) -> tuple[int, int]:
        """Objects and bytes done over every run of this job."""
        with self._lock:
            return self._objects_done, self._bytes_done

    def finish(self, state: str, this_run: dict[str, Any]) -> None:
        with self._lock:
            self._state = state
        self.save(this_run)

    def save_if_due(self, this_run: dict[str, Any]) -> None:
        since = time.monotonic() - self._last_save
        if (self._dirty and since >= PROGRESS_SAVE_INTERVAL) or since >= PROGRESS_HEARTBEAT_SECONDS:
            self.save(this_run)

    def save(self, this_run: dict[str, Any]) -> None:
        """Write the file now. The main thread saves; so does a worker about to complete an upload,
        which must not go on before the file says what it is completing (the one exception to a
        single writer, for that reason): writes are one at a time and in order, so a later state is
        never overwritten by an earlier one."""
        with self._writing:
            # The digests first, outside the lock (a digest waits for the part being hashed): each part
            # is recorded before it is hashed, so the records read next cover every part hashed here.
            states = self.uploads.digest_states()
            with self._lock:  # serialised under the lock: workers add parts to the dicts being written
                self.uploads.take_digest_states(states)
                text = json.dumps(self._document(this_run), indent=2, ensure_ascii=False) + "\n"
                written = self.uploads.upload_ids()
                self._dirty = False
                self._last_save = time.monotonic()
            self._store.replace(self.path, text)
            self.uploads.saved(written)

    def _document(self, this_run: dict[str, Any]) -> dict[str, Any]:
        """Summary first, so `cat transfer_progress.json` reads top-down; resume state after."""
        return {
            "format": PROGRESS_FORMAT,
            "summary": {
                "state": self._state,
                "source": self.job_identity["source"],
                "destination": self.job_identity["destination"],
                "objects_done": self._objects_done,
                "bytes_done": self._bytes_done,
                "bytes_done_human": format_size(self._bytes_done),
                "objects_failed": len(self._failed),
                "multipart_uploads_in_flight": len(self.uploads.records),
                "this_run": this_run,
                "first_started_at": self._first_started,
                "updated_at": _utc_now(),
            },
            "job": self.job_identity,
            "resume": {
                "listing_complete": self._listing_complete,
                "ranges": [state.document() for state in self._ranges],
                "failed": dict(sorted(self._failed.items())),
                "multipart_uploads": self.uploads.records,
            },
        }


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def discard_progress(path: StateLocation, destination: ConnectedSide, store: StateStore = LOCAL_STATE_FILES) -> None:
    """--restart: abort the uploads the old progress file was keeping for resume, then remove it,
    so starting over orphans nothing."""
    try:
        saved = read_progress_file(path, store)
    except ConfigurationError:
        saved = {}  # damaged: nothing in it can be aborted, and it goes all the same
    if saved is None:
        return
    abort_uploads(saved.get("resume", {}).get("multipart_uploads") or {}, destination, why="--restart")
    store.remove(path)
    LOG.info("--restart: discarded the progress file %s", path)


def abort_uploads(uploads: dict[str, dict[str, Any]], destination: ConnectedSide, *, why: str) -> None:
    """Abort these uploads (source key -> their record), saying in the log which could not be."""
    for key, entry in uploads.items():
        try:
            destination.retries.call(lambda: destination.client.abort_multipart_upload(
                Bucket=destination.bucket, Key=entry["destination_key"], UploadId=entry["upload_id"]
            ), what=f"AbortMultipartUpload of {entry['destination_key']}")
            LOG.info("%s: aborted the unfinished upload of %s", why, json.dumps(key, ensure_ascii=False))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError, KeyError) as error:
            LOG.warning("%s: could not abort the unfinished upload of %s (%s)", why,
                        json.dumps(key, ensure_ascii=False), error_code(error) or error)


# -- the plan that shards share ------------------------------------------------------------
#
# Shards of key ranges list only their own share of the bucket, so together they make one listing's
# worth of ListObjectsV2 calls. For that they must agree on the ranges, whenever each of them starts:
# the first to start writes the plan beside the progress files, once (create_once), and every other
# shard, and every rerun, reads that plan instead of cutting the keyspace again.

SHARD_PLAN_FORMAT = "s3-bulk-transfer shard plan, version 1"


def shard_plan_name(progress_file: StateLocation, count: int) -> StateLocation:
    """transfer_progress.json -> transfer_progress.plan-of-8-shards.json, beside the shards' files."""
    return progress_file.with_name(f"{progress_file.stem}.plan-of-{count}-shards{progress_file.suffix}")


def shard_plan_identity(config: RunSettings) -> dict[str, Any]:
    """What a plan is of: a keyspace (the source and its prefix), cut for a number of shards."""
    assert config.job.shard is not None
    return {"source": str(config.job.source),
            "source_endpoint_url": canonical_endpoint(config.job.source_access.endpoint_url),
            "shards": config.job.shard.count}


def read_shard_plan(path: StateLocation, config: RunSettings, store: StateStore) -> Optional[ShardPlan]:
    """The plan the shards of this job share, None if no shard has made it yet."""
    data = read_state_document(store, path, what="shard plan", when_invalid=(
        "it was not written by this tool. Move it aside, or give this job another --shard-plan; every "
        "shard of the job must then use the new one"))
    if data is None:
        return None
    if not isinstance(data, dict) or data.get("format") != SHARD_PLAN_FORMAT:
        raise ConfigurationError(f"The shard plan {path} was not written by this tool (or by an incompatible "
                                 "version). It was left untouched: give this job another --shard-plan.")
    if data.get("job") != shard_plan_identity(config):
        raise ConfigurationError(
            f"The shard plan {path} is for {data.get('job', {}).get('source')} in "
            f"{data.get('job', {}).get('shards')} shards, not {config.job.source} in {config.job.shard.count}: "
            "give this job another --shard-plan (or another --progress-file folder).")
    try:
        return ShardPlan.from_document(data["plan"])
    except (KeyError, TypeError, ValueError) as error:
        raise ConfigurationError(f"The shard plan {path} is damaged ({error}). Move it aside only if no shard "
                                 "has started yet: the shards' progress files follow its ranges.") from None


def shard_plan_for(config: RunSettings, source: ConnectedSide, store: StateStore) -> ShardPlan:
    """The job's shard plan: read if a shard (or a dry run) made it before; else made here by the
    first shard to claim the making, while the others wait for it. The claim only saves the others'
    ListObjectsV2 calls (a thousand shards cutting the bucket each would cost a listing's worth):
    the plan is whichever was written first, and a claim left by a shard that died is ignored
    once it is PLAN_WAIT_SECONDS old."""
    assert config.job.shard is not None and config.output.shard_plan_file is not None
    path = config.output.shard_plan_file
    plan = read_shard_plan(path, config, store)
    if plan is not None:
        return announced_plan(plan, config)
    claim = path.with_name(f".{path.name}.planning")
    claimed = store.create_once(claim, json.dumps({"shard": str(config.job.shard), "host": socket.gethostname(),
                                             "pid": os.getpid(), "at": _utc_now()}) + "\n")
    if not claimed:
        plan = wait_for_shard_plan(path, claim, config, store)
    if plan is None:
        plan = make_shard_plan(path, config, source, store)
    if claimed:
        store.remove(claim)
    return announced_plan(plan, config)


PLAN_WAIT_SECONDS = 120.0  # a plan takes a few ListObjectsV2 pages: a claim this old was left by a crash
PLAN_POLL_SECONDS = 0.5


def wait_for_shard_plan(path: StateLocation, claim: StateLocation, config: RunSettings,
                        store: StateStore) -> Optional[ShardPlan]:
    """The plan another shard is making, once it is written; None if its claim grows stale first."""
    LOG.info("waiting for the shard plan %s, which another shard is making", path)
    while True:
        plan = read_shard_plan(path, config, store)
        if plan is not None:
            return plan
        age = store.age(claim)
        if age is None:  # its maker is done: the plan is there, or it failed to make one
            return read_shard_plan(path, config, store)
        if age > PLAN_WAIT_SECONDS:
            LOG.warning("no shard plan %s after %.0f s: the shard that claimed the making stopped; making it here",
                        path, age)
            return None
        time.sleep(PLAN_POLL_SECONDS)


def make_shard_plan(path: StateLocation, config: RunSettings, source: ConnectedSide, store: StateStore) -> ShardPlan:
    """Cut the source's keyspace for the shards and write the plan once; if another shard wrote
    one first, that one is the plan."""
    assert config.job.shard is not None
    count = config.job.shard.count
    prefix = config.job.source.prefix
    # As many ranges per shard as it has listers: each range costs at most one page that a single
    # stream would not have needed.
    points = listing_split_points(config, source, count * max(1, config.tuning.list_concurrency))
    made = plan_shards([point[len(prefix):] for point in points], count)
    text = json.dumps({"format": SHARD_PLAN_FORMAT, "job": shard_plan_identity(config), "made_at": _utc_now(),
                       "plan": made.document()}, indent=2, ensure_ascii=False) + "\n"
    if not store.create_once(path, text):
        theirs = read_shard_plan(path, config, store)
        assert theirs is not None
        return theirs
    LOG.info("made the shard plan %s: %s", path, f"{len(made.owners)} key ranges over {count} shards"
             if not made.by_hash else f"too few folders to cut {count} ways, so a hash of each key")
    return made


def announced_plan(plan: ShardPlan, config: RunSettings) -> ShardPlan:
    assert config.job.shard is not None
    if not plan.by_hash:
        LOG.info("shard %s lists %d of the %d key ranges of %s", config.job.shard,
                 len(plan.ranges_of(config.job.shard.index)), len(plan.owners), config.output.shard_plan_file)
    return plan


def follow_shard_plan(progress: ProgressStore, own_ranges: list[KeyRange], config: RunSettings) -> None:
    """Give a new shard's progress its share of the plan; a started one must have that very share."""
    if progress.splittable():
        progress.take_ranges(own_ranges)
    elif progress.key_ranges() != own_ranges:
        raise ConfigurationError(
            f"The progress file {config.output.progress_file} follows other key ranges than the shard plan "
            f"{config.output.shard_plan_file} gives shard {config.job.shard}: the plan was replaced after this "
            "shard started. Put the plan back, or rerun every shard with --restart (and a new plan).")


def with_shard_plan(config: RunSettings, source: ConnectedSide, store: StateStore) -> RunSettings:
    """The settings with the shard's plan in them, once the source can be read."""
    shard = config.job.shard
    if shard is None or not shard.needs_plan():
        return config
    planned = dataclasses.replace(shard, plan=shard_plan_for(config, source, store))
    return dataclasses.replace(config, job=dataclasses.replace(config.job, shard=planned))


def shard_key_ranges(config: RunSettings) -> Optional[list[KeyRange]]:
    """The key ranges (of source keys) this shard lists, None when it lists everything."""
    shard = config.job.shard
    if shard is None or shard.plan is None or shard.plan.by_hash:
        return None
    prefix = config.job.source.prefix
    every = key_ranges([prefix + point for point in shard.plan.split_points])
    return [every[number] for number in shard.plan.ranges_of(shard.index)]


# =============================================================================================
# 10. Status: the log, the live status line and the final report
# =============================================================================================


def skip_caller_lookup_in_log_records() -> None:
    """Make logging leave out the caller's file, line and function of every record (a frame walk per
    record), as the logging HOWTO's "Optimization" section advises for a format that never shows them.

    Library seam (logging): the HOWTO's way is to set ``logging._srcfile`` to None; the module has no
    public switch for it, as it has for thread and process names."""
    logging._srcfile = None


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class StatusReporter:
    """Counts what this run did and shows it: a line redrawn in place on a terminal (like rclone -P),
    plain summary lines every --status-interval seconds otherwise, and both in the log."""

    def __init__(self, *, max_workers: int, interval: float, live: bool, plain: bool,
                 stream: Any = sys.stdout) -> None:
        self._lock = threading.RLock()  # re-entered by the second-Ctrl-C handler, which saves a summary
        self._max_workers = max_workers
        self._interval = interval
        self._live = live
        self._plain = plain
        self._stream = stream
        self._started = time.monotonic()
        self.cpu_at_start = cpu_seconds()  # of the process: the tool's main() may run inside another program
        self._last_line = self._started
        self._last_draw = 0.0
        self._drawn = False
        self.objects_listed = self.bytes_listed = 0
        self.objects_done = self.bytes_done = self.bytes_moved = 0
        self.objects_failed = self.objects_skipped = self.retries = self.throttles = self.busy = 0
        self.objects_vanished = 0
        self.verified: collections.Counter[str] = collections.Counter()
        self.objects_server_side = 0
        self.bytes_server_side = 0
        self.listing_complete = False

    # counters, called from any thread
    def listed(self, size: int) -> None:
        with self._lock:
            self.objects_listed += 1
            self.bytes_listed += size

    def object_done(self, size: int, *, bytes_moved: int, verified_by: str, server_side: bool) -> None:
        with self._lock:
            self.objects_done += 1
            self.bytes_done += size
            self.bytes_moved += bytes_moved
            self.verified[verified_by] += 1
            if server_side:
                self.objects_server_side += 1
                self.bytes_server_side += size

    def bytes_moved_by_part(self, size: int) -> None:
        with self._lock:
            self.bytes_moved += size

    def skipped(self) -> None:
        with self._lock:
            self.objects_skipped += 1

    def vanished(self) -> None:
        with self._lock:
            self.objects_vanished += 1

    def object_failed(self) -> None:
        with self._lock:
            self.objects_failed += 1

    def retried(self) -> None:
        with self._lock:
            self.retries += 1

    def throttled(self) -> None:
        """S3 refused a request as busy and it is to be sent again (Retries)."""
        with self._lock:
            self.throttles += 1

    def worker_busy(self, delta: int) -> None:
        with self._lock:
            self.busy += delta

    def elapsed(self) -> float:
        return max(time.monotonic() - self._started, 1e-6)

    def summary(self) -> dict[str, Any]:
        """This run's figures, as the progress file's summary shows them."""
        with self._lock:
            rate = self.bytes_moved / self.elapsed()
            remaining = max(self.bytes_listed - self.bytes_moved, 0)
            if not self.listing_complete:
                eta = "listing not finished"
            else:
                eta = format_duration(remaining / rate) if rate > 0 else "unknown"
            return {
                "objects_listed": self.objects_listed,
                "bytes_listed": self.bytes_listed,
                "objects_done": self.objects_done,
                "bytes_done": self.bytes_done,
                "objects_failed": self.objects_failed,
                "objects_skipped_as_identical": self.objects_skipped,
                "objects_no_longer_in_source": self.objects_vanished,
                "verified": {method: self.verified[method] for method in ("md5", "etag", "checksum", "size-only")},
                "retries": self.retries,
                "throttled": self.throttles,
                "elapsed": format_duration(self.elapsed()),
                "rate": f"{format_size(rate)}/s",
                "eta": eta,
            }

    def status_line(self) -> str:
        figures = self.summary()
        listed = f"{figures['objects_listed']:,}" + ("" if self.listing_complete else "+")
        eta = figures["eta"] if self.listing_complete else "after listing"
        return (
            f"{figures['objects_done']:,}/{listed} objects, {format_size(self.bytes_moved)}/"
            f"{format_size(figures['bytes_listed'])}, {figures['rate']}, ETA {eta}, "
            f"workers {self.busy}/{self._max_workers} busy, {figures['objects_failed']} failed, "
            f"{figures['retries']} retries, {figures['throttled']} throttled"
        )

    # display, called from the main thread
    def tick(self) -> None:
        now = time.monotonic()
        if self._live and now - self._last_draw >= 0.5:
            self._draw(self.status_line())
            self._last_draw = now
        if now - self._last_line >= self._interval:
            self._last_line = now
            line = self.status_line()
            LOG.info("status: %s", line)
            if self._plain:
                print(line, file=self._stream, flush=True)

    def _draw(self, line: str) -> None:
        with self._lock:
            self._stream.write("\r\x1b[2K" + line)
            self._stream.flush()
            self._drawn = True

    def clear(self) -> None:
        """Erase the live line so another message can be printed cleanly (it is redrawn on the next tick)."""
        with self._lock:
            if self._drawn:
                self._stream.write("\r\x1b[2K")
                self._stream.flush()
                self._drawn = False


class ConsoleHandler(logging.Handler):
    """Log records for the person at the terminal, printed above the live status line."""

    def __init__(self, status: Optional[StatusReporter] = None) -> None:
        super().__init__()
        self.status = status

    def emit(self, record: logging.LogRecord) -> None:
        if self.status is not None:
            self.status.clear()
        prefix = ("error: " if record.levelno >= logging.ERROR
                  else "warning: " if record.levelno >= logging.WARNING else "")
        print(prefix + record.getMessage(), file=sys.stderr, flush=True)


def final_report(*, state: str, status: StatusReporter, progress: ProgressStore, config: RunSettings,
                 engine: EngineChoice) -> str:
    failures = progress.failures()
    figures = status.summary()
    objects_done, bytes_done = progress.totals()
    lines = [
        f"Transfer {state} after {figures['elapsed']}: {status.objects_done:,} objects "
        f"({format_size(status.bytes_done)}) copied in this run, {len(failures):,} failed, "
        f"average {figures['rate']}.",
        *([f"Skipped {status.objects_skipped:,} objects already identical in the destination."]
          if status.objects_skipped else []),
        *([(f"Not copied: {status.objects_vanished:,} objects listed no longer exist in the source (deleted "
            f"since they were listed); each is named in {config.output.log_file}.")]
          if status.objects_vanished else []),
        *([f"Copied server-side by S3, no byte through this machine: {status.objects_server_side:,} objects "
           f"({format_size(status.bytes_server_side)})."] if status.objects_server_side else []),
        *([f"S3 answered {status.throttles:,} times that it was busy (SlowDown, or a 5xx) after the retries of "
           "the HTTP client; the tool sent those requests again after a pause."] if status.throttles else []),
        "Verified before completing: " + ", ".join(f"{count:,} by {method}" for method, count in
                                                   figures["verified"].items()) + ".",
        f"Object bodies moved by {engine.describe()} ({engine.reason}).",
        *([] if config.job.copy_tags else ["Tags were not copied (--no-tags)."]),
        f"All runs of this job: {objects_done:,} objects ({format_size(bytes_done)}) copied.",
    ]
    if failures:
        lines.append(f"Failed objects ({len(failures):,}); rerun the same command to retry them:")
        lines += [f"  {json.dumps(key, ensure_ascii=False)}: {reason}" for key, reason in list(failures.items())[:20]]
        if len(failures) > 20:
            lines.append(f"  ... and {len(failures) - 20:,} more, all listed in {config.output.progress_file} "
                         f"(resume.failed) and {config.output.log_file}.")
    uploads = progress.uploads.keys()
    if uploads:
        lines.append(f"{len(uploads)} multipart upload(s) kept for resume; rerun the same command to finish them.")
    return "\n".join(lines)


# -- the whole job, from its progress files: the status command --------------------------------
#
# `s3_bulk_transfer.py status [PATH]` reads what every shard last saved and prints the job at once:
# an operator of an array job sees which shards are done, which run, which stopped, which never
# started. It reads only files; it never opens a lock (a shard starting at that instant must not
# find its progress file busy), so a run killed by kill -9 shows as running until its file goes
# silent for longer than a live run ever leaves it.

SILENT_AFTER_SECONDS = 4 * PROGRESS_HEARTBEAT_SECONDS
SHARD_FILE_NAME = re.compile(r"\.shard-(\d+)-of-(\d+)")


@dataclasses.dataclass(frozen=True)
class ShardStatus:
    """What one progress file says, reduced to what the status table shows."""

    label: str  # "0/3", or "job" for an unsharded run
    state: str  # the file's state; "not started" for a shard with no file; "silent" for a run gone quiet
    objects_done: int = 0
    bytes_done: int = 0
    objects_failed: int = 0
    uploads_in_flight: int = 0
    listing_complete: bool = False
    updated_at: Optional[str] = None
    silent_for: Optional[float] = None
    source: str = ""
    destination: str = ""

    @property
    def complete(self) -> bool:
        return self.state == "complete"


def shard_status(label: str, document: dict[str, Any], now: datetime.datetime) -> ShardStatus:
    """One file's row: a 'running' file not rewritten for SILENT_AFTER_SECONDS belongs to a run that
    was killed (or whose machine went away), since a live run rewrites it at least every heartbeat."""
    summary, resume = document.get("summary", {}), document.get("resume", {})
    updated_at = summary.get("updated_at")
    age = (now - datetime.datetime.fromisoformat(updated_at)).total_seconds() if updated_at else None
    state = summary.get("state", "unknown")
    if state == "running" and age is not None and age > SILENT_AFTER_SECONDS:
        state = "silent"
    return ShardStatus(label=label, state=state, objects_done=int(summary.get("objects_done", 0)),
                       bytes_done=int(summary.get("bytes_done", 0)),
                       objects_failed=int(summary.get("objects_failed", 0)),
                       uploads_in_flight=int(summary.get("multipart_uploads_in_flight", 0)),
                       listing_complete=bool(resume.get("listing_complete")), updated_at=updated_at,
                       silent_for=age if state == "silent" else None,
                       source=summary.get("source", ""), destination=summary.get("destination", ""))


def job_state_files(path: StateLocation,
                    store: StateStore) -> dict[Optional[int], dict[Optional[int], StateLocation]]:
    """The progress files of the job named by `path` (a progress file's name, or a folder holding
    the default one): {shard count: {shard index: file}}, None for the unsharded file. Shard counts
    come from the shards' file names and from any plan beside them, so that a shard that never
    started is still counted."""
    if isinstance(path, Path) and path.is_dir():
        path = path / DEFAULT_PROGRESS_FILE
    found: dict[Optional[int], dict[Optional[int], StateLocation]] = {}
    plan = re.compile(rf"\.plan-of-(\d+)-shards{re.escape(path.suffix)}$")
    for candidate in store.siblings(path):
        tail = candidate.name[len(path.stem):]
        if candidate.name == path.name:
            found[None] = {None: candidate}
        elif (shard := re.fullmatch(SHARD_FILE_NAME.pattern + re.escape(path.suffix), tail)) is not None:
            found.setdefault(int(shard.group(2)), {})[int(shard.group(1))] = candidate
        elif (planned := plan.fullmatch(tail)) is not None:
            found.setdefault(int(planned.group(1)), {})
    return found


def job_status(path: StateLocation, store: StateStore,
               now: Optional[datetime.datetime] = None) -> dict[Optional[int], list[ShardStatus]]:
    """Every shard's row, by shard count; a file that cannot be read is a ConfigurationError."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    rows: dict[Optional[int], list[ShardStatus]] = {}
    for count, files in sorted(job_state_files(path, store).items(), key=lambda item: item[0] or 0):
        indices: Iterable[Optional[int]] = [None] if count is None else range(count)
        for index in indices:
            label = "job" if count is None else f"{index}/{count}"
            file = files.get(index)
            document = read_progress_file(file, store) if file is not None else None
            rows.setdefault(count, []).append(ShardStatus(label, "not started") if document is None
                                              else shard_status(label, document, now))
    return rows


def format_job_status(path: StateLocation, rows: dict[Optional[int], list[ShardStatus]],
                      now: Optional[datetime.datetime] = None) -> str:
    now = now or datetime.datetime.now(datetime.timezone.utc)

    def saved(shard: ShardStatus) -> str:
        if shard.updated_at is None:
            return "-"
        return f"{format_duration((now - datetime.datetime.fromisoformat(shard.updated_at)).total_seconds())} ago"

    def row(label: str, state: str, shards: list[ShardStatus], last: str) -> str:
        return (f"  {label:<8}{state:<20}{sum(s.objects_done for s in shards):>13,}"
                f"{format_size(sum(s.bytes_done for s in shards)):>12}{sum(s.objects_failed for s in shards):>8,}"
                f"{sum(s.uploads_in_flight for s in shards):>11,}  {last}")

    lines: list[str] = []
    for count, shards in rows.items():
        started = [shard for shard in shards if shard.state != "not started"]
        where = f"{started[0].source} -> {started[0].destination}" if started else "(no shard has started)"
        lines.append(f"{where}: {'one process' if count is None else f'{count} shards'}, files beside {path}")
        lines.append(f"  {'shard':<8}{'state':<20}{'objects done':>13}{'bytes done':>12}{'failed':>8}"
                     f"{'in flight':>11}  last saved")
        for shard in shards:
            state = shard.state + (", listing" if shard.state == "running" and not shard.listing_complete else "")
            lines.append(row(shard.label, state, [shard], saved(shard)))
        states = collections.Counter(shard.state for shard in shards)
        lines.append(row("total", "", shards, ", ".join(f"{number} {state}" for state, number in states.items())))
        for shard in shards:
            if shard.state == "silent":
                lines.append(f"  Shard {shard.label} says it is running but has not saved its progress for "
                             f"{format_duration(shard.silent_for or 0)}: it was killed or its machine stopped. "
                             "Run it again (the same command) to resume it.")
            elif shard.state in ("interrupted", "stopped", "finished with failures"):
                lines.append(f"  Shard {shard.label} {shard.state}: run it again (the same command) to resume it"
                             + (" and retry its failed objects." if shard.objects_failed else "."))
    lines.append("(in flight: multipart uploads begun and kept for resume; objects below the multipart threshold "
                 "in flight are not saved, a rerun copies them again)")
    return "\n".join(lines)


# =============================================================================================
# 11. The transfer engine
# =============================================================================================


class MemoryBudget:
    """Bounds what is in flight: at most `max_units` units of work and `capacity` bytes of bodies.

    A unit larger than the whole budget (an object just under the multipart threshold, or a part
    raised past the chunk size for a huge object) waits until nothing else is in flight, then runs
    alone: memory never exceeds max(capacity, the largest single unit).
    """

    def __init__(self, capacity: int, *, max_units: int) -> None:
        self._capacity = capacity
        self._max_units = max_units
        self._used = 0
        self._units = 0
        self._changed = threading.Condition()

    def acquire(self, cost: int, *, timeout: float) -> bool:
        with self._changed:
            fits = lambda: self._units < self._max_units and (  # noqa: E731
                self._used + cost <= self._capacity or self._units == 0)
            if not self._changed.wait_for(fits, timeout=timeout):
                return False
            self._used += cost
            self._units += 1
            return True

    def try_acquire(self, cost: int) -> bool:
        """acquire() without waiting: for callbacks, which must never block."""
        return self.acquire(cost, timeout=0)

    def release(self, cost: int) -> None:
        with self._changed:
            self._used -= cost
            self._units -= 1
            self._changed.notify_all()


class TokenBucket:
    """A rate shared by every thread, so the whole process stays under it however many run:
    --max-bandwidth in bytes (a unit takes its whole size before its GET) and
    --max-requests-per-second in requests. The bucket may go into debt, so a unit larger than a
    second's worth simply waits longer, and the average holds; at most one second's worth passes
    at once after an idle spell."""

    def __init__(self, rate: float, stopping: threading.Event, *, now: Optional[float] = None) -> None:
        self._rate = float(rate)
        self._capacity = float(rate)
        self._tokens = 0.0
        self._updated = time.monotonic() if now is None else now
        self._lock = threading.Lock()
        self._stopping = stopping
        self.taken = 0  # what went through it, for the log

    def reserve(self, amount: float, now: float) -> float:
        """Take `amount` at time `now`; the seconds to wait before going on."""
        with self._lock:
            self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate) - amount
            self._updated = now
            self.taken += int(amount)
            return -self._tokens / self._rate if self._tokens < 0 else 0.0

    def take(self, amount: int) -> None:
        wait = self.reserve(amount, time.monotonic())
        if wait and self._stopping.wait(wait):
            raise StopRequested()

    def pace_request(self, **_: Any) -> None:
        """One request's turn, as a botocore before-send handler (which must return None, and
        inside which nothing is raised: a stop is noticed as soon as the request returns)."""
        wait = self.reserve(1, time.monotonic())
        if wait:
            self._stopping.wait(wait)


class CopyModeChoice:
    """Which way objects travel: streamed through this machine, or copied by S3 server-side.

    "auto" starts server-side when both buckets are on one endpoint, and falls back to streaming
    for the rest of the run if S3 refuses server-side copies before any has succeeded: across
    accounts, the destination's keys usually may not read the source. After one success a refusal
    is that object's own problem (a KMS key, an object ACL) and fails it as any denial would.
    """

    def __init__(self, requested: str, *, unavailable: str) -> None:
        self.requested = requested
        self._server_side = requested == "server-side" or (requested == "auto" and not unavailable)
        self._proven = False
        self._lock = threading.Lock()
        if requested == "auto":
            LOG.info("copy mode: %s", "server-side first (auto), streaming if S3 refuses it" if self._server_side
                     else f"streaming (auto), because {unavailable}")
        else:
            LOG.info("copy mode: %s, as --copy-mode asks", requested)

    def server_side(self) -> bool:
        return self._server_side

    def succeeded(self) -> None:
        self._proven = True

    def refused(self, why: str) -> bool:
        """A server-side copy was denied; True when the object is to be streamed instead."""
        with self._lock:
            if self.requested != "auto" or self._proven:
                return False
            if self._server_side:
                self._server_side = False
                LOG.info("copy mode: streaming from now on (auto), because S3 refused a server-side copy: %s", why)
            return True


SERVER_SIDE_COPY = "server-side copy"  # the permission, as PermissionBreaker counts it


class PermissionBreaker:
    """Turns repeated AccessDenied on an action that has never once been allowed into a stop.

    One object may be denied on its own (a KMS key, an object ACL); an action denied again and again
    with no success at all means the credentials lack it, and every further object would fail too.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._allowed: set[str] = set()
        self._denials: collections.Counter[str] = collections.Counter()

    def allowed(self, action: str) -> None:
        if action not in self._allowed:
            with self._lock:
                self._allowed.add(action)

    def denied(self, action: str) -> bool:
        """Record a denial; True when the run should stop."""
        with self._lock:
            if action in self._allowed:
                return False
            self._denials[action] += 1
            return self._denials[action] >= DENIALS_BEFORE_STOP


@dataclasses.dataclass(frozen=True)
class UploadedPart:
    """A part S3 already has of an upload (ListParts) that a rerun has not hashed: its ETag, and its
    checksum where ListParts or the progress file has it."""

    etag: str
    checksum: Optional[str]

    def holds(self, *, md5: Optional[bytes], checksum: Optional[str], etag_is_md5: Optional[bool]) -> Optional[bool]:
        """Whether it holds the bytes of this MD5 and checksum (a fresh read of the source's part):
        by the checksum when both have one, else by the ETag where it is the part's MD5 (no SSE-KMS).
        None when nothing can tell."""
        if self.checksum and checksum:
            return self.checksum == checksum
        if md5 is not None and etag_is_md5 is not False:
            if self.etag.strip('"') == md5.hex():
                return True
            return False if etag_is_md5 else None  # an ETag of unknown kind that differs may be an opaque one
        return None


@dataclasses.dataclass(frozen=True)
class UploadRecord:
    """A multipart upload as the progress file keeps it for resume: which upload, of which version
    of the source, cut in parts of which size, with which checksum, and the parts uploaded so far.
    ProgressStore builds it from the file's entry (from_document) and writes it back (document)."""

    upload_id: str
    destination_key: str
    source_etag: Optional[str]
    size: Optional[int]
    part_size: int
    checksum_algorithm: Optional[str] = None
    checksum_type: Optional[str] = None  # "FULL_OBJECT" or "COMPOSITE" when there is an algorithm
    part_sizes: Optional[tuple[int, ...]] = None  # a source's unequal layout, repeated (part_size is its first)
    # From CreateMultipartUpload's answer: False under SSE-KMS or SSE-C, None when unknown (a progress
    # file written before the tool recorded it).
    part_etags_are_md5: Optional[bool] = None
    parts: dict[int, str] = dataclasses.field(default_factory=dict)  # part number -> ETag
    part_checksums: dict[int, str] = dataclasses.field(default_factory=dict)
    digest: Optional[dict[str, Any]] = None  # the digest's saved state (OrderedDigest.state) and identity
    recheck: bool = False  # its parts did not make the source: each to be compared with the source again
    completing: Optional[dict[str, Any]] = None  # MultipartCopy.expected_destination, set before completion

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> "UploadRecord":
        return cls(upload_id=document["upload_id"], destination_key=document["destination_key"],
                   source_etag=document.get("source_etag"), size=document.get("size"),
                   part_size=document["part_size"], checksum_algorithm=document.get("checksum_algorithm"),
                   part_sizes=tuple(document["part_sizes"]) if document.get("part_sizes") else None,
                   checksum_type=document.get("checksum_type"),
                   part_etags_are_md5=document.get("part_etags_are_md5"),
                   parts={int(number): etag for number, etag in (document.get("parts") or {}).items()},
                   part_checksums={int(number): value
                                   for number, value in (document.get("part_checksums") or {}).items()},
                   digest=document.get("digest"), recheck=bool(document.get("recheck")),
                   completing=document.get("completing"))

    def document(self) -> dict[str, Any]:
        """The progress file's entry for it."""
        document: dict[str, Any] = {
            "upload_id": self.upload_id,
            "destination_key": self.destination_key,
            "source_etag": self.source_etag,
            "size": self.size,
            "part_size": self.part_size,
            **({"part_sizes": list(self.part_sizes)} if self.part_sizes else {}),
            "checksum_algorithm": self.checksum_algorithm,
            "checksum_type": self.checksum_type,
            "part_etags_are_md5": self.part_etags_are_md5,
            "parts": {str(number): etag for number, etag in sorted(self.parts.items())},
            "part_checksums": {str(number): value for number, value in sorted(self.part_checksums.items())},
        }
        if self.digest is not None:
            document["digest"] = self.digest
        if self.recheck:
            document["recheck"] = True
        if self.completing is not None:
            document["completing"] = self.completing
        return document

    @property
    def upload_checksum(self) -> Optional[UploadChecksum]:
        """The checksum its parts carry, as recorded."""
        if not self.checksum_algorithm:
            return None
        return UploadChecksum(self.checksum_algorithm, full_object=self.checksum_type != "COMPOSITE")


class RunStop:
    """Whether the run is stopping: Ctrl-C (`stopping`), or a failure that dooms every further
    request (`fatal`, which TransferEngine.run raises once the units in flight have ended)."""

    def __init__(self, stopping: threading.Event) -> None:
        self.stopping = stopping
        self.fatal: Optional[FatalTransferError] = None

    def should_stop(self) -> bool:
        return self.stopping.is_set() or self.fatal is not None

    def stop(self, error: FatalTransferError) -> None:
        if self.fatal is None:
            self.fatal = error


class CopyServices:
    """What every copy of an object works with (both sides, the transport, the progress store, the
    status line, the run's Retries), and the steps the small-object and multipart copies share:
    a body's request with its retries, a server-side request, the tags, the settling of a success,
    and the destination's side of an upload (is it done, abort it)."""

    def __init__(self, config: RunSettings, *, source: ConnectedSide, destination: ConnectedSide,
                 transport: BodyTransport, progress: "ProgressStore", status: "StatusReporter", run: RunStop,
                 permissions: PermissionBreaker, copy_mode: CopyModeChoice, planner: IntegrityPlanner,
                 bandwidth: Optional[TokenBucket] = None) -> None:
        self.config = config
        self.source = source
        self.destination = destination
        self.transport = transport
        self.progress = progress
        self.status = status
        self.run = run
        self.permissions = permissions
        self.copy_mode = copy_mode
        self.planner = planner
        self.retries = source.retries  # every request of the engine goes through it (one for both sides)
        self._bandwidth = bandwidth

    def should_stop(self) -> bool:
        return self.run.should_stop()

    def throttle(self, amount: int) -> None:
        """Wait for --max-bandwidth before a GET; every byte read is written once, so capping the
        reads caps the writes too."""
        if self._bandwidth is not None:
            self._bandwidth.take(amount)

    def body_request(self, operation: Callable[[], T], *, what: str, action: str, side: ConnectedSide,
                     failed_once: Optional[BaseException] = None) -> T:
        """A GET or PUT of a body through Retries, which also sends again what botocore does not: a
        body broken after the headers arrived, or one that does not match its ETag. A unit already
        started is let finish when the run stops (Ctrl-C), but it is not retried then."""
        try:
            return self.retries.call(operation, what=what, retry_bodies=True, failed_once=failed_once)
        except botocore.exceptions.ClientError as refused:
            if classify(refused) is ErrorKind.DAMAGED_UPLOAD:  # S3 refused the body every time as damaged
                raise ObjectFailure(f"{what} failed after {BODY_ATTEMPTS} attempts: integrity mismatch: "
                                    f"{refused}") from refused
            raise S3CallFailed(refused, action=action, role=side.access.role) from refused
        except RETRYABLE_BODY_ERRORS as broken:
            kind = "integrity mismatch: " if isinstance(broken, botocore.exceptions.FlexibleChecksumError) else ""
            raise ObjectFailure(f"{what} failed after {BODY_ATTEMPTS} attempts: {kind}{broken}") from broken

    def tags_if_any(self, key: str, tag_count: Optional[int]) -> list[dict[str, str]]:
        """The object's tags ([] with --no-tags). GetObject says how many there are (no header means
        none to credentials that may read tags, as tag_access_refusal made sure of one object: a
        policy that lets them read the tags of some objects only would leave the others untagged),
        which saves a request per untagged object; tag_count=None means ask."""
        if tag_count == 0 or not self.config.job.copy_tags:
            return []
        try:
            tags = self.retries.call(lambda: self.source.client.get_object_tagging(Bucket=self.source.bucket, Key=key),
                                     what=f"GetObjectTagging of {key}")["TagSet"]
        except botocore.exceptions.ClientError as error:
            raise S3CallFailed(error, action="s3:GetObjectTagging", role="source") from error
        self.permissions.allowed("s3:GetObjectTagging")
        return tags

    def server_side_request(self, key: str, operation: str, request: Callable[[], T]) -> T:
        """Send a CopyObject or UploadPartCopy; a changed source restarts the object, and a refusal
        before any server-side copy succeeded turns --copy-mode auto to streaming."""
        try:
            return self.retries.call(request, what=f"{operation} of {key}")
        except botocore.exceptions.ClientError as error:
            code = error_code(error)
            kind = classify(error)
            if kind is ErrorKind.SOURCE_CHANGED:
                raise SourceChanged() from None
            if code in DENIED_CODES:
                why = (f"{operation} of s3://{self.source.bucket}/{key} with the destination credentials "
                       f"({self.destination.access.origin}): {code}")
                if self.copy_mode.refused(why):
                    raise ServerSideRefused(why) from None
                failure = FatalTransferError if self.permissions.denied(SERVER_SIDE_COPY) else ObjectFailure
                raise failure(
                    f"S3 refused the server-side copy ({code}): a server-side copy needs the destination "
                    f"credentials ({self.destination.access.origin}) to have s3:GetObject on "
                    f"s3://{self.source.bucket}/{key} (same account, or a bucket policy granting the destination "
                    "account); use --copy-mode stream to copy through this machine instead") from None
            raise S3CallFailed(error, action="s3:PutObject", role="destination") from error

    def server_side_succeeded(self) -> None:
        self.copy_mode.succeeded()
        self.permissions.allowed(SERVER_SIDE_COPY)

    def object_done(self, key: str, size: int, started: float, check: IntegrityCheck, *,
                    counted_bytes: Optional[int] = None, server_side: bool = False,
                    finished: Optional[float] = None) -> None:
        elapsed = max((time.monotonic() if finished is None else finished) - started, 1e-6)
        self.progress.mark_done(key, size)
        self.status.object_done(size, bytes_moved=size if counted_bytes is None else counted_bytes,
                                verified_by=check.method, server_side=server_side)
        self.permissions.allowed("s3:GetObject")
        self.permissions.allowed("s3:PutObject")
        verified = f"verified by {check.method}" + (f" because {check.reason}" if check.reason else "")
        if check.checksum is not None and check.method != "checksum":
            verified += f" and {check.checksum.algorithm}"
        LOG.info("copied %s %s in %.2f s (%s/s), %s%s", json.dumps(key, ensure_ascii=False), format_size(size),
                 elapsed, format_size(size / elapsed), verified, " (server-side copy)" if server_side else "")

    def destination_holds(self, destination_key: str, expected: Optional[dict[str, Any]]) -> Optional[str]:
        """What proves the destination object is the one an upload completes into (MultipartCopy.
        expected_destination): the same size, and the ETag or the checksum the uploaded parts make;
        None when it is not, or there is none."""
        if not expected:
            return None
        try:
            head = self.retries.call(lambda: self.destination.client.head_object(
                Bucket=self.destination.bucket, Key=destination_key, ChecksumMode="ENABLED"),
                what=f"HeadObject of {destination_key}")
        except botocore.exceptions.ClientError as error:
            if classify(error) is ErrorKind.NOT_FOUND:
                return None
            raise S3CallFailed(error, action="s3:GetObject", role="destination") from error
        checksum = expected.get("checksum") or {}
        if head["ContentLength"] != expected["size"]:
            return None
        if expected.get("etag") and head["ETag"].strip('"') == expected["etag"]:
            return "ETag"
        if checksum and head.get(f"Checksum{checksum['algorithm']}") == checksum["value"]:
            return f"{checksum['algorithm']} checksum"
        return None

    def abort_upload(self, destination_key: str, upload_id: str, reason: str) -> None:
        try:
            self.retries.call(lambda: self.destination.client.abort_multipart_upload(
                Bucket=self.destination.bucket, Key=destination_key, UploadId=upload_id
            ), what=f"AbortMultipartUpload of {destination_key}")
            LOG.info("aborted multipart upload of %s: %s", json.dumps(destination_key, ensure_ascii=False), reason)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
            if classify(error) is not ErrorKind.UPLOAD_GONE:
                LOG.warning("could not abort the multipart upload %s of %s (%s); a lifecycle rule "
                            "AbortIncompleteMultipartUpload on the destination bucket will clean it up",
                            upload_id, json.dumps(destination_key, ensure_ascii=False), error_code(error) or error)


class SmallObjectCopier:
    """Copies an object below the multipart threshold with one request each way: streamed (one GET,
    its bytes checked, one PUT) or server-side (one CopyObject, proven by what S3 answers)."""

    def __init__(self, services: CopyServices) -> None:
        self.services = services

    def copy_streamed(self, listed: ListedObject, destination_key: str, *, started: Optional[float] = None,
                      failed_get: Optional[BaseException] = None) -> None:
        """GET, check, PUT. `failed_get`: what SmallObjectPipeline's GET of it came to (see Retries)."""
        services = self.services
        started = time.monotonic() if started is None else started
        fetched, check = services.body_request(
            lambda: self._fetch_verified(listed.key, listed.size), what=f"GET {listed.key}", action="s3:GetObject",
            side=services.source, failed_once=failed_get,
        )
        self.put_checked(listed, destination_key, fetched, check, started)

    def copy_fetched(self, listed: ListedObject, destination_key: str, fetched: FetchedObject, started: float) -> None:
        """The rest of copy_streamed once a GET has returned `fetched` (SmallObjectPipeline's)."""
        try:
            check = self.verified(listed.key, fetched)
        except BodyMismatch as mismatch:
            self.copy_streamed(listed, destination_key, started=started, failed_get=mismatch)
            return
        self.put_checked(listed, destination_key, fetched, check, started)

    def put_checked(self, listed: ListedObject, destination_key: str, fetched: FetchedObject, check: IntegrityCheck,
                    started: float, *, failed_put: Optional[BaseException] = None) -> None:
        """PUT a body that was checked, with its tags; `failed_put`: what SmallObjectPipeline's PUT came to."""
        services = self.services
        tags = services.tags_if_any(listed.key, fetched.response.get("TagCount", 0))
        arguments, md5_base64 = self.put_request(fetched, check, tags)
        services.body_request(
            lambda: services.transport.put_object(
                services.destination.bucket, destination_key, fetched.body, content_md5=md5_base64,
                arguments=arguments,
            ),
            what=f"PUT {destination_key}", action="s3:PutObject", side=services.destination, failed_once=failed_put,
        )
        services.object_done(listed.key, len(fetched.body), started, check)

    def put_request(self, fetched: FetchedObject, check: IntegrityCheck,
                    tags: list[dict[str, str]]) -> tuple[dict[str, Any], str]:
        """The PutObject arguments of a checked body, and its Content-MD5."""
        arguments = ObjectAttributes.from_response(fetched.response, tags).upload_arguments(self.services.config)
        if check.checksum is not None:
            # Sent with its value, S3 checks the body against it and keeps the source's algorithm. A
            # full-object value was just checked against these bytes: no need to compute it again.
            algorithm = check.checksum.algorithm
            value = checksum_of(algorithm, fetched.body) if check.checksum.composite else check.checksum.value
            arguments.update({"ChecksumAlgorithm": algorithm, f"Checksum{algorithm}": value})
        # Likewise the MD5, when it is what the bytes were checked against.
        return arguments, content_md5(bytes.fromhex(check.expected) if check.method == "md5"
                                      else md5_digest(fetched.body))

    def _fetch_verified(self, key: str, listed_size: int) -> tuple[FetchedObject, IntegrityCheck]:
        """GET a whole object and check its bytes against its ETag and checksum; a mismatch is
        retried as a damaged body would be."""
        services = self.services
        services.throttle(listed_size)
        fetched = services.transport.get_object(services.source.bucket, key, expected_size=listed_size)
        return fetched, self.verified(key, fetched)

    def verified(self, key: str, fetched: FetchedObject) -> IntegrityCheck:
        """How the fetched body was proven; BodyMismatch when it does not match what the source says."""
        check = self.services.planner.check(key, fetched.etag, fetched.response, len(fetched.body))
        digest = check.new_digest()
        if digest is not None:
            digest.update(fetched.body)
            mismatch = check.mismatch(digest)
            if mismatch:
                raise BodyMismatch(mismatch)
        return check

    def copy_server_side(self, listed: ListedObject, destination_key: str) -> None:
        """CopyObject keeps metadata, headers, tags and the checksum (the COPY directives), but not the
        website redirect, which S3 copies only when the request names it (CopyObject reference,
        x-amz-website-redirect-location): so the source is read with HeadObject first, which also says
        how the copy can be proven (see verified_copy)."""
        services = self.services
        started = time.monotonic()
        head = services.planner.head(listed)
        checksum = find_source_checksum(head, listed.etag.strip('"'))
        # Asked for by name, the copy gets a checksum of the source's algorithm, computed by S3 from the
        # bytes it copied and returned with the answer: the proof where ETags are no MD5s.
        ask = {"ChecksumAlgorithm": checksum.algorithm} if checksum is not None and not checksum.composite else {}
        redirect = {"WebsiteRedirectLocation": head["WebsiteRedirectLocation"]} \
            if head.get("WebsiteRedirectLocation") else {}
        response = services.server_side_request(
            listed.key, "CopyObject",
            lambda: services.destination.client.copy_object(
                Bucket=services.destination.bucket, Key=destination_key,
                CopySource={"Bucket": services.source.bucket, "Key": listed.key}, CopySourceIfMatch=listed.etag,
                MetadataDirective="COPY", TaggingDirective="COPY" if services.config.job.copy_tags else "REPLACE",
                **ask, **redirect, **storage_arguments(services.config),
                **lock_arguments(ObjectAttributes.from_response(head, []).lock, services.config),
            ),
        )
        check = self.verified_copy(listed, head, response, checksum)
        services.server_side_succeeded()
        services.object_done(listed.key, listed.size, started, check, server_side=True)

    @staticmethod
    def verified_copy(listed: ListedObject, head: dict[str, Any], response: dict[str, Any],
                      checksum: Optional[SourceChecksum]) -> IntegrityCheck:
        """How a CopyObject is proven, from what S3 answered: by the ETag where neither object's
        encryption makes it opaque (HeadObject's and CopyObject's x-amz-server-side-encryption, SSE-C
        headers); else by the checksum S3 computed for the copy; else by size only, saying why.
        Raises IntegrityMismatch when what is comparable differs."""
        result = response["CopyObjectResult"]
        copied_etag, source_etag = result["ETag"].strip('"'), listed.etag.strip('"')
        comparable = not etag_is_opaque(head) and not etag_is_opaque(response)
        if comparable and copied_etag == source_etag:
            return IntegrityCheck("md5" if plain_md5_etag(listed.etag, head) else "etag", source_etag)
        if comparable and plain_md5_etag(listed.etag, head):
            raise IntegrityMismatch(f"integrity mismatch: the server-side copy has the ETag {copied_etag}, the "
                                    f"source ETag says {source_etag}")
        copied_checksum = result.get(f"Checksum{checksum.algorithm}") if checksum is not None else None
        if checksum is not None and not checksum.composite and copied_checksum:
            if copied_checksum != checksum.value:
                raise IntegrityMismatch(f"integrity mismatch: the server-side copy has the {checksum.algorithm} "
                                        f"{copied_checksum}, the source says {checksum.value}")
            return IntegrityCheck("checksum", checksum=checksum)
        if not comparable:
            reason = ("it was copied server-side, an ETag is not an MD5 (SSE-KMS, DSSE-KMS or SSE-C on the source "
                      "or the destination) and the source has no full-object checksum for S3 to compute again")
        else:
            reason = ("it was copied server-side, its ETag is of a multipart upload, which a CopyObject does not "
                      "repeat, and it has no full-object checksum for S3 to compute again")
        return IntegrityCheck("size-only", reason=reason)


class PipelinedObject:
    """One small object in SmallObjectPipeline: where it goes, and the requests sent for it."""

    __slots__ = ("listed", "destination_key", "attempt", "started", "exchanges")

    def __init__(self, listed: ListedObject, destination_key: str, attempt: int) -> None:
        self.listed = listed
        self.destination_key = destination_key
        self.attempt = attempt
        self.started = 0.0
        self.exchanges: list[SentRequest] = []  # its GET, then its PUT: what the watchdog looks at


class SmallObjectPipeline:
    """Small objects copied by the crt engine's completion callbacks, with no thread waiting on
    them: a finished GET is checked (SmallObjectCopier.verified) and starts its PUT, a finished PUT
    settles the object and starts the next queued one, within the same MemoryBudget as every unit.
    A callback never waits: anything that needs a request of its own (tags, the source's part
    layout) or a retry is handed to a worker (`hand_off`, with the object's budget still held),
    which carries on with the blocking steps of SmallObjectCopier from where the callback stopped,
    through Retries as any unit. The main thread queues the listing (`offer`, waiting while the queue
    is full), and settles finished objects in batches (`settle_finished`: progress, status, log), so
    the callbacks share no lock with the bookkeeping. After Ctrl-C nothing new is started; what is
    in flight finishes, and what is queued stays pending for the rerun."""

    def __init__(self, copier: SmallObjectCopier, transport: CallbackTransport, *, budget: MemoryBudget,
                 hand_off: Callable[..., None], queue_length: int, settle_at_once: bool = False) -> None:
        self._copier = copier
        # In a worker process (--processes) settling is a message to the parent, which waits for it to
        # hand out more, while this process's main thread may be waiting for that work: so there the
        # callback settles each object itself.
        self._settle_at_once = settle_at_once
        self._services = copier.services
        self._transport = transport
        self._budget = budget
        self._hand_off = hand_off  # (listed, attempt, cost, work): work() on a worker, the cost held
        self._queue_length = queue_length
        self._queued: collections.deque[PipelinedObject] = collections.deque()
        self._in_flight: set[PipelinedObject] = set()
        # (listed, size, started, finished, check) of copied objects, for the main thread to settle
        self._copied: collections.deque[tuple[ListedObject, int, float, float, IntegrityCheck]] = collections.deque()
        self._changed = threading.Condition()
        self._main_waits = False

    # -- the main thread's side
    def offer(self, listed: ListedObject, destination_key: str, attempt: int, *, tick: Callable[[], None]) -> None:
        """Queue one small object; wait (ticking) while the queue is full."""
        with self._changed:
            self._queued.append(PipelinedObject(listed, destination_key, attempt))
        self.start_what_fits()
        while True:
            self.settle_finished()
            with self._changed:
                if len(self._queued) < self._queue_length or self._services.should_stop():
                    return
                self._main_waits = True
                self._changed.wait(TICK_SECONDS)
                self._main_waits = False
            tick()

    def settle_finished(self) -> None:
        """Settle every object copied since the last call: progress, status line and log."""
        services = self._services
        while self._copied:
            listed, size, started, finished, check = self._copied.popleft()
            services.object_done(listed.key, size, started, check, finished=finished)
            services.status.worker_busy(-1)

    def idle(self) -> bool:
        """Nothing in flight nor left to settle, and nothing queued unless the run stops."""
        with self._changed:
            return not (self._in_flight or self._copied or (self._queued and not self._services.should_stop()))

    def wait(self, timeout: float) -> None:
        """Wait until the pipeline empties, or `timeout`."""
        with self._changed:
            if self._in_flight:
                self._main_waits = True
                self._changed.wait(timeout)
                self._main_waits = False

    def finish(self) -> None:
        """Wait for what is in flight to end (the run has stopped, or ended) and settle it."""
        while True:
            self.tick()
            with self._changed:
                if not self._in_flight:
                    break
            self.wait(TICK_SECONDS)
        self.settle_finished()

    def tick(self) -> None:
        """On the scheduler's tick: settle, start what a released budget lets start, and cancel any
        request silent for too long (CrtExchange.cancel_if_silent), whose callback then retries it."""
        self.settle_finished()
        self.start_what_fits()
        now = time.monotonic()
        with self._changed:
            watched = [exchange for item in self._in_flight for exchange in item.exchanges]
        for exchange in watched:
            exchange.cancel_if_silent(now)

    # -- any thread's side, crt's event-loop thread included: nothing here waits
    def start_what_fits(self) -> None:
        """Start the GET of each queued object the memory budget has room for, in listing order."""
        while not self._services.should_stop():
            with self._changed:
                if not self._queued or not self._budget.try_acquire(self._queued[0].listed.size):
                    return
                item = self._queued.popleft()
                self._in_flight.add(item)
                if self._main_waits and len(self._queued) <= self._queue_length // 2:
                    self._changed.notify_all()
            self._start(item)

    def _start(self, item: PipelinedObject) -> None:
        services = self._services
        services.status.worker_busy(+1)
        item.started = time.monotonic()
        try:
            item.exchanges.append(self._transport.start_get_object(
                services.source.bucket, item.listed.key, expected_size=item.listed.size,
                then=lambda outcome: self._fetched(item, outcome)))
        except Exception as error:  # noqa: BLE001 - the worker raises it, and FailurePolicy settles it
            self._give_up(item, raise_again, error)

    def _fetched(self, item: PipelinedObject, outcome: Callable[[], FetchedObject]) -> None:
        copier, listed = self._copier, item.listed
        try:
            try:
                fetched = outcome()
            except Exception as error:  # noqa: BLE001 - retried or settled by the worker, as any GET
                self._give_up(item, copier.copy_streamed, listed, item.destination_key, started=item.started,
                              failed_get=error)
                return
            item.exchanges.clear()  # its answer's chunks, joined into fetched.body: not to be held twice
            self._services.retries.succeeded()
            tagged = fetched.response.get("TagCount", 0) and self._services.config.job.copy_tags
            if tagged or IntegrityPlanner.parts_counted(fetched.etag, fetched.response):
                # Tags, or the source's part layout, need a request of their own: a worker's.
                self._give_up(item, copier.copy_fetched, listed, item.destination_key, fetched, item.started)
                return
            try:
                check = copier.verified(listed.key, fetched)
            except BodyMismatch as mismatch:
                self._give_up(item, copier.copy_streamed, listed, item.destination_key, started=item.started,
                              failed_get=mismatch)
                return
            arguments, md5_base64 = copier.put_request(fetched, check, [])
            item.exchanges.append(self._transport.start_put_object(
                self._services.destination.bucket, item.destination_key, fetched.body, content_md5=md5_base64,
                arguments=arguments, then=lambda outcome: self._put(item, fetched, check, outcome)))
        except Exception as error:  # noqa: BLE001 - a callback must not lose it: the worker raises it
            self._give_up(item, raise_again, error)

    def _put(self, item: PipelinedObject, fetched: FetchedObject, check: IntegrityCheck,
             outcome: Callable[[], str]) -> None:
        try:
            outcome()
        except Exception as error:  # noqa: BLE001 - retried or settled by the worker, as any PUT
            self._give_up(item, self._copier.put_checked, item.listed, item.destination_key, fetched, check,
                          item.started, failed_put=error)
            return
        self._services.retries.succeeded()
        self._copied.append((item.listed, len(fetched.body), item.started, time.monotonic(), check))
        self._forget(item)
        self._budget.release(item.listed.size)
        if self._settle_at_once:
            self.settle_finished()
        self.start_what_fits()

    def _give_up(self, item: PipelinedObject, work: Callable[..., None], *arguments: Any, **keywords: Any) -> None:
        """Hand the rest of an object's copy to a worker, with its memory budget; it counts as busy
        there instead."""
        try:
            self._hand_off(item.listed, item.attempt, item.listed.size, lambda: work(*arguments, **keywords))
        finally:
            self._services.status.worker_busy(-1)
            self._forget(item)

    def _forget(self, item: PipelinedObject) -> None:
        """`item` is no longer the pipeline's (copied, or a worker's); wake a main thread waiting for
        the last one. A copied item is in `_copied` before it leaves `_in_flight`, so idle() never
        sees it in neither."""
        with self._changed:
            self._in_flight.discard(item)
            if self._main_waits and not self._in_flight:
                self._changed.notify_all()


def raise_again(error: BaseException) -> None:
    """A unit of work that raises what a callback caught, for FailurePolicy to settle."""
    raise error


class MultipartCopy:
    """One large object in flight, owner of its upload's life cycle once the upload exists (see
    MultipartUploads for starting or resuming one): copy a part (streamed, or server-side), complete,
    and abandon, the single clean-up every failure path runs, which aborts the upload: no failure
    path can leave parts behind (the s3transfer pattern).

    The digest is of what was uploaded, never of a fresh read: a rerun takes it up from the state the
    progress file kept (the parts up to `digest.parts_hashed` are then neither read nor sent again),
    and each part S3 has beyond it (`to_recheck`) is read again and compared with what S3 holds,
    kept if it holds the same bytes, uploaded again if not (see UploadedPart.holds).
    """

    def __init__(self, source: ListedObject, upload: UploadRecord, check: IntegrityCheck, *,
                 upload_checksum: Optional[UploadChecksum], services: CopyServices, server_side: bool = False) -> None:
        self.source = source
        self.server_side = server_side  # parts copied by S3 (UploadPartCopy): no bytes here to hash
        self.check = check
        self.upload_checksum = upload_checksum
        self.part_etags_are_md5 = upload.part_etags_are_md5
        self.digest = None if server_side else self.check.new_digest()
        self.destination_key = upload.destination_key
        self.upload_id = upload.upload_id
        self.part_size = upload.part_size
        self.part_sizes = upload.part_sizes
        self.parts = plan_layout(upload.part_sizes) if upload.part_sizes else plan_parts(source.size, upload.part_size)
        self.completed: dict[int, str] = {}
        self.part_checksums: dict[int, str] = {}  # our parts' checksums, when the upload has an algorithm
        self.to_recheck: dict[int, UploadedPart] = {}
        self.started = time.monotonic()
        self._services = services
        self._lock = threading.Lock()
        self.abandoned = False
        self.rechecking = False

    @property
    def part_algorithm(self) -> Optional[str]:
        return self.upload_checksum.algorithm if self.upload_checksum else None

    def record(self) -> UploadRecord:
        """The upload as the progress file keeps it."""
        return UploadRecord(
            upload_id=self.upload_id, destination_key=self.destination_key, source_etag=self.source.etag,
            size=self.source.size, part_size=self.part_size, part_sizes=self.part_sizes,
            checksum_algorithm=self.part_algorithm,
            checksum_type=("FULL_OBJECT" if self.upload_checksum.full_object else "COMPOSITE")
            if self.upload_checksum else None,
            part_etags_are_md5=self.part_etags_are_md5, parts=dict(self.completed),
            part_checksums=dict(self.part_checksums))

    def missing_parts(self) -> list[PartRange]:
        return [part for part in self.parts if part.number not in self.completed]

    def part_done(self, number: int, etag: str, checksum: Optional[str]) -> bool:
        """Record an uploaded part; True when every part is uploaded (and the upload still stands)."""
        with self._lock:
            self.completed[number] = etag
            if checksum is not None:
                self.part_checksums[number] = checksum
            return not self.abandoned and len(self.completed) == len(self.parts)

    def claim_recheck(self) -> bool:
        """True for the first caller only: one recheck of the parts per mismatch."""
        with self._lock:
            if self.abandoned or self.rechecking:
                return False
            self.rechecking = True
            return True

    def abandon(self, reason: str) -> bool:
        """Abort the upload and forget it: the one clean-up every failure path runs. True for the
        caller that did it, False (and nothing done) if it was already abandoned."""
        with self._lock:
            if self.abandoned:
                return False
            self.abandoned = True
        self._services.abort_upload(self.destination_key, self.upload_id, reason)
        self._services.progress.uploads.forget(self.source.key)
        return True

    def expected_destination(self) -> dict[str, Any]:
        """What the completed object will be, for a rerun that finds the upload gone because it was
        completed just before a crash: its size, its ETag where our part ETags are MD5s, its checksum."""
        numbers = [part.number for part in self.parts]
        etags = [self.completed[number] for number in numbers]
        expected: dict[str, Any] = {"size": self.source.size,
                                    "etag": etag_of_parts(etags) if self.part_etags_are_md5 is not False else None}
        if self.upload_checksum is not None and all(number in self.part_checksums for number in numbers):
            expected["checksum"] = {
                "algorithm": self.part_algorithm,
                "value": combined_checksum(self.part_algorithm, (self.part_checksums[n] for n in numbers),
                                           (part.size for part in self.parts),
                                           full_object=self.upload_checksum.full_object)}
        return expected

    def copy_part(self, part: PartRange) -> None:
        """GET one part and upload it; or, for a part S3 already has from before an interruption, GET
        it and keep S3's copy when it holds the same bytes. Then hash it, in its turn."""
        if self.abandoned:
            return
        body = self._download_part(part)
        algorithm = self.part_algorithm
        part_checksum = checksum_of(algorithm, body) if algorithm else None
        uploaded = self.to_recheck.get(part.number)
        # S3 checks the body against the part's checksum, so Content-MD5 would be a second guard at the
        # price of an MD5 pass (the slowest hash here): computed only when there is no checksum, when
        # the digest of the source's ETag needs this part's MD5 anyway, or to compare with an ETag.
        needs_md5 = not algorithm or self.check.method == "etag" or (uploaded is not None and not uploaded.checksum)
        part_md5 = md5_digest(body) if needs_md5 else None
        holds = uploaded.holds(md5=part_md5, checksum=part_checksum, etag_is_md5=self.part_etags_are_md5) \
            if uploaded is not None else None
        if holds:
            etag = uploaded.etag  # type: ignore[union-attr]
        else:
            if uploaded is not None:
                LOG.warning("part %d of %s, uploaded before the last run stopped, %s; uploading it again",
                            part.number, json.dumps(self.source.key, ensure_ascii=False),
                            "holds other bytes than the source" if holds is False else
                            "cannot be compared with the source (its ETag is no MD5, as under SSE-KMS, and S3 "
                            "gave no checksum for it)")
            etag = self._upload_part(part, body, md5=part_md5, checksum=part_checksum)
        self._services.progress.uploads.record_part(self.source.key, part.number, etag, part_checksum)
        all_uploaded = self.part_done(part.number, etag, part_checksum)
        if self.digest is not None:
            self.digest.feed(part.number, body, cancelled=lambda: self.abandoned or self._services.should_stop(),
                             part_md5=part_md5 if self.check.method == "etag" else None,
                             part_checksum=base64.b64decode(part_checksum)
                             if part_checksum and algorithm == self.check.checksum_algorithm else None)
            if part.number == len(self.parts):  # whoever hashes the last part completes the upload
                self.complete()
        elif all_uploaded:
            self.complete()

    def _upload_part(self, part: PartRange, body: bytes, *, md5: Optional[bytes], checksum: Optional[str]) -> str:
        services = self._services
        etag = services.body_request(
            lambda: services.transport.upload_part(
                services.destination.bucket, self.destination_key, upload_id=self.upload_id,
                part_number=part.number, body=body,
                content_md5=content_md5(md5) if md5 is not None and not checksum else None,
                checksum={f"Checksum{self.part_algorithm}": checksum} if checksum else {},
            ),
            what=f"UploadPart {part.number} of {self.destination_key}", action="s3:PutObject",
            side=services.destination,
        )
        services.status.bytes_moved_by_part(part.size)
        return etag

    def _download_part(self, part: PartRange) -> bytes:
        return self._services.body_request(
            lambda: self._get_part(part), what=f"GET part {part.number} of {self.source.key}",
            action="s3:GetObject", side=self._services.source,
        )

    def _get_part(self, part: PartRange) -> bytes:
        services = self._services
        services.throttle(part.size)
        try:
            return services.transport.get_range(services.source.bucket, self.source.key, part,
                                                if_match=self.source.etag)
        except botocore.exceptions.ClientError as error:
            if classify(error) is ErrorKind.SOURCE_CHANGED:
                raise SourceChanged() from None
            raise

    def copy_part_server_side(self, part: PartRange) -> None:
        if self.abandoned:
            return
        services = self._services
        response = services.server_side_request(
            self.source.key, "UploadPartCopy",
            lambda: services.destination.client.upload_part_copy(
                Bucket=services.destination.bucket, Key=self.destination_key, UploadId=self.upload_id,
                PartNumber=part.number, CopySource={"Bucket": services.source.bucket, "Key": self.source.key},
                CopySourceRange=f"bytes={part.start}-{part.end}", CopySourceIfMatch=self.source.etag,
            ),
        )
        result = response["CopyPartResult"]
        if etag_is_opaque(response):  # the destination's encryption, whatever CreateMultipartUpload said
            self.part_etags_are_md5 = False
        algorithm = self.part_algorithm
        part_checksum = result.get(f"Checksum{algorithm}") if algorithm else None
        services.status.bytes_moved_by_part(part.size)
        services.progress.uploads.record_part(self.source.key, part.number, result["ETag"], part_checksum)
        if self.part_done(part.number, result["ETag"], part_checksum):
            self.complete()

    def complete(self) -> None:
        """Check the parts against the plan and the source, then complete: never a short or stitched
        object. The progress file learns what the completed object will be first, so that a run
        killed after S3 completed it and before the next save finds it done instead of copying it again."""
        services = self._services
        numbers = sorted(self.completed)
        if numbers != [part.number for part in self.parts]:
            raise ObjectFailure(f"only {len(numbers)} of {len(self.parts)} parts were uploaded")
        if self.digest is not None:
            mismatch = self.check.mismatch(self.digest)
            if mismatch:
                raise PartsToRecheck(mismatch)
        check = server_side_parts_check(
            self.check, part_etags=self.completed, part_checksums=self.part_checksums,
            part_sizes=[part.size for part in self.parts], part_etags_are_md5=self.part_etags_are_md5,
        ) if self.server_side else self.check
        parts: list[dict[str, Any]] = [{"PartNumber": n, "ETag": self.completed[n]} for n in numbers]
        checksum: dict[str, str] = {}
        algorithm = self.part_algorithm
        if algorithm and all(number in self.part_checksums for number in numbers):
            for part in parts:
                part[f"Checksum{algorithm}"] = self.part_checksums[part["PartNumber"]]
            if self.check.full_object_checksum and self.check.checksum is not None:
                # S3 combines the part CRCs and refuses to complete if they do not make this value.
                checksum = {"ChecksumType": "FULL_OBJECT", f"Checksum{algorithm}": self.check.checksum.value}
        elif algorithm and check.method == "checksum":
            # Server quirk (moto): S3 answers UploadPartCopy with the part's checksum; moto does not,
            # so nothing can be checked then.
            check = IntegrityCheck("size-only", reason="the server returned no checksums for the parts it copied")
        expected = self.expected_destination()
        services.progress.uploads.completing(self.source.key, expected)
        services.progress.save(services.status.summary())
        try:
            services.retries.call(lambda: services.destination.client.complete_multipart_upload(
                Bucket=services.destination.bucket, Key=self.destination_key, UploadId=self.upload_id,
                MultipartUpload={"Parts": parts}, **checksum,
            ), what=f"CompleteMultipartUpload of {self.destination_key}")
        except botocore.exceptions.ClientError as error:
            # An attempt S3 carried out but whose answer was lost, sent again by botocore, finds the
            # upload gone: what it completed is at the destination.
            if not (classify(error) is ErrorKind.UPLOAD_GONE
                    and services.destination_holds(self.destination_key, expected)):
                raise S3CallFailed(error, action="s3:PutObject", role="destination") from error
        if self.server_side:
            services.server_side_succeeded()
        # Done first, then the upload forgotten: a save between the two keeps both (a rerun skips the
        # key and finds the upload gone), never neither (which would copy the object again).
        services.object_done(self.source.key, self.source.size, self.started, check, counted_bytes=0,
                             server_side=self.server_side)
        services.progress.uploads.forget(self.source.key)


class MultipartUploads:
    """Opens the multipart copy of a large object: resumes the upload the progress file records for
    it while that still fits the source (ListParts, not our file, says which parts S3 has), else
    creates one, recorded and saved at once so that no kill can orphan it; and aborts a recorded
    upload that nothing will finish."""

    def __init__(self, services: CopyServices) -> None:
        self.services = services

    def open(self, listed: ListedObject, destination_key: str, *, server_side: bool) -> Optional[MultipartCopy]:
        """The copy of this object in parts; None when the record's upload was completed just before a
        previous run was stopped (then settled).

        Runs on the main thread: it costs a few requests per object of 100 MiB or more. When the
        source was itself uploaded in parts, the copy uses the same part boundaries (copy_part_plan),
        so the destination's ETag comes out identical to the source's.
        """
        services = self.services
        head = services.planner.head(listed)
        try:
            check = services.planner.check(listed.key, head["ETag"], head, head["ContentLength"])
        except botocore.exceptions.ClientError as error:
            raise S3CallFailed(error, action="s3:GetObject", role="source") from error
        plan = copy_part_plan(listed, check, services.config, server_side=server_side)
        if server_side:
            sizes = check.source_part_sizes
            check = server_side_check(check, along_source_parts=bool(sizes) and (
                plan[1] is not None or (check.uniform_parts and plan[0] == sizes[0])))
        upload = services.progress.uploads.record_for(listed.key)
        if upload is not None:
            try:
                resumed = self._resume(listed, destination_key, plan, upload, check, server_side=server_side)
            except UploadGone:
                if self._completed_before_the_stop(listed, destination_key, upload):
                    return None
                LOG.info("the recorded upload for %s no longer exists; starting it again",
                         json.dumps(listed.key, ensure_ascii=False))
                resumed = None
            if resumed is not None:
                return resumed
        return self._create(listed, destination_key, head, plan, check, server_side=server_side)

    def _create(self, listed: ListedObject, destination_key: str, head: dict[str, Any],
                plan: tuple[int, Optional[tuple[int, ...]]], check: IntegrityCheck, *,
                server_side: bool) -> MultipartCopy:
        services = self.services
        tags = services.tags_if_any(listed.key, None)
        arguments = ObjectAttributes.from_response(head, tags).upload_arguments(services.config)
        upload_checksum = check.upload_checksum(server_side=server_side)
        try:
            created = services.retries.call(lambda: services.destination.client.create_multipart_upload(
                Bucket=services.destination.bucket, Key=destination_key, **arguments,
                **(upload_checksum.create_arguments() if upload_checksum else {})),
                what=f"CreateMultipartUpload of {destination_key}")
        except botocore.exceptions.ClientError as error:
            raise S3CallFailed(error, action="s3:PutObject", role="destination") from error
        services.permissions.allowed("s3:PutObject")
        upload = UploadRecord(upload_id=created["UploadId"], destination_key=destination_key,
                              source_etag=listed.etag, size=listed.size, part_size=plan[0], part_sizes=plan[1],
                              part_etags_are_md5=not etag_is_opaque(created))
        copy = MultipartCopy(listed, upload, check, upload_checksum=upload_checksum, services=services,
                             server_side=server_side)
        # Saved at once, not at the next tick: a kill -9 now must not orphan the upload.
        services.progress.uploads.record(listed.key, copy.record(), digest=self._digest_of(copy))
        services.progress.save(services.status.summary())
        self._abort_unrecorded_uploads(destination_key, keep=copy.upload_id)
        LOG.info("started %smultipart upload of %s (%s, %d parts of %s, verified by %s)",
                 "server-side " if server_side else "", json.dumps(listed.key, ensure_ascii=False),
                 format_size(listed.size), len(copy.parts),
                 format_size(plan[0]) if plan[1] is None else "the source's own sizes", check.method)
        return copy

    @staticmethod
    def _digest_of(copy: MultipartCopy) -> Optional[tuple[str, OrderedDigest]]:
        return (copy.check.identity(), copy.digest) if copy.digest is not None else None

    def _resume(self, listed: ListedObject, destination_key: str, plan: tuple[int, Optional[tuple[int, ...]]],
                upload: UploadRecord, check: IntegrityCheck, *, server_side: bool) -> Optional[MultipartCopy]:
        """Continue a recorded upload with only its missing parts, whichever mode uploaded them. None
        when the upload cannot be continued (it is then aborted). UploadGone when S3 no longer has it."""
        services = self.services
        recorded_checksum = upload.checksum_algorithm
        # An upload of a source without a checksum goes on with whatever its parts carry (ours, or none
        # when the progress file predates part checksums); one of a source with a checksum needs that one.
        upload_checksum = (check.upload_checksum(server_side=server_side) if check.checksum is not None
                           else upload.upload_checksum)
        copy = MultipartCopy(listed, upload, check, upload_checksum=upload_checksum, services=services,
                             server_side=server_side)
        if (upload.source_etag != listed.etag or upload.size != listed.size
                or (upload.part_size, upload.part_sizes) != plan or upload.destination_key != destination_key
                or (check.checksum is not None and recorded_checksum != check.checksum_algorithm)):
            copy.abandon("the source object or the part size changed since the upload began")
            return None
        if recorded_checksum and not computable(recorded_checksum):  # begun where awscrt was installed
            copy.abandon(f"its parts carry {recorded_checksum} checksums, which this installation cannot "
                         "compute (pip install -r requirements.txt installs awscrt)")
            return None
        try:
            uploaded = self._uploaded_parts(copy, upload)
        except botocore.exceptions.ClientError as error:
            if classify(error) is not ErrorKind.UPLOAD_GONE:
                raise S3CallFailed(error, action="s3:ListMultipartUploadParts", role="destination") from error
            services.progress.uploads.forget(listed.key)
            raise UploadGone() from None
        hashed = self._take_up_digest(copy, upload, uploaded)
        for number, part in uploaded.items():
            if number <= hashed or copy.digest is None:
                copy.part_done(number, part.etag, part.checksum)
            else:
                copy.to_recheck[number] = part
        LOG.info("resuming multipart upload of %s: %d of %d parts already uploaded%s",
                 json.dumps(listed.key, ensure_ascii=False), len(uploaded), len(copy.parts),
                 f", {len(copy.to_recheck)} of them to be read again and compared with the source"
                 if copy.to_recheck else "")
        services.progress.uploads.record(listed.key, copy.record(), digest=self._digest_of(copy))
        return copy

    def _uploaded_parts(self, copy: MultipartCopy, upload: UploadRecord) -> dict[int, UploadedPart]:
        """The parts S3 has of the upload at their planned size, with their checksums: ListParts has
        them on S3, and our own record has what we sent. Server quirk (moto, SeaweedFS): their ListParts
        omits the checksums, so the recorded ones stand in."""
        destination = self.services.destination
        planned = {part.number: part.size for part in copy.parts}
        checksum_field = f"Checksum{copy.part_algorithm}" if copy.part_algorithm else ""
        uploaded: dict[int, UploadedPart] = {}
        for page in pages(destination, "list_parts", Bucket=destination.bucket, Key=copy.destination_key,
                          UploadId=copy.upload_id):
            for part in page.get("Parts", ()):
                number = part["PartNumber"]
                checksum = (part.get(checksum_field) or upload.part_checksums.get(number)) if checksum_field else None
                # A part copied server-side has no bytes here to compute its checksum again from, and the
                # completion must name it: without one it is copied again.
                if planned.get(number) == part["Size"] and (checksum or not (checksum_field and copy.server_side)):
                    uploaded[number] = UploadedPart(part["ETag"], checksum)
        return uploaded

    @staticmethod
    def _take_up_digest(copy: MultipartCopy, upload: UploadRecord, uploaded: dict[int, UploadedPart]) -> int:
        """Restore the digest the last run saved, when it belongs to this check and every part it
        hashed is still the one S3 has (the same ETag as recorded); the number of parts it hashed."""
        saved = upload.digest
        if copy.digest is None or upload.recheck or not saved or saved.get("identity") != copy.check.identity():
            return 0
        hashed = saved["next_part"] - 1
        if any(number not in uploaded or upload.parts.get(number, "").strip('"') != uploaded[number].etag.strip('"')
               for number in range(1, hashed + 1)):
            return 0
        try:
            copy.digest = copy.check.new_digest(saved)
        except (ValueError, KeyError, TypeError):  # a state this machine cannot take up (no OpenSSL here)
            return 0
        return hashed

    def _completed_before_the_stop(self, listed: ListedObject, destination_key: str, upload: UploadRecord) -> bool:
        """Whether the destination holds the object the recorded upload was completing when the last
        run stopped (killed between S3's completion and the progress save). Then it is settled as
        done, not copied again."""
        proof = self.services.destination_holds(destination_key, upload.completing)
        if proof is None:
            return False
        LOG.info("%s was completed at the destination just before the last run stopped (its %s is what the "
                 "uploaded parts make); not copied again", json.dumps(listed.key, ensure_ascii=False), proof)
        self.services.progress.mark_done(listed.key, listed.size)
        self.services.status.skipped()
        return True

    def _abort_unrecorded_uploads(self, destination_key: str, *, keep: str) -> None:
        """Abort unfinished uploads of exactly this key other than ours (`keep`): a kill -9 between
        CreateMultipartUpload and the progress save that follows it leaves one, and so does a
        CreateMultipartUpload that S3 carried out but whose answer was lost, which botocore then
        sent again. The object is being written anyway. Best effort: without
        s3:ListBucketMultipartUploads, skip it."""
        destination = self.services.destination
        try:
            # URL-encoded: any other upload under this prefix, of a key XML cannot carry, would make the
            # whole answer unreadable (botocore asks so for ListObjects only).
            # retry_bodies: an answer damaged on the way is asked for again, or the upload it lists is orphaned.
            listing = self.services.retries.call(lambda: destination.client.list_multipart_uploads(
                Bucket=destination.bucket, Prefix=destination_key, EncodingType="url"),
                what=f"ListMultipartUploads of {destination_key}", retry_bodies=True)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError,
                botocore.parsers.ResponseParserError) as error:  # an answer botocore cannot read, too
            if error_code(error) in DENIED_CODES:
                LOG.debug("could not list unfinished uploads of %s: %s", destination_key, error)
            else:
                LOG.warning("could not list the unfinished uploads of %s to abort any left by a lost answer (%s): "
                            "aws s3api list-multipart-uploads shows them", destination_key, error_line(error))
            return
        for upload in listing.get("Uploads", ()):
            if listed_key(upload["Key"], listing) == destination_key and upload["UploadId"] != keep:
                self.services.abort_upload(destination_key, upload["UploadId"],
                                           "an unfinished upload of the same key that no progress file records")

    def abort_recorded(self, source_key: str, reason: str) -> None:
        """Abort an upload a previous run kept for resume that can no longer be continued."""
        upload = self.services.progress.uploads.record_for(source_key)
        if upload is not None:
            self.services.abort_upload(upload.destination_key, upload.upload_id, reason)
            self.services.progress.uploads.forget(source_key)


def action_and_side(error: BaseException) -> tuple[str, str]:
    """The action and side an S3CallFailed names; ("", "") for any other error."""
    if isinstance(error, S3CallFailed):
        return error.action, error.role
    return "", ""


class FailurePolicy:
    """What an error means for its object and for the run: stop quietly (Ctrl-C), nothing to copy (the
    source is gone), copy it again (streamed instead of server-side, its parts compared again with the
    source, or whole, OBJECT_ATTEMPTS times in all), fail it, or stop the run (FatalTransferError in
    `run.fatal`). Objects to copy again wait in `restarts` for the scheduler. Called from workers and
    the main thread."""

    def __init__(self, *, source: ConnectedSide, destination: ConnectedSide, progress: "ProgressStore",
                 status: "StatusReporter", run: RunStop, permissions: PermissionBreaker) -> None:
        self.source = source
        self.destination = destination
        self.progress = progress
        self.status = status
        self.run = run
        self.permissions = permissions
        self.restarts: "queue.SimpleQueue[tuple[ListedObject, int]]" = queue.SimpleQueue()

    def unit_failed(self, listed: ListedObject, attempt: int, error: BaseException, *,
                    upload: Optional[MultipartCopy] = None, action: str = "") -> None:
        """Settle one failed unit of `listed` (its `attempt`-th copy). The first failing part of a
        multipart object abandons its upload and settles the object; failures of its sibling parts
        that were already in flight change nothing."""
        if isinstance(error, StopRequested):
            return  # left as it is: the upload stays recorded, the key stays pending, a rerun resumes
        kind = classify(error)
        # Deleted since it was listed (an inventory report may be days old). NoSuchKey comes from a GET or,
        # for a server-side copy, from the destination's CopyObject; a bare 404 from a HeadObject.
        if kind is ErrorKind.NOT_FOUND and (error_code(error) == "NoSuchKey" or action_and_side(error)[1] == "source"):
            if upload is None or upload.abandon("the source object no longer exists"):
                self.source_vanished(listed.key)
            return
        if isinstance(error, ServerSideRefused):
            if upload is None or upload.abandon("S3 refused the server-side copy; streaming it instead"):
                self.restarts.put((listed, attempt))
            return
        if isinstance(error, PartsToRecheck) and upload is not None and attempt < OBJECT_ATTEMPTS:
            if upload.claim_recheck():
                LOG.warning("%s: %s; reading its parts from the source again to upload again those S3 holds "
                            "differently", json.dumps(listed.key, ensure_ascii=False), error)
                self.progress.uploads.recheck(listed.key)
                self.restarts.put((listed, attempt + 1))
            return
        why = self._why_copied_again(error)
        if upload is not None and not upload.abandon(why or str(error)):
            return
        if why and attempt < OBJECT_ATTEMPTS:
            LOG.warning("%s: %s; copying it again whole", json.dumps(listed.key, ensure_ascii=False), why)
            self.restarts.put((listed, attempt + 1))
            return
        if why:
            error = ObjectFailure(f"{why} (after {OBJECT_ATTEMPTS} attempts)")
        self.settle(listed.key, error, action=action_and_side(error)[0] or action, side=self.side_named_by(error))

    @staticmethod
    def _why_copied_again(error: BaseException) -> str:
        """Why an object is copied again whole after this error; "" when it is not."""
        if isinstance(error, (IntegrityMismatch, PartsToRecheck)):
            return str(error)
        if isinstance(error, SourceChanged):
            return "the source object changed during the copy (If-Match failed); it is read again at its new version"
        if classify(error) is ErrorKind.UPLOAD_GONE:
            return "the multipart upload disappeared from the destination"
        return ""

    def side_named_by(self, error: BaseException) -> ConnectedSide:
        """The side an error is about: the one whose bucket S3 names in it (NoSuchBucket's BucketName,
        the source's for an UploadPartCopy whose source is gone, though the request went to the
        destination), else the side the request went to."""
        named = error_detail(error, "BucketName")
        if named and self.source.bucket != self.destination.bucket:
            if named == self.source.bucket:
                return self.source
            if named == self.destination.bucket:
                return self.destination
        return self.destination if action_and_side(error)[1] == "destination" else self.source

    def settle(self, key: str, error: BaseException, *, action: str = "", side: Optional[ConnectedSide] = None) -> None:
        """Record the failure of one object, or stop the run if no object could succeed either."""
        side = side or self.source
        if isinstance(error, FatalTransferError):
            self.run.stop(error)
            return
        if isinstance(error, ObjectFailure):
            reason = str(error)
        else:
            reason = explain_error(error, access=side.access, bucket=side.bucket, action=action or "the copy",
                                   key=key if side is self.source else "")
            # A KMS denial is about the object's key: other objects, under other keys, may be readable.
            kind = classify(error)
            if kind in FATAL_KINDS or (kind is ErrorKind.DENIED and self.permissions.denied(action)):
                self.run.stop(FatalTransferError(reason))
                if error_code(error) not in DENIED_CODES:
                    return  # no key is to blame for expired credentials or a missing bucket
        if not isinstance(error, (ObjectFailure, S3CallFailed, botocore.exceptions.ClientError)):
            LOG.info("unexpected error for %s", json.dumps(key, ensure_ascii=False), exc_info=error)
        LOG.error("FAILED %s: %s", json.dumps(key, ensure_ascii=False), reason)
        self.progress.mark_failed(key, reason)
        self.status.object_failed()

    def source_vanished(self, key: str) -> None:
        """A key listed (or named by an inventory) that the source no longer has: not a failure, since
        there is nothing left to copy, but told, in the log and the final report's count. Called from
        workers and the lister too."""
        LOG.info("%s no longer exists in the source; nothing to copy", json.dumps(key, ensure_ascii=False))
        self.progress.vanished(key)
        self.status.vanished()

    def current_version(self, key: str) -> Optional[ListedObject]:
        """A failed or changed key, as it is now: None (and settled) when it is gone or unreadable."""
        try:
            head = self.source.retries.call(
                lambda: self.source.client.head_object(Bucket=self.source.bucket, Key=key),
                what=f"HeadObject of {key}")
        except botocore.exceptions.ClientError as error:
            if classify(error) is ErrorKind.NOT_FOUND:
                self.source_vanished(key)
                return None
            self.settle(key, error, action="s3:GetObject", side=self.source)
            return None
        return ListedObject(key=key, size=head["ContentLength"], etag=head["ETag"],
                            storage_class=head.get("StorageClass", "STANDARD"))


class UnitScheduler:
    """Hands units of work to a bounded pool: a worker and `cost` bytes of the MemoryBudget are taken
    before a unit is submitted and given back when it ends, which is what bounds memory (never the
    whole listing queued); and ticks on time: the status line, the progress file's saves, and the
    announcement of a stop."""

    def __init__(self, *, budget: MemoryBudget, pool: concurrent.futures.ThreadPoolExecutor,
                 progress: "ProgressStore", status: "StatusReporter", run: RunStop,
                 announce_stop: bool = True) -> None:
        self._budget = budget
        self._pool = pool
        self._progress = progress
        self._status = status
        self._run = run
        self._in_flight: set[concurrent.futures.Future[None]] = set()
        self._in_flight_lock = threading.Lock()
        self._stop_announced = not announce_stop  # a worker process's parent announces it, once
        self._last_tick = 0.0
        self.pipeline: Optional[SmallObjectPipeline] = None  # the small objects it also ticks and waits for
        self.processes: Optional[WorkerProcesses] = None  # --processes: the objects handed to them, likewise

    def submit(self, work: Callable[[], None], *, cost: int) -> bool:
        """Hand one unit to the pool once a worker and `cost` bytes of the memory budget are free;
        False (nothing submitted) when the run stops while waiting."""
        if not self.reserve(cost):
            return False
        self.submit_reserved(work, cost=cost)
        return True

    def reserve(self, cost: int) -> bool:
        """Take a unit and `cost` bytes of the memory budget, ticking while they are not free; False
        (nothing taken) when the run stops while waiting."""
        while not self._budget.acquire(cost, timeout=TICK_SECONDS):
            self.tick()
            if self._run.should_stop():
                return False
        if self._run.should_stop():
            self._budget.release(cost)
            return False
        return True

    def submit_reserved(self, work: Callable[[], None], *, cost: int) -> None:
        """Hand the pool a unit whose `cost` is already taken from the memory budget (a small object
        SmallObjectPipeline hands off); given back when it ends. Never waits: crt's callbacks call it."""
        future = self._pool.submit(work)
        with self._in_flight_lock:
            self._in_flight.add(future)
        future.add_done_callback(lambda finished: self._unit_finished(finished, cost))

    def _unit_finished(self, future: "concurrent.futures.Future[None]", cost: int) -> None:
        with self._in_flight_lock:
            self._in_flight.discard(future)
        self._budget.release(cost)
        if self.pipeline is not None:
            self.pipeline.start_what_fits()

    def idle(self) -> bool:
        """Whether no unit is in flight. The pipeline is asked first: it hands units to the pool
        before it forgets them."""
        if self.pipeline is not None and not self.pipeline.idle():
            return False
        if self.processes is not None and not self.processes.idle():
            return False
        with self._in_flight_lock:
            return not self._in_flight

    def wait_a_tick(self) -> None:
        """Wait until a unit in flight ends, or TICK_SECONDS; then tick."""
        with self._in_flight_lock:
            pending = set(self._in_flight)
        if self.processes is not None and not pending and not self.processes.idle():
            self.processes.wait(TICK_SECONDS)
        elif pending or self.pipeline is None:
            concurrent.futures.wait(pending, timeout=TICK_SECONDS, return_when=concurrent.futures.FIRST_COMPLETED)
        else:
            self.pipeline.wait(TICK_SECONDS)
        self.tick()

    def tick(self) -> None:
        self._last_tick = time.monotonic()
        if self.pipeline is not None:
            self.pipeline.tick()
        if self.processes is not None:
            self.processes.tick()
        if self._run.stopping.is_set() and not self._stop_announced:
            self._stop_announced = True
            LOG.warning("Interrupted: finishing the parts in flight and saving progress (Ctrl-C again to quit now).")
        self._status.tick()
        try:
            self._progress.save_if_due(self._status.summary())
        except FatalTransferError as error:  # the progress can no longer be saved: stopped as any such failure
            self._run.stop(error)

    def tick_if_due(self) -> None:
        """Tick on time, not only while waiting: when workers free up faster than TICK_SECONDS and
        the listing is ahead, the scheduler never waits, and without this the progress file would not
        be saved (nor the status drawn) until the run ended."""
        if time.monotonic() - self._last_tick >= TICK_SECONDS:
            self.tick()

    def shutdown(self) -> None:
        if self.pipeline is not None:
            self.pipeline.finish()  # before the pool, to which its callbacks may still hand objects
        if self.processes is not None:
            self.processes.finish()
        self._pool.shutdown(wait=True, cancel_futures=True)


class TransferEngine:
    """Settles every listed object: the main thread lists, plans and submits each object's units
    (a small object, or the parts of a large one) through the UnitScheduler; workers copy them
    (SmallObjectCopier, MultipartCopy) and report to the ProgressStore; whatever a unit raises goes
    to the FailurePolicy, and the objects it sends back are copied again. The main thread writes the
    progress file, and a worker only just before it completes an upload (ProgressStore.save).
    Every collaborator is passed in (build_engine builds them for copy_job)."""

    def __init__(self, config: RunSettings, *, scheduler: UnitScheduler, policy: FailurePolicy,
                 small: SmallObjectCopier, multipart: MultipartUploads, copy_mode: CopyModeChoice,
                 progress: "ProgressStore", status: "StatusReporter", run: RunStop) -> None:
        self.config = config
        self.scheduler = scheduler
        self.policy = policy
        self.small = small
        self.multipart = multipart
        self.copy_mode = copy_mode
        self.progress = progress
        self.status = status
        self.run_stop = run
        self.pipeline: Optional[SmallObjectPipeline] = None  # build_engine's, when the transport has callbacks
        # --processes: who takes the objects this process does not copy itself (see WorkerProcesses)
        self.delegate: Optional[UnitDelegate] = None

    def run(self, listing: ListingWindow, retry_keys: Iterable[str]) -> None:
        should_stop = self.run_stop.should_stop
        try:
            for key in retry_keys:
                if should_stop():
                    break
                retried = self.policy.current_version(key)
                if retried is not None:
                    self._schedule(retried, attempt=1)
            while not should_stop():
                self._drain_restarts()
                self.scheduler.tick_if_due()
                listed = listing.next(self.scheduler.tick)
                if listed is None:
                    if not should_stop():
                        self.progress.listing_finished()
                        self.status.listing_complete = True
                    break
                self.status.listed(listed.size)
                if self.progress.is_done_beyond_watermark(listed.key):
                    self.progress.listed(listed.key, already_done=True)
                    continue
                self.progress.listed(listed.key)
                self._schedule(listed, attempt=1)
            self.scheduler.tick()  # a stop is announced even if nothing was left in flight to wait for
            self._wait_for_in_flight()
            if self.status.listing_complete and not should_stop():
                # Every listed key is settled, so an upload still recorded belongs to a key that was
                # deleted from the source (or filtered away) since an earlier run: nothing will finish it.
                for key in self.progress.uploads.keys():
                    self.multipart.abort_recorded(key, "the source object no longer exists")
        except StopRequested:
            pass  # Ctrl-C while the scheduler's own request waited out a busy S3: the units in flight finish below
        finally:
            self.scheduler.shutdown()
        if self.run_stop.fatal is not None:
            raise self.run_stop.fatal

    def _wait_for_in_flight(self) -> None:
        while True:
            self._drain_restarts()
            if self.scheduler.idle() and (self.policy.restarts.empty() or self.run_stop.should_stop()):
                return
            self.scheduler.wait_a_tick()

    def _drain_restarts(self) -> None:
        while not self.run_stop.should_stop():
            try:
                changed, attempt = self.policy.restarts.get_nowait()
            except queue.Empty:
                return
            fresh = self.policy.current_version(changed.key)
            if fresh is not None:
                self._schedule(fresh, attempt=attempt)

    def _schedule(self, listed: ListedObject, *, attempt: int) -> None:
        destination_key = map_destination_key(listed.key, self.config.job.source, self.config.job.destination)
        refusal = why_uncopyable(listed.key[len(self.config.job.source.prefix):], destination_key, listed.size)
        if refusal is not None:
            self.multipart.abort_recorded(listed.key, refusal)
            self.policy.settle(listed.key, ObjectFailure(refusal))
            return
        server_side = self.copy_mode.server_side()
        threshold = self.config.tuning.multipart_threshold
        one_request = copied_in_one_request(destination_key, listed.size, multipart_threshold=threshold)
        if one_request:
            self.multipart.abort_recorded(listed.key, "the object is now copied with one request, not in parts")
        if self.delegate is not None and self.delegate.take(listed, attempt, one_request=one_request,
                                                            server_side=server_side):
            return
        if one_request:
            if self.pipeline is not None and not server_side:
                self.pipeline.offer(listed, destination_key, attempt, tick=self.scheduler.tick)
                return
            copy = self.small.copy_server_side if server_side else self.small.copy_streamed
            self.scheduler.submit(lambda: self._guarded(listed, attempt, None, copy, listed, destination_key),
                                  cost=0 if server_side else listed.size)
            return
        try:
            upload = self.multipart.open(listed, destination_key, server_side=server_side)
        except (SourceChanged, StopRequested) as error:
            self.policy.unit_failed(listed, attempt, error)
            return
        except Exception as error:  # noqa: BLE001 - settled as this object's failure, never swallowed
            self.policy.unit_failed(listed, attempt, error, action="s3:CreateMultipartUpload")
            return
        if upload is not None:  # None: a previous run completed it just before it was stopped
            self._schedule_parts(listed, attempt, upload)

    def _schedule_parts(self, listed: ListedObject, attempt: int, upload: MultipartCopy) -> None:
        if not upload.missing_parts():  # every part survived a previous run, and is hashed
            self.scheduler.submit(lambda: self._guarded(listed, attempt, upload, upload.complete), cost=0)
            return
        # In part order, so that the part the OrderedDigest waits for is always in flight.
        copy_part = upload.copy_part_server_side if upload.server_side else upload.copy_part
        for part in upload.missing_parts():
            if upload.abandoned:  # a part already failed and settled the object
                return
            if not self.scheduler.submit(lambda part=part: self._guarded(listed, attempt, upload, copy_part, part),
                                         cost=0 if upload.server_side else part.size):
                return

    def hand_off(self, listed: ListedObject, attempt: int, cost: int, work: Callable[[], None]) -> None:
        """SmallObjectPipeline's: the rest of a small object's copy, to a worker, its budget held."""
        self.scheduler.submit_reserved(lambda: self._guarded(listed, attempt, None, work), cost=cost)

    def _guarded(self, listed: ListedObject, attempt: int, upload: Optional[MultipartCopy],
                 work: Callable[..., None], *args: Any) -> None:
        """Run one unit; turn whatever it raises into the object's outcome. Never lets an error vanish."""
        if self.run_stop.should_stop():
            return
        self.status.worker_busy(+1)
        try:
            work(*args)
        except Exception as error:  # noqa: BLE001 - every error becomes an outcome, see FailurePolicy
            self.policy.unit_failed(listed, attempt, error, upload=upload)
        finally:
            self.status.worker_busy(-1)


def build_engine(config: RunSettings, *, source: ConnectedSide, destination: ConnectedSide, transport: BodyTransport,
                 progress: "ProgressStore", status: "StatusReporter", stopping: threading.Event,
                 copy_mode: CopyModeChoice, worker_job: Optional[Callable[[int], "WorkerJob"]] = None,
                 in_worker_process: bool = False) -> TransferEngine:
    """A TransferEngine of its parts, for this job: one RunStop, PermissionBreaker and memory budget
    shared by them all; with `worker_job` (--processes), the worker processes that copy its small
    objects, under that same budget; `in_worker_process`, the engine of one of them."""
    run = RunStop(stopping)
    permissions = PermissionBreaker()
    bandwidth = TokenBucket(config.tuning.max_bandwidth, stopping) if config.tuning.max_bandwidth else None
    services = CopyServices(config, source=source, destination=destination, transport=transport, progress=progress,
                            status=status, run=run, permissions=permissions, copy_mode=copy_mode,
                            planner=IntegrityPlanner(source), bandwidth=bandwidth)
    budget = MemoryBudget(config.tuning.memory_limit, max_units=config.tuning.max_workers)
    scheduler = UnitScheduler(budget=budget, pool=concurrent.futures.ThreadPoolExecutor(config.tuning.max_workers,
                                                                         thread_name_prefix="worker"),
                              progress=progress, status=status, run=run, announce_stop=not in_worker_process)
    policy = FailurePolicy(source=source, destination=destination, progress=progress, status=status, run=run,
                           permissions=permissions)
    small = SmallObjectCopier(services)
    engine = TransferEngine(config, scheduler=scheduler, policy=policy, small=small,
                            multipart=MultipartUploads(services), copy_mode=copy_mode, progress=progress,
                            status=status, run=run)
    if worker_job is not None:
        engine.delegate = scheduler.processes = WorkerProcesses(
            config, job=worker_job, scheduler=scheduler, budget=budget, progress=progress, status=status,
            policy=policy, run=run)
    # --max-bandwidth and --max-requests-per-second wait before a request, which a callback must not:
    # workers carry small objects then.
    elif transport.callbacks is not None and bandwidth is None and not config.tuning.max_requests_per_second:
        engine.pipeline = scheduler.pipeline = SmallObjectPipeline(
            small, transport.callbacks, budget=budget, hand_off=engine.hand_off,
            # Short, so the copies keep to listing order (a watermark close behind) while the main
            # thread, woken when half of it has gone, still sleeps through most objects.
            queue_length=2 * config.tuning.max_workers, settle_at_once=in_worker_process)
    return engine


# -- worker processes: --processes N ----------------------------------------------------------
#
# One process runs its Python on one core at a time, and a small object costs the process more CPU
# than its bytes do. With --processes N the parent keeps all that is the job's own (the listing, the
# progress file and its lock, multipart uploads and server-side copies, the log, the status line and
# the report) and hands the objects below the multipart threshold, in batches, to N worker processes,
# each with its own connections and engine. Only the listing's entries cross: a worker GETs and PUTs
# each body itself. What the parent hands out it counts against the job's --max-workers and
# --memory-limit (its own MemoryBudget), so the bound holds for the job, not per process. An object is
# settled (done, failed, gone) only when its worker says so: the objects of a worker that dies are
# handed to another, and a parent that dies takes its workers with it (PR_SET_PDEATHSIG, and the end
# of their pipe), leaving a progress file whose pending keys the rerun copies, as after any kill -9.


class UnitDelegate(Protocol):
    """Takes, or declines, an object TransferEngine is about to copy (WorkerProcesses in a parent,
    HandBack in a worker process)."""

    def take(self, listed: ListedObject, attempt: int, *, one_request: bool, server_side: bool) -> bool: ...


PROCESS_BATCH_LIMIT = 64  # objects in one hand-off to a worker process
# Messages are pickled here and sent as bytes: Connection.send's own pickler is made anew for every
# message, a cost the parent would pay for every batch of every worker.
PIPE_PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL
PROCESS_DEATHS_BEFORE_STOP = 5  # worker processes that die unasked, in one run, before it stops
PROCESS_END_SECONDS = 120.0  # how long the parent waits for its workers to finish what they hold


@dataclasses.dataclass(frozen=True)
class WorkerJob:
    """What a worker process starts from (sent to it pickled, over its pipe from the parent)."""

    config: RunSettings
    source: SideReach
    destination: SideReach
    engine: EngineChoice
    parent_pid: int
    number: int


class WorkerProcess:
    """The parent's side of one worker process: the process, its pipe, the objects it holds (by key,
    with the budget each took) and those not yet sent. A thread of its own reads what the worker says
    and passes each batch of messages to `heard`."""

    def __init__(self, number: int, job: WorkerJob, heard: Callable[["WorkerProcess", list[tuple]], None],
                 context: Any) -> None:
        self.number = number
        parent_end, child_end = context.Pipe()
        self.process = context.Process(target=worker_process_main, args=(job, child_end), daemon=True,
                                       name=f"s3-bulk-transfer worker {number}")
        self.process.start()
        child_end.close()
        self.connection = parent_end
        self.held: dict[str, tuple[ListedObject, int]] = {}
        self.unsent: list[ListedObject] = []
        self.ended = False  # it said it ended, or it died
        threading.Thread(target=self._read, args=(heard,), daemon=True, name=f"process-{number}-reader").start()

    def _read(self, heard: Callable[["WorkerProcess", list[tuple]], None]) -> None:
        try:
            while True:
                heard(self, pickle.loads(self.connection.recv_bytes()))
        except (EOFError, OSError):
            heard(self, [("gone",)])

    def send(self, message: tuple) -> None:
        with contextlib.suppress(OSError):  # a worker that died: its reader says so
            self.connection.send_bytes(pickle.dumps(message, PIPE_PICKLE_PROTOCOL))

    def flush(self) -> None:
        if self.unsent and not self.ended:
            batch, self.unsent = self.unsent, []
            # As tuples of the fields in order: a dataclass pickles its fields by name, which costs this
            # process more per object.
            self.send(("work", [tuple(vars(listed).values()) for listed in batch]))

    def how_it_ended(self) -> str:
        self.process.join(timeout=5)
        code = self.process.exitcode
        if code is not None and code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return "still running" if code is None else f"exit code {code}"


class WorkerProcesses:
    """The parent's UnitDelegate under --processes: takes every object copied with one GET and one
    PUT, holds its budget, hands it to the worker holding the fewest, and settles it in the progress
    store, the status and the log as the worker reports. The workers' reader threads settle objects
    (so the budget frees as soon as a worker says so); the main thread hands out objects and, on its
    ticks, replaces a worker that died: a process started from a reader thread would die with it
    (PR_SET_PDEATHSIG follows the thread that started it)."""

    def __init__(self, config: RunSettings, *, job: Callable[[int], WorkerJob], scheduler: UnitScheduler,
                 budget: MemoryBudget, progress: "ProgressStore", status: "StatusReporter", policy: FailurePolicy,
                 run: RunStop) -> None:
        self._job = job
        self._scheduler = scheduler
        self._budget = budget
        self._progress = progress
        self._status = status
        self._policy = policy
        self._run = run
        self._context = multiprocessing.get_context("spawn")  # fork would copy the parent's threads' locks
        self._changed = threading.Condition()  # guards the workers' `held` and `unsent`; notified as they change
        self._endings: "queue.SimpleQueue[WorkerProcess]" = queue.SimpleQueue()  # died, for the main thread
        count = config.tuning.processes - 1  # this process is the first of them
        self._batch = max(1, min(PROCESS_BATCH_LIMIT, config.tuning.max_workers // (2 * count)))
        self._workers = [WorkerProcess(number, job(number), self._heard, self._context) for number in range(count)]
        self._deaths = 0
        self._stopped = False
        self._finishing = False

    def take(self, listed: ListedObject, attempt: int, *, one_request: bool, server_side: bool) -> bool:
        if not one_request or server_side:
            return False
        if not self._budget.try_acquire(listed.size):
            self._flush()  # the objects waiting to be sent are what frees the budget
            if not self._scheduler.reserve(listed.size):
                return True  # the run stops: the key stays pending, for the rerun
        self._hand(listed, listed.size)
        return True

    def _hand(self, listed: ListedObject, cost: int) -> None:
        with self._changed:
            live = [worker for worker in self._workers if not worker.ended]
            if not live or self._stopped:
                self._budget.release(cost)
                return
            worker = min(live, key=lambda candidate: len(candidate.held))
            worker.held[listed.key] = (listed, cost)
            self._status.worker_busy(+1)
            worker.unsent.append(listed)
            if len(worker.unsent) >= self._batch:
                worker.flush()

    def _flush(self) -> None:
        with self._changed:
            for worker in self._workers:
                worker.flush()

    def idle(self) -> bool:
        with self._changed:
            return all(worker.ended or not worker.held for worker in self._workers)

    def tick(self) -> None:
        while True:
            try:
                self._replace(self._endings.get_nowait())
            except queue.Empty:
                break
        if self._run.should_stop() and not self._stopped:
            with self._changed:
                self._stopped = True
                for worker in self._workers:
                    for listed in worker.unsent:
                        self._release(worker, listed.key)
                    worker.unsent.clear()
                    worker.send(("stop",))
        self._flush()

    def wait(self, timeout: float) -> None:
        """Until a worker settles an object or ends, or `timeout`."""
        with self._changed:
            self._changed.wait(timeout)

    def _release(self, worker: WorkerProcess, key: str) -> ListedObject:
        """Under self._changed."""
        listed, cost = worker.held.pop(key)
        self._budget.release(cost)
        self._status.worker_busy(-1)
        return listed

    def _heard(self, worker: WorkerProcess, messages: list[tuple]) -> None:
        """A worker's messages, on its reader thread."""
        with self._changed:
            for message in messages:
                self._settle(worker, message)
            self._changed.notify_all()

    def _settle(self, worker: WorkerProcess, message: tuple) -> None:
        kind, *details = message
        if kind == "done":
            self._release(worker, details[0])
            self._progress.mark_done(details[0], details[1])
        elif kind == "failed":
            self._release(worker, details[0])
            self._progress.mark_failed(details[0], details[1])
        elif kind == "vanished":
            self._release(worker, details[0])
            self._progress.vanished(details[0])
        elif kind == "status" and details[0] in ForwardedStatus.FORWARDED:
            name, args, keywords = details
            getattr(self._status, name)(*args, **keywords)
        elif kind == "returned":  # changed since it was listed, into one for the parent: multipart
            self._policy.restarts.put((self._release(worker, details[0]), 1))
        elif kind == "log":
            LOG.log(details[0], "%s", details[1])
        elif kind == "fatal":
            self._run.stop(FatalTransferError(details[0]))
        elif kind == "cpu":  # its last word: what it cost, for a person sizing --processes (bench/ reads it)
            LOG.info("worker process %d (pid %s) used %.2f s of CPU, %.2f s of it starting", worker.number,
                     worker.process.pid, *details)
        elif kind == "ended":
            worker.ended = True
            for key in list(worker.held):  # stopped before these were started: pending, for the rerun
                self._release(worker, key)
        elif kind == "gone" and not worker.ended:
            worker.ended = True
            self._endings.put(worker)

    def _replace(self, worker: WorkerProcess) -> None:
        """A worker died unasked (killed, out of memory): its objects go to a new one in its place."""
        how = worker.how_it_ended()
        stopping = self._finishing or self._run.should_stop()
        if not stopping:
            self._deaths += 1
        if stopping or self._deaths >= PROCESS_DEATHS_BEFORE_STOP:
            with self._changed:
                for key in list(worker.held):  # pending, for the rerun
                    self._release(worker, key)
        if stopping:
            return
        if self._deaths >= PROCESS_DEATHS_BEFORE_STOP:
            self._run.stop(FatalTransferError(
                f"{self._deaths} worker processes ended unexpectedly (the last: {how}), so the run stopped. If the "
                "system killed them for memory (dmesg says so), rerun with fewer --max-workers or --processes; "
                "rerun the same command to resume."))
            return
        LOG.warning("worker process %d (pid %s) ended unexpectedly (%s): its %d objects in flight are copied by "
                    "a new one", worker.number, worker.process.pid, how, len(worker.held))
        replacement = WorkerProcess(worker.number, self._job(worker.number), self._heard, self._context)
        with self._changed:
            self._workers[self._workers.index(worker)] = replacement
            held, worker.held = list(worker.held.values()), {}
            self._status.worker_busy(-len(held))
        for listed, cost in held:
            self._hand(listed, cost)  # its budget still held

    def finish(self) -> None:
        """End every worker: each finishes what it holds (all of it, unless the run stops), says so and
        exits; one that has not ended in PROCESS_END_SECONDS is killed."""
        self._finishing = True
        for worker in self._workers:
            worker.flush()
            worker.send(("stop",) if self._run.should_stop() else ("end",))
        deadline = time.monotonic() + PROCESS_END_SECONDS
        while not all(worker.ended for worker in self._workers) and time.monotonic() < deadline:
            self.wait(TICK_SECONDS)
            self.tick()
        for worker in self._workers:
            if worker.process.is_alive():
                worker.process.join(timeout=1)
            if worker.process.is_alive():
                LOG.warning("worker process %d did not end: killed", worker.number)
                worker.process.kill()
            worker.process.join()
            worker.connection.close()


# -- inside a worker process ----------------------------------------------------------------


class OutcomeSender:
    """A worker's messages to its parent, sent by a thread of their own: what accumulates while it
    writes goes in the next write, so the batches grow with the rate and add no wait."""

    _END = ("ended",)

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._messages: "queue.SimpleQueue[tuple]" = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._send, daemon=True, name="outcome-sender")
        self._thread.start()

    def put(self, message: tuple) -> None:
        self._messages.put(message)

    def _send(self) -> None:
        while True:
            batch = [self._messages.get()]
            with contextlib.suppress(queue.Empty):
                while len(batch) < 1_000:
                    batch.append(self._messages.get_nowait())
            try:
                self._connection.send_bytes(pickle.dumps(batch, PIPE_PICKLE_PROTOCOL))
            except OSError:
                os._exit(EXIT_INTERRUPTED)  # the parent is gone: nothing here can be recorded any more
            if batch[-1] is self._END:
                return

    def close(self) -> None:
        self._messages.put(self._END)
        self._thread.join()


class ForwardedLog(logging.Handler):
    """A worker's log records, to the parent's one log (and console), in order with its outcomes."""

    def __init__(self, sender: OutcomeSender) -> None:
        super().__init__(logging.INFO)
        self._sender = sender

    def emit(self, record: logging.LogRecord) -> None:
        self._sender.put(("log", record.levelno, record.getMessage()))


class OutcomeRecorder:
    """A worker's stand-in for the ProgressStore: what the engine records of each object goes to the
    parent, which keeps the job's one progress file. A worker copies no multipart object (HandBack
    returns those to the parent), so it records no upload."""

    def __init__(self, sender: OutcomeSender) -> None:
        self._sender = sender
        self.uploads = UploadsInFlight({}, threading.RLock(), changed=lambda: None)  # none, ever

    def mark_done(self, key: str, size: int) -> None:
        self._sender.put(("done", key, size))

    def mark_failed(self, key: str, reason: str) -> None:
        self._sender.put(("failed", key, reason))

    def vanished(self, key: str) -> None:
        self._sender.put(("vanished", key))

    def is_done_beyond_watermark(self, key: str) -> bool:
        return False

    def listed(self, key: str, *, already_done: bool = False) -> None:
        pass

    def listing_finished(self) -> None:
        pass

    def save_if_due(self, this_run: dict[str, Any]) -> None:
        pass


class ForwardedStatus(StatusReporter):
    """A worker's status counters, counted by the parent's StatusReporter instead."""

    FORWARDED = frozenset({"object_done", "object_failed", "vanished", "retried", "throttled"})

    def __init__(self, sender: OutcomeSender, *, max_workers: int) -> None:
        super().__init__(max_workers=max_workers, interval=float("inf"), live=False, plain=False)
        self._sender = sender

    def object_done(self, size: int, *, bytes_moved: int, verified_by: str, server_side: bool) -> None:
        self._sender.put(("status", "object_done", (size,),
                          {"bytes_moved": bytes_moved, "verified_by": verified_by, "server_side": server_side}))

    def object_failed(self) -> None:
        self._sender.put(("status", "object_failed", (), {}))

    def vanished(self) -> None:
        self._sender.put(("status", "vanished", (), {}))

    def retried(self) -> None:
        self._sender.put(("status", "retried", (), {}))

    def throttled(self) -> None:
        self._sender.put(("status", "throttled", (), {}))


class HandBack:
    """A worker's UnitDelegate: an object that must be copied in parts (it grew since it was
    listed) goes back to the parent, which keeps the multipart uploads' records."""

    def __init__(self, sender: OutcomeSender) -> None:
        self._sender = sender

    def take(self, listed: ListedObject, attempt: int, *, one_request: bool, server_side: bool) -> bool:
        if one_request and not server_side:
            return False
        self._sender.put(("returned", listed.key))
        return True


class HandedOutObjects:
    """A worker's listing: the objects its parent sends, in the order sent, until it says "end"."""

    _END = object()

    def __init__(self) -> None:
        self._objects: "queue.SimpleQueue[Any]" = queue.SimpleQueue()

    def add(self, objects: list[ListedObject]) -> None:
        for listed in objects:
            self._objects.put(listed)

    def end(self) -> None:
        self._objects.put(self._END)

    def next(self, on_wait: Callable[[], None]) -> Optional[ListedObject]:
        while True:
            try:
                listed = self._objects.get(timeout=TICK_SECONDS)
            except queue.Empty:
                on_wait()
                continue
            return None if listed is self._END else listed


def receive_work(connection: Any, handed: HandedOutObjects, stopping: threading.Event) -> None:
    """A worker's reader of its parent's messages; the parent gone, the worker goes at once."""
    try:
        while True:
            kind, *details = pickle.loads(connection.recv_bytes())
            if kind == "work":
                handed.add([ListedObject(*fields) for fields in details[0]])
            elif kind == "stop":
                stopping.set()
                handed.end()
            elif kind == "end":
                handed.end()
    except (EOFError, OSError):
        os._exit(EXIT_INTERRUPTED)


def cpu_seconds() -> float:
    """User and system CPU this process has used so far (its children not counted)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel kill this process when its parent dies (Linux's PR_SET_PDEATHSIG), so no worker
    goes on copying for a parent that can no longer record it; elsewhere the end of the pipe does it,
    a moment later."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(LINUX_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # it died before the above took effect
        os._exit(EXIT_INTERRUPTED)


LINUX_PR_SET_PDEATHSIG = 1  # prctl option, from linux/prctl.h


def worker_process_main(job: WorkerJob, connection: Any) -> None:
    """A worker process: copies what its parent hands it, with an engine of its own, and tells the
    parent how each object ended; ends when told, or at once when the parent is gone."""
    die_with_parent(job.parent_pid)
    for signum in (signal.SIGINT, signal.SIGTERM):  # sent to the whole process group: the parent decides
        signal.signal(signum, signal.SIG_IGN)
    sender = OutcomeSender(connection)
    LOG.handlers[:] = [ForwardedLog(sender)]
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    skip_caller_lookup_in_log_records()
    config, stopping = job.config, threading.Event()
    status = ForwardedStatus(sender, max_workers=config.tuning.max_workers)
    retries = Retries(stopping, on_throttle=status.throttled, on_retry=status.retried)
    starting: Optional[float] = None  # the CPU used before the first object: start-up, not copying
    try:
        source, destination = (reach.connect(max_workers=config.tuning.max_workers,
                                             read_timeout=config.tuning.read_timeout, retries=retries)
                               for reach in (job.source, job.destination))
        handed = HandedOutObjects()
        threading.Thread(target=receive_work, args=(connection, handed, stopping), daemon=True,
                         name="work-receiver").start()
        engine = build_engine(config, source=source, destination=destination,
                              transport=make_transport(job.engine, source, destination, config),
                              progress=OutcomeRecorder(sender), status=status,  # type: ignore[arg-type]
                              stopping=stopping, copy_mode=CopyModeChoice("stream", unavailable=""),
                              in_worker_process=True)
        engine.delegate = HandBack(sender)
        starting = cpu_seconds()
        engine.run(handed, ())  # type: ignore[arg-type]
    except FatalTransferError as error:
        sender.put(("fatal", str(error)))
    except Exception as error:  # noqa: BLE001 - told to the parent, which stops the run with it
        sender.put(("fatal", f"worker process {job.number} failed: {error!r}"))
    finally:
        used = cpu_seconds()
        sender.put(("cpu", used, used if starting is None else starting))
        sender.close()


# =============================================================================================
# 12. Comparing source and destination: --verify, --verify-only, --skip-existing, --report
# =============================================================================================

MATCH = "match"
MATCH_SIZE_ONLY = "match by size only"
MISSING = "missing"
SIZE_MISMATCH = "size mismatch"
ETAG_MISMATCH = "etag mismatch"
CHECKSUM_MISMATCH = "checksum mismatch"
METADATA_MISMATCH = "metadata mismatch"  # --verify-metadata: a preserved header or user metadata differs
TAGS_MISMATCH = "tags mismatch"  # --verify-metadata: the tags differ
DESTINATION_ONLY = "destination only"
DISCREPANCIES = (MISSING, SIZE_MISMATCH, ETAG_MISMATCH, CHECKSUM_MISMATCH, METADATA_MISMATCH, TAGS_MISMATCH)


def merge_join(source: Iterator[ListedObject], source_prefix: str, destination: Iterator[ListedObject],
               destination_prefix: str) -> Iterator[tuple[str, Optional[ListedObject], Optional[ListedObject]]]:
    """Walk two key-ordered listings together by key relative to their prefixes, in constant memory:
    (relative key, source object or None, destination object or None). Both listings are in UTF-8
    byte order, which is Python's str order, and a common prefix does not change it."""
    source_item = next(source, None)
    destination_item = next(destination, None)
    while source_item is not None or destination_item is not None:
        source_key = source_item.key[len(source_prefix):] if source_item is not None else None
        destination_key = destination_item.key[len(destination_prefix):] if destination_item is not None else None
        if destination_key is None or (source_key is not None and source_key < destination_key):
            yield source_key, source_item, None  # type: ignore[misc]
            source_item = next(source, None)
        elif source_key is None or destination_key < source_key:
            yield destination_key, None, destination_item
            destination_item = next(destination, None)
        else:
            yield source_key, source_item, destination_item
            source_item = next(source, None)
            destination_item = next(destination, None)


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """What HeadObject says about an object's bytes, in a form two objects can be compared by."""

    layout: tuple[Any, ...]  # ("whole",), or ("parts", first part size) for an object uploaded in parts
    etag_is_a_hash: bool  # False under SSE-KMS or SSE-C, where the ETag proves nothing
    checksum: Optional[SourceChecksum]


class ObjectComparer:
    """Decides whether a destination object holds the same bytes as its source object: from the
    listings when the ETags agree, else with HeadObject on both (a few requests per differing pair),
    by the ETags where their layouts match, or by an additional checksum both objects keep."""

    def __init__(self, source: ConnectedSide, destination: ConnectedSide) -> None:
        self._sides = (source, destination)

    def compare(self, source: ListedObject, destination: ListedObject) -> tuple[str, str]:
        """(verdict, detail): MATCH, MATCH_SIZE_ONLY (detail says why), SIZE_MISMATCH, ETAG_MISMATCH
        or CHECKSUM_MISMATCH."""
        if source.size != destination.size:
            return SIZE_MISMATCH, f"source {source.size:,} bytes, destination {destination.size:,} bytes"
        if source.etag == destination.etag:
            return MATCH, ""
        theirs, ours = (self._fingerprint(side, listed) for side, listed in zip(self._sides, (source, destination)))
        same_layout = theirs.layout == ours.layout
        if theirs.etag_is_a_hash and ours.etag_is_a_hash and same_layout:
            return ETAG_MISMATCH, f"source ETag {source.etag}, destination ETag {destination.etag}"
        first, second = theirs.checksum, ours.checksum
        if (first is not None and second is not None and first.algorithm == second.algorithm
                and first.composite == second.composite and (same_layout or not first.composite)):
            if first.value == second.value:
                return MATCH, ""
            return CHECKSUM_MISMATCH, f"source {first.algorithm} {first.value}, destination {second.value}"
        if not (theirs.etag_is_a_hash and ours.etag_is_a_hash):
            return MATCH_SIZE_ONLY, "an ETag is not an MD5 (SSE-KMS or SSE-C) and there is no common checksum"
        return MATCH_SIZE_ONLY, "the objects were uploaded with different part layouts and share no checksum"

    def compare_attributes(self, source: ListedObject, destination: ListedObject, *,
                           tags: bool, locks: bool = False) -> Optional[tuple[str, str]]:
        """--verify-metadata: (METADATA_MISMATCH or TAGS_MISMATCH, what differs) when the headers the
        tool preserves, the user metadata, (with `locks`) the Object Lock retention and legal hold or
        (with `tags`) the tags differ; None when they agree. Two HeadObject and, with tags, two
        GetObjectTagging a pair."""
        pair = tuple(zip(self._sides, (source, destination)))
        heads = [side.retries.call(lambda: side.client.head_object(Bucket=side.bucket, Key=listed.key),
                                   what=f"HeadObject of {listed.key} ({side.access.role})") for side, listed in pair]
        theirs, ours = (ObjectAttributes.from_response(head, []) for head in heads)
        differences = [f"{name} {theirs.headers.get(name)!r} in the source, {ours.headers.get(name)!r} in the "
                       "destination"
                       for name in PRESERVED_HEADERS if theirs.headers.get(name) != ours.headers.get(name)]
        differences += [f"metadata {name!r}: {theirs.metadata.get(name)!r} in the source, "
                        f"{ours.metadata.get(name)!r} in the destination"
                        for name in sorted(set(theirs.metadata) | set(ours.metadata))
                        if theirs.metadata.get(name) != ours.metadata.get(name)]
        if locks:  # as lock_to_copy copies them: a retention that ran out, or a hold that is off, is none
            expected, found = lock_to_copy(theirs.lock), lock_to_copy(ours.lock)
            differences += [f"{name} {expected.get(name)!r} in the source, {found.get(name)!r} in the destination"
                            for name in OBJECT_LOCK_FIELDS if expected.get(name) != found.get(name)]
        if differences:
            return METADATA_MISMATCH, "; ".join(differences)
        if not tags:
            return None
        tag_sets = [sorted((tag["Key"], tag["Value"]) for tag in side.retries.call(
            lambda: side.client.get_object_tagging(Bucket=side.bucket, Key=listed.key),
            what=f"GetObjectTagging of {listed.key} ({side.access.role})").get("TagSet", ())) for side, listed in pair]
        if tag_sets[0] != tag_sets[1]:
            return TAGS_MISMATCH, f"source tags {dict(tag_sets[0])}, destination tags {dict(tag_sets[1])}"
        return None

    def _fingerprint(self, side: ConnectedSide, listed: ListedObject) -> Fingerprint:
        what = f"HeadObject of {listed.key} ({side.access.role})"
        head = side.retries.call(lambda: side.client.head_object(Bucket=side.bucket, Key=listed.key,
                                                                 ChecksumMode="ENABLED"), what=what)
        layout: tuple[Any, ...] = ("whole",)
        if "-" in listed.etag:
            layout = ("parts", side.retries.call(lambda: side.client.head_object(
                Bucket=side.bucket, Key=listed.key, PartNumber=1), what=what)["ContentLength"])
        return Fingerprint(layout, not etag_is_opaque(head), find_source_checksum(head, listed.etag))


def objects_to_copy(config: RunSettings, source: ConnectedSide, destination: ConnectedSide, start_after: Optional[str],
                    through: Optional[str], status: "StatusReporter", *, inventory: Optional[Inventory],
                    on_missing: Callable[[str], None]) -> Iterator[ListedObject]:
    """--skip-existing: the source objects (after start_after, up to through) the destination lacks or
    holds different; the others are skipped. Where the ETags cannot be compared (different part
    layouts, SSE-KMS), a destination object of the same size at least as new as the source counts as
    copied, as `aws s3 sync` decides."""
    comparer = ObjectComparer(source, destination)

    def on_destination(key: Optional[str]) -> Optional[str]:  # the same place in destination key order
        return map_destination_key(key, config.job.source, config.job.destination) if key else None

    joined = merge_join(
        source_objects(config, source, start_after, through, inventory=inventory, on_missing=on_missing),
        config.job.source.prefix,
        selected_objects(list_objects(destination, config.job.destination, on_destination(start_after),
                                      on_destination(through)), config, side="destination"),
        config.job.destination.prefix,
    )
    for _, source_object, destination_object in joined:
        if source_object is None:
            continue
        if destination_object is not None:
            try:
                verdict, _ = comparer.compare(source_object, destination_object)
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
                raise FatalTransferError(
                    f"--skip-existing could not compare {json.dumps(source_object.key, ensure_ascii=False)} with "
                    f"the destination (HeadObject on both sides needs s3:GetObject): {error}") from None
            newer = (destination_object.last_modified or datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
                     ) >= (source_object.last_modified or datetime.datetime.max.replace(tzinfo=datetime.timezone.utc))
            if verdict == MATCH or (verdict == MATCH_SIZE_ONLY and newer):
                status.skipped()
                continue
        yield source_object


def listed_in(objects: Iterable[ListedObject], keys: Iterable[str]) -> Iterator[ListedObject]:
    """The objects whose keys are among `keys`, both in key order, walked together in constant memory."""
    remaining = iter(keys)
    wanted = next(remaining, None)
    for listed in objects:
        while wanted is not None and wanted < listed.key:
            wanted = next(remaining, None)
        if wanted is None:
            return
        if wanted == listed.key:
            yield listed


def audited_listings(config: RunSettings, source: ConnectedSide,
                     destination: ConnectedSide) -> tuple[Iterator[ListedObject], Iterator[ListedObject]]:
    """Both sides' selected listings, in key order: whole, or a shard's own key ranges only (the
    same ranges on the destination, since mapping a key keeps its order), so that N shards that
    verify list each bucket about once between them."""
    job = config.job
    ranges = shard_key_ranges(config) or [KeyRange(after=None, through=None)]

    def bound(key: Optional[str]) -> Optional[str]:
        return None if key is None else map_destination_key(key, job.source, job.destination)

    return (itertools.chain.from_iterable(
                selected_objects(list_objects(source, job.source, key_range.after, key_range.through), config)
                for key_range in ranges),
            itertools.chain.from_iterable(
                selected_objects(list_objects(destination, job.destination, bound(key_range.after),
                                              bound(key_range.through)), config, side="destination")
                for key_range in ranges))


AUDIT_WINDOW = 1_000  # pairs compared ahead of the one reported next, by requests of their own


def verdicts(joined: Iterable[tuple[str, Optional[ListedObject], Optional[ListedObject]]], comparer: ObjectComparer,
             config: RunSettings) -> Iterator[tuple[str, str, str]]:
    """(relative key, verdict, detail) of each pair of the join, in key order. A pair that needs
    requests of its own (ETags that differ, --verify-metadata) is compared by one of --max-workers
    threads, a bounded window ahead: one at a time, a hundred million pairs at a few round trips each
    would take months."""

    def judge(source_object: ListedObject, destination_object: ListedObject) -> tuple[str, str]:
        verdict, detail = comparer.compare(source_object, destination_object)
        if verdict in (MATCH, MATCH_SIZE_ONLY) and config.verify_metadata:
            return comparer.compare_attributes(source_object, destination_object, tags=config.job.copy_tags,
                                               locks=config.job.object_lock) or (verdict, detail)
        return verdict, detail

    admits = config.job.object_filter.admits
    waiting: collections.deque[tuple[str, concurrent.futures.Future[tuple[str, str]]]] = collections.deque()
    pool = concurrent.futures.ThreadPoolExecutor(config.tuning.max_workers, thread_name_prefix="audit")
    try:
        for relative_key, source_object, destination_object in joined:
            # Size and age are the source object's: a copy is newer than its source, so the destination's
            # own LastModified must not decide (and a source object not selected is not compared).
            if source_object is not None and not admits(source_object.size, source_object.last_modified):
                continue
            future: concurrent.futures.Future[tuple[str, str]] = concurrent.futures.Future()
            if source_object is None:
                future.set_result((DESTINATION_ONLY, "not in the source"))
            elif destination_object is None:
                future.set_result((MISSING, "not in the destination"))
            elif source_object.etag == destination_object.etag and not config.verify_metadata:
                future.set_result(judge(source_object, destination_object))  # no request: here
            else:
                future = pool.submit(judge, source_object, destination_object)
            waiting.append((relative_key, future))
            while waiting and (waiting[0][1].done() or len(waiting) > AUDIT_WINDOW):
                key, done = waiting.popleft()
                yield (key, *done.result())
        while waiting:
            key, done = waiting.popleft()
            yield (key, *done.result())
    finally:  # a comparison that stopped leaves no request behind
        pool.shutdown(cancel_futures=True)


def audit(config: RunSettings, source: ConnectedSide, destination: ConnectedSide,
          inventory: Optional[Inventory] = None) -> int:
    """--verify / --verify-only: compare both sides in one merge join and report; exit 1 on any
    missing or differing object (destination-only keys are reported but are not a discrepancy).
    With --from-inventory, the source objects compared are those of the report (as the source
    holds them now: a report may be a day old)."""
    comparer = ObjectComparer(source, destination)
    counts: collections.Counter[str] = collections.Counter()
    shown = 0
    report = AuditReportFile(config.output.report_file)
    source_listing, destination_listing = audited_listings(config, source, destination)
    if inventory is not None:
        report_keys: Iterator[str] = (row.key for row in inventory_rows(inventory, source, config.job.source, None))
        if config.job.shard is not None and config.job.shard.split == "files":
            # Which destination keys are another shard's, only the other shards' files say: this one
            # compares its own keys, and looks for no destination-only key. The report is read once:
            # the merge join walks both listings together, so the two readers of its keys stay close.
            LOG.info("shard %s compares the objects of its data files only: destination keys of no source object "
                     "are not looked for (verify unsharded for those)", config.job.shard)
            report_keys, for_destination = itertools.tee(report_keys)
            destination_listing = listed_in(destination_listing, (
                map_destination_key(key, config.job.source, config.job.destination) for key in for_destination))
        source_listing = listed_in(source_listing, report_keys)
    joined = merge_join(source_listing, config.job.source.prefix, destination_listing, config.job.destination.prefix)
    try:
        for relative_key, verdict, detail in verdicts(joined, comparer, config):
            counts[verdict] += 1
            if verdict in (MATCH, MATCH_SIZE_ONLY):
                continue
            entry = {"key": relative_key, "problem": verdict, "detail": detail}
            report.write(entry)
            if shown < 20 and not config.output.quiet:
                shown += 1
                print(f"  {verdict}: {json.dumps(relative_key, ensure_ascii=False)} ({detail})")
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
        raise FatalTransferError(f"The comparison stopped: {error}. Rerun it.") from None
    finally:
        summary = {name: counts[name] for name in (MATCH, MATCH_SIZE_ONLY, MISSING, SIZE_MISMATCH, ETAG_MISMATCH,
                                                   CHECKSUM_MISMATCH, DESTINATION_ONLY)}
        if config.verify_metadata:
            summary.update({name: counts[name] for name in (METADATA_MISMATCH, TAGS_MISMATCH)})
        report.close(config, summary)
    problems = sum(counts[name] for name in DISCREPANCIES)
    message = (f"Verify {config.job.source} -> {config.job.destination}: {counts[MATCH]:,} identical by ETag or "
               "checksum, "
               f"{counts[MATCH_SIZE_ONLY]:,} equal in size (ETags not comparable), {counts[MISSING]:,} missing, "
               f"{counts[SIZE_MISMATCH]:,} size mismatches, {counts[ETAG_MISMATCH]:,} ETag mismatches, "
               f"{counts[CHECKSUM_MISMATCH]:,} checksum mismatches, {counts[DESTINATION_ONLY]:,} only in the "
               "destination" + (f"; headers and metadata: {counts[METADATA_MISMATCH]:,} mismatches, tags: "
                                f"{counts[TAGS_MISMATCH]:,} mismatches" if config.verify_metadata else "") + ".")
    if config.output.report_file:
        message += f" Full report: {config.output.report_file}."
    LOG.info("%s", message)
    print(message, file=sys.stdout if problems == 0 else sys.stderr)
    return EXIT_SOME_FAILED if problems else EXIT_OK


class AuditReportFile:
    """The --report JSON file, written as the comparison goes (discrepancies first, the summary last),
    so a comparison of 100 million keys never holds its findings in memory."""

    def __init__(self, path: Optional[Path]) -> None:
        # Owner-only, as the log and the progress file: it lists bucket and key names.
        self._handle = (os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8")
                        if path else None)
        self._first = True
        if self._handle:
            self._handle.write('{\n  "discrepancies": [')

    def write(self, entry: dict[str, str]) -> None:
        if self._handle:
            self._handle.write(("\n    " if self._first else ",\n    ") + json.dumps(entry, ensure_ascii=False))
            self._first = False

    def close(self, config: RunSettings, summary: dict[str, int]) -> None:
        if self._handle:
            self._handle.write(f"\n  ],\n  \"source\": {json.dumps(str(config.job.source))},\n"
                               f"  \"destination\": {json.dumps(str(config.job.destination))},\n"
                               f"  \"summary\": {json.dumps(summary)}\n}}\n")
            self._handle.close()


# -- mirroring: --delete ----------------------------------------------------------------------
#
# After a run that copied everything (nothing failed, nothing interrupted), the destination keys
# under the destination prefix that the source no longer has are removed, found by the same merge
# join as the audit's over fresh listings of both sides (a shard's own key ranges only), so a key
# the source gained or lost since the copy began is judged by what the source holds now. The pass
# keeps nothing on disk: a rerun after a kill finds what is left to delete the same way.

DELETE_BATCH = 1000  # keys per DeleteObjects, S3's most


def destination_only(config: RunSettings, source: ConnectedSide, destination: ConnectedSide) -> Iterator[str]:
    """The destination keys (whole, in key order) selected by the job's filters and shard whose
    relative key the source does not have."""
    source_listing, destination_listing = audited_listings(config, source, destination)
    for _, source_object, destination_object in merge_join(source_listing, config.job.source.prefix,
                                                          destination_listing, config.job.destination.prefix):
        if source_object is None and destination_object is not None:
            yield destination_object.key


class Deletions:
    """The deletions of one --delete pass, sent in batches of DELETE_BATCH (one DeleteObjects each),
    each key logged as it goes; `failed` counts the keys S3 refused (with its reason, in the log)."""

    def __init__(self, destination: ConnectedSide, *, dry_run: bool) -> None:
        self._destination = destination
        self._dry_run = dry_run
        self._batch: list[str] = []
        self.deleted = 0
        self.failed = 0

    def add(self, key: str) -> None:
        self._batch.append(key)
        if len(self._batch) == DELETE_BATCH:
            self.flush()

    def flush(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return
        if self._dry_run:
            for key in batch:
                print(f"  would delete {json.dumps(key, ensure_ascii=False)} (not in the source)")
            self.deleted += len(batch)
            return
        destination = self._destination
        try:
            answer = destination.retries.call(lambda: destination.client.delete_objects(
                Bucket=destination.bucket, Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True}),
                what=f"DeleteObjects of {len(batch)} keys", retry_bodies=True)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
            raise FatalTransferError(explain_error(error, access=destination.access, bucket=destination.bucket,
                                                   action="s3:DeleteObject")) from None
        refused = {entry["Key"]: f"{entry.get('Code')}: {entry.get('Message')}" for entry in answer.get("Errors", ())}
        for key in batch:
            if key in refused:
                LOG.error("FAILED to delete %s: %s", json.dumps(key, ensure_ascii=False), refused[key])
            else:
                LOG.info("deleted %s (not in the source)", json.dumps(key, ensure_ascii=False))
        self.failed += len(refused)
        self.deleted += len(batch) - len(refused)


def within_max_delete(config: RunSettings, source: ConnectedSide,
                      destination: ConnectedSide) -> Optional[list[str]]:
    """The keys --delete would remove, if they are no more than --max-delete (at most that many plus
    one are ever held); None, with the sentence logged, if there are more."""
    assert config.max_delete is not None
    found = list(itertools.islice(destination_only(config, source, destination), config.max_delete + 1))
    if len(found) <= config.max_delete:
        return found
    LOG.error("More than --max-delete %s destination objects under %s are not in the source: nothing was deleted. "
              "Check that the source and its prefix are the right ones (--dry-run --delete lists them), then rerun "
              "with a higher --max-delete.", f"{config.max_delete:,}", config.job.destination)
    return None


def mirror_deletions(config: RunSettings, source: ConnectedSide, destination: ConnectedSide, *,
                     dry_run: bool = False) -> int:
    """--delete: remove what the source no longer has, or (`dry_run`) say what would go; never more
    than --max-delete, counted again here before the first deletion. The exit code."""
    keys: Optional[Iterable[str]] = (destination_only(config, source, destination) if config.max_delete is None
                                     else within_max_delete(config, source, destination))
    if keys is None:
        return EXIT_USAGE
    deletions = Deletions(destination, dry_run=dry_run)
    for key in keys:
        deletions.add(key)
    deletions.flush()
    verb = "would delete" if dry_run else "deleted"
    message = (f"Mirroring {config.job.destination}: {verb} {deletions.deleted:,} objects the source no longer has"
               + (f", {deletions.failed:,} refused (see the log)" if deletions.failed else "") + ".")
    LOG.info("%s", message)
    if not config.output.quiet or deletions.failed:
        print(message, file=sys.stderr if deletions.failed else sys.stdout)
    return EXIT_SOME_FAILED if deletions.failed else EXIT_OK


# =============================================================================================
# 13. Command line
# =============================================================================================


def rate_argument(text: str) -> int:
    try:
        return parse_rate(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{error}; write e.g. 100MB/s") from None


def size_argument(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def state_location_argument(text: str) -> StateLocation:
    try:
        return state_location(text)
    except ConfigurationError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


class FilterAction(argparse.Action):
    """--include and --exclude share one ordered list, because the last matching rule wins."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        rules = list(getattr(namespace, "filters", None) or [])
        rules.append(FilterRule(include=option_string == "--include", pattern=values))
        namespace.filters = rules


def build_parser() -> argparse.ArgumentParser:
    """The command line. The usage line lists options in the order they are added, so the helpers
    below add runs of options in that order, each into the group --help shows it under."""
    parser = argparse.ArgumentParser(
        prog="s3_bulk_transfer.py",
        description=(
            "Copy every object under s3://SOURCE[/prefix] to s3://DEST[/prefix], across AWS accounts, streaming "
            "through memory (never disk). Rerun the same command to resume. Memory: object data in flight never "
            "exceeds --memory-limit (default max-workers x chunk-size), except one part or object larger than that, "
            "which is copied alone."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="s3://BUCKET[/PREFIX] to copy from")
    parser.add_argument("destination", help="s3://BUCKET[/PREFIX] to copy to")
    credentials = parser.add_argument_group("credentials and endpoints")
    speed = parser.add_argument_group("speed and memory")
    selection = parser.add_argument_group("what to copy")
    output = parser.add_argument_group("progress, logging and output")
    audit = parser.add_argument_group("integrity and audit")
    _add_credential_options(credentials)
    _add_speed_and_memory_options(speed)
    _add_selection_options(selection)
    _add_state_file_options(output)
    _add_listing_and_engine_options(speed)
    _add_run_mode_options(output)
    _add_audit_options(audit)
    _add_restart_and_verbosity_options(output)
    return parser


def _add_credential_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--source-credentials", metavar="PATH",
                       help="JSON file with the source account's aws_access_key_id, aws_secret_access_key and "
                            "optional aws_session_token, region, endpoint_url, role_arn, external_id "
                            f"(default: ./{DEFAULT_CREDENTIALS_FILE} if present, else the default credential chain)")
    group.add_argument("--source-profile", metavar="NAME", help="AWS profile for the source side")
    group.add_argument("--dest-profile", metavar="NAME",
                       help="AWS profile for the destination (default: the default chain, e.g. the instance role)")
    group.add_argument("--source-endpoint-url", metavar="URL", help="S3 endpoint for the source (default: AWS)")
    group.add_argument("--dest-endpoint-url", metavar="URL", help="S3 endpoint for the destination (default: AWS)")
    group.add_argument("--source-region", metavar="REGION",
                       help="source bucket region, for an endpoint that does not say (S3 does, and its word wins: a "
                            "region that differs is a warning) (default: detected)")
    group.add_argument("--dest-region", metavar="REGION",
                       help="destination bucket region, as --source-region (default: detected)")
    group.add_argument("--request-payer", choices=("requester",),
                       help="send x-amz-request-payer: requester with every request to either bucket, as aws s3's "
                            "option does: a Requester Pays bucket refuses other accounts' requests without it, and "
                            "with it charges the requests and data transfer to your account, not the owner's "
                            "(default: not sent)")


def _add_speed_and_memory_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--chunk-size", type=size_argument, default=DEFAULT_CHUNK_SIZE, metavar="BYTES",
                       help="part size for multipart objects, 5MiB to 5GiB, e.g. 8388608, 8MiB, 16MB (binary units); "
                            "raised per object when needed to stay within 10,000 parts (default: 8MiB)")
    group.add_argument("--max-workers", type=int, default=DEFAULT_MAX_WORKERS, metavar="N",
                       help=f"parallel transfers, 1 to {MAX_WORKERS_LIMIT} (default: {DEFAULT_MAX_WORKERS})")
    group.add_argument("--memory-limit", type=size_argument, metavar="BYTES",
                       help="most object data held in memory at once (default: max-workers x chunk-size); a single "
                            "part or object larger than this is copied alone")
    group.add_argument("--max-requests-per-second", type=float, metavar="N",
                       help="at most N requests a second that read the source (listing, HEAD, GET, tags, "
                            "server-side copies), shared by all workers: for a source that also serves production "
                            "traffic, since S3 throttles each prefix past 5,500 GETs a second. Small objects are "
                            "then carried by worker threads, and the job runs in one process")
    group.add_argument("--max-bandwidth", type=rate_argument, metavar="RATE",
                       help="cap on object data through this machine, shared by all workers, e.g. 100MB/s "
                            "(binary units); server-side copies do not count (default: no cap)")
    group.add_argument("--copy-mode", choices=COPY_MODES, default="auto",
                       help="stream: every byte through this machine (GET, then PUT with the destination's keys); "
                            "server-side: S3 copies (CopyObject, UploadPartCopy), needing destination keys that "
                            "may read the source; auto: server-side while the destination keys can read the "
                            "source, else stream (default: auto)")
    group.add_argument("--multipart-threshold", type=size_argument, default=DEFAULT_MULTIPART_THRESHOLD,
                       metavar="BYTES", help="objects this size or larger are copied in parts (default: 100MiB)")


def _add_selection_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--include", action=FilterAction, metavar="GLOB", dest="filters",
                       help="copy keys (relative to the source prefix) matching GLOB; repeatable")
    group.add_argument("--exclude", action=FilterAction, metavar="GLOB", dest="filters",
                       help="skip keys matching GLOB; repeatable; the last matching --include/--exclude wins")
    group.add_argument("--min-size", type=size_argument, metavar="SIZE",
                       help="copy only objects of at least SIZE (e.g. 1MiB)")
    group.add_argument("--max-size", type=size_argument, metavar="SIZE",
                       help="copy only objects of at most SIZE")
    group.add_argument("--newer-than", metavar="WHEN",
                       help="copy only objects last modified after WHEN: a duration back from the start of the run "
                            "(30d, 12h, 90m, 2w) or a date or time in UTC (2026-01-31, 2026-01-31T12:00:00Z)")
    group.add_argument("--older-than", metavar="WHEN",
                       help="copy only objects last modified before WHEN (as --newer-than). A duration moves with "
                            "each rerun; give a date for a cut-off that never moves")
    group.add_argument("--shard", metavar="I/N",
                       help="copy only shard I (0-based) of N, to split one job across N machines; auto/N takes "
                            "I from AWS_BATCH_JOB_ARRAY_INDEX or JOB_COMPLETION_INDEX. Each shard keeps its own "
                            "progress and log file: .shard-I-of-N is added to their names")
    group.add_argument("--shard-split", choices=SHARD_SPLITS,
                       help="how shards divide the keys: ranges, key ranges of a plan the shards share (the "
                            "first to start writes it, see --shard-plan), so each lists only its own share "
                            "and N shards together list the bucket once, but every shard must see the plan "
                            "file; hash, a stable hash of each key, which needs nothing shared but makes "
                            "every shard list the whole bucket; files, with --from-inventory, each shard reads "
                            "only its share of the report's data files (default: ranges; files with "
                            "--from-inventory)")
    group.add_argument("--shard-plan", type=state_location_argument, metavar="PATH_OR_S3_URI",
                       help="the plan of key ranges the shards share (default: beside the progress files, "
                            "NAME.plan-of-N-shards.json); made by the first shard to start, or by a --dry-run, "
                            "and never changed after")
    group.add_argument("--from-inventory", metavar="PATH_OR_S3_URI",
                       help="copy the objects named by an S3 Inventory report (its manifest.json, CSV format) or "
                            "by a key list (one key a line, or CSV key[,size[,etag]]; sorted in byte order; .gz "
                            "allowed), a local file or s3://BUCKET/KEY read with the source credentials, instead "
                            "of listing the source; keys outside the source prefix are skipped, --include, "
                            "--exclude and --shard apply as to a listing")
    group.add_argument("--storage-class", metavar="CLASS",
                       help="storage class for the copies, e.g. STANDARD_IA (default: the bucket's default)")
    group.add_argument("--sse", choices=("AES256", "aws:kms"), help="server-side encryption for the copies")
    group.add_argument("--sse-kms-key-id", metavar="KEY", help="KMS key for --sse aws:kms")
    group.add_argument("--object-lock", choices=("off", "copy"), default="off",
                       help="copy: give each object the Object Lock retention (mode and retain-until date) and "
                            "legal hold its source has, into a destination bucket with Object Lock enabled; the "
                            "source credentials need s3:GetObjectRetention and s3:GetObjectLegalHold (default: "
                            "off, the copies are not locked)")
    group.add_argument("--no-tags", dest="copy_tags", action="store_false",
                       help="copy objects without their tags and never ask for them, for source credentials "
                            "without s3:GetObjectTagging; the final report says so (default: tags are copied, "
                            "and a run whose source credentials may not read them stops before writing anything)")


def _add_state_file_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--progress-file", type=state_location_argument, metavar="PATH_OR_S3_URI",
                       help=f"resume state (default: {DEFAULT_PROGRESS_FILE}; with --shard I/N, "
                            "NAME.shard-I-of-N.json); an s3://BUCKET/KEY (or s3://BUCKET/FOLDER/) keeps it "
                            "in a bucket, reached with the destination's credentials, for runs with no disk "
                            "of their own (Batch, Kubernetes): one PutObject per save, guarded by S3's "
                            "conditional writes against a second run of the same shard")
    group.add_argument("--log-file", type=Path, metavar="PATH",
                       help=f"appended log, one line per object (default: {DEFAULT_LOG_FILE}; with --shard I/N, "
                            "NAME.shard-I-of-N.log)")
    group.add_argument("--status-interval", type=float, default=DEFAULT_STATUS_INTERVAL, metavar="SECONDS",
                       help="seconds between summary lines in the log and on non-terminal output (default: 10)")


def _add_listing_and_engine_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--list-concurrency", type=int, metavar="N",
                       help="ListObjectsV2 streams over disjoint key ranges at once (default: max-workers / 2, "
                            "at most 16; 1 lists in one stream)")
    group.add_argument("--engine", choices=ENGINES, default="auto",
                       help="what sends the GETs and PUTs of object bodies: crt, AWS's C runtime (awscrt, as in "
                            "aws-cli v2), which costs far less CPU per request but holds more memory per part; "
                            "threads, boto3 in each worker thread; auto: crt for objects below the multipart "
                            "threshold and threads for parts, when awscrt is installed and no proxy is set, else "
                            "threads. Listing, multipart bookkeeping and server-side copies use boto3 either way "
                            "(default: auto)")
    group.add_argument("--processes", type=processes_argument, default=1, metavar="N",
                       help="the processes the job runs in: this one lists, keeps the progress file and the log and "
                            "copies the large objects, and N-1 worker processes copy the objects below the "
                            "multipart threshold. Python runs one process on about one core, so small objects go "
                            "faster with more, up to the cores the machine has; --max-workers and --memory-limit "
                            "bound the whole job, and each process adds its interpreter's memory. auto: one per "
                            f"core, at most {AUTO_PROCESSES_LIMIT}, one on two cores or fewer (default: 1)")


def auto_processes(max_workers: int, capped: bool) -> int:
    """--processes auto: one per core, up to AUTO_PROCESSES_LIMIT and to one worker per object in
    flight; one on two cores or fewer, where the server's side or the system needs one of them and
    a worker's messages cost more than they spare (bench/README.md, Every core); one under a cap
    (--max-bandwidth, --max-requests-per-second), which one process counts."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if usable <= 2 or capped:
        return 1
    return min(usable, AUTO_PROCESSES_LIMIT, max_workers + 1)


def processes_argument(text: str) -> Optional[int]:
    """--processes: a number, or None for auto (resolved by build_settings, which knows the workers)."""
    if text == "auto":
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_PROCESSES:
        raise argparse.ArgumentTypeError(f"must be auto or a whole number from 1 to {MAX_PROCESSES}, not {text!r}")
    return int(text)


def _add_run_mode_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--read-timeout", type=float, default=DEFAULT_READ_TIMEOUT, metavar="SECONDS",
                       help="abandon and retry a request when S3 sends nothing for this long (default: 120)")
    group.add_argument("--dry-run", action="store_true",
                       help="list and plan only: print counts, bytes, multipart objects, already done, the "
                            "memory bound and an estimate of the requests and their cost; writes nothing to S3 and "
                            "leaves the progress file alone")
    prices = RequestPrices()
    group.add_argument("--price-write", type=float, default=prices.write_per_1000, metavar="USD",
                       help="the dry run's price of 1,000 PUT, COPY, POST or LIST requests (default: "
                            f"{prices.write_per_1000}, S3 Standard in US East, {PRICES_AS_OF})")
    group.add_argument("--price-read", type=float, default=prices.read_per_1000, metavar="USD",
                       help=f"its price of 1,000 GET, HEAD and other requests (default: {prices.read_per_1000})")
    group.add_argument("--price-transfer", type=float, default=prices.transfer_per_gb, metavar="USD",
                       help="its price of a GB sent from the source's region to another (default: "
                            f"{prices.transfer_per_gb}, from US East to another AWS region)")


def _add_audit_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--verify", action="store_true",
                       help="after copying, compare source and destination (as --verify-only) and exit 1 "
                            "on any difference")
    group.add_argument("--verify-only", action="store_true",
                       help="copy nothing: compare both listings in key order and report missing objects, "
                            "size and ETag mismatches and destination-only keys; exit 1 on a discrepancy")
    group.add_argument("--verify-metadata", action="store_true",
                       help="with --verify or --verify-only, compare also the headers the copy preserves "
                            "(Content-Type, Cache-Control...), the user metadata and the tags of every object "
                            "whose bytes match: two HeadObject and two GetObjectTagging per object more")
    group.add_argument("--skip-existing", action="store_true",
                       help="copy only objects the destination lacks or holds different (same size and "
                            "ETag, or same size and newer where ETags are not comparable, counts as done)")
    group.add_argument("--report", type=Path, metavar="PATH",
                       help="write the comparison of --verify/--verify-only to PATH as JSON")
    group.add_argument("--delete", action="store_true",
                       help="mirror: after a run that copied everything, delete the destination objects under the "
                            "destination prefix (selected by the same filters and shard) that the source no longer "
                            "has, each logged; with --dry-run, list them. Needs s3:DeleteObject")
    group.add_argument("--max-delete", type=int, metavar="N",
                       help="with --delete: if more than N objects would go, delete none and stop with exit 2 (a "
                            "wrong source prefix would otherwise empty the destination); checked before anything is "
                            "copied, at the cost of listing both sides once more, and again before deleting")


def _add_restart_and_verbosity_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--restart", action="store_true",
                       help="discard an existing progress file (aborting its unfinished uploads) and start over")
    verbosity = group.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    verbosity.add_argument("-v", "--verbose", action="store_true", help="print every object, log debug detail")


def resolve_state_files(args: argparse.Namespace, environment: dict[str, str]) -> None:
    """Read --shard, then name the progress and log files: one pair per shard, even when every
    shard is given the same path (as the children of one array job are)."""
    if args.shard_split == "ranges" and args.from_inventory:
        raise ConfigurationError("--shard-split ranges is for listings: with --from-inventory no shard lists the "
                                 "bucket; the shards split the report's data files (--shard-split files, the "
                                 "default) or its keys by a hash (--shard-split hash).")
    if args.shard_split == "files" and not args.from_inventory:
        raise ConfigurationError("--shard-split files divides the data files of an inventory report: it needs "
                                 "--from-inventory. For a listing, use ranges (the default) or hash.")
    split = args.shard_split or ("files" if args.from_inventory else "ranges")
    args.shard = parse_shard(args.shard, environment, split) if args.shard else None
    if args.shard is not None and args.shard_plan is None:
        args.shard_plan = shard_plan_name(args.progress_file or Path(DEFAULT_PROGRESS_FILE), args.shard.count)
    args.progress_file = shard_file_name(args.progress_file or Path(DEFAULT_PROGRESS_FILE), args.shard)
    args.log_file = shard_file_name(args.log_file or Path(DEFAULT_LOG_FILE), args.shard)


def inventory_argument(text: str) -> str:
    """--from-inventory: an s3://BUCKET/KEY as given, or a local file as an absolute path, so that the
    job (and its progress file) is the same whichever directory a rerun starts in."""
    if text.startswith("s3://"):
        bucket, _, key = text[len("s3://"):].partition("/")
        if not bucket or not key or key.endswith("/"):
            raise ConfigurationError(f"--from-inventory {text} names no object: give s3://BUCKET/KEY of a report's "
                                     "manifest.json or of a key list.")
        return text
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigurationError(f"The inventory {text} given to --from-inventory does not exist (or is not a file): "
                                 "give the path of an S3 Inventory report's manifest.json, or of a key list.")
    return str(path.resolve())


def source_access_of(args: argparse.Namespace) -> SideAccess:
    """The source side: an explicit or default credentials file, else a profile, else the default chain."""
    path = args.source_credentials
    if path is None and Path(DEFAULT_CREDENTIALS_FILE).is_file() and not args.source_profile:
        path = DEFAULT_CREDENTIALS_FILE
    if path is None:
        origin = f"profile {args.source_profile}" if args.source_profile else "the default credential chain"
        return SideAccess(
            role="source", origin=origin, profile=args.source_profile,
            endpoint_url=args.source_endpoint_url, region=args.source_region, request_payer=args.request_payer,
        )
    values = load_credentials_file(Path(path))
    return SideAccess(
        role="source",
        origin=f"the credentials file {path}",
        profile=args.source_profile,
        endpoint_url=args.source_endpoint_url or values.get("endpoint_url"),
        region=args.source_region or values.get("region"),
        access_key_id=values.get("aws_access_key_id"),
        secret_access_key=values.get("aws_secret_access_key"),
        session_token=values.get("aws_session_token"),
        role_arn=values.get("role_arn"),
        external_id=values.get("external_id"),
        request_payer=args.request_payer,
    )


def destination_access_of(args: argparse.Namespace) -> SideAccess:
    """The destination side: the default chain (on EC2, the instance role) unless a profile is named."""
    origin = f"profile {args.dest_profile}" if args.dest_profile else "the default credential chain"
    return SideAccess(
        role="destination", origin=origin, profile=args.dest_profile,
        endpoint_url=args.dest_endpoint_url, region=args.dest_region, request_payer=args.request_payer,
    )


def refuse_delete_combinations(args: argparse.Namespace) -> None:
    """--delete and --max-delete with what they cannot work with, in one sentence each."""
    if args.max_delete is not None and not args.delete:
        raise ConfigurationError("--max-delete limits --delete, which is not given: add --delete, or drop "
                                 "--max-delete.")
    if args.max_delete is not None and args.max_delete < 0:
        raise ConfigurationError(f"--max-delete must be 0 or more, not {args.max_delete}.")
    if not args.delete:
        return
    if args.verify_only:
        raise ConfigurationError("--verify-only copies and deletes nothing: drop --delete, or --verify-only "
                                 "(--verify compares after the copy and the deletions).")
    if args.from_inventory:
        raise ConfigurationError("--delete judges by what the source holds now, and an inventory report is up to a "
                                 "day old (and holds no key created since): mirror from a listing, without "
                                 "--from-inventory.")
    bounds = [option for option in ("--min-size", "--max-size", "--newer-than", "--older-than")
              if getattr(args, option[2:].replace("-", "_")) is not None]
    if bounds:
        raise ConfigurationError(f"--delete with {' and '.join(bounds)}: a destination object whose source is gone has "
                                 "no source size or age to judge it by, so it is not known whether the bounds would "
                                 "keep it. Mirror without them (--include/--exclude are fine).")


def object_filter_of(args: argparse.Namespace, now: Optional[datetime.datetime] = None) -> ObjectFilter:
    """--min-size, --max-size, --newer-than and --older-than, checked."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    moments = {}
    for option, text in (("--newer-than", args.newer_than), ("--older-than", args.older_than)):
        if text is not None:
            try:
                moments[option] = parse_moment(text, now)
            except ValueError as error:
                raise ConfigurationError(f"{option} {error}.") from None
    if args.min_size is not None and args.max_size is not None and args.min_size > args.max_size:
        raise ConfigurationError(f"--min-size {format_size(args.min_size)} is above --max-size "
                                 f"{format_size(args.max_size)}: no object could be copied.")
    newer, older = moments.get("--newer-than"), moments.get("--older-than")
    if newer is not None and older is not None and newer >= older:
        raise ConfigurationError(f"--newer-than {args.newer_than} is not before --older-than {args.older_than}: no "
                                 "object could be copied (an object newer than the first and older than the second).")
    given = tuple(f"{option} {value}" for option, value in (
        ("--min-size", args.min_size), ("--max-size", args.max_size), ("--newer-than", args.newer_than),
        ("--older-than", args.older_than)) if value is not None)
    return ObjectFilter(args.min_size, args.max_size, newer, older, given)


def build_settings(args: argparse.Namespace) -> RunSettings:
    """Turn parsed arguments into a validated RunSettings; every rule a person can break is here."""
    source = S3Location.parse(args.source)
    destination = S3Location.parse(args.destination)
    for location in (source, destination):
        refuse_directory_bucket(location)
    if not MIN_PART_SIZE <= args.chunk_size <= MAX_PART_SIZE:
        raise ConfigurationError(
            f"--chunk-size {args.chunk_size:,} is outside S3's part size limits: use 5MiB to 5GiB (e.g. 8MiB)."
        )
    if not 1 <= args.max_workers <= MAX_WORKERS_LIMIT:
        raise ConfigurationError(f"--max-workers must be between 1 and {MAX_WORKERS_LIMIT}, not {args.max_workers}.")
    memory_limit = args.memory_limit if args.memory_limit is not None else args.max_workers * args.chunk_size
    if memory_limit < MIN_PART_SIZE:
        raise ConfigurationError("--memory-limit must be at least 5MiB, S3's smallest part.")
    if not 1 <= args.multipart_threshold <= MAX_SINGLE_PUT_SIZE:
        raise ConfigurationError("--multipart-threshold must be between 1 byte and 5GiB (S3's largest single PUT).")
    if args.sse_kms_key_id and args.sse != "aws:kms":
        raise ConfigurationError("--sse-kms-key-id needs --sse aws:kms.")
    if args.status_interval <= 0:
        raise ConfigurationError("--status-interval must be a positive number of seconds.")
    processes = args.processes if args.processes is not None else auto_processes(
        args.max_workers, capped=bool(args.max_bandwidth or args.max_requests_per_second))
    if processes - 1 > args.max_workers:
        raise ConfigurationError(f"--processes {processes} makes more worker processes than --max-workers "
                                 f"{args.max_workers}, the objects in flight they share: raise --max-workers, or use "
                                 "fewer processes.")
    for option, cap in (("--max-bandwidth", args.max_bandwidth), ("--max-requests-per-second",
                                                                  args.max_requests_per_second)):
        if processes > 1 and cap:
            raise ConfigurationError(f"{option} is counted by one process: with it, use --processes 1.")
    if args.max_requests_per_second is not None and not 0 < args.max_requests_per_second <= 1_000_000:
        raise ConfigurationError("--max-requests-per-second must be a positive number of requests a second "
                                 f"(e.g. 500), not {args.max_requests_per_second:g}.")
    if args.list_concurrency is not None and not 1 <= args.list_concurrency <= MAX_LIST_CONCURRENCY:
        raise ConfigurationError(
            f"--list-concurrency must be between 1 and {MAX_LIST_CONCURRENCY}, not {args.list_concurrency}.")
    if not 0 < args.read_timeout <= 3600:
        raise ConfigurationError("--read-timeout must be between 0 and 3600 seconds (default 120).")
    inventory = inventory_argument(args.from_inventory) if args.from_inventory else None
    if inventory and args.list_concurrency not in (None, 1):
        raise ConfigurationError("--list-concurrency splits a ListObjectsV2 listing, and --from-inventory reads a "
                                 "report instead of listing: drop --list-concurrency.")
    for option, path in (("--progress-file", args.progress_file), ("--shard-plan", args.shard_plan),
                         ("--log-file", args.log_file), ("--report", args.report or args.log_file)):
        if isinstance(path, Path) and not path.parent.resolve().is_dir():
            raise ConfigurationError(f"The directory {path.parent} for {option} does not exist: create it first.")
    source_access = source_access_of(args)
    destination_access = destination_access_of(args)
    same_place = on_one_endpoint(source_access, destination_access)
    if same_place and source.bucket == destination.bucket and (
        source.prefix.startswith(destination.prefix) or destination.prefix.startswith(source.prefix)
    ):
        raise ConfigurationError(
            f"{source} and {destination} overlap: copying a prefix onto itself or into itself would copy its own "
            "copies. Choose a destination outside the source prefix."
        )
    refuse_delete_combinations(args)
    if args.verify_metadata and not (args.verify or args.verify_only):
        raise ConfigurationError("--verify-metadata deepens a comparison: add --verify (after the copy) or "
                                 "--verify-only.")
    for option, price in (("--price-write", args.price_write), ("--price-read", args.price_read),
                          ("--price-transfer", args.price_transfer)):
        if price < 0:
            raise ConfigurationError(f"{option} must be a price of 0 or more (US dollars), not {price:g}.")
    if args.copy_mode == "server-side" and not same_place:
        raise ConfigurationError(
            "--copy-mode server-side needs both buckets on one S3 endpoint: S3 cannot copy between "
            f"{source_access.endpoint_url or 'AWS'} and {destination_access.endpoint_url or 'AWS'}. "
            "Use --copy-mode stream."
        )
    job = JobDefinition(source=source, destination=destination, source_access=source_access,
                        destination_access=destination_access, filters=tuple(args.filters or ()),
                        object_filter=object_filter_of(args), shard=args.shard,
                        inventory=inventory, copy_tags=args.copy_tags, object_lock=args.object_lock == "copy")
    tuning = Tuning(
        chunk_size=args.chunk_size, max_workers=args.max_workers, multipart_threshold=args.multipart_threshold,
        memory_limit=memory_limit, max_bandwidth=args.max_bandwidth, read_timeout=args.read_timeout,
        max_requests_per_second=args.max_requests_per_second,
        processes=processes,
        engine=args.engine, copy_mode=args.copy_mode,
        list_concurrency=1 if inventory else (args.list_concurrency if args.list_concurrency is not None
                                              else max(1, min(DEFAULT_LISTERS_LIMIT, args.max_workers // 2))),
    )
    output = OutputSettings(progress_file=args.progress_file, log_file=args.log_file, report_file=args.report,
                            shard_plan_file=args.shard_plan,
                            status_interval=args.status_interval, quiet=args.quiet, verbose=args.verbose)
    mode = RunMode.DRY_RUN if args.dry_run else RunMode.VERIFY_ONLY if args.verify_only else RunMode.COPY
    return RunSettings(job=job, mode=mode, tuning=tuning, output=output,
                       writes=WriteOptions(storage_class=args.storage_class, sse=args.sse,
                                           sse_kms_key_id=args.sse_kms_key_id),
                       restart=args.restart, verify=args.verify, skip_existing=args.skip_existing,
                       verify_metadata=args.verify_metadata,
                       delete=args.delete, max_delete=args.max_delete,
                       prices=RequestPrices(args.price_write, args.price_read, args.price_transfer))


def configure_logging(args: argparse.Namespace, console: ConsoleHandler) -> logging.Handler:
    """The log file (owner-only, appended) gets everything; the console gets warnings and errors
    (every object with -v, errors only with -q)."""
    if not args.log_file.parent.resolve().is_dir():
        raise ConfigurationError(
            f"The directory {args.log_file.parent} for --log-file does not exist: create it first.")
    os.close(os.open(args.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    file_handler = logging.FileHandler(args.log_file, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    file_handler.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    console.setLevel(logging.ERROR if args.quiet else logging.INFO if args.verbose else logging.WARNING)
    LOG.setLevel(logging.DEBUG)
    LOG.propagate = False
    # What the format never shows (the caller's frame, the thread's and process's names) is not
    # looked up for each record, as the logging HOWTO's "Optimization" section advises: a small part
    # of a copied object's cost, but one paid for every object.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    skip_caller_lookup_in_log_records()
    LOG.addHandler(file_handler)
    LOG.addHandler(console)
    return file_handler


def report_dry_run(config: RunSettings, source: ConnectedSide, destination: ConnectedSide, state: StateStore,
                   inventory: Optional[Inventory] = None, *, tags_refused: Optional[str] = None) -> int:
    """List and plan without writing anything: what would be copied, and what it costs in memory; and
    `tags_refused`, the preflight refusal that would stop the real run, after the plan (exit 2)."""
    saved = read_progress_file(config.output.progress_file, state) if not config.restart else None
    if saved is not None and saved.get("job") != config.job.identity():
        saved = None
    recorded = ProgressStore(config.output.progress_file, config.job.identity(), saved)  # read only: never saved
    counts: collections.Counter[str] = collections.Counter()
    source.client.meta.events.register("after-call.s3.ListObjectsV2", lambda **_: counts.update(["list_pages"]))
    largest_unit = 0
    # Planning needs sizes, not ETags: a key list with sizes costs no request per key here.
    ranges = shard_key_ranges(config)
    if ranges is None and inventory is None and config.tuning.list_concurrency > 1:
        ranges = key_ranges(listing_split_points(config, source))
    if ranges is not None:  # the order does not matter for counting
        stopping = threading.Event()
        window = ListingWindow(
            [functools.partial(source_objects, config, source, key_range.after, key_range.through, inventory=None,
                               on_missing=lambda key: None) for key_range in ranges],
            listers=config.tuning.list_concurrency, window=LISTING_WINDOW, stopping=stopping)
        listing: Iterable[ListedObject] = iter(lambda: window.next(lambda: None), None)
    else:
        listing = source_objects(config, source, None, inventory=inventory, need_etag=False,
                                 on_missing=lambda key: counts.update(["missing"]))
    for listed in listing:
        if recorded.counts_as_done(listed.key):
            counts["done"] += 1
            counts["done_bytes"] += listed.size
            continue
        counts["objects"] += 1
        counts["bytes"] += listed.size
        destination_key = map_destination_key(listed.key, config.job.source, config.job.destination)
        refusal = why_uncopyable(listed.key[len(config.job.source.prefix):], destination_key, listed.size)
        if refusal is not None:
            counts["uncopyable"] += 1
            print(f"  cannot copy {json.dumps(listed.key, ensure_ascii=False)}: {refusal}")
            continue
        if not copied_in_one_request(destination_key, listed.size,
                                     multipart_threshold=config.tuning.multipart_threshold):
            parts, part_size = parts_to_copy(listed, config, source)
            counts["multipart"] += 1
            counts["multipart_bytes"] += listed.size
            counts["parts"] += parts
            if part_size > max(config.tuning.memory_limit, config.tuning.chunk_size):
                counts["alone"] += 1  # its source's parts, larger than the memory limit
            largest_unit = max(largest_unit, part_size)
        else:
            largest_unit = max(largest_unit, listed.size)
        if config.output.verbose:
            print(f"  {json.dumps(listed.key, ensure_ascii=False)} -> "
                  f"{json.dumps(destination_key, ensure_ascii=False)} ({format_size(listed.size)})")
    print(f"Dry run: {config.job.source} -> {config.job.destination}; nothing was written to S3 and "
          f"{config.output.progress_file} was not touched.")
    print(f"  to copy:      {counts['objects']:,} objects, {format_size(counts['bytes'])}")
    print(f"  multipart:    {counts['multipart']:,} objects ({format_size(counts['multipart_bytes'])}, "
          f"{counts['parts']:,} parts); single PUT: {counts['objects'] - counts['multipart'] - counts['uncopyable']:,}")
    print(f"  already done: {counts['done']:,} objects, {format_size(counts['done_bytes'])} "
          f"(per {config.output.progress_file})")
    if counts["alone"]:
        print(f"  alone:        {counts['alone']:,} objects keep their source's parts, larger than --memory-limit "
              f"{format_size(config.tuning.memory_limit)}: copied one part at a time (to keep their ETags)")
    if counts["uncopyable"]:
        print(f"  cannot copy:  {counts['uncopyable']:,} objects, listed above with the reason")
    if counts["missing"]:
        print(f"  not in source: {counts['missing']:,} keys of {inventory.location if inventory else 'the listing'} "
              "no longer exist in the source")
    print(f"  memory bound: {format_size(max(config.tuning.memory_limit, largest_unit))} of object data in flight "
          f"({config.tuning.max_workers} workers, --memory-limit {format_size(config.tuning.memory_limit)}, "
          "largest single unit "
          f"{format_size(largest_unit)}), plus about 100 MiB for Python itself")
    if config.job.object_filter.active():
        print(f"  selection:    only objects {config.job.object_filter.describe()}")
    small = counts["objects"] - counts["multipart"] - counts["uncopyable"]
    print_cost_estimate(CostEstimate.of(
        small=small, multipart=counts["multipart"], parts=counts["parts"], listing_pages=counts["list_pages"],
        total_bytes=counts["bytes"], cross_region=source.region != destination.region, prices=config.prices),
        config, source, destination)
    if not config.job.copy_tags:
        print("  tags:         not copied (--no-tags)")
    if tags_refused:
        LOG.error("%s", tags_refused)
        return EXIT_USAGE
    if config.delete:
        return mirror_deletions(config, source, destination, dry_run=True)
    return EXIT_OK


def parts_to_copy(listed: ListedObject, config: RunSettings, source: ConnectedSide) -> tuple[int, int]:
    """The dry run's parts for an object above the threshold, and about the largest: the source's
    own (copy_part_plan keeps them), as many as its multipart ETag ("...-N") says, the first one's
    size from one HeadObject(PartNumber=1); else parts of --chunk-size."""
    counted = re.search(r"-(\d+)$", listed.etag.strip('"'))
    if counted and 0 < int(counted.group(1)) <= MAX_PARTS:
        try:
            first = source.retries.call(lambda: source.client.head_object(
                Bucket=source.bucket, Key=listed.key, PartNumber=1), what=f"HeadObject of {listed.key}")
            return int(counted.group(1)), int(first["ContentLength"])
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
            LOG.debug("no part size of %s for the dry run: %s", listed.key, error)
    part_size = choose_part_size(listed.size, config.tuning.chunk_size)
    return math.ceil(listed.size / part_size), part_size


def print_cost_estimate(estimate: CostEstimate, config: RunSettings, source: ConnectedSide,
                        destination: ConnectedSide) -> None:
    """The dry run's estimate of what the copy's requests cost, by the account that pays."""
    prices = estimate.prices
    with_tags, without = estimate.source_cost(with_tags=True), estimate.source_cost(with_tags=False)
    tags = (f", and up to {estimate.tagged_at_most:,} GetObjectTagging (one per tagged object)"
            if config.job.copy_tags and estimate.tagged_at_most else "")
    print(f"  requests:     source ({source.region}): {estimate.source_lists:,} LIST (as this dry run listed), "
          f"{estimate.source_gets:,} GET, {estimate.source_heads:,} HEAD{tags}; destination ({destination.region}): "
          f"{estimate.destination_writes:,} PUT, UploadPart and multipart calls")
    moved = (f"{format_size(estimate.bytes_out_of_region)} leave {source.region}" if estimate.bytes_out_of_region
             else f"nothing leaves {source.region} (both buckets there; a machine elsewhere would add transfer)")
    source_cost = f"${without:,.2f}" + (f" to ${with_tags:,.2f}" if tags else "")
    print(f"  cost:         about {source_cost} to the source's account ({moved}) and "
          f"${estimate.destination_cost():,.2f} to the destination's, at ${prices.write_per_1000}/1,000 writes, "
          f"${prices.read_per_1000}/1,000 reads, ${prices.transfer_per_gb}/GB between regions (S3 Standard list "
          f"prices of US East, {PRICES_AS_OF}; --price-* to change): an estimate, before storage and retries")


@contextlib.contextmanager
def stop_on_signals(stopping: threading.Event, on_second_interrupt: Callable[[], None]) -> Iterator[None]:
    """First Ctrl-C or SIGTERM: stop scheduling, let in-flight units finish, save, exit 130.
    A second Ctrl-C: save progress and leave at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: Any) -> None:
        # Python runs this on the main thread between any two bytecodes, perhaps in the middle of a
        # print or a log call: so no buffered I/O here. The main loop announces the stop.
        if stopping.is_set() and signum == signal.SIGINT:
            os.write(2, b"\nSecond Ctrl-C: saving progress and quitting now.\n")
            on_second_interrupt()
            os._exit(EXIT_INTERRUPTED)
        stopping.set()

    previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_transfer(config: RunSettings, status: StatusReporter) -> int:
    """Connect both sides, then copy everything not yet done, saving progress as it goes."""
    stopping = threading.Event()
    retries = Retries(stopping, on_throttle=status.throttled, on_retry=status.retried)
    # The source's connection pool serves the workers' GETs and the listers at once; too small a pool
    # throws connections away, silently (urllib3 logs it to no one).
    source = connect_side(config.job.source_access, config.job.source.bucket,
                          max_workers=config.tuning.max_workers + config.tuning.list_concurrency,
                          list_prefix=config.job.source.prefix, read_timeout=config.tuning.read_timeout,
                          retries=retries)
    destination = connect_side(config.job.destination_access, config.job.destination.bucket,
                               max_workers=config.tuning.max_workers,
                               list_prefix=config.job.destination.prefix, read_timeout=config.tuning.read_timeout,
                               retries=retries)
    pacing = None
    if config.tuning.max_requests_per_second:
        pacing = TokenBucket(config.tuning.max_requests_per_second, stopping)
        source = paced_requests(source, destination, pacing)
    state = state_store(config.output.progress_file, config.job.destination_access, retries)
    plan = config.output.shard_plan_file
    if plan is not None and config.job.shard is not None and config.job.shard.needs_plan():
        config = with_shard_plan(config, source, state if in_one_store(plan, config.output.progress_file) else
                                 state_store(plan, config.job.destination_access, retries))
    inventory = open_inventory(config.job.inventory, source) if config.job.inventory else None
    config, inventory = report_share(config, inventory)
    if config.mode is RunMode.DRY_RUN:
        return report_dry_run(config, source, destination, state, inventory,
                              tags_refused=tag_access_refusal(config, source)
                              or object_lock_refusal(config, source, destination))
    if config.mode is RunMode.VERIFY_ONLY:
        return audit(config, source, destination, inventory)  # compares listings: no tag is read
    tags_refused = tag_access_refusal(config, source)
    if tags_refused:
        raise ConfigurationError(tags_refused)
    lock_refused = object_lock_refusal(config, source, destination)
    if lock_refused:
        raise ConfigurationError(lock_refused)
    # Copying adds no destination-only key, so the count holds for after the copy: checked before
    # anything is written, and again before the first deletion.
    if config.delete and config.max_delete is not None and within_max_delete(config, source, destination) is None:
        return EXIT_USAGE
    engine_choice = choose_engine(config.tuning.engine, (source, destination))
    if engine_choice.parts == "threads":
        return_freed_bodies_to_the_system()
    with state.held(config.output.progress_file):  # before --restart, which aborts the uploads the file records
        code = copy_job(config, status, source=source, destination=destination, state=state, inventory=inventory,
                        engine_choice=engine_choice, stopping=stopping)
    if config.delete:
        if code == EXIT_OK:
            code = mirror_deletions(config, source, destination)
        else:
            LOG.warning("Not deleting anything (--delete): the copy did not complete (exit %d). Rerun the same "
                        "command: the deletions follow once every object is copied.", code)
    if pacing is not None:
        LOG.info("%d requests read the source, at most %g a second (--max-requests-per-second)", pacing.taken,
                 config.tuning.max_requests_per_second)
    if code == EXIT_OK and config.verify:
        # `stopping` is set by now (it let the listers go), which would stop any retry of the comparison.
        comparing = Retries(on_throttle=status.throttled, on_retry=status.retried)
        return audit(config, dataclasses.replace(source, retries=comparing),
                     dataclasses.replace(destination, retries=comparing), inventory)
    return code


def paced_requests(source: ConnectedSide, destination: ConnectedSide, pacing: TokenBucket) -> ConnectedSide:
    """--max-requests-per-second: every request that reads the source waits for its turn, whichever
    thread sends it: boto3's to the source (listing, HEAD, GET, tags, and each of botocore's retries),
    the destination's server-side copies (S3 serves them from the source), and the crt engine's
    (CrtSideClient.send; its own retries inside a request are not counted). The source, paced."""
    source.client.meta.events.register("before-send.s3", pacing.pace_request)
    for operation in ("CopyObject", "UploadPartCopy"):
        destination.client.meta.events.register(f"before-send.s3.{operation}", pacing.pace_request)
    return dataclasses.replace(source, pace=lambda: pacing.pace_request())


def worker_jobs(config: RunSettings, source: ConnectedSide, destination: ConnectedSide,
                engine_choice: EngineChoice) -> Optional[Callable[[int], WorkerJob]]:
    """--processes N: what each worker process starts from; None for one process."""
    if config.tuning.processes <= 1:
        return None
    # A worker streams (the parent makes the server-side copies, which its CopyModeChoice decides)
    # and lists nothing.
    settings = dataclasses.replace(config, tuning=dataclasses.replace(
        config.tuning, copy_mode="stream", processes=1, list_concurrency=1))
    reach = (SideReach.of(source), SideReach.of(destination))
    return lambda number: WorkerJob(settings, *reach, engine=engine_choice, parent_pid=os.getpid(), number=number)


def copy_job(config: RunSettings, status: StatusReporter, *, source: ConnectedSide, destination: ConnectedSide,
             state: StateStore, inventory: Optional[Inventory], engine_choice: EngineChoice,
             stopping: threading.Event) -> int:
    """Copy everything of the job not yet done, as the only run that writes its progress; the exit code."""
    if config.restart:
        discard_progress(config.output.progress_file, destination, state)
    progress = ProgressStore.open(config.output.progress_file, config.job.identity(), restart=config.restart,
                                  store=state)
    LOG.info("starting %s -> %s with %d workers%s, %s parts, threshold %s, bodies moved by %s (%s); "
             "memory bound %s%s%s%s%s%s",
             config.job.source, config.job.destination, config.tuning.max_workers,
             f" (small objects in {config.tuning.processes - 1} worker processes)" if config.tuning.processes > 1
             else "",
             format_size(config.tuning.chunk_size),
             format_size(config.tuning.multipart_threshold), engine_choice.describe(), engine_choice.reason,
             config.tuning.memory_bound(),
             f"; shard {config.job.shard}" if config.job.shard else "",
             f"; only objects {config.job.object_filter.describe()}" if config.job.object_filter.active() else "",
             f"; bandwidth cap {format_size(config.tuning.max_bandwidth)}/s" if config.tuning.max_bandwidth else "",
             f"; at most {config.tuning.max_requests_per_second:g} requests a second to the source"
             if config.tuning.max_requests_per_second else "",
             "" if config.job.copy_tags else "; tags not copied (--no-tags)")
    copy_mode = CopyModeChoice(config.tuning.copy_mode, unavailable="" if on_one_endpoint(
                               config.job.source_access, config.job.destination_access) else
                               "the source and destination are on different endpoints")
    progress.save(status.summary())
    engine = build_engine(config, source=source, destination=destination,
                          transport=make_transport(engine_choice, source, destination, config),
                          progress=progress, status=status, stopping=stopping, copy_mode=copy_mode,
                          worker_job=worker_jobs(config, source, destination, engine_choice))
    own_ranges = shard_key_ranges(config)
    if own_ranges is not None:
        follow_shard_plan(progress, own_ranges, config)
    elif config.tuning.list_concurrency > 1 and progress.splittable():
        progress.split(listing_split_points(config, source))
    plan = progress.listing_plan()
    starting = cpu_seconds() - status.cpu_at_start
    if len(plan) > 1:
        LOG.info("listing %d key ranges, %d at a time", len(plan), min(config.tuning.list_concurrency, len(plan)))

    def stream(key_range: KeyRange, start_after: Optional[str]) -> Callable[[], Iterator[ListedObject]]:
        if config.skip_existing:
            return lambda: objects_to_copy(config, source, destination, start_after, key_range.through, status,
                                           inventory=inventory, on_missing=engine.policy.source_vanished)
        return lambda: source_objects(config, source, start_after, key_range.through, inventory=inventory,
                                      on_missing=engine.policy.source_vanished)

    listing = ListingWindow([stream(key_range, start_after) for key_range, start_after in plan],
                            listers=config.tuning.list_concurrency, window=LISTING_WINDOW, stopping=stopping)
    with stop_on_signals(stopping, lambda: progress.finish("interrupted", status.summary())):
        try:
            engine.run(listing, progress.retry_keys())
            interrupted = stopping.is_set()
        except FatalTransferError as error:
            stopping.set()
            status.clear()
            progress.finish("stopped", status.summary())
            if isinstance(error, StateTakenOver):  # no record of them will ever be read: none may be left
                abort_uploads(progress.uploads.unsaved(), destination, why="stopping")
            LOG.error("%s", error)
            LOG.info("%s", final_report(state="stopped", status=status, progress=progress, config=config,
                                            engine=engine_choice))
            return EXIT_USAGE
        finally:
            stopping.set()  # lets the lister thread go
    if interrupted:
        state, code = "interrupted", EXIT_INTERRUPTED
    elif progress.failures():
        state, code = "finished with failures", EXIT_SOME_FAILED
    else:
        state, code = "complete", EXIT_OK
    progress.finish(state, status.summary())
    LOG.info("this process used %.2f s of CPU, %.2f s of it starting", cpu_seconds() - status.cpu_at_start, starting)
    status.clear()
    report = final_report(state=state, status=status, progress=progress, config=config, engine=engine_choice)
    LOG.info("%s", report)
    if not config.output.quiet or code != EXIT_OK:
        print(report, file=sys.stdout if code == EXIT_OK else sys.stderr)
    return code


GLIBC_M_MMAP_THRESHOLD = -3  # mallopt parameter, from glibc's malloc.h


def return_freed_bodies_to_the_system() -> None:
    """Make glibc give every body's memory back to the system as soon as it is freed.

    glibc serves a block above its mmap threshold (128 KiB) with mmap and unmaps it on free, but on
    each such free it raises the threshold (up to 32 MiB), so from then on parts are carved from
    per-thread heaps that keep freed memory, and the memory bound no longer holds (bench/README.md,
    the memory grid). A fixed threshold of 1 MiB keeps it true, for a small page-fault cost. Other C
    libraries are left alone.

    Not for the crt engine: awscrt buffers each body in C as well, and with every one of those
    buffers mapped and unmapped afresh, large objects cost far more CPU (bench/bench.py); it keeps
    more memory instead (see docs/design.md, Engines).
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.mallopt(GLIBC_M_MMAP_THRESHOLD, ctypes.c_int(MiB))
    except (OSError, AttributeError):
        pass


STATUS_EXIT_CODES_HELP = """exit codes:
  0    every shard of the job (or the unsharded run) is complete
  1    the job is not complete: a shard is running, stopped, silent, failed some objects or never started
  2    no progress file of the job was found there, or one cannot be read"""


def build_status_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3_bulk_transfer.py status",
        description="Print a job's progress from the progress files its runs save: every shard's "
                    "(NAME.shard-I-of-N.json), with the shards that have not started, or the one file of an "
                    "unsharded run. It only reads them; a running job is not disturbed.",
        epilog=STATUS_EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("progress_file", nargs="?", type=state_location_argument, default=Path(DEFAULT_PROGRESS_FILE),
                        metavar="PATH_OR_S3_URI",
                        help="the job's --progress-file as every shard was given it (without .shard-I-of-N), or "
                             f"the folder holding the default one (default: {DEFAULT_PROGRESS_FILE}); an "
                             "s3:// one is read with the default credential chain (or --profile)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document (the rows by shard count) instead of the table")
    reach = parser.add_argument_group("reaching an s3:// progress location")
    reach.add_argument("--profile", help="AWS profile whose credentials read it (default: the default chain)")
    reach.add_argument("--endpoint-url", metavar="URL",
                       help="S3 endpoint of its bucket (default: AWS, or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)")
    reach.add_argument("--region", help="region of its bucket, where it cannot be found out")
    return parser


def status_main(argv: list[str]) -> int:
    """The status command: the whole job's progress, and an exit code saying whether it is done."""
    try:
        args = build_status_parser().parse_args(argv)
    except SystemExit as exit_request:
        return int(exit_request.code or 0)
    location = args.progress_file
    access = SideAccess(role="progress location", origin=f"profile {args.profile}" if args.profile
                        else "the default credential chain", profile=args.profile, endpoint_url=args.endpoint_url,
                        region=args.region)
    try:
        rows = job_status(location, state_store(location, access, Retries()))
    except (ConfigurationError, FatalTransferError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if not rows:
        print(f"error: no progress file of a job at {location} (nor of its shards, "
              f"{location.stem}.shard-I-of-N{location.suffix}): give the "
              "--progress-file the job was started with, or the folder it is in.", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps({str(count or 1): [dataclasses.asdict(row) for row in shards]
                          for count, shards in rows.items()}, indent=2, ensure_ascii=False))
    else:
        print(format_job_status(location, rows))
    return EXIT_OK if all(row.complete for shards in rows.values() for row in shards) else EXIT_SOME_FAILED


def main(argv: Optional[list[str]] = None) -> int:
    """Parse the command line, run the transfer (or the status command), and map the outcome to an
    exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["status"]:  # a source is always s3://..., so the word cannot be one
        return status_main(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # argparse has printed its usage message
        return int(exit_request.code or 0)
    live = sys.stdout.isatty() and not args.quiet
    status = StatusReporter(max_workers=max(args.max_workers, 1), interval=args.status_interval, live=live,
                            plain=not live and not args.quiet)
    console = ConsoleHandler(status)
    file_handler: Optional[logging.Handler] = None
    try:
        resolve_state_files(args, dict(os.environ))
        file_handler = configure_logging(args, console)
        config = build_settings(args)
        return run_transfer(config, status)
    except KeyboardInterrupt:
        print("Interrupted before any copying began; nothing was changed.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except FatalTransferError as error:  # from a comparison (--verify, --verify-only)
        LOG.error("%s", error)
        return EXIT_USAGE
    except ConfigurationError as error:
        if file_handler is None:
            print(f"error: {error}", file=sys.stderr)
        else:
            LOG.error("%s", error)
        return EXIT_USAGE
    finally:
        status.clear()
        for handler in (console, file_handler):
            if handler is not None:
                LOG.removeHandler(handler)
                handler.close()


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
