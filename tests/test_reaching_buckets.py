"""Reaching a bucket as S3 requires: in its own region, paid by whoever says so, through an access point.

moto answers any request whatever region it was signed for, charges nobody and has no access
points, so tests/aws_behaviour.py plays S3's part in front of it (BucketInRegion, RequesterPays,
AccessPoint); every test then asserts on what a person sees: the exit code, the sentence, the
bytes, metadata and tags of the copies.

* A region nobody checked (issue 15, item 6): source_credentials.json.example said us-east-1, and
  people copy it. S3 refuses a request signed for another region than its bucket's; boto3 recovers
  through its region redirector, awscrt does not, so the crt engine failed every small object.
* Requester Pays (item 11b): S3 answers 403 to a request without ``x-amz-request-payer``.
* A role assumed in the bucket's region (item 11c): STS is called at the bucket's regional endpoint.
* Access point ARNs (item 11d) as source or destination, also named as a server-side copy's source.
  Their requests go to a host of the access point's own (``NAME-ACCOUNT.`` before the endpoint's),
  which resolves nowhere here, so the tool reaches it through the fault proxy as its HTTP proxy
  (``http_proxy``): botocore names the whole URL, and AccessPoint routes it to the bucket. The crt
  engine takes no proxy (awscrt's S3 client has no proxy option), so with a proxy set --engine auto
  picks threads and --engine crt refuses: these runs use the threads engine whatever the suite's
  --engine, and what the crt engine would use for an access point (its region and URL) is checked
  on the connected side instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from aws_behaviour import AccessPoint, BucketInRegion, RequesterPays
from conftest import FAKE_KEYS
from fault_proxy import Answer, FaultProxy, Forward, Request, Seen
from s3servers import MotoBuckets, incomplete_uploads, object_snapshot
from toolcli import ToolJob, assert_usage_error, describe, error_lines, write_source_credentials
from units import MIB
from uploads import body

import s3_bulk_transfer as tool  # (S3Location, connect_side)

BUCKET_REGION = "eu-west-1"
EXAMPLE_REGION = "us-east-1"  # what source_credentials.json.example said, and people copied


@pytest.fixture
def source(moto_buckets: MotoBuckets) -> dict[str, dict[str, Any]]:
    """A few small objects (one tagged, one with headers) and one of two parts; their snapshot."""
    client = moto_buckets.client
    for index in range(6):
        client.put_object(Bucket=moto_buckets.source, Key=f"small/{index}", Body=body(1_000 + index, seed=index),
                          Metadata={"index": str(index)})
    client.put_object(Bucket=moto_buckets.source, Key="small/tagged", Body=b"tagged", Tagging="team=data",
                      ContentType="text/plain", CacheControl="no-cache")
    client.put_object(Bucket=moto_buckets.source, Key="large/two-parts", Body=body(7 * MIB, seed=99))
    return object_snapshot(client, moto_buckets.source)


def job_through(proxy: FaultProxy, tool_env: dict[str, str], tmp_path: Path, *, endpoint_url: str = "",
                **credentials: str) -> ToolJob:
    """Both sides at ``endpoint_url`` (the proxy's, unless told); the source credentials file carries
    ``credentials`` too."""
    endpoint_url = endpoint_url or proxy.endpoint_url
    path = write_source_credentials(tmp_path / "source-credentials.json", FAKE_KEYS, endpoint_url, **credentials)
    return ToolJob(workdir=tmp_path, env=tool_env, credentials=path, dest_endpoint_url=endpoint_url)


def warnings_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


def header_of(seen: Seen, name: str) -> str:
    """A header of a request the proxy answered, "" when it had none."""
    return next((value for header, value in seen.headers if header.lower() == name.lower()), "")


# -- item 6: a region nobody checked ---------------------------------------------------------------


@pytest.mark.parametrize("side", ["source", "destination"])
def test_a_bucket_in_another_region_than_configured_is_reached_in_its_own_with_one_warning(
        moto_buckets: MotoBuckets, source: dict, tool_env: dict[str, str], tmp_path: Path, side: str) -> None:
    bucket = moto_buckets.source if side == "source" else moto_buckets.dest
    with FaultProxy(moto_buckets.endpoint_url) as proxy:
        proxy.behave(BucketInRegion(bucket, BUCKET_REGION))
        job = job_through(proxy, tool_env, tmp_path, region=EXAMPLE_REGION)
        configured = ["--dest-region", EXAMPLE_REGION] if side == "destination" else []
        result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", *configured)

    assert result.returncode == 0, describe(result)
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == source
    assert incomplete_uploads(moto_buckets.client, moto_buckets.dest) == []
    warnings = warnings_of(result.stderr)
    assert len(warnings) == 1, describe(result)
    assert BUCKET_REGION in warnings[0] and EXAMPLE_REGION in warnings[0] and bucket in warnings[0], warnings
    # Only the one HeadBucket that asked where the bucket is was signed for the configured region:
    # every later request, the crt engine's too, was signed for the bucket's.
    refused = [seen.operation for seen in proxy.counts.log if seen.bucket == bucket and seen.status in (301, 400)]
    assert refused == ["HeadBucket"], refused
    print(f"the person reads: {warnings[0]}")


def without_bucket_region(request: Request, forward: Forward) -> Answer:
    """An S3-compatible server that states no region: HeadBucket answers without x-amz-bucket-region."""
    answer = forward(request)
    if request.operation == "HeadBucket":
        answer.drop_header("x-amz-bucket-region")
    return answer


def test_an_endpoint_that_states_no_region_is_signed_for_the_configured_one(
        moto_buckets: MotoBuckets, source: dict, tool_env: dict[str, str], tmp_path: Path) -> None:
    with FaultProxy(moto_buckets.endpoint_url) as proxy:
        proxy.behave(without_bucket_region)
        job = job_through(proxy, tool_env, tmp_path, region=BUCKET_REGION)
        result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}")

    assert result.returncode == 0, describe(result)
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == source
    assert warnings_of(result.stderr) == [], describe(result)
    regions = {seen.signing_region for seen in proxy.counts.log if seen.bucket == moto_buckets.source}
    assert regions == {BUCKET_REGION}, regions  # and the destination's, unconfigured, AWS_DEFAULT_REGION's
    assert {seen.signing_region for seen in proxy.counts.log if seen.bucket == moto_buckets.dest} == {"us-east-1"}


# -- item 11c: a role assumed in the bucket's region ------------------------------------------------


def refuse_head_bucket_to(access_key: str, bucket: str) -> Any:
    """Keys that may assume the role and nothing else: S3 answers their HeadBucket 403 with no body
    (HeadBucket, S3 API reference), and BucketInRegion adds the region to it, as S3 does."""

    def behaviour(request: Request, forward: Forward) -> Answer:
        if (request.operation == "HeadBucket" and request.bucket == bucket
                and f"Credential={access_key}/" in (request.header("Authorization") or "")):
            return Answer(403, "Forbidden", [("Content-Length", "0")], to_head=True)
        return forward(request)

    return behaviour


def test_a_role_is_assumed_at_the_sts_endpoint_of_the_buckets_region(
        moto_buckets: MotoBuckets, source: dict, tool_env: dict[str, str], tmp_path: Path) -> None:
    with FaultProxy(moto_buckets.endpoint_url) as proxy, FaultProxy(moto_buckets.endpoint_url) as sts:
        proxy.behave(BucketInRegion(moto_buckets.source, BUCKET_REGION),
                     refuse_head_bucket_to(FAKE_KEYS.access_key, moto_buckets.source))
        tool_env = {**tool_env, "AWS_ENDPOINT_URL_STS": sts.endpoint_url}
        job = job_through(proxy, tool_env, tmp_path, role_arn="arn:aws:iam::123456789012:role/copier")
        result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}")

    assert result.returncode == 0, describe(result)
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == source
    assumed = sts.counts.operations("AssumeRole")
    assert assumed, sts.counts.log
    assert {seen.signing_region for seen in assumed} == {BUCKET_REGION}, [seen.signing_region for seen in assumed]
    # The base keys asked where the bucket is, signed for the session's region (301, which botocore
    # follows) and then for the bucket's (403, with the region all the same); nothing else was refused.
    refused = [(seen.operation, seen.status) for seen in proxy.counts.log if seen.status >= 300]
    assert refused == [("HeadBucket", 301), ("HeadBucket", 403)], refused


# -- item 11b: Requester Pays ---------------------------------------------------------------------


def test_a_requester_pays_source_without_request_payer_is_refused_with_a_sentence_naming_the_option(
        moto_buckets: MotoBuckets, source: dict, tool_env: dict[str, str], tmp_path: Path) -> None:
    with FaultProxy(moto_buckets.endpoint_url) as proxy:
        proxy.behave(RequesterPays(moto_buckets.source))
        job = job_through(proxy, tool_env, tmp_path)
        result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}")

    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, describe(result)
    assert "s3:ListBucket" in lines[0] and moto_buckets.source in lines[0], lines
    assert "Requester Pays" in lines[0] and "--request-payer requester" in lines[0], lines
    print(f"the person reads: {lines[0]}")
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == {}


@pytest.mark.parametrize("copy_mode", ["stream", "server-side"])
def test_a_requester_pays_source_is_copied_with_request_payer_every_request_declaring_it(
        moto_buckets: MotoBuckets, source: dict, tool_env: dict[str, str], tmp_path: Path, copy_mode: str) -> None:
    with FaultProxy(moto_buckets.endpoint_url) as proxy:
        proxy.behave(RequesterPays(moto_buckets.source))
        job = job_through(proxy, tool_env, tmp_path)
        job.copy_mode = copy_mode
        result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--request-payer", "requester")

    assert result.returncode == 0, describe(result)
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == source
    assert incomplete_uploads(moto_buckets.client, moto_buckets.dest) == []
    refused = [(seen.operation, seen.key) for seen in proxy.counts.log if seen.status == 403]
    assert refused == [], refused
    reading = {"CopyObject", "UploadPartCopy"} if copy_mode == "server-side" else {"GetObject"}
    assert reading <= {seen.operation for seen in proxy.counts.log}, proxy.counts.log


# -- item 11d: access points ----------------------------------------------------------------------

ACCESS_POINT = f"arn:aws:s3:{BUCKET_REGION}:123456789012:accesspoint/shared-data"


def through_access_point(proxy: FaultProxy, bucket: str, tool_env: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The endpoint URL both sides use, and the environment that reaches it through the proxy as the
    HTTP proxy, with an access point to ``bucket``."""
    authority = f"localhost:{proxy.endpoint_url.rsplit(':', 1)[1]}"
    proxy.behave(AccessPoint(ACCESS_POINT, bucket, authority=authority))
    environment = {name: value for name, value in tool_env.items() if not name.lower().endswith("_proxy")}
    return f"http://{authority}", {**environment, "http_proxy": proxy.endpoint_url}


@pytest.mark.parametrize("side", ["source", "destination"])
def test_an_access_point_arn_is_copied_from_and_to(moto_buckets: MotoBuckets, source: dict, tool_env: dict[str, str],
                                                   tmp_path: Path, side: str) -> None:
    bucket = moto_buckets.source if side == "source" else moto_buckets.dest
    with FaultProxy(moto_buckets.endpoint_url) as proxy:
        endpoint_url, environment = through_access_point(proxy, bucket, tool_env)
        job = job_through(proxy, environment, tmp_path, endpoint_url=endpoint_url, region=EXAMPLE_REGION)
        source_uri = f"s3://{ACCESS_POINT}" if side == "source" else f"s3://{moto_buckets.source}"
        destination_uri = f"s3://{ACCESS_POINT}/copy" if side == "destination" else f"s3://{moto_buckets.dest}/copy"
        # The crt engine cannot take the HTTP proxy these runs need (see the module docstring).
        result = job.run(source_uri, destination_uri, "--engine", "threads")

    assert result.returncode == 0, describe(result)
    copied = object_snapshot(moto_buckets.client, moto_buckets.dest, "copy/")
    assert {key[len("copy/"):]: value for key, value in copied.items()} == source
    assert incomplete_uploads(moto_buckets.client, moto_buckets.dest) == []
    through = [seen for seen in proxy.counts.log if header_of(seen, "Host").startswith("shared-data-123456789012.")]
    assert through and {seen.signing_region for seen in through} == {BUCKET_REGION}, proxy.counts.log
    # The source credentials file says us-east-1: an access point is in the region its ARN names.
    warnings = warnings_of(result.stderr)
    assert len(warnings) == (1 if side == "source" else 0), describe(result)
    assert all(BUCKET_REGION in line and EXAMPLE_REGION in line for line in warnings), warnings
    progress = job.progress_file.read_text(encoding="utf-8")
    assert f'"s3://{ACCESS_POINT}/' in progress, progress[:500]


def test_an_access_point_arn_is_a_server_side_copys_source(moto_buckets: MotoBuckets, source: dict,
                                                           tool_env: dict[str, str], tmp_path: Path) -> None:
    with FaultProxy(moto_buckets.endpoint_url) as proxy:
        endpoint_url, environment = through_access_point(proxy, moto_buckets.source, tool_env)
        job = job_through(proxy, environment, tmp_path, endpoint_url=endpoint_url, region=BUCKET_REGION)
        job.copy_mode = "server-side"
        result = job.run(f"s3://{ACCESS_POINT}", f"s3://{moto_buckets.dest}", "--engine", "threads",
                         "--dest-region", BUCKET_REGION)  # S3 copies through an access point within its region only

    assert result.returncode == 0, describe(result)
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == source
    copies = [header_of(seen, "x-amz-copy-source") for seen in proxy.counts.log
              if seen.operation in ("CopyObject", "UploadPartCopy")]
    assert copies and all(source.startswith("arn%3Aaws%3As3%3A") for source in copies), copies


def test_the_crt_engine_is_given_the_access_points_region_and_host(
        moto_buckets: MotoBuckets, tool_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """What CrtSideClient signs with and sends to, the connected side's region and objects URL, since
    no crt request can reach an access point here (the module docstring says why)."""
    with FaultProxy(moto_buckets.endpoint_url) as proxy:
        endpoint_url, environment = through_access_point(proxy, moto_buckets.source, tool_env)
        for name in [name for name in os.environ if name.lower().endswith("_proxy")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("http_proxy", environment["http_proxy"])
        settings = tool.SideAccess(role="source", origin="test", endpoint_url=endpoint_url, region=EXAMPLE_REGION,
                                     access_key_id=FAKE_KEYS.access_key, secret_access_key=FAKE_KEYS.secret_key)
        side = tool.connect_side(settings, ACCESS_POINT, max_workers=1, list_prefix="")

    assert side.region == BUCKET_REGION
    assert side.objects_url == f"http://shared-data-123456789012.{endpoint_url[len('http://'):]}/"


def test_a_multi_region_access_point_is_refused_with_a_sentence(moto_buckets: MotoBuckets, tool_env: dict[str, str],
                                                                 tmp_path: Path) -> None:
    credentials = write_source_credentials(tmp_path / "source-credentials.json", FAKE_KEYS, moto_buckets.endpoint_url)
    job = ToolJob(workdir=tmp_path, env=tool_env, credentials=credentials, dest_endpoint_url=moto_buckets.endpoint_url)
    result = job.run("s3://arn:aws:s3::123456789012:accesspoint/mfzwi23gnjvgw.mrap/data", f"s3://{moto_buckets.dest}")
    assert_usage_error(result, "Multi-Region Access Point", "SigV4A")
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == {}


@pytest.mark.parametrize("uri, bucket, prefix", [
    (f"s3://{ACCESS_POINT}", ACCESS_POINT, ""),
    (f"s3://{ACCESS_POINT}/", ACCESS_POINT, ""),
    (f"s3://{ACCESS_POINT}/photos/2024", ACCESS_POINT, "photos/2024/"),
    ("s3://arn:aws-cn:s3:cn-north-1:123456789012:accesspoint/ap-1/x/", "arn:aws-cn:s3:cn-north-1:123456789012:"
                                                                        "accesspoint/ap-1", "x/"),
])
def test_an_access_point_arn_parses_into_the_access_point_and_a_prefix(uri: str, bucket: str, prefix: str) -> None:
    location = tool.S3Location.parse(uri)
    assert (location.bucket, location.prefix) == (bucket, prefix)
    assert str(location) == f"s3://{bucket}/{prefix}"


@pytest.mark.parametrize("uri, fragment", [
    ("s3://arn:aws:s3:eu-west-1:123456789012:accesspoint/", "access point"),
    ("s3://arn:aws:s3:eu-west-1:1234:accesspoint/ap", "access point"),
    ("s3://arn:aws:s3:eu-west-1:123456789012:accesspoint/AP_upper", "access point"),
    ("s3://arn:aws:s3-object-lambda:eu-west-1:123456789012:accesspoint/ap", "access point"),
    ("s3://arn:aws:s3-outposts:eu-west-1:123456789012:outpost/op-1/accesspoint/ap", "access point"),
    ("s3://arn:aws:s3::123456789012:accesspoint/mfzwi23gnjvgw.mrap", "Multi-Region Access Point"),
])
def test_what_is_not_a_single_region_access_point_arn_is_refused(uri: str, fragment: str) -> None:
    with pytest.raises(tool.ConfigurationError, match=fragment):
        tool.S3Location.parse(uri)


@pytest.mark.parametrize("source_uri, destination_uri, overlap", [
    (f"s3://{ACCESS_POINT}/photos", f"s3://{ACCESS_POINT}/photos/backup", True),
    (f"s3://{ACCESS_POINT}", f"s3://{ACCESS_POINT}", True),
    (f"s3://{ACCESS_POINT}/photos", f"s3://{ACCESS_POINT}/backup", False),
    (f"s3://{ACCESS_POINT}/photos", "s3://some-bucket/photos", False),  # whose bucket only S3 Control could say
])
def test_the_same_access_point_on_both_sides_is_checked_for_overlap(
        source_uri: str, destination_uri: str, overlap: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./source_credentials.json
    args = tool.build_parser().parse_args([source_uri, destination_uri, "--log-file", str(tmp_path / "log")])
    tool.resolve_state_files(args, {})
    if overlap:
        with pytest.raises(tool.ConfigurationError, match="overlap"):
            tool.build_settings(args)
    else:
        assert tool.build_settings(args).job.source.bucket == ACCESS_POINT
