"""A network that drops, truncates, throttles and damages: nothing lost, nothing corrupted, nothing
orphaned, and the person is told.

Both sides of the tool talk to SeaweedFS through tests/fault_proxy.py, which injects every kind of
fault at a fixed rate, reproducibly (the fault of each request follows from the seed and the
request, not from thread timing). SeaweedFS, unlike moto, checks Content-MD5 and checksums, so a
body damaged on its way up is refused there, as S3 refuses it.
"""

from __future__ import annotations

import concurrent.futures
import re
import uuid
from pathlib import Path

import pytest
from aws_behaviour import AnswerCutShortOnce
from fault_proxy import FAULT_KINDS, Answer, FaultProxy, Forward, Request
from s3servers import SOURCE_BUCKET, SeaweedServer
from test_cross_account import CrossAccount
import toolcli
from toolcli import ToolJob, copied_keys, describe, read_progress, write_source_credentials
from units import MIB
from uploads import body, upload_parts, verified_by

SOAK_SMALL_OBJECTS = 300
SOAK_RATES = {kind: 0.05 for kind in FAULT_KINDS}  # 5% of each kind: about a third of requests meet one
# A stalled response is held 4 s against a 3 s read timeout. The timeout leaves room for a loaded
# machine: a response that is merely slow would time out too, and every extra retry shifts which
# requests the seed damages, so the run would no longer be the same from one machine to the next.
SOAK_READ_TIMEOUT = "3"
SOAK_STALL_SECONDS = 4.0


@pytest.fixture
def accounts(seaweed: SeaweedServer, tool_env: dict[str, str], tmp_path: Path) -> CrossAccount:
    return CrossAccount(server=seaweed, prefix=f"faults-{uuid.uuid4().hex[:10]}/", workdir=tmp_path,
                        base_env=tool_env)


def job_through(accounts: CrossAccount, proxy: FaultProxy) -> ToolJob:
    """The cross-account job, with both endpoints pointing at the proxy."""
    job = accounts.job(accounts.server.source, accounts.server.dest)
    write_source_credentials(job.credentials, accounts.server.source, proxy.endpoint_url)
    job.dest_endpoint_url = proxy.endpoint_url
    return job


def retries_logged(log: str) -> int:
    return len(re.findall(r" WARNING .*; retrying in ", log))


def test_soak_every_fault_kind_and_nothing_is_lost(accounts: CrossAccount) -> None:
    for index in range(SOAK_SMALL_OBJECTS):
        accounts.put(f"small/{index:03d}.bin", body(1_000 + 37 * index, seed=index),
                     Metadata={"index": str(index)}, **({"Tagging": "soak=yes"} if index % 10 == 0 else {}))
    admin = accounts.server.client(accounts.server.admin)
    # Equal parts and a shorter last one, as S3 tools upload: the copy keeps the layout and checks the
    # ETag; and one of unequal parts, checked along them while copied in parts of its own.
    for index in range(3):
        upload_parts(admin, SOURCE_BUCKET, f"{accounts.prefix}large/{index}.bin",
                     body(13 * MIB + index, seed=99 + index), [6 * MIB, 6 * MIB, MIB + index],
                     checksum_algorithm="CRC32")
    upload_parts(admin, SOURCE_BUCKET, f"{accounts.prefix}large/unequal.bin", body(14 * MIB, seed=98),
                 [5 * MIB, 7 * MIB, 2 * MIB])
    accounts.put("large/single.bin", body(13 * MIB, seed=7))

    with FaultProxy(accounts.server.endpoint_url, rates=SOAK_RATES, seed=20261127, stall_seconds=SOAK_STALL_SECONDS,
                    max_connections=64, key_prefix=accounts.prefix) as proxy:
        job = job_through(accounts, proxy)
        # Eight workers, so that stalled requests, each holding a worker for the read timeout, cost less time.
        result = job.run(accounts.source_uri, accounts.destination_uri, "--read-timeout", SOAK_READ_TIMEOUT,
                         "--max-workers", "8")

    assert result.returncode == 0, describe(result)
    assert accounts.destination_snapshot() == accounts.source_snapshot()
    assert accounts.destination_uploads() == []
    injected = proxy.counts.injected
    assert set(injected) == set(FAULT_KINDS), injected  # every kind really happened
    log = job.log_text()
    assert retries_logged(log) > 0
    assert len(copied_keys(log)) == SOAK_SMALL_OBJECTS + 5  # each object copied once
    verified = verified_by(log)
    assert verified[f"{accounts.prefix}large/unequal.bin"] == "etag", verified
    assert "size-only" not in verified.values(), verified
    summary = read_progress(job.progress_file)["summary"]
    assert summary["state"] == "complete"
    assert summary["this_run"]["retries"] == retries_logged(log)
    print(f"soak: {proxy.counts.requests} requests, faults injected {dict(injected)}, "
          f"{summary['this_run']['retries']} retries by the tool (botocore retried the rest)")


