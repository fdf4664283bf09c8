"""An Expires header that is not a date, or a date in an unusual spelling, copied byte for byte.

S3 stores the Expires header of PutObject and CreateMultipartUpload as whatever string it was
sent, and HeadObject and GetObject return it as stored (botocore keeps a value it cannot parse as
a timestamp in ``ExpiresString``, its handlers.handle_expires_header). Web servers and CDNs in
front of buckets were long fed values such as "5d" or "0", so a migration meets them. The tool
carries the raw string under both engines and on every path that writes an object (one PUT, a
multipart upload, a server-side copy), so the destination answers with the very bytes the source
does.

moto, like S3, stores the header raw; the test client puts it raw, as other S3 clients do, through
a botocore hook, because botocore's own Expires parameter is a timestamp it would reformat.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from botocore.client import BaseClient
from s3servers import MotoBuckets, incomplete_uploads, object_snapshot
from toolcli import MULTIPART_THRESHOLD, ToolJob, describe

NOT_A_DATE = "5d"
# Valid RFC 822 / RFC 1123 dates that botocore would parse and send back as "Wed, 01 Jan 2031 ...":
# a one-digit day and a numeric zone, and RFC 850's spelling (which RFC 9111 still asks caches to read).
UNUSUAL_DATES = ("Wed, 1 Jan 2031 00:00:00 +0000", "Sunday, 06-Nov-94 08:49:37 GMT")


def put_with_raw_expires(client: BaseClient, bucket: str, key: str, data: bytes, expires: str) -> None:
    """PutObject with the Expires header exactly ``expires``, as a client that is not botocore sends it."""

    def raw_header(params: dict, **_: object) -> None:
        params["headers"]["Expires"] = expires

    client.meta.events.register("before-call.s3.PutObject", raw_header, unique_id="raw-expires")
    try:
        client.put_object(Bucket=bucket, Key=key, Body=data, ContentType="text/plain", Metadata={"k": "v"})
    finally:
        client.meta.events.unregister("before-call.s3.PutObject", unique_id="raw-expires")


def raw_expires(client: BaseClient, bucket: str, key: str) -> str | None:
    return client.head_object(Bucket=bucket, Key=key).get("ExpiresString")


def sources(client: BaseClient, bucket: str) -> Iterator[tuple[str, str]]:
    """A small object (one PUT) and one at the multipart threshold (CreateMultipartUpload) for each
    value; yields (key, value)."""
    for index, value in enumerate((NOT_A_DATE, *UNUSUAL_DATES)):
        for size_name, size in (("small", 1024 + index), ("multipart", MULTIPART_THRESHOLD + index)):
            key = f"{size_name}/{index}.bin"
            put_with_raw_expires(client, bucket, key, random.Random(index).randbytes(size), value)
            yield key, value


@pytest.mark.parametrize("copy_mode", ["stream", "server-side"])
def test_an_expires_header_is_copied_byte_for_byte_even_when_it_is_not_a_date(
    job: ToolJob, moto_buckets: MotoBuckets, copy_mode: str
) -> None:
    client, source, dest = moto_buckets.client, moto_buckets.source, moto_buckets.dest
    expected = dict(sources(client, source))
    assert {key: raw_expires(client, source, key) for key in expected} == expected  # what S3 stores, raw
    job.copy_mode = copy_mode

    result = job.run(f"s3://{source}", f"s3://{dest}")

    assert result.returncode == 0, describe(result)
    assert result.stderr == "", describe(result)
    assert {key: raw_expires(client, dest, key) for key in expected} == expected
    assert object_snapshot(client, dest) == object_snapshot(client, source)
    assert incomplete_uploads(client, dest) == []
