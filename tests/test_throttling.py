"""Throttling storms: S3 answering SlowDown faster than botocore's retries can absorb.

botocore's standard retry mode keeps a quota per client (500 tokens, 5 per throttled retry); once a
storm drains it, every SlowDown comes back to the caller at once, as if the user had set
``AWS_MAX_ATTEMPTS=1``. That is what these tests set, so that each SlowDown of the storm
(tests/aws_behaviour.py's ``SlowDownStorm``, in front of moto) reaches the tool: it must send the
request again after a pause, whatever the engine, for object bodies, bookkeeping calls, listing
pages and inventory reads alike, copy everything, and count the throttles where a person looks.
The unit tests at the end hold the rules of the retry loop itself (throttles do not use up the
attempts a broken body gets; an object fails for throttling only after a long while in which
nothing at all succeeded) and the botocore retry settings the clients are given.
"""

from __future__ import annotations

import csv
import io
import re
import threading
from pathlib import Path
from typing import Any

import botocore.exceptions
import boto3
import pytest
from aws_behaviour import SlowDownStorm
from conftest import FAKE_KEYS
from fault_proxy import FaultProxy, Request, Seen
from s3servers import MotoBuckets, incomplete_uploads, object_snapshot
from toolcli import ToolJob, copied_keys, describe, read_progress, write_source_credentials
from units import MIB
from uploads import body

import s3_bulk_transfer as tool  # (the retry loop's rules)

SMALL_OBJECTS = 6
THROTTLED_TIMES = 2  # each request is refused twice, then goes through (awscrt's two attempts rely on it)


def outside_preflight(request: Request) -> bool:
    """Every request but the two a side's connection sends first (HeadBucket for its region, one
    ListObjectsV2 of one key to prove the bucket and keys): a fresh client's retry quota is full
    then, so a storm drains it later, once the copy runs."""
    return request.operation != "HeadBucket" and request.query.get("max-keys") != ["1"]


@pytest.fixture
def source(moto_buckets: MotoBuckets) -> dict[str, dict[str, Any]]:
    """Small objects (two of them tagged) and one of three parts; their snapshot."""
    client = moto_buckets.client
    for index in range(SMALL_OBJECTS):
        client.put_object(Bucket=moto_buckets.source, Key=f"small/{index}", Body=body(1_000 + index, seed=index),
                          Metadata={"index": str(index)}, **({"Tagging": "kind=small"} if index % 3 == 0 else {}))
    client.put_object(Bucket=moto_buckets.source, Key="large/parts.bin", Body=body(7 * MIB, seed=50),
                      Tagging="kind=large")
    return object_snapshot(client, moto_buckets.source)


def job_through(proxy: FaultProxy, tool_env: dict[str, str], tmp_path: Path) -> ToolJob:
    """Both sides through the proxy, with botocore (and awscrt) told to make one attempt only."""
    credentials = write_source_credentials(tmp_path / "source-credentials.json", FAKE_KEYS, proxy.endpoint_url)
    return ToolJob(workdir=tmp_path, env={**tool_env, "AWS_MAX_ATTEMPTS": "1"}, credentials=credentials,
                   dest_endpoint_url=proxy.endpoint_url)


def sent_by_awscrt(seen: Seen) -> bool:
    return any(name.lower() == "user-agent" and value.startswith("CRTS3NativeClient") for name, value in seen.headers)


def assert_every_throttle_counted(job: ToolJob, result: Any, proxy: FaultProxy, storm: SlowDownStorm) -> None:
    """The final report and the progress file's summary count the SlowDowns that reached the tool:
    with one botocore attempt, all of those botocore was sent. awscrt (the crt engine) cannot be
    told to make one attempt (it reads max_retries 0 as its default of 5), so it makes two, and
    absorbs the first of the two SlowDowns each request of its own meets."""
    assert storm.answered > 0
    absorbed_by_awscrt = sum(1 for seen in proxy.counts.log if seen.status == 503 and sent_by_awscrt(seen)) // 2
    reached_the_tool = storm.answered - absorbed_by_awscrt
    assert f"S3 answered {reached_the_tool:,} times that it was busy (SlowDown" in result.stdout, describe(result)
    assert read_progress(job.progress_file)["summary"]["this_run"]["throttled"] == reached_the_tool


def test_a_throttling_storm_is_ridden_out_with_every_throttle_counted(
        moto_buckets: MotoBuckets, source: dict, tool_env: dict[str, str], tmp_path: Path) -> None:
    with FaultProxy(moto_buckets.endpoint_url) as proxy:
        storm = SlowDownStorm(outside_preflight, times=THROTTLED_TIMES)
        proxy.behave(storm)
        job = job_through(proxy, tool_env, tmp_path)
        result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}")

    assert result.returncode == 0, describe(result)
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == source
    assert incomplete_uploads(moto_buckets.client, moto_buckets.dest) == []
    assert sorted(copied_keys(job.log_text())) == sorted(source)  # each once: no object restarted
    assert_every_throttle_counted(job, result, proxy, storm)
    # The storm met every kind of request the copy sends, listing pages and bookkeeping included.
    throttled = {seen.operation for seen in proxy.counts.log if seen.status == 503}
    assert {"ListObjectsV2", "GetObject", "PutObject", "HeadObject", "GetObjectTagging", "CreateMultipartUpload",
            "UploadPart", "CompleteMultipartUpload"} <= throttled, throttled