def test_objects_that_exhaust_their_retries_are_named_and_a_rerun_completes_them(accounts: CrossAccount) -> None:
    names = [f"fragile/{index:02d}.bin" for index in range(40)]
    for index, name in enumerate(names):
        accounts.put(name, body(4_000 + index, seed=index))
    # Three objects come back damaged every time, so their retries run out under either engine. Truncated
    # bodies, at 60%, are what botocore leaves to the tool (--engine threads: five attempts in a row fail
    # for about one object in thirteen); the crt engine's client retries those itself, within the request.
    damaged = {"fragile/03.bin", "fragile/17.bin", "fragile/31.bin"}
    with FaultProxy(accounts.server.endpoint_url, rates={"truncate": 0.6}, seed=5, key_prefix=accounts.prefix,
                    corrupt={(SOURCE_BUCKET, accounts.prefix + name) for name in damaged}) as proxy:
        job = job_through(accounts, proxy)
        result = job.run(accounts.source_uri, accounts.destination_uri)

        assert result.returncode == 1, describe(result)
        failed = read_progress(job.progress_file)["resume"]["failed"]
        failed_names = {key[len(accounts.prefix):] for key in failed}
        assert damaged <= failed_names, failed
        assert all("failed after 5 attempts" in reason for reason in failed.values()), failed
        if toolcli.ENGINE == "threads":
            assert failed_names - damaged, "the seed should make some truncated objects exhaust their retries"
        for key in failed:
            assert f'FAILED "{key}"' in job.log_text()
        copied = accounts.destination_snapshot()
        assert set(copied) == set(names) - failed_names  # exactly the failed ones are missing
        source = accounts.source_snapshot()
        assert all(copied[name] == source[name] for name in copied)
        assert accounts.destination_uploads() == []

        proxy.heal()  # the network heals; the rerun goes the same way, so it is the same job
        log_before = len(job.log_text())
        rerun = job.run(accounts.source_uri, accounts.destination_uri)

    assert rerun.returncode == 0, describe(rerun)
    assert sorted(copied_keys(job.log_text()[log_before:])) == sorted(failed)  # the rerun copied only those
    assert accounts.destination_snapshot() == source


def test_a_listing_answer_cut_short_by_an_error_is_read_again(accounts: CrossAccount) -> None:
    """botocore's own check of every 200 answer (a second parse of each listing page) is replaced,
    for listings, by a look at how the answer ends: it must still refuse a page that stops halfway."""
    names = [f"many/{index:04d}.txt" for index in range(1_100)]  # two pages: the first is cut
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: accounts.put(name, name.encode()), names))
    cut = AnswerCutShortOnce("ListObjectsV2")
    with FaultProxy(accounts.server.endpoint_url, key_prefix=accounts.prefix) as proxy:
        proxy.behave(cut)
        job = job_through(accounts, proxy)
        result = job.run(accounts.source_uri, accounts.destination_uri, "--no-tags", "--list-concurrency", "1")

    assert cut.cut == 1
    assert result.returncode == 0, describe(result)
    assert sorted(copied_keys(job.log_file.read_text())) == sorted(accounts.prefix + name for name in names)
    assert accounts.destination_snapshot() == accounts.source_snapshot()


class ListingDamagedOnce:
    """The first listing page with an object in it arrives damaged but whole, its XML broken in the
    middle (a flipped byte on a plain-HTTP endpoint would do it): nothing at its end tells."""

    def __init__(self) -> None:
        self.damaged = 0

    def __call__(self, request: Request, forward: Forward) -> Answer:
        answer = forward(request)
        if not self.damaged and request.operation == "ListObjectsV2" and b"<Contents>" in answer.body:
            self.damaged += 1
            middle = answer.body.index(b"<Contents>")
            answer.body = answer.body[:middle] + b"<Contents><Key>x</Ke" + answer.body[middle:]
        return answer


def test_a_listing_answer_that_is_not_xml_is_read_again(accounts: CrossAccount) -> None:
    for index in range(5):
        accounts.put(f"few/{index}.txt", b"body")
    damaged = ListingDamagedOnce()
    with FaultProxy(accounts.server.endpoint_url, key_prefix=accounts.prefix) as proxy:
        proxy.behave(damaged)
        job = job_through(accounts, proxy)
        result = job.run(accounts.source_uri, accounts.destination_uri, "--no-tags")

    assert damaged.damaged == 1
    assert result.returncode == 0, describe(result)
    warnings = [line for line in result.stderr.splitlines() if "invalid XML received" in line]
    assert warnings and all("retrying in" in line for line in warnings), result.stderr  # one line each
    assert accounts.destination_snapshot() == accounts.source_snapshot()
