"""Running ``s3_bulk_transfer.py`` as a person does, and reading what it leaves behind.

Shared by test_copy.py, test_errors.py and test_cross_account.py. The tool always
runs as a subprocess of the venv's interpreter, so exit codes, stderr and file
modes are exactly what a user gets; it only ever talks to the 127.0.0.1 servers
the tests start (the source endpoint comes from the credentials file, the
destination endpoint from --dest-endpoint-url).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s3servers import Identity

TOOL = Path(__file__).resolve().parent.parent / "s3_bulk_transfer.py"

KIB = 1024
MIB = 1024 * KIB

# Small parts keep multipart objects at 10-25 MiB, which moto writes in well under a second.
CHUNK_SIZE = 5 * MIB
MULTIPART_THRESHOLD = 6 * MIB
SIZE_ARGS = ["--chunk-size", "5MiB", "--multipart-threshold", "6MiB", "--max-workers", "4"]

# The --engine every transfer runs with, from pytest's own --engine option (conftest.py); None leaves
# the tool's default (auto). CI runs the suite once with each engine.
ENGINE: str | None = None

RUN_TIMEOUT = 300  # seconds; a deadline for a hung run, not a performance assertion

# A log line for one copied object: `... INFO copied "KEY" 1.0 KiB in ...`, the key JSON-encoded.
_COPIED_LINE = re.compile(r' INFO copied ("(?:[^"\\]|\\.)*") ')


def write_source_credentials(path: Path, identity: Identity, endpoint_url: str, *, mode: int = 0o600,
                             **extra: str) -> Path:
    """The --source-credentials JSON file, owner-only as the README asks."""
    document = {
        "aws_access_key_id": identity.access_key,
        "aws_secret_access_key": identity.secret_key,
        "endpoint_url": endpoint_url,
        **extra,
    }
    path.write_text(json.dumps(document, indent=2))
    os.chmod(path, mode)
    return path


def run_tool(args: list[str], *, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI with ``args`` and return its exit code, stdout and stderr."""
    return subprocess.run(
        [sys.executable, str(TOOL), *args],
        check=False,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )


def engine_args() -> list[str]:
    """``--engine NAME`` when the suite runs with one engine, else nothing."""
    return ["--engine", ENGINE] if ENGINE else []


def copied_keys(log_text: str) -> list[str]:
    """The source keys the log says were copied, in log order, one entry per "copied" line."""
    return [json.loads(match.group(1)) for match in _COPIED_LINE.finditer(log_text)]


def error_lines(stderr: str) -> list[str]:
    """The lines of stderr a person reads as errors."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """The run's output, for assertion messages."""
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"


def assert_usage_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 2 with exactly one line on stderr, an `error:` sentence containing every fragment,
    and no traceback. Returns that line."""
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, describe(result)
    line = lines[0]
    assert line.startswith("error: "), describe(result)
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in the message {line!r}"
    return line


def read_progress(path: Path) -> dict[str, Any]:
    """The progress file, parsed; fails the test if it is not valid JSON."""
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass
class ToolJob:
    """The fixed parts of one job's command line: credentials, endpoints, sizes, progress and log files.

    ``run(source_uri, destination_uri, *extra)`` adds them, so each test's command line shows
    only what the test is about.
    """

    workdir: Path
    env: dict[str, str]
    credentials: Path
    dest_endpoint_url: str
    # moto accepts any keys, so on one moto server --copy-mode auto would copy server-side and the
    # streaming path, which is what most tests are about, would go untested: stream unless asked.
    copy_mode: str = "stream"
    progress_file: Path = field(init=False)
    log_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.progress_file = self.workdir / "progress.json"
        self.log_file = self.workdir / "transfer.log"

    def args(self, source_uri: str, destination_uri: str, *extra: str) -> list[str]:
        return [
            source_uri,
            destination_uri,
            "--source-credentials", str(self.credentials),
            "--dest-endpoint-url", self.dest_endpoint_url,
            *SIZE_ARGS,
            "--copy-mode", self.copy_mode,
            "--progress-file", str(self.progress_file),
            "--log-file", str(self.log_file),
            *engine_args(),
            *extra,
        ]

    def run(self, source_uri: str, destination_uri: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return run_tool(self.args(source_uri, destination_uri, *extra), env=self.env, cwd=self.workdir)

    def log_text(self) -> str:
        return self.log_file.read_text(encoding="utf-8") if self.log_file.exists() else ""