def test_a_throttling_storm_while_reading_a_key_list_from_s3(
        moto_buckets: MotoBuckets, source: dict, tool_env: dict[str, str], tmp_path: Path) -> None:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([key] for key in sorted(source))
    moto_buckets.client.put_object(Bucket=moto_buckets.source, Key="lists/keys.txt", Body=text.getvalue().encode())
    with FaultProxy(moto_buckets.endpoint_url) as proxy:
        storm = SlowDownStorm(outside_preflight, times=THROTTLED_TIMES)
        proxy.behave(storm)
        job = job_through(proxy, tool_env, tmp_path)
        result = job.run(f"s3://{moto_buckets.source}/small", f"s3://{moto_buckets.dest}/small",
                         "--from-inventory", f"s3://{moto_buckets.source}/lists/keys.txt")

    assert result.returncode == 0, describe(result)
    small = {key: entry for key, entry in source.items() if key.startswith("small/")}
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == small
    assert_every_throttle_counted(job, result, proxy, storm)
    throttled = {(seen.operation, seen.key) for seen in proxy.counts.log if seen.status == 503}
    assert ("GetObject", "lists/keys.txt") in throttled and ("HeadObject", "lists/keys.txt") in throttled


# -- the rules of the retry loop ----------------------------------------------------------------


def busy(code: str = "SlowDown", status: int = 503) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "Please reduce your request rate."},
         "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


class Clock:
    """Time that passes only when the retry loop waits."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Waits(threading.Event):
    """A stopping event that is never set; each wait moves the clock on instead of sleeping."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.delays: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.delays.append(timeout or 0.0)
        self.clock.now += timeout or 0.0
        return False


def retries_at(clock: Clock, throttles: list[int] | None = None) -> tuple[tool.Retries, Waits]:
    waits = Waits(clock)
    counted = throttles if throttles is not None else []
    return tool.Retries(waits, clock=clock, on_throttle=lambda: counted.append(1)), waits


def failing(errors: list[BaseException], result: str = "done") -> Any:
    """An operation that raises each of `errors` in turn, then returns `result`."""
    pending = list(errors)

    def operation() -> str:
        if pending:
            raise pending.pop(0)
        return result

    return operation


def test_throttles_do_not_use_up_the_attempts_a_broken_body_gets() -> None:
    clock, throttles = Clock(), []
    retries, waits = retries_at(clock, throttles)
    broken = botocore.exceptions.IncompleteReadError(actual_bytes=1, expected_bytes=2)
    errors: list[BaseException] = [busy()] * 20 + [broken] * (tool.BODY_ATTEMPTS - 1) + [busy("InternalError", 500)]

    assert retries.call(failing(errors), what="GET x", retry_bodies=True) == "done"

    assert len(waits.delays) == len(errors)
    assert len(throttles) == 21


def test_a_broken_body_still_fails_after_its_attempts() -> None:
    retries, waits = retries_at(Clock())
    broken = botocore.exceptions.IncompleteReadError(actual_bytes=1, expected_bytes=2)

    with pytest.raises(botocore.exceptions.IncompleteReadError):
        retries.call(failing([broken] * tool.BODY_ATTEMPTS), what="GET x", retry_bodies=True)
    assert len(waits.delays) == tool.BODY_ATTEMPTS - 1


def test_an_attempt_made_before_the_loop_counts_as_its_first() -> None:
    """SmallObjectPipeline's GET or PUT failed in a callback, and a worker carries the request on:
    that failure is the first of its attempts, not an extra one."""
    retries, waits = retries_at(Clock())
    broken = botocore.exceptions.IncompleteReadError(actual_bytes=1, expected_bytes=2)
    sent: list[int] = []

    def always_broken() -> str:
        sent.append(1)
        raise broken

    with pytest.raises(botocore.exceptions.IncompleteReadError):
        retries.call(always_broken, what="GET x", retry_bodies=True, failed_once=broken)
    assert len(sent) == tool.BODY_ATTEMPTS - 1
    assert len(waits.delays) == tool.BODY_ATTEMPTS - 1  # after the seeded failure too, as after any


def test_an_earlier_failure_the_rules_would_not_retry_lets_the_request_be_tried() -> None:
    """An expired role session, say: sent again it renews itself (CrtSideClient.request), so the
    worker sends it rather than failing the object for the callback's attempt."""
    retries, waits = retries_at(Clock())
    expired = botocore.exceptions.ClientError(
        {"Error": {"Code": "ExpiredToken", "Message": "The provided token has expired."},
         "ResponseMetadata": {"HTTPStatusCode": 400}}, "GetObject")

    assert retries.call(failing([]), what="GET x", retry_bodies=True, failed_once=expired) == "done"
    assert waits.delays == []


