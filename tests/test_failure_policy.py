"""The failure policy, with errors built by hand: what each error means for its object and for the
run; classify(), which says what an error is; and the engine built from its parts against moto."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import Optional

import botocore.exceptions
import pytest

import toolcli
from conftest import FAKE_KEYS
from s3servers import MotoBuckets, incomplete_uploads, object_snapshot
from toolcli import MIB

import s3_bulk_transfer as tool

Kind = tool.ErrorKind
SOURCE_BUCKET, DESTINATION_BUCKET = "src", "dst"


def answer(code: str, status: int = 400, message: str = "", operation: str = "GetObject",
           **details: str) -> botocore.exceptions.ClientError:
    """A ClientError as botocore builds it from S3's answer."""
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": message or code, **details},
         "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


def failed(code: str, status: int = 400, *, action: str = "s3:GetObject", role: str = "source",
           message: str = "", **details: str) -> tool.S3CallFailed:
    """An S3 request refused after every retry, as the copiers raise it."""
    return tool.S3CallFailed(answer(code, status, message, **details), action=action, role=role)


KMS_MESSAGE = ("User: arn:aws:iam::1:user/x is not authorized to perform: kms:Decrypt on resource: "
               "arn:aws:kms:us-east-1:1:key/abc")


@pytest.mark.parametrize("error, kind", [
    (answer("SlowDown", 503), Kind.THROTTLED),
    (answer("503", 503), Kind.THROTTLED),  # all a HEAD's answer carries
    (answer("InternalError", 500), Kind.SERVER_ERROR),
    (answer("502", 502), Kind.SERVER_ERROR),
    (answer("InvalidAccessKeyId", 403), Kind.CREDENTIALS),
    (answer("ExpiredToken", 400), Kind.CREDENTIALS),
    (botocore.exceptions.NoCredentialsError(), Kind.CREDENTIALS),
    (answer("NoSuchBucket", 404), Kind.MISSING_BUCKET),
    (answer("AccessDenied", 403), Kind.DENIED),
    (answer("AccessDenied", 403, KMS_MESSAGE), Kind.KMS_DENIED),
    (answer("PreconditionFailed", 412), Kind.SOURCE_CHANGED),
    (answer("412", 412), Kind.SOURCE_CHANGED),
    (answer("NoSuchKey", 404), Kind.NOT_FOUND),
    (answer("404", 404), Kind.NOT_FOUND),
    (answer("NoSuchUpload", 404), Kind.UPLOAD_GONE),
    (answer("BadDigest", 400), Kind.DAMAGED_UPLOAD),
    (answer("InvalidObjectState", 403, StorageClass="GLACIER"), Kind.ARCHIVED),
    (botocore.exceptions.IncompleteReadError(actual_bytes=1, expected_bytes=2), Kind.BROKEN_BODY),
    (tool.BodyMismatch("md5"), Kind.BROKEN_BODY),
    (answer("InvalidArgument", 400), Kind.OTHER),
    (ValueError("a bug"), Kind.OTHER),
])
def test_classify_says_what_an_error_means(error: BaseException, kind: tool.ErrorKind) -> None:
    assert tool.classify(error) is kind


def test_classify_and_error_code_read_through_the_wrapper() -> None:
    wrapped = failed("NoSuchKey", 404)
    assert tool.classify(wrapped) is Kind.NOT_FOUND
    assert tool.error_code(wrapped) == "NoSuchKey"
    assert str(wrapped) == str(wrapped.cause)
    assert tool.classify(failed("InvalidAccessKeyId", 403)) in tool.FATAL_KINDS
    assert tool.classify(wrapped) not in tool.FATAL_KINDS


class FakeUpload:
    """What the policy asks of a MultipartCopy: abandon it (once), claim its recheck (once)."""

    def __init__(self) -> None:
        self.aborted: list[str] = []
        self.rechecks = 0

    def abandon(self, reason: str) -> bool:
        self.aborted.append(reason)
        return len(self.aborted) == 1

    def claim_recheck(self) -> bool:
        self.rechecks += 1
        return self.rechecks == 1


class Run:
    """A failure policy over two sides that are never called, with its store and status."""

    def __init__(self, tmp_path: Path) -> None:
        self.progress = tool.ProgressStore(tmp_path / "progress.json",
                                           {"source": "s3://src/", "destination": "s3://dst/"})
        self.status = tool.StatusReporter(max_workers=1, interval=60, live=False, plain=True, stream=io.StringIO())
        self.run = tool.RunStop(threading.Event())
        self.policy = tool.FailurePolicy(source=side("source", SOURCE_BUCKET),
                                         destination=side("destination", DESTINATION_BUCKET), progress=self.progress,
                                         status=self.status, run=self.run, permissions=tool.PermissionBreaker())

    def fail(self, key: str, error: BaseException, *, attempt: int = 1, upload: Optional[FakeUpload] = None,
             action: str = "") -> None:
        self.progress.listed(key)
        listed = tool.ListedObject(key, 10, '"e"')
        self.policy.unit_failed(listed, attempt, error, upload=upload, action=action)  # type: ignore[arg-type]

    def restarted(self) -> list[tuple[str, int]]:
        restarts = []
        while not self.policy.restarts.empty():
            listed, attempt = self.policy.restarts.get_nowait()
            restarts.append((listed.key, attempt))
        return restarts


