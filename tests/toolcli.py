"""Running ``s3_bulk_transfer.py`` as a person does, and reading what it leaves behind.

Shared by most test modules. The tool runs its ``main()`` with the command line, environment,
working directory and standard streams a person's shell would give it (see ``run_tool``), so exit
codes, stderr and file modes are what a user gets; it only ever talks to the 127.0.0.1 servers the
tests start (the source endpoint comes from the credentials file, the destination endpoint from
--dest-endpoint-url).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from s3servers import Identity

TOOL = Path(__file__).resolve().parent.parent / "s3_bulk_transfer.py"
sys.path.insert(0, str(TOOL.parent))
import s3_bulk_transfer as tool  # noqa: E402

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
    """Run the CLI with ``args`` as a shell would, and return its exit code, stdout and stderr.

    It runs in this process: ``main(args)`` (what ``python s3_bulk_transfer.py ARGS`` calls), in a
    thread of its own, with this environment and working directory and standard streams of its own,
    and an exception that escapes it written to its stderr as Python would. A new interpreter for each
    run would cost its start-up and the imports of boto3, botocore and awscrt, most of a short run's
    CPU, and the suite runs the tool hundreds of times. The tests that signal or kill the tool start
    it as a process of its own (test_resume.py, test_security.py, some of test_copy.py).
    """
    outcome: dict[str, Any] = {}
    stdout, stderr = io.StringIO(), io.StringIO()

    def run() -> None:
        try:
            outcome["code"] = tool.main(list(args))
        except BaseException:  # noqa: BLE001 - as the interpreter would: the traceback on stderr, exit 1
            stderr.write(traceback.format_exc())
            outcome["code"] = 1

    saved_environment, saved_directory = dict(os.environ), os.getcwd()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            runner = threading.Thread(target=run, name="s3_bulk_transfer-main", daemon=True)
            runner.start()
            runner.join(RUN_TIMEOUT)
    finally:
        os.chdir(saved_directory)
        os.environ.clear()
        os.environ.update(saved_environment)
    if runner.is_alive():
        raise AssertionError(f"the tool did not finish within {RUN_TIMEOUT} s: {args}\n{stderr.getvalue()[-3000:]}")
    return subprocess.CompletedProcess([sys.executable, str(TOOL), *args], outcome["code"], stdout.getvalue(),
                                       stderr.getvalue())


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