def test_bookkeeping_calls_leave_broken_bodies_to_botocore() -> None:
    retries, _ = retries_at(Clock())
    broken = botocore.exceptions.ConnectionClosedError(endpoint_url="http://127.0.0.1")

    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        retries.call(failing([broken]), what="HeadObject of x")


def test_a_throttled_request_is_given_up_only_when_nothing_succeeded_for_a_long_while() -> None:
    clock = Clock()
    retries, _ = retries_at(clock)

    def throttled_for_ever() -> str:
        raise busy()

    with pytest.raises(botocore.exceptions.ClientError):
        retries.call(throttled_for_ever, what="GET x")
    assert tool.THROTTLE_PATIENCE <= clock.now < tool.THROTTLE_PATIENCE + 2 * tool.MAX_BACKOFF


def test_a_request_s3_keeps_failing_inside_is_given_up_after_its_attempts_while_others_succeed() -> None:
    """An object S3 cannot serve (InternalError on every attempt) must not hold a worker for the whole
    run: unlike throttling, waiting does not mend it."""
    clock = Clock()
    retries, waits = retries_at(clock)
    original_wait = waits.wait

    def others_succeed_meanwhile(timeout: float | None = None) -> bool:
        retries.call(lambda: "another request", what="GET y")
        return original_wait(timeout)

    waits.wait = others_succeed_meanwhile  # type: ignore[method-assign]

    with pytest.raises(botocore.exceptions.ClientError):
        retries.call(failing([busy("InternalError", 500)] * 100), what="GET x")
    assert len(waits.delays) == tool.SERVER_ERROR_ATTEMPTS - 1


def test_a_request_given_up_as_throttled_is_one_sentence() -> None:
    side = tool.SideAccess(role="source", origin="the credentials file c.json")
    message = tool.explain_error(busy(), access=side, bucket="b", action="s3:GetObject", key="k")
    assert message.startswith("S3 stayed too busy to answer s3:GetObject on s3://b/k (source): SlowDown")
    assert "rerun later" in message and "\n" not in message


def test_any_success_in_the_run_keeps_a_throttled_request_going() -> None:
    clock = Clock()
    retries, waits = retries_at(clock)
    original_wait = waits.wait

    def others_succeed_meanwhile(timeout: float | None = None) -> bool:
        retries.call(lambda: "another request", what="GET y")  # the run makes progress meanwhile
        return original_wait(timeout)

    waits.wait = others_succeed_meanwhile  # type: ignore[method-assign]
    storm = int(2 * tool.THROTTLE_PATIENCE / tool.MAX_BACKOFF) + 5  # outlasts the patience, twice over

    assert retries.call(failing([busy()] * storm), what="GET x") == "done"
    assert clock.now > tool.THROTTLE_PATIENCE


@pytest.mark.parametrize(("code", "status", "retried"), [
    ("SlowDown", 503, True), ("503", 503, True), ("ServiceUnavailable", 503, True), ("InternalError", 500, True),
    ("500", 500, True), ("", 502, True), ("", 504, True),
    ("NotImplemented", 501, False), ("AccessDenied", 403, False), ("NoSuchKey", 404, False),
])
def test_which_answers_mean_s3_is_busy(code: str, status: int, retried: bool) -> None:
    assert tool.is_busy(busy(code, status)) is retried


def test_the_backoff_grows_to_its_cap_with_jitter() -> None:
    delays = [tool.backoff_delay(attempt) for attempt in range(1, 30)]
    assert all(0 < delay <= tool.MAX_BACKOFF * 1.5 for delay in delays)
    assert tool.backoff_delay(1) <= 0.75 and max(delays[10:]) > tool.MAX_BACKOFF / 2


@pytest.mark.parametrize(("environment", "profile", "expected"), [
    ({}, "", {"mode": "standard", "total_max_attempts": 10}),
    ({"AWS_MAX_ATTEMPTS": "1"}, "", {"mode": "standard", "total_max_attempts": 1}),
    ({"AWS_RETRY_MODE": "adaptive"}, "", {"mode": "adaptive", "total_max_attempts": 10}),
    ({}, "retry_mode = legacy\nmax_attempts = 3\n", {"mode": "legacy", "total_max_attempts": 3}),
])
def test_the_users_botocore_retry_settings_are_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     environment: dict[str, str], profile: str,
                                                     expected: dict[str, Any]) -> None:
    config = tmp_path / "config"
    config.write_text("[default]\n" + profile)
    for name in ("AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    session = boto3.Session(aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1")
    client = tool.make_s3_client(session, tool.SideAccess(role="source", origin="a test"), region="us-east-1",
                                 max_workers=1)

    assert {name: client.meta.config.retries[name] for name in ("mode", "total_max_attempts")} == expected


def test_the_status_line_counts_throttles() -> None:
    status = tool.StatusReporter(max_workers=2, interval=60, live=False, plain=False, stream=io.StringIO())
    status.throttled()
    status.throttled()
    assert re.search(r"\b2 throttled\b", status.status_line())
    assert status.summary()["throttled"] == 2
