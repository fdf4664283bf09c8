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
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from s3servers import Identity
from units import MIB

import s3_bulk_transfer as tool

TOOL = Path(__file__).resolve().parent.parent / "s3_bulk_transfer.py"

# Small parts keep multipart objects at 10-25 MiB, which moto writes in well under a second.
CHUNK_SIZE = 5 * MIB
MULTIPART_THRESHOLD = 6 * MIB
SIZE_ARGS = ["--chunk-size", "5MiB", "--multipart-threshold", "6MiB", "--max-workers", "4"]

# The --engine every transfer runs with, from pytest's own --engine option (conftest.py); None leaves
# the tool's default (auto). CI runs the suite once with each engine.
ENGINE: str | None = None

RUN_TIMEOUT = 300  # seconds; a deadline for a hung run, not a performance assertion
WAIT_SECONDS = 60.0  # deadline for any one condition while a started run goes on
POLL_SECONDS = 0.02

T = TypeVar("T")

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


def done_per_progress_file(progress: dict[str, Any], keys: list[str]) -> set[str]:
    """The keys a progress file counts as done: in their key range (after < key <= through), at or
    below its watermark and not failed, or listed as done beyond it."""
    resume = progress["resume"]
    failed = set(resume["failed"])

    def counted(key: str, key_range: dict[str, Any]) -> bool:
        watermark = key_range["watermark"]
        return key in key_range["done_beyond_watermark"] or (
            watermark is not None and key <= watermark and key not in failed)

    return {
        key for key in keys for key_range in resume["ranges"]
        if (key_range["after"] is None or key > key_range["after"])
        and (key_range["through"] is None or key <= key_range["through"]) and counted(key, key_range)
    }


@dataclass
class ToolJob:
    """The fixed parts of one job's command line: credentials, endpoints, sizes, progress and log files.

    ``run(source_uri, destination_uri, *extra)`` adds them, so each test's command line shows
    only what the test is about. ``start`` runs the same command line as a process of its own, for
    the tests that signal, stop or kill the tool; ``wait`` and ``wait_for`` watch it with deadlines
    that fail the test with the log's tail.
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
    processes: list[subprocess.Popen[bytes]] = field(init=False, default_factory=list)

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

    def command(self, source_uri: str, destination_uri: str, *extra: str) -> list[str]:
        """The command line of a process of its own: ``python s3_bulk_transfer.py ARGS``."""
        return [sys.executable, str(TOOL), *self.args(source_uri, destination_uri, *extra)]

    def start(self, source_uri: str, destination_uri: str, *extra: str) -> subprocess.Popen[bytes]:
        """Start a run as a process of its own; its stdout and stderr go to files of their own."""
        run = len(self.processes) + 1
        stdout = open(self.workdir / f"run{run}.stdout", "wb")  # noqa: SIM115 - closed below
        stderr = open(self.workdir / f"run{run}.stderr", "wb")  # noqa: SIM115
        try:
            process = subprocess.Popen(
                self.command(source_uri, destination_uri, *extra),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=self.env,
                cwd=self.workdir,
                # Its own session: a Ctrl-C typed at pytest must not reach it, only the test's signals.
                start_new_session=True,
            )
        finally:
            stdout.close()
            stderr.close()
        self.processes.append(process)
        return process

    def wait(self, process: subprocess.Popen[bytes]) -> int:
        """The exit code of a started run, once it ends."""
        try:
            return process.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"the tool did not finish within {RUN_TIMEOUT} s\n{self.diagnostics()}")

    def wait_for(self, process: subprocess.Popen[bytes], condition: Callable[[], T], what: str,
                 timeout: float = WAIT_SECONDS) -> T:
        """Poll ``condition`` until it returns something truthy, which is returned.

        Fails if the tool exits first or the deadline passes; both mean the scenario
        the test wanted to set up did not happen.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if process.poll() is not None:
                pytest.fail(f"the tool exited (code {process.returncode}) before {what}\n{self.diagnostics()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{self.diagnostics()}")
            time.sleep(POLL_SECONDS)

    def kill_leftovers(self) -> None:
        """Kill the started runs a failed test left behind."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    def log_size(self) -> int:
        return self.log_file.stat().st_size if self.log_file.exists() else 0

    def shard_log_text(self, index: int, count: int) -> str:
        """The log of shard `index` of `count` (NAME.shard-I-of-N.log beside the log file), "" before it exists."""
        log = self.log_file.with_name(f"{self.log_file.stem}.shard-{index}-of-{count}{self.log_file.suffix}")
        return log.read_text() if log.exists() else ""

    def log_text(self, since: int = 0) -> str:
        """The log from byte offset ``since`` on (the lines a later run appended)."""
        if not self.log_file.exists():
            return ""
        with open(self.log_file, "rb") as handle:
            handle.seek(since)
            return handle.read().decode("utf-8", errors="replace")

    def progress(self) -> dict[str, Any]:
        """The progress file as it is on disk now (must be valid JSON)."""
        return read_progress(self.progress_file)

    def diagnostics(self) -> str:
        """The tail of the log and of the last started run's stderr, for failure messages."""
        log_tail = "\n".join(self.log_text().splitlines()[-40:])
        run = len(self.processes)
        stderr_path = self.workdir / f"run{run}.stderr"
        stderr_tail = stderr_path.read_text(errors="replace")[-3000:] if stderr_path.exists() else ""
        return f"--- log tail ---\n{log_tail}\n--- stderr of run {run} ---\n{stderr_tail}"