def side(name: str, bucket: str) -> tool.ConnectedSide:
    return tool.ConnectedSide(access=tool.SideAccess(role=name, origin=f"the {name} test keys"), client=None,
                     bucket=bucket, region="us-east-1")


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return Run(tmp_path)


def test_a_stop_leaves_the_object_as_it_is(run: Run) -> None:
    upload = FakeUpload()
    run.fail("a", tool.StopRequested(), upload=upload)
    assert run.progress.failures() == {} and upload.aborted == [] and run.restarted() == []


def test_an_object_throttled_past_every_retry_fails_alone(run: Run) -> None:
    run.fail("a", failed("SlowDown", 503))
    assert run.progress.failures() == {"a": "S3 stayed too busy to answer s3:GetObject on s3://src/a (source): "
                                            "SlowDown: SlowDown, after every retry; rerun later to copy it (fewer "
                                            "--max-workers ask less of S3)."}
    assert run.run.fatal is None


def test_a_vanished_source_is_no_failure_and_aborts_its_upload(run: Run) -> None:
    upload = FakeUpload()
    run.fail("a", failed("NoSuchKey", 404), upload=upload)
    run.fail("b", failed("404", 404, role="source"))
    assert run.progress.failures() == {} and run.status.objects_vanished == 2
    assert upload.aborted == ["the source object no longer exists"]


def test_a_destination_that_answers_404_is_not_a_vanished_source(run: Run) -> None:
    run.fail("a", failed("404", 404, action="s3:PutObject", role="destination"))
    assert run.status.objects_vanished == 0 and list(run.progress.failures()) == ["a"]


def test_a_changed_source_is_copied_again_then_failed(run: Run) -> None:
    run.fail("a", tool.SourceChanged(), attempt=1)
    assert run.restarted() == [("a", 2)] and run.progress.failures() == {}
    run.fail("a", tool.SourceChanged(), attempt=tool.OBJECT_ATTEMPTS)
    assert run.restarted() == []
    assert run.progress.failures()["a"] == ("the source object changed during the copy (If-Match failed); it is "
                                            f"read again at its new version (after {tool.OBJECT_ATTEMPTS} attempts)")


def test_a_refused_server_side_copy_is_streamed_at_the_same_attempt(run: Run) -> None:
    upload = FakeUpload()
    run.fail("a", tool.ServerSideRefused("CopyObject: AccessDenied"), attempt=2, upload=upload)
    assert run.restarted() == [("a", 2)] and upload.aborted == ["S3 refused the server-side copy; streaming it instead"]


def test_parts_that_do_not_make_the_source_are_compared_again_once(run: Run) -> None:
    upload = FakeUpload()
    run.fail("a", tool.PartsToRecheck("integrity mismatch"), upload=upload)
    run.fail("a", tool.PartsToRecheck("integrity mismatch"), upload=upload)  # a sibling part's
    assert run.restarted() == [("a", 2)] and upload.aborted == []


def test_only_the_first_failing_part_settles_its_object(run: Run) -> None:
    upload = FakeUpload()
    run.fail("a", failed("InvalidArgument"), upload=upload)
    run.fail("a", failed("InvalidArgument"), upload=upload)
    assert len(upload.aborted) == 2 and run.status.objects_failed == 1 and list(run.progress.failures()) == ["a"]


def test_one_denial_fails_its_object_and_repeated_ones_stop_the_run(run: Run) -> None:
    run.fail("a", failed("AccessDenied", 403))
    assert run.run.fatal is None
    assert run.progress.failures()["a"] == ("Access denied: the source credentials (the source test keys) may not "
                                            "s3:GetObject on s3://src/a; grant s3:GetObject to them (see the "
                                            "README's IAM policies).")
    for key in ["b", "c"][:tool.DENIALS_BEFORE_STOP - 1]:
        run.fail(key, failed("AccessDenied", 403))
    assert isinstance(run.run.fatal, tool.FatalTransferError) and "may not s3:GetObject" in str(run.run.fatal)
    assert len(run.progress.failures()) == tool.DENIALS_BEFORE_STOP  # each denied key is still named


def test_denials_of_an_action_once_allowed_never_stop_the_run(run: Run) -> None:
    run.policy.permissions.allowed("s3:GetObject")
    for key in "abcdef":
        run.fail(key, failed("AccessDenied", 403))
    assert run.run.fatal is None and len(run.progress.failures()) == 6


def test_kms_denials_fail_only_their_objects(run: Run) -> None:
    for key in "abcdef":
        run.fail(key, failed("AccessDenied", 403, message=KMS_MESSAGE))
    assert run.run.fatal is None
    assert run.progress.failures()["a"].startswith("Access denied by AWS KMS: the source credentials (the source "
                                                   "test keys) may not use kms:Decrypt with the KMS key of s3://src/a")


