"""Which process a job is: its pid *and* its start time, so a reused pid is never taken for the job.

A job records the identity of its supervisor (``job.json``'s ``launch``) and of the command the
supervisor started (``command.json``) as ``{"pid", "create_time", "since_boot", "boot_id"}``:
``create_time`` is psutil's start time of the process (seconds since the epoch), ``since_boot`` the
same start counted from the boot (psutil's start time less psutil's boot time, read together), and
``boot_id`` the kernel's boot id where there is one (Linux). ``since_boot`` is what is compared:
psutil's epoch start time is the start since boot *plus the boot time as the wall clock puts it
now*, so a clock step (NTP, a resumed VM or laptop) between two processes' reads moves it by the
step, and a live job would read as dead; the difference of the two does not move. Records written before 2026-12-07 hold ``start_ticks`` (the start in
clock ticks since boot, read from ``/proc``) instead of ``create_time``; they are still read.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

import psutil

# psutil's start time on Linux is the start since boot plus the boot time, which the kernel gives in
# whole seconds and moves when the clock is corrected: within this many seconds it is the same process.
# (Another process on the same pid that close to the first one's start would need the pid space to
# wrap within two seconds.)
START_SLACK_S = 2.0


def boot_id() -> str | None:
    """The kernel's id of this boot (Linux), or None where there is none."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def identify(pid: int) -> dict[str, Any]:
    """``{"pid", "create_time", "since_boot", "boot_id"}`` of a live process, for a job's records."""
    return {"pid": pid, "create_time": create_time(pid), "since_boot": since_boot(pid), "boot_id": boot_id()}


def since_boot(pid: int) -> float | None:
    """Seconds from the boot to the start of process ``pid`` (unmoved by wall-clock steps), or None."""
    try:
        started = psutil.Process(pid).create_time()
        return started - psutil.boot_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def create_time(pid: int) -> float | None:
    """psutil's start time of process ``pid`` (seconds since the epoch), or None if there is none."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def start_ticks(pid: int) -> int | None:
    """The start of ``pid`` in clock ticks since boot, as records before 2026-12-07 hold it (Linux), or None."""
    started = create_time(pid)
    if started is None or not hasattr(os, "sysconf"):
        return None
    return round((started - psutil.boot_time()) * os.sysconf("SC_CLK_TCK"))


def is_alive(identity: dict[str, Any] | None) -> bool | None:
    """Whether the process ``identity`` names (:func:`identify`, or an older record with
    ``start_ticks``) still runs: True/False when it can be told, None when it cannot (a process
    with that pid exists but its start time cannot be read)."""
    identity = identity or {}
    pid = identity.get("pid")
    if not pid or isinstance(pid, bool) or not isinstance(pid, int):
        return False
    recorded_boot, current_boot = identity.get("boot_id"), boot_id()
    if recorded_boot is not None and current_boot is not None and recorded_boot != current_boot:
        return False  # the machine restarted since
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False  # it has exited; only its exit status waits for its parent
        started = proc.create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return None
    if isinstance(identity.get("since_boot"), (int, float)):
        return abs(started - psutil.boot_time() - identity["since_boot"]) <= START_SLACK_S
    if isinstance(identity.get("create_time"), (int, float)):  # a record of earlier today: epoch seconds
        return abs(started - identity["create_time"]) <= START_SLACK_S
    if isinstance(identity.get("start_ticks"), int) and hasattr(os, "sysconf"):  # a record before 2026-12-07
        ticks = round((started - psutil.boot_time()) * os.sysconf("SC_CLK_TCK"))
        return ticks == identity["start_ticks"]
    return None  # a process with that pid exists, but it may be another one


def die_with_parent(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` for a job's command: on Linux, the kernel sends it SIGTERM when the
    supervisor dies (``PR_SET_PDEATHSIG``), so a SIGKILLed supervisor leaves no unmanaged
    training; a run saves its last checkpoint and records why it stopped. None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        if os.getppid() != parent:  # the supervisor died before the line above
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec
