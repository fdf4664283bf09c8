#!/usr/bin/env python3
"""Run one command and report what it cost: wall time, CPU, peak RSS, bytes written to disk.

bench.py runs every tool through this small launcher instead of spawning it itself, because
Linux's peak-RSS figure (``ru_maxrss``) of a child includes the memory of the process that
spawned it: at exec the kernel folds the old address space's high-water mark into the child's
(fs/exec.c, ``setmax_mm_hiwater_rss``), and a fork or vfork child's old address space is its
parent's. Spawned from bench.py (boto3 loaded, ~100 MiB), a 10 MiB tool would report >= 100 MiB;
spawned from this launcher, which imports nothing but the standard library (~10 MiB), every
tool's figure is its own. (Checked: a child of a 300 MiB parent reported 318 MiB.)

The disk figure is ``write_bytes`` of /proc/PID/io: bytes the process caused to be written to
storage (page-cache pages it dirtied, counted at write time). It is read while the child is a
zombie: ``waitid(WEXITED | WNOWAIT)`` waits for the exit without reaping, /proc/PID/io is still
readable then and holds the whole process's final totals, and only then does ``wait4`` reap it and
return its rusage (CPU and ``ru_maxrss``).

Usage: measure_child.py OUT.json STDOUT_FILE STDERR_FILE -- COMMAND [ARGS...]
The command's environment and working directory are this process's own.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time


def read_proc_io(pid: int) -> dict[str, int]:
    """/proc/PID/io as a dict of ints; empty if it cannot be read."""
    try:
        with open(f"/proc/{pid}/io") as handle:
            return {name: int(value) for name, value in (line.split(":") for line in handle if ":" in line)}
    except (OSError, ValueError):
        return {}


def process_state(pid: int) -> str:
    """The one-letter state of /proc/PID/stat (``Z`` for a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def tree_rss_kib(pid: int) -> int:
    """The resident memory of a process and all its descendants now (VmRSS of each, summed): the
    memory a multi-process tool (--processes) takes, which ``ru_maxrss`` (one process's peak, or the
    largest of its children's) does not show."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/status") as handle:
                total += next((int(line.split()[1]) for line in handle if line.startswith("VmRSS:")), 0)
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    pending.extend(int(child) for child in handle.read().split())
        except (OSError, ValueError):
            continue
    return total


TREE_SAMPLE_SECONDS = 0.05


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[3] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    out_path, stdout_path, stderr_path, command = argv[0], argv[1], argv[2], argv[4:]
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        start = time.monotonic()
        pid = os.posix_spawnp(command[0], command, dict(os.environ),
                              file_actions=[(os.POSIX_SPAWN_DUP2, out.fileno(), 1),
                                            (os.POSIX_SPAWN_DUP2, err.fileno(), 2)])
    tree_peak = 0
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
        tree_peak = max(tree_peak, tree_rss_kib(pid))
        time.sleep(TREE_SAMPLE_SECONDS)
    wall = time.monotonic() - start
    state = process_state(pid)
    proc_io = read_proc_io(pid)
    _, status, usage = os.wait4(pid, 0)
    report = {
        "command": command,
        "exit_code": os.waitstatus_to_exitcode(status),
        "wall_s": wall,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "max_rss_kib": usage.ru_maxrss,  # KiB on Linux
        "tree_peak_rss_kib": tree_peak,  # sampled every TREE_SAMPLE_SECONDS: the process and its children
        "write_bytes": proc_io.get("write_bytes"),
        "read_bytes": proc_io.get("read_bytes"),
        "cancelled_write_bytes": proc_io.get("cancelled_write_bytes"),
        "proc_io_read_as": state,  # "Z": read from the zombie, i.e. after the last write
        # The floor under max_rss_kib (see the docstring): a tool below it would be over-reported.
        "launcher_max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    with open(out_path, "w") as handle:
        json.dump(report, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
