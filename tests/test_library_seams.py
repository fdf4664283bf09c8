"""The library seams: the private names of boto3, botocore and logging that s3_bulk_transfer.py relies on
for want of a public way, each reached in one function of its own. These tests build real objects of the
installed releases, so a release that renames or changes one of those names fails here, by name, rather
than somewhere in a copy. No server: scripts/test-floor.sh runs them at the oldest releases allowed."""

from __future__ import annotations

import datetime
import inspect
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import boto3
import botocore.awsrequest
import botocore.credentials
import pytest

import s3_bulk_transfer as tool


def role_metadata(access_key: str) -> dict[str, str]:
    expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    return {"access_key": access_key, "secret_key": "secret-" + access_key, "token": "token-" + access_key,
            "expiry_time": expiry.isoformat()}


def renewable_credentials() -> tuple[tool.RenewableRoleCredentials, list[str]]:
    """Role credentials whose every renewal assumes the role anew, and the access keys it handed out."""
    issued = ["AKIDFIRST"]

    def assume() -> dict[str, str]:
        issued.append(f"AKIDRENEWED{len(issued)}")
        return role_metadata(issued[-1])

    credentials = tool.RenewableRoleCredentials.create_from_metadata(
        metadata=role_metadata(issued[0]), refresh_using=assume, method="assume-role")
    return credentials, issued


# -- boto3.Session._session (botocore_session_of) ------------------------------------------------------

def test_botocore_session_of_is_the_session_boto3_was_given() -> None:
    core = tool.quick_timestamps_session()
    session = boto3.Session(botocore_session=core, region_name="eu-west-1")
    assert hasattr(session, "_session"), (
        f"boto3 {boto3.__version__}'s Session has no _session attribute any more: botocore_session_of in "
        "s3_bulk_transfer.py reads it, and must find the wrapped botocore session another way")
    assert tool.botocore_session_of(session) is core, (
        f"boto3 {boto3.__version__}'s Session._session is not the botocore session it was given: "
        "botocore_session_of in s3_bulk_transfer.py must change")


