"""Tags the source credentials may not read: the run stops before anything is written, or copies
without tags when told so (--no-tags), and says which.

S3 sends an object's tag count (``x-amz-tagging-count``) only to a caller allowed
s3:GetObjectTagging, so without that permission every object looks untagged. Neither local server
can model such a caller, so moto answers through tests/aws_behaviour.py's ``TagsHiddenFrom``.
Sizes as tests/toolcli.py sets them: 6 MiB threshold, 5 MiB parts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aws_behaviour import TagsHiddenFrom
from conftest import FAKE_KEYS
from fault_proxy import FaultProxy
from s3servers import MotoBuckets, incomplete_uploads, object_snapshot
from toolcli import CHUNK_SIZE, ToolJob, assert_usage_error, describe, write_source_credentials

NO_TAGS_LINE = "Tags were not copied (--no-tags)."


@pytest.fixture
def proxy(moto_buckets: MotoBuckets) -> Iterator[FaultProxy]:
    """moto, answering for the source bucket as S3 answers a caller without s3:GetObjectTagging."""
    with FaultProxy(moto_buckets.endpoint_url) as proxy:
        proxy.behave(TagsHiddenFrom(moto_buckets.source))
        yield proxy


@pytest.fixture
def job(proxy: FaultProxy, moto_buckets: MotoBuckets, tool_env: dict[str, str], tmp_path: Path) -> ToolJob:
    credentials = write_source_credentials(tmp_path / "source-credentials.json", FAKE_KEYS, proxy.endpoint_url)
    return ToolJob(workdir=tmp_path, env=tool_env, credentials=credentials, dest_endpoint_url=proxy.endpoint_url)


def put_tagged_objects(buckets: MotoBuckets) -> None:
    """Two small tagged objects, one untagged, one tagged multipart object (3 parts)."""
    client = buckets.client
    for index in range(2):
        client.put_object(Bucket=buckets.source, Key=f"small/{index}.txt", Body=f"body {index}".encode(),
                          ContentType="text/plain", Metadata={"index": str(index)}, Tagging=f"n={index}&team=data")
    client.put_object(Bucket=buckets.source, Key="small/untagged.txt", Body=b"no tags here")
    client.put_object(Bucket=buckets.source, Key="large.bin", Body=b"\x5a" * (2 * CHUNK_SIZE + 7),
                      ContentType="application/x-large", Metadata={"kind": "large"}, Tagging="size=large")


def without_tags(snapshot: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {key: {**entry, "tags": {}} for key, entry in snapshot.items()}


@pytest.mark.parametrize("extra", [[], ["--copy-mode", "server-side"]], ids=["stream", "server-side"])
def test_tags_the_source_may_not_read_stop_the_run_before_anything_is_written(
        job: ToolJob, moto_buckets: MotoBuckets, proxy: FaultProxy, extra: list[str]) -> None:
    put_tagged_objects(moto_buckets)

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", *extra)

    assert_usage_error(result, "s3:GetObjectTagging", f"bucket {moto_buckets.source}", "--no-tags")
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == {}
    assert incomplete_uploads(moto_buckets.client, moto_buckets.dest) == []
    assert not job.progress_file.exists()
    writes = {"PutObject", "CreateMultipartUpload", "CopyObject", "UploadPart", "UploadPartCopy"}
    assert [seen for seen in proxy.counts.log if seen.operation in writes] == []


@pytest.mark.parametrize("copy_mode", ["stream", "server-side"])
def test_no_tags_copies_bytes_and_metadata_without_the_tags_and_without_asking_for_them(
        job: ToolJob, moto_buckets: MotoBuckets, proxy: FaultProxy, copy_mode: str) -> None:
    put_tagged_objects(moto_buckets)
    source = object_snapshot(moto_buckets.client, moto_buckets.source)
    assert source["large.bin"]["tags"] == {"size": "large"}  # what is at stake

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--no-tags",
                     "--copy-mode", copy_mode)

    assert result.returncode == 0, describe(result)
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == without_tags(source)
    assert incomplete_uploads(moto_buckets.client, moto_buckets.dest) == []
    assert NO_TAGS_LINE in result.stdout
    assert proxy.counts.operations("GetObjectTagging") == []
    copies = proxy.counts.operations("CopyObject")
    assert len(copies) == (3 if copy_mode == "server-side" else 0)
    assert all(dict((name.lower(), value) for name, value in seen.headers)["x-amz-tagging-directive"] == "REPLACE"
               for seen in copies)

    # Comparing needs no tags: --verify-only asks for none and finds the copies identical.
    compared = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--verify-only")

    assert compared.returncode == 0, describe(compared)
    assert proxy.counts.operations("GetObjectTagging") == []


def test_the_dry_run_tells_of_tags_the_source_may_not_read(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    put_tagged_objects(moto_buckets)

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--dry-run")

    assert result.returncode == 2, describe(result)
    assert "to copy:      4 objects" in result.stdout  # the plan is shown all the same
    assert "Traceback" not in result.stderr
    [refusal] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert "s3:GetObjectTagging" in refusal and "--no-tags" in refusal, describe(result)

    told = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--dry-run", "--no-tags")

    assert told.returncode == 0, describe(told)
    assert "tags:         not copied (--no-tags)" in told.stdout
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == {}


def test_an_empty_source_needs_no_tag_access(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}")

    assert result.returncode == 0, describe(result)
    assert "0 objects" in result.stdout
