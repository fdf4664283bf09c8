#!/usr/bin/env python3
"""What one ListObjectsV2 page of 1,000 keys costs botocore to parse, with and without turning
LastModified into a datetime. No server: the XML is made here, in the shape S3 (and SeaweedFS) send.

Why: bench/scale.py finds listing bound by the client's CPU (about 0.2 ms per key on the benchmark
machine), so parallel listers in one process gain little there. This shows where that time goes.

    .venv/bin/python bench/listing_parse_cost.py
"""

from __future__ import annotations

import datetime
import time

import botocore.parsers
import botocore.session


def page(keys: int = 1000) -> bytes:
    entries = "".join(
        f"<Contents><Key>scale-50000/day-{index // 500:03d}/obj-{index:07d}.bin</Key>"
        "<LastModified>2026-11-27T04:25:10.000Z</LastModified>"
        f"<ETag>&quot;{index:032x}&quot;</ETag><Size>{1000 + index}</Size>"
        "<StorageClass>STANDARD</StorageClass><Owner><ID>abc</ID><DisplayName>x</DisplayName></Owner></Contents>"
        for index in range(keys))
    return ('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            "<Name>b</Name><Prefix>scale-50000/</Prefix><KeyCount>1000</KeyCount><MaxKeys>1000</MaxKeys>"
            f"<IsTruncated>true</IsTruncated>{entries}<NextContinuationToken>t</NextContinuationToken>"
            "</ListBucketResult>").encode()


def fromisoformat(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def main() -> None:
    shape = botocore.session.get_session().get_service_model("s3").operation_model("ListObjectsV2").output_shape
    response = {"status_code": 200, "headers": {}, "body": page()}
    variants = {
        "botocore's default timestamp parser": None,
        "datetime.fromisoformat": fromisoformat,
        "timestamps left as text": lambda text: text,
    }
    for name, parser_function in variants.items():
        factory = botocore.parsers.ResponseParserFactory()
        if parser_function is not None:
            factory.set_parser_defaults(timestamp_parser=parser_function)
        parser = factory.create_parser("rest-xml")
        parser.parse(response, shape)
        rounds = 10
        started = time.process_time()
        for _ in range(rounds):
            parsed = parser.parse(response, shape)
        per_page = (time.process_time() - started) / rounds
        print(f"{name:>36}: {per_page * 1000:6.1f} ms CPU per 1,000-key page "
              f"({type(parsed['Contents'][0]['LastModified']).__name__})")


if __name__ == "__main__":
    main()