def test_refused_credentials_stop_the_run_and_blame_no_key(run: Run) -> None:
    run.fail("a", failed("ExpiredToken", 400, action="s3:PutObject", role="destination"))
    assert run.progress.failures() == {}
    assert str(run.run.fatal) == ("The destination credentials (the destination test keys) were refused: "
                                  "credentials expired: refresh them and rerun to resume.")


def test_a_missing_bucket_is_named_by_the_side_s3_names(run: Run) -> None:
    run.fail("a", failed("NoSuchBucket", 404, action="s3:PutObject", role="destination", BucketName=SOURCE_BUCKET))
    assert str(run.run.fatal) == ("The source bucket src does not exist (or is not reachable at this endpoint "
                                  "and region).")


def test_an_object_failure_is_recorded_as_worded(run: Run) -> None:
    run.fail("a", tool.ObjectFailure("it is archived in GLACIER"))
    assert run.progress.failures() == {"a": "it is archived in GLACIER"} and run.run.fatal is None


def test_the_action_of_the_innermost_call_is_the_one_named(run: Run) -> None:
    run.fail("a", failed("AccessDenied", 403, action="s3:GetObjectTagging"), action="s3:CreateMultipartUpload")
    assert "may not s3:GetObjectTagging on s3://src/a" in run.progress.failures()["a"]


# -- the engine from its parts, against moto ----------------------------------------------------


def test_the_engine_built_from_its_parts_copies_small_and_multipart_objects(
        moto_buckets: MotoBuckets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = moto_buckets.client
    bodies = {"small/a": b"a" * 10, "small/b": os.urandom(70_000), "empty": b"", "large": os.urandom(11 * MIB)}
    for key, body in bodies.items():
        client.put_object(Bucket=moto_buckets.source, Key=key, Body=body, Metadata={"k": key})
    monkeypatch.chdir(tmp_path)
    args = tool.build_parser().parse_args([
        f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--source-endpoint-url", moto_buckets.endpoint_url,
        "--dest-endpoint-url", moto_buckets.endpoint_url, "--chunk-size", "5MiB", "--multipart-threshold", "5MiB",
        "--max-workers", "4", "--log-file", str(tmp_path / "log"), "--progress-file", str(tmp_path / "progress.json"),
        *toolcli.engine_args()])
    tool.resolve_state_files(args, {})
    config = tool.build_settings(args)

    def connect(name: str, bucket: str) -> tool.ConnectedSide:
        settings = tool.SideAccess(role=name, origin="the test keys", endpoint_url=moto_buckets.endpoint_url,
                                     region="us-east-1", access_key_id=FAKE_KEYS.access_key,
                                     secret_access_key=FAKE_KEYS.secret_key)
        return tool.connect_side(settings, bucket, max_workers=4, list_prefix="", retries=retries)

    stopping = threading.Event()
    retries = tool.Retries(stopping)
    source, destination = connect("source", moto_buckets.source), connect("destination", moto_buckets.dest)
    progress = tool.ProgressStore(config.output.progress_file, config.job.identity())
    status = tool.StatusReporter(max_workers=4, interval=60, live=False, plain=True, stream=io.StringIO())
    run = tool.RunStop(stopping)
    permissions = tool.PermissionBreaker()
    copy_mode = tool.CopyModeChoice("stream", unavailable="")
    engine = tool.choose_engine(config.tuning.engine, (source, destination))
    services = tool.CopyServices(
        config, source=source, destination=destination, progress=progress, status=status, run=run,
        transport=tool.make_transport(engine, source, destination, config),
        permissions=permissions, copy_mode=copy_mode, planner=tool.IntegrityPlanner(source))
    policy = tool.FailurePolicy(source=source, destination=destination, progress=progress, status=status, run=run,
                                permissions=permissions)
    with tool.concurrent.futures.ThreadPoolExecutor(4) as pool:
        scheduler = tool.UnitScheduler(budget=tool.MemoryBudget(64 * MIB, max_units=4), pool=pool,
                                       progress=progress, status=status, run=run)
        engine = tool.TransferEngine(config, scheduler=scheduler, policy=policy, small=tool.SmallObjectCopier(services),
                                     multipart=tool.MultipartUploads(services), copy_mode=copy_mode,
                                     progress=progress, status=status, run=run)
        listing = tool.ListingWindow([lambda: tool.list_objects(source, config.job.source, None)], listers=1,
                                     window=10, stopping=stopping)
        try:
            engine.run(listing, [])
        finally:
            stopping.set()
    assert progress.failures() == {} and progress.uploads.keys() == []
    assert progress.totals() == (len(bodies), sum(len(body) for body in bodies.values()))
    assert object_snapshot(client, moto_buckets.dest) == object_snapshot(client, moto_buckets.source)
    assert incomplete_uploads(client, moto_buckets.dest) == []