def test_what_the_tool_reads_through_botocore_session_of_is_botocores_resolved_config(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("")
    monkeypatch.setenv("AWS_CA_BUNDLE", str(bundle))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    for name in ("AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    session = boto3.Session(botocore_session=tool.quick_timestamps_session(), region_name="eu-west-1")

    assert tool.botocore_session_of(session).get_config_variable("ca_bundle") == str(bundle)
    assert tool.retry_settings(session) == {"mode": "standard", "total_max_attempts": tool.DEFAULT_MAX_ATTEMPTS}


# -- RefreshableCredentials._refresh_lock, _protected_refresh (renew_unless_renewed_since) ---------------

def test_refreshable_credentials_still_have_the_lock_and_the_renewal_the_seam_uses() -> None:
    credentials, _ = renewable_credentials()
    lock = getattr(credentials, "_refresh_lock", None)
    assert lock is not None and callable(getattr(lock, "acquire", None)) and callable(getattr(lock, "release", None)), (
        f"botocore {botocore.__version__}'s RefreshableCredentials has no _refresh_lock any more: "
        "RenewableRoleCredentials.renew_unless_renewed_since in s3_bulk_transfer.py takes it")
    refresh = getattr(credentials, "_protected_refresh", None)
    assert callable(refresh) and "is_mandatory" in inspect.signature(refresh).parameters, (
        f"botocore {botocore.__version__}'s RefreshableCredentials has no _protected_refresh(is_mandatory) any "
        "more: RenewableRoleCredentials.renew_unless_renewed_since in s3_bulk_transfer.py calls it")


def test_renewing_assumes_the_role_at_once_and_only_once_per_generation() -> None:
    credentials, issued = renewable_credentials()

    assert credentials.renew_unless_renewed_since(0) is True
    assert credentials.get_frozen_credentials().access_key == issued[-1] == "AKIDRENEWED1"
    assert credentials.generation == 1
    # A request signed before that renewal finds it done: it is retried, the role not assumed again.
    assert credentials.renew_unless_renewed_since(0) is False
    assert issued == ["AKIDFIRST", "AKIDRENEWED1"]
    assert credentials.renew_unless_renewed_since(1) is True
    assert credentials.get_frozen_credentials().access_key == "AKIDRENEWED2"


class CountingLock:
    """A lock that counts who takes it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.taken = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        self.taken += 1
        return self.lock.acquire(blocking, timeout)

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *_: Any) -> None:
        self.release()


def test_renewing_takes_the_lock_botocores_own_renewals_take() -> None:
    credentials, issued = renewable_credentials()
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=1)
    credentials._expiry_time = soon  # inside botocore's mandatory window: its next read renews
    lock = CountingLock()
    credentials._refresh_lock = lock

    credentials.get_frozen_credentials()
    assert issued == ["AKIDFIRST", "AKIDRENEWED1"] and lock.taken == 1, (
        f"botocore {botocore.__version__}'s RefreshableCredentials no longer renews under _refresh_lock: "
        "RenewableRoleCredentials.renew_unless_renewed_since in s3_bulk_transfer.py relies on sharing it")
    assert credentials.renew_unless_renewed_since(0) is True
    assert lock.taken == 2 and issued[-1] == "AKIDRENEWED2"


def test_a_renewal_that_cannot_assume_the_role_raises() -> None:
    def refused() -> dict[str, str]:
        raise tool.FatalTransferError("Could not assume the source role")

    credentials = tool.RenewableRoleCredentials.create_from_metadata(
        metadata=role_metadata("AKIDFIRST"), refresh_using=refused, method="assume-role")
    with pytest.raises(tool.FatalTransferError):
        credentials.renew_unless_renewed_since(0)
    assert credentials.generation == 0


# -- the credential_provider component (session_with_credentials): public, checked all the same ---------

class Body:
    """The raw body of an answer made here, as botocore reads one."""

    def __init__(self, content: bytes) -> None:
        self.content = content

    def stream(self) -> Iterator[bytes]:
        yield self.content


def header(request: Any, name: str) -> str:
    value = request.headers[name]
    return value.decode() if isinstance(value, bytes) else value


def test_a_session_with_credentials_signs_with_those_very_credentials() -> None:
    credentials, _ = renewable_credentials()
    signed_requests: list[Any] = []
    session = tool.session_with_credentials(credentials, region="eu-west-1")
    assert session.get_credentials() is credentials
    client = session.client("s3", endpoint_url="http://127.0.0.1:9")

    def answer(request: Any, **_: Any) -> botocore.awsrequest.AWSResponse:
        signed_requests.append(request)
        return botocore.awsrequest.AWSResponse(request.url, 200, {}, Body(b"<ListAllMyBucketsResult/>"))

    client.meta.events.register("before-send.s3", answer)
    credentials.renew_unless_renewed_since(0)
    client.list_buckets()
    assert "Credential=AKIDRENEWED1/" in header(signed_requests[-1], "Authorization")
    assert header(signed_requests[-1], "X-Amz-Security-Token") == "token-AKIDRENEWED1"


# -- logging._srcfile (skip_caller_lookup_in_log_records) ------------------------------------------------

class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_without_the_caller_lookup_records_leave_out_where_they_were_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    assert hasattr(logging, "_srcfile"), (
        f"Python {sys.version.split()[0]}'s logging has no _srcfile any more: skip_caller_lookup_in_log_records "
        "in s3_bulk_transfer.py sets it, and must find another way to skip the caller lookup")
    # As logging sets it (an earlier main() in this process may have cleared it); put back after the test.
    monkeypatch.setattr(logging, "_srcfile", os.path.normcase(logging.addLevelName.__code__.co_filename))
    logger = logging.getLogger("test_library_seams")
    logger.propagate = False
    handler = Records()
    logger.addHandler(handler)
    try:
        logger.warning("looked up")
        tool.skip_caller_lookup_in_log_records()
        logger.warning("not looked up")
    finally:
        logger.removeHandler(handler)
    looked_up, skipped = handler.records
    assert looked_up.funcName == "test_without_the_caller_lookup_records_leave_out_where_they_were_logged"
    assert (skipped.funcName, skipped.lineno) == ("(unknown function)", 0), (
        f"Python {sys.version.split()[0]}: logging._srcfile = None no longer skips the caller lookup: "
        "skip_caller_lookup_in_log_records in s3_bulk_transfer.py must change")
