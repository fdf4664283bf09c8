"""Credentials that expire in the middle of a long run.

moto accepts any session token, so tests/fault_proxy.py plays S3's part: from a chosen request on,
it answers ``400 ExpiredToken`` to every request signed with the expired token, exactly what S3
sends once a session is over. moto's STS (AssumeRole) issues the role credentials, each call a new
session token, so a renewed session really is a different token the proxy lets through.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import FAKE_KEYS
from fault_proxy import FaultProxy
from s3servers import MotoBuckets, incomplete_uploads, object_snapshot
from toolcli import ToolJob, copied_keys, describe, error_lines, read_progress, write_source_credentials
from units import MIB
from uploads import body

SMALL_OBJECTS = 60
WORKERS = 4


@pytest.fixture
def source(moto_buckets: MotoBuckets) -> dict[str, dict[str, Any]]:
    """60 small objects and two multipart ones (5 MiB parts), so that the token expires while
    multipart uploads are in flight too; returns the source snapshot."""
    for index in range(SMALL_OBJECTS):
        moto_buckets.client.put_object(Bucket=moto_buckets.source, Key=f"small/{index:02d}",
                                       Body=body(2_000 + index, seed=index), Metadata={"index": str(index)})
    for index in range(2):
        moto_buckets.client.put_object(Bucket=moto_buckets.source, Key=f"large/{index}",
                                       Body=body(12 * MIB + index, seed=100 + index))
    return object_snapshot(moto_buckets.client, moto_buckets.source)


def job_through(proxy: FaultProxy, tool_env: dict[str, str], tmp_path: Path, **credentials: str) -> ToolJob:
    """Both sides through the proxy; the source credentials file carries ``credentials`` too."""
    path = write_source_credentials(tmp_path / "source-credentials.json", FAKE_KEYS, proxy.endpoint_url,
                                    **credentials)
    return ToolJob(workdir=tmp_path, env=tool_env, credentials=path, dest_endpoint_url=proxy.endpoint_url)


def test_an_expired_session_token_stops_the_run_at_once_and_a_rerun_with_fresh_ones_resumes(
        moto_buckets: MotoBuckets, source: dict, tool_env: dict[str, str], tmp_path: Path) -> None:
    with FaultProxy(moto_buckets.endpoint_url) as proxy:
        job = job_through(proxy, tool_env, tmp_path, aws_session_token="first-session-token")
        proxy.expire_token("first-session-token", after_requests=40)
        result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}",
                         "--max-workers", str(WORKERS))

        assert result.returncode == 2, describe(result)
        assert "Traceback" not in result.stderr
        lines = error_lines(result.stderr)
        assert len(lines) == 1, describe(result)  # one sentence, not one per object
        assert "source" in lines[0] and "credentials expired: refresh them and rerun to resume" in lines[0], lines
        # It stopped at once: each worker meets the expiry on at most one request before the stop.
        assert proxy.counts.expired <= 2 * WORKERS, proxy.counts.expired
        progress = read_progress(job.progress_file)
        assert progress["resume"]["failed"] == {}  # no object is to blame
        assert progress["summary"]["state"] != "complete"
        done_before = set(copied_keys(job.log_text()))
        assert done_before, "the token should expire after some objects were copied"
        copied = object_snapshot(moto_buckets.client, moto_buckets.dest)
        assert all(copied[key] == source[key] for key in copied)  # what is there is whole

        write_source_credentials(job.credentials, FAKE_KEYS, proxy.endpoint_url,
                                 aws_session_token="second-session-token")
        log_before = len(job.log_text())
        rerun = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--max-workers", str(WORKERS))

    assert rerun.returncode == 0, describe(rerun)
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == source
    assert incomplete_uploads(moto_buckets.client, moto_buckets.dest) == []
    recopied = set(copied_keys(job.log_text()[log_before:])) & done_before
    assert recopied == set(), recopied  # progress was saved before the stop
    print(f"expired token: {proxy.counts.expired} requests refused, {len(done_before)} objects done before the stop")


def test_role_credentials_renew_themselves_when_s3_calls_them_expired(
        moto_buckets: MotoBuckets, source: dict, tool_env: dict[str, str], tmp_path: Path) -> None:
    with FaultProxy(moto_buckets.endpoint_url) as proxy:
        # The role is assumed from moto's STS; S3 requests go through the proxy.
        tool_env = {**tool_env, "AWS_ENDPOINT_URL_STS": moto_buckets.endpoint_url}
        job = job_through(proxy, tool_env, tmp_path, role_arn="arn:aws:iam::123456789012:role/copier")
        # Every session lasts 25 requests: a run that cannot renew its credentials stops at the first expiry.
        proxy.expire_sessions_after(25)
        result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--max-workers", str(WORKERS))

    assert result.returncode == 0, describe(result)
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == source
    assert incomplete_uploads(moto_buckets.client, moto_buckets.dest) == []
    sessions = proxy.counts.tokens
    assert len(sessions) >= 3 and proxy.counts.expired >= 2, (sessions, proxy.counts.expired)
    renewals = re.findall(r"renewed the source role credentials", job.log_text())
    assert len(renewals) >= 2, job.log_text()[-3000:]
    assert sorted(copied_keys(job.log_text())) == sorted(source)  # each object once
    assert json.loads(job.progress_file.read_text())["summary"]["state"] == "complete"
    print(f"role: {len(sessions)} sessions, {proxy.counts.expired} requests refused as expired, "
          f"{len(renewals)} renewals")


# What STS answers (its query protocol's error shape) when the role's trust policy no longer lets
# the caller in.
_DENIAL_XML = (
    b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
    b"<Code>AccessDenied</Code><Message>User: arn:aws:iam::123456789012:user/copier is not authorized to "
    b"perform: sts:AssumeRole on resource: arn:aws:iam::123456789012:role/copier</Message></Error>"
    b"<RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ErrorResponse>"
)
ASSUME_ROLE_DENIED = (b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/xml\r\nContent-Length: "
                      + str(len(_DENIAL_XML)).encode() + b"\r\nConnection: close\r\n\r\n" + _DENIAL_XML)


def test_a_role_that_can_no_longer_be_assumed_stops_the_run_with_one_sentence_and_a_rerun_resumes(
        moto_buckets: MotoBuckets, source: dict, tool_env: dict[str, str], tmp_path: Path) -> None:
    with FaultProxy(moto_buckets.endpoint_url) as proxy, FaultProxy(moto_buckets.endpoint_url) as sts:
        tool_env = {**tool_env, "AWS_ENDPOINT_URL_STS": sts.endpoint_url}
        job = job_through(proxy, tool_env, tmp_path, role_arn="arn:aws:iam::123456789012:role/copier")
        proxy.expire_sessions_after(25)
        # The first session is granted; the renewal, once S3 calls it expired, is refused.
        sts.deny_after(1, ASSUME_ROLE_DENIED)
        result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--max-workers", str(WORKERS))

        assert result.returncode == 2, describe(result)
        assert "Traceback" not in result.stderr
        lines = error_lines(result.stderr)
        assert len(lines) == 1, describe(result)  # one sentence, not one per object
        assert ("Could not assume the source role arn:aws:iam::123456789012:role/copier" in lines[0]
                and "is not authorized to perform: sts:AssumeRole" in lines[0]
                and "trust policy" in lines[0]), lines
        assert sts.counts.refused >= 1
        progress = read_progress(job.progress_file)
        assert progress["resume"]["failed"] == {}  # no object is to blame
        assert progress["summary"]["state"] != "complete"
        done_before = set(copied_keys(job.log_text()))
        copied = object_snapshot(moto_buckets.client, moto_buckets.dest)
        assert all(copied[key] == source[key] for key in copied)  # what is there is whole

        sts.heal()  # the trust policy is mended
        log_before = len(job.log_text())
        rerun = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--max-workers", str(WORKERS))

    assert rerun.returncode == 0, describe(rerun)
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == source
    assert incomplete_uploads(moto_buckets.client, moto_buckets.dest) == []
    assert set(copied_keys(job.log_text()[log_before:])) & done_before == set()
    print(f"role refused: {len(done_before)} objects done before the stop; the person reads: {lines[0]}")


def expiring_in_five_minutes(body: bytes) -> bytes:
    """An AssumeRole answer whose session ends five minutes from now: inside botocore's mandatory
    renewal window (ten minutes), so botocore assumes the role again before it signs any request."""
    soon = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return re.sub(rb"<Expiration>[^<]*</Expiration>", f"<Expiration>{soon}</Expiration>".encode(), body)


@pytest.mark.parametrize("renewal", ["granted", "refused"])
def test_credentials_botocore_renews_on_its_own_reach_every_request_or_stop_the_run_in_one_sentence(
        moto_buckets: MotoBuckets, source: dict, tool_env: dict[str, str], tmp_path: Path, renewal: str) -> None:
    """The renewal S3 never asks for: botocore's own, before the stated expiry. The crt engine signs
    in C but takes each request's credentials from botocore (a delegate provider), so every renewed
    session must show up at S3, and a renewal STS refuses must stop the run as it does with threads."""
    with FaultProxy(moto_buckets.endpoint_url) as proxy, FaultProxy(moto_buckets.endpoint_url) as sts:
        tool_env = {**tool_env, "AWS_ENDPOINT_URL_STS": sts.endpoint_url}
        job = job_through(proxy, tool_env, tmp_path, role_arn="arn:aws:iam::123456789012:role/copier")
        sts.rewrite_answers(expiring_in_five_minutes)
        if renewal == "refused":  # after the listing: the renewals left are the body requests' (crt's or boto3's)
            sts.deny_after(12, ASSUME_ROLE_DENIED)
        result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--max-workers", str(WORKERS))

    if renewal == "granted":
        assert result.returncode == 0, describe(result)
        assert object_snapshot(moto_buckets.client, moto_buckets.dest) == source
        assert incomplete_uploads(moto_buckets.client, moto_buckets.dest) == []
        # Each session S3 saw was one botocore had just renewed: far more than the one of the start.
        assert len(proxy.counts.tokens) >= 10, len(proxy.counts.tokens)
        print(f"botocore renewed the role {sts.counts.requests} times; S3 saw {len(proxy.counts.tokens)} sessions")
        return
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, describe(result)
    assert ("Could not assume the source role arn:aws:iam::123456789012:role/copier" in lines[0]
            and "is not authorized to perform: sts:AssumeRole" in lines[0]), lines
    progress = read_progress(job.progress_file)
    assert progress["resume"]["failed"] == {}  # no object is to blame
    copied = object_snapshot(moto_buckets.client, moto_buckets.dest)
    assert all(copied[key] == source[key] for key in copied)
