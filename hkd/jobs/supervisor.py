"""The supervisor of one job: ``python -m hkd.jobs.supervisor JOB_DIR``.

It runs the job's command (dying with it: Linux's parent-death signal), records the command's
identity (``command.json``), touches a heartbeat, forwards SIGTERM/SIGINT, writes ``exit.json``
with the exit code or signal when the command ends, and then starts the next queued job.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hkd.jobs.process import die_with_parent, identify
from hkd.jobs.queue import JobQueue
from hkd.jobs.record import COMMAND_NAME, EXIT_NAME, HEARTBEAT_NAME, HEARTBEAT_S, RECORD_NAME
from hkd.models.meta import atomic_write


def supervise(folder: Path) -> int:
    """Run the job's command, forward SIGTERM to it, record its exit, then start the next queued job."""
    record = json.loads((folder / RECORD_NAME).read_text())
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            (folder / HEARTBEAT_NAME).touch()

    (folder / HEARTBEAT_NAME).touch()
    print(f"[hkd jobs] {record['id']}: {shlex.join(record['command'])}", flush=True)
    # started before any thread: a preexec_fn is only safe in a single-threaded parent
    child = subprocess.Popen(record["command"], cwd=record["cwd"], stdin=subprocess.DEVNULL,
                             preexec_fn=die_with_parent(os.getpid()))
    # the queue keeps the job running (and cancellable) while this process lives, even without its supervisor
    command_record = json.dumps(identify(child.pid))
    atomic_write(folder / COMMAND_NAME, lambda tmp: Path(tmp).write_text(command_record))
    threading.Thread(target=beat, daemon=True).start()

    def forward(signum, _frame) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        try:
            code = child.wait()
            break
        except InterruptedError:
            continue
    stop.set()
    info: dict[str, Any] = {"returncode": code, "ended": time.time()}
    if code < 0:
        info["signal"] = -code
        info["signal_name"] = signal.Signals(-code).name
    atomic_write(folder / EXIT_NAME, lambda tmp: Path(tmp).write_text(json.dumps(info)))
    print(f"[hkd jobs] {record['id']}: exited with code {code}", flush=True)
    with contextlib.suppress(Exception):  # the next queued job, if any; never fail the finished one for it
        JobQueue(folder.parent).advance()
    return 0


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1]).resolve()))
