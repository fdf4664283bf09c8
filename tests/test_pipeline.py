"""Small objects under the crt engine, which copies them from awscrt's completion callbacks
(SmallObjectPipeline) rather than a worker thread each: the memory bound holds there as it does
for worker threads, in count (--max-workers) and in bytes (--memory-limit).

What the pipeline must keep besides (the checks before each PUT, metadata and tags, retries of
broken bodies and throttling, credential renewal, resume after Ctrl-C and kill -9) is what the rest
of the suite asserts, which CI runs under this engine (scripts/run-tests.sh); under
--engine threads this file checks the same bound for the workers.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from conftest import FAKE_KEYS
from fault_proxy import Answer, Forward, FaultProxy, Request
from s3servers import MotoBuckets, object_snapshot
from toolcli import ToolJob, describe, write_source_credentials
from units import KIB, MIB
from uploads import body, md5_hex, plain_client, upload


class BodiesInFlight:
    """Counts the GetObject and PutObject requests in flight at once, from their arrival to the
    moment their answer leaves for the tool; each is held a little so that they overlap."""

    def __init__(self, hold_seconds: float = 0.05) -> None:
        self._hold = hold_seconds
        self._lock = threading.Lock()
        self._now = 0
        self.peak = 0

    def __call__(self, request: Request, forward: Forward) -> Answer:
        if request.operation not in ("GetObject", "PutObject"):
            return forward(request)
        with self._lock:
            self._now += 1
            self.peak = max(self.peak, self._now)
        try:
            time.sleep(self._hold)
            return forward(request)
        finally:
            with self._lock:
                self._now -= 1


@pytest.mark.parametrize(("size", "limits", "bound"), [
    (256 * KIB, ["--max-workers", "3"], 3),
    (1 * MIB, ["--max-workers", "8", "--memory-limit", "5MiB"], 5),  # five bodies fill the limit
], ids=["workers", "memory-limit"])
def test_small_bodies_in_flight_stay_within_the_workers_and_the_memory_limit(
    size: int, limits: list[str], bound: int, job: ToolJob, moto_buckets: MotoBuckets, tmp_path: Path
) -> None:
    client = plain_client(moto_buckets.endpoint_url)
    src, dst = moto_buckets.source, moto_buckets.dest
    objects = {f"small/{index:03d}.bin": body(size, seed=index) for index in range(24)}
    for key, data in objects.items():
        upload(client, src, key, data)
    gauge = BodiesInFlight()

    with FaultProxy(moto_buckets.endpoint_url) as proxy:
        proxy.behave(gauge)
        job.credentials = write_source_credentials(tmp_path / "via-proxy.json", FAKE_KEYS, proxy.endpoint_url)
        job.dest_endpoint_url = proxy.endpoint_url
        result = job.run(f"s3://{src}", f"s3://{dst}", *limits)

    assert result.returncode == 0, describe(result)
    destination = object_snapshot(moto_buckets.client, dst)
    assert {key: entry["md5"] for key, entry in destination.items()} == {
        key: md5_hex(data) for key, data in objects.items()}
    assert gauge.peak <= bound, f"{gauge.peak} bodies in flight at once, above the bound of {bound}"
    assert gauge.peak >= 2, "the objects were copied one at a time: the gauge saw no overlap to bound"
