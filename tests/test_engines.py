"""The two engines (--engine threads, --engine crt): which one runs, and the crt engine's own rules.

The integration tests run once per engine in CI (scripts/run-tests.sh, pytest --engine); this file
holds what only makes sense per engine: the choice and how it is reported, and the crt engine's
reading of S3's answers, which must give what boto3 gives, or the integrity checks and preserved
headers would differ between engines. A multipart upload begun by one engine and finished by the
other is in test_resume.py.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import boto3
import botocore.exceptions
import botocore.serialize
import botocore.utils
import pytest
from s3servers import MotoBuckets, object_snapshot
from toolcli import ToolJob, describe, write_source_credentials

from conftest import FAKE_KEYS

import s3_bulk_transfer as tool

# -- reading answers as boto3 does ---------------------------------------------------------

GET_HEADERS = [
    ("Accept-Ranges", "bytes"),
    ("Content-Length", "262144"),
    ("Content-Type", "text/plain; charset=utf-8"),
    ("Content-Encoding", "gzip"),
    ("Content-Disposition", 'attachment; filename="a b.txt"'),
    ("Content-Language", "fr"),
    ("Cache-Control", "max-age=60"),
    ("Expires", "Tue, 01 Jan 2030 00:00:00 GMT"),
    ("ETag", '"6ac77ae009c766996d803758c84aad56-3"'),
    ("Last-Modified", "Fri, 27 Nov 2026 07:20:10 GMT"),
    ("x-amz-website-redirect-location", "/elsewhere"),
    ("X-Amz-Meta-Colour", "blue"),
    ("x-amz-meta-lower", "x"),
    ("x-amz-tagging-count", "2"),
    ("x-amz-mp-parts-count", "3"),
    ("x-amz-checksum-crc64nvme", "AAAAAAAAAAA="),
    ("x-amz-checksum-type", "FULL_OBJECT"),
    ("x-amz-server-side-encryption", "aws:kms"),
    ("x-amz-server-side-encryption-bucket-key-enabled", "true"),
    ("x-amz-request-id", "18EBD5DAF10B2FB1567866AA"),
    ("Server", "AmazonS3"),
]


# boto3's own model of S3, which the crt engine's readers and writers are held to, and a client of it
# that never sends anything: its handlers are boto3's, which the readers are held to as well.
S3_CLIENT = boto3.client("s3", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b")
S3_MODEL = S3_CLIENT.meta.service_model


def botocore_reading(operation: str, headers: list[tuple[str, str]]) -> dict:
    """What boto3 returns for these headers: its before-parse handlers (which keep Expires raw as
    ExpiresString), then its parser with the tool's timestamp parser, as botocore's endpoint does."""
    parser = tool.quick_timestamps_parsers().create_parser("rest-xml")
    model = S3_MODEL.operation_model(operation)
    from botocore.awsrequest import HeadersDict

    response = {"status_code": 200, "headers": HeadersDict(headers), "body": b""}
    customized: dict = {}
    S3_CLIENT.meta.events.emit(f"before-parse.s3.{operation}", operation_model=model, response_dict=response,
                               customized_response_dict=customized)
    parsed = parser.parse(response, model.output_shape)
    parsed.update(customized)
    parsed.pop("ResponseMetadata")
    parsed.pop("Body", None)
    return parsed


@pytest.mark.parametrize("operation, headers", [
    ("GetObject", GET_HEADERS),
    ("GetObject", [("Content-Length", "0"), ("ETag", '"d41d8cd98f00b204e9800998ecf8427e"')]),
    ("PutObject", [("ETag", '"abc"'), ("x-amz-checksum-crc32", "AAAAAA=="), ("x-amz-version-id", "v1")]),
    ("UploadPart", [("ETag", '"abc"'), ("x-amz-server-side-encryption", "AES256")]),
    # S3 stores Expires as any string: boto3 keeps it raw and does not fail the answer.
    ("GetObject", [("Content-Length", "3"), ("ETag", '"abc"'), ("Expires", "5d")]),
    ("GetObject", [("Content-Length", "3"), ("ETag", '"abc"'), ("Expires", "Wed, 1 Jan 2031 00:00:00 +0000")]),
])
def test_crt_engine_reads_headers_exactly_as_boto3_does(operation: str, headers: list[tuple[str, str]]) -> None:
    reader = tool.HeaderReader(S3_MODEL.operation_model(operation).output_shape)

    ours = reader.read(headers)

    assert ours == botocore_reading(operation, headers)
    if operation == "GetObject" and headers is GET_HEADERS:
        assert ours["Metadata"] == {"Colour": "blue", "lower": "x"}
        assert ours["Expires"] == datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
        assert ours["ContentLength"] == 262144 and ours["TagCount"] == 2 and ours["BucketKeyEnabled"] is True
    expires = dict(headers).get("Expires")
    if expires is not None:
        assert ours["ExpiresString"] == expires  # what S3 stores, as it stores it


@pytest.mark.parametrize("operation", ["GetObject", "HeadObject"])
def test_crt_engine_reads_an_expires_that_is_not_a_date_as_the_raw_string(operation: str) -> None:
    ours = tool.HeaderReader(S3_MODEL.operation_model(operation).output_shape).read([("Expires", "5d")])

    assert ours == {"ExpiresString": "5d", "Metadata": {}}


# Every kind of value the tool sends, and two it never does (Expires, a timestamp; an object lock
# date) that must go through botocore's serializer unchanged.
PUT_PARAMETERS = {
    "ContentMD5": "1B2M2Y8AsgTpgAmY7PhCfg==", "ContentType": "text/plain; charset=utf-8", "CacheControl": "no-cache",
    "ContentDisposition": 'attachment; filename="a b.txt"', "ContentEncoding": "gzip", "ContentLanguage": "fr",
    "Metadata": {"Colour": "blue", "lower": "x", "unicode": "caf\u00e9"}, "Tagging": "a=1&b=two%20words",
    "StorageClass": "STANDARD_IA", "ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "alias/k",
    "BucketKeyEnabled": True, "ChecksumAlgorithm": "CRC32", "ChecksumCRC32": "AAAAAA==",
    "ContentLength": 3, "WebsiteRedirectLocation": "/elsewhere",
}


@pytest.mark.parametrize("operation, parameters", [
    ("GetObject", {"ChecksumMode": "ENABLED"}),
    ("GetObject", {"Range": "bytes=0-8388607", "IfMatch": '"0123456789abcdef0123456789abcdef-3"'}),
    ("GetObject", {"PartNumber": 2, "VersionId": "v 1/2"}),
    ("PutObject", PUT_PARAMETERS),
    ("PutObject", {**PUT_PARAMETERS, "BucketKeyEnabled": False, "Metadata": {}}),
    ("PutObject", {**PUT_PARAMETERS, "Expires": datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)}),
    ("PutObject", {"ObjectLockRetainUntilDate": datetime.datetime(2031, 2, 3, 4, 5, 6, tzinfo=datetime.timezone.utc),
                   "ObjectLockMode": "GOVERNANCE", "ContentType": None}),
    ("UploadPart", {"UploadId": "a/b+c=", "PartNumber": 10_000, "ContentMD5": "1B2M2Y8AsgTpgAmY7PhCfg==",
                    "ChecksumCRC32C": "AAAAAA=="}),
])
def test_crt_engine_writes_requests_exactly_as_boto3_does(operation: str, parameters: dict) -> None:
    model = S3_MODEL.operation_model(operation)
    serializer = botocore.serialize.create_serializer("rest-xml", include_validation=False)
    # validating, as the crt engine's: what it hands to botocore must pass boto3's own checks
    writer = tool.HeaderWriter(model, botocore.serialize.create_serializer("rest-xml", include_validation=True))

    headers, query = writer.write("bucket", "dir/key é", parameters)

    expected = serializer.serialize_to_request({"Bucket": "bucket", "Key": "dir/key é", **parameters}, model)
    assert {name: str(value) for name, value in headers.items()} == {
        name: str(value) for name, value in expected["headers"].items()}
    assert query == expected["query_string"]
    assert (botocore.utils.percent_encode_sequence(query) == botocore.utils.percent_encode_sequence(
        expected["query_string"]))


@pytest.mark.parametrize("operation, parameters", [
    ("PutObject", {**PUT_PARAMETERS, "ExpiresString": "5d"}),
    ("CreateMultipartUpload", {"ContentType": "text/plain", "ExpiresString": "Wed, 1 Jan 2031 00:00:00 +0000"}),
    # with a value that only botocore's serializer writes, the raw Expires must survive that path too
    ("PutObject", {"ObjectLockRetainUntilDate": datetime.datetime(2031, 2, 3, tzinfo=datetime.timezone.utc),
                   "ObjectLockMode": "GOVERNANCE", "ExpiresString": "5d"}),
])
def test_crt_engine_writes_the_raw_expires_byte_for_byte(operation: str, parameters: dict) -> None:
    model = S3_MODEL.operation_model(operation)
    serializer = botocore.serialize.create_serializer("rest-xml", include_validation=True)
    writer = tool.HeaderWriter(model, serializer)

    headers, query = writer.write("bucket", "key", parameters)

    modelled = {name: value for name, value in parameters.items() if name != "ExpiresString"}
    expected = serializer.serialize_to_request({"Bucket": "bucket", "Key": "key", **modelled}, model)
    assert {name: str(value) for name, value in headers.items()} == {
        **{name: str(value) for name, value in expected["headers"].items()}, "Expires": parameters["ExpiresString"]}
    assert query == expected["query_string"]


def test_crt_engine_hands_a_parameter_its_botocore_lacks_to_botocore() -> None:
    """A parameter the installed botocore's model has no member for (as ObjectLockEventHoldDurationDays
    was in older botocore 1.43 releases) is refused exactly as boto3 refuses it, not with a KeyError."""
    model = S3_MODEL.operation_model("PutObject")
    writer = tool.HeaderWriter(model, botocore.serialize.create_serializer("rest-xml", include_validation=True))
    parameters = {"ContentType": "text/plain", "NotAMemberOfThisBotocore": 3}

    with pytest.raises(botocore.exceptions.ParamValidationError) as ours:
        writer.write("bucket", "key", parameters)
    with pytest.raises(botocore.exceptions.ParamValidationError) as boto3s:
        S3_CLIENT.put_object(Bucket="bucket", Key="key", **parameters)  # refused before anything is sent
    assert str(ours.value) == str(boto3s.value)
    assert "NotAMemberOfThisBotocore" in str(ours.value)


@pytest.mark.parametrize("listing_url, expected", [
    ("http://127.0.0.1:9000/bucket?list-type=2&prefix=a%2F", "http://127.0.0.1:9000/bucket/"),
    ("https://bucket.s3.eu-west-1.amazonaws.com/?list-type=2", "https://bucket.s3.eu-west-1.amazonaws.com/"),
    ("https://s3.eu-west-1.amazonaws.com/bucket.with.dots?list-type=2",
     "https://s3.eu-west-1.amazonaws.com/bucket.with.dots/"),
])
def test_objects_url_follows_the_address_botocore_resolved(listing_url: str, expected: str) -> None:
    assert tool.objects_url(listing_url) == expected


# -- choosing the engine ---------------------------------------------------------------------


def a_side(name: str, url: str = "https://bucket.s3.eu-west-1.amazonaws.com/") -> tool.ConnectedSide:
    return tool.ConnectedSide(access=tool.SideAccess(role=name, origin="test"), client=None, bucket="bucket",
                     region="eu-west-1", objects_url=url)


@pytest.fixture
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy",
                 "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_auto_chooses_crt_when_awscrt_is_installed(no_proxy_environment: pytest.MonkeyPatch) -> None:
    choice = tool.choose_engine("auto", (a_side("source"), a_side("destination")))
    assert choice == tool.EngineChoice("crt", "threads", "auto: awscrt is installed")


@pytest.mark.parametrize("version, too_old", [("0.23.4", True), ("0.37.0", True), ("0.38.0", False),
                                               ("0.38.1", False), ("0.40.2", False), ("1.0.0", False)])
def test_an_awscrt_older_than_the_crt_engine_needs_is_recognised(version: str, too_old: bool) -> None:
    """awscrt 0.23 (botocore 1.36's) has no S3RetryConfig, and 0.37 no connect_timeout_ms: the crt
    engine then says so instead of failing every object with an AttributeError."""
    assert tool.awscrt_too_old(version) is too_old


def test_threads_is_always_possible(no_proxy_environment: pytest.MonkeyPatch) -> None:
    no_proxy_environment.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    assert tool.choose_engine("threads", (a_side("source"),)) == tool.EngineChoice("threads", "threads",
                                                                                  "as --engine asks")


def test_a_proxy_turns_auto_to_threads_and_explicit_crt_into_a_sentence(
        no_proxy_environment: pytest.MonkeyPatch) -> None:
    no_proxy_environment.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    sides = (a_side("source"), a_side("destination"))

    choice = tool.choose_engine("auto", sides)
    with pytest.raises(tool.ConfigurationError) as refused:
        tool.choose_engine("crt", sides)

    assert (choice.whole_objects, choice.parts) == ("threads", "threads")
    assert "the source endpoint is reached through a proxy (HTTPS_PROXY)" in choice.reason
    assert str(refused.value) == (
        "--engine crt cannot run here: the source endpoint is reached through a proxy (HTTPS_PROXY), which "
        "awscrt's S3 client cannot use. Use --engine threads.")


def test_a_proxy_bypassed_by_no_proxy_leaves_crt_available(no_proxy_environment: pytest.MonkeyPatch) -> None:
    no_proxy_environment.setenv("HTTP_PROXY", "http://127.0.0.1:3128")
    no_proxy_environment.setenv("NO_PROXY", "127.0.0.1")
    assert tool.choose_engine("auto", (a_side("source", "http://127.0.0.1:9000/bucket/"),)).whole_objects == "crt"


# -- end to end ------------------------------------------------------------------------------


@pytest.fixture
def job(tmp_path: Path, tool_env: dict[str, str], moto_buckets: MotoBuckets) -> ToolJob:
    credentials = write_source_credentials(tmp_path / "source_credentials.json", FAKE_KEYS,
                                           moto_buckets.endpoint_url)
    return ToolJob(workdir=tmp_path, env=tool_env, credentials=credentials,
                   dest_endpoint_url=moto_buckets.endpoint_url)


@pytest.mark.parametrize("engine, said", [
    ("auto", "Object bodies moved by the crt engine for whole objects and the threads engine for parts "
             "(auto: awscrt is installed)."),
    ("crt", "Object bodies moved by the crt engine (as --engine asks)."),
    ("threads", "Object bodies moved by the threads engine (as --engine asks)."),
])
def test_the_final_report_and_log_say_which_engine_ran(job: ToolJob, moto_buckets: MotoBuckets, engine: str,
                                                       said: str) -> None:
    moto_buckets.client.put_object(Bucket=moto_buckets.source, Key="a.txt", Body=b"one",
                                   Metadata={"owner": "me"}, ContentType="text/plain")
    # Above toolcli's 6 MiB threshold: in parts, which auto gives to the threads engine.
    moto_buckets.client.put_object(Bucket=moto_buckets.source, Key="big.bin", Body=bytes(range(256)) * 28_000,
                                   Metadata={"size": "large"})

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--engine", engine)

    assert result.returncode == 0, describe(result)
    assert said in result.stdout
    assert said in job.log_text()
    copied = object_snapshot(moto_buckets.client, moto_buckets.dest)
    assert copied == object_snapshot(moto_buckets.client, moto_buckets.source)
