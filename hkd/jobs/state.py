"""The one state machine of a job: its state read from its record and from its processes, never
trusted from a file alone.

    queued ──launch──▶ running ──exit──▶ succeeded | failed | cancelled        (corrupt: unreadable)

* ``queued``: recorded, not launched (``launch`` is null); ``cancelled`` if cancelled before it started.
* ``running``: launched, and its supervisor (same pid *and* start time, same boot) or the command
  the supervisor started is alive; where neither can be checked, a fresh heartbeat counts.
* ended: the final state its command wrote in its status file; else ``cancelled`` if the user asked
  for it, else ``failed`` with why its process ended (exit code, signal, or gone without a trace:
  SIGKILL, out of memory, a reboot) and the last line of its output.
* ``corrupt``: a record, or the ended status of a job, that cannot be read; the message says why.

The queue freezes an ended job's state into ``job.json`` (``final``) the first time it is seen, so
a later run in the same folder cannot rewrite its history; a frozen state is returned as it is.
"""
from __future__ import annotations

import time
from pathlib import Path

from hkd.jobs.process import is_alive
from hkd.jobs.record import (COMMAND_NAME, EXIT_NAME, FINAL_KEYS, FINAL_STATES, HEARTBEAT_DEAD_S, RECORD_NAME, Job,
                             heartbeat_age, last_line, log_tail, read_json)
from hkd.jobs.status import read_status_checked


def job_of(record: dict, folder: Path) -> Job:
    """The job that the checked record ``record`` of the job folder ``folder`` describes, now."""
    base = dict(id=record["id"], kind=record["kind"], name=record.get("name") or record["id"],
                command=record["command"], run=record["run"], created=record["created"],
                threads=record.get("threads", 1), summary=record.get("summary") or {},
                outputs=dict(record.get("outputs") or {}), folder=str(folder))
    final = record.get("final")
    if final:
        return Job(**{**base, **final})
    launch = record.get("launch")
    if launch is None:
        state = "cancelled" if record.get("cancel_requested") else "queued"
        message = "cancelled before it started" if state == "cancelled" else "waiting for a free slot"
        return Job(**base, updated=record.get("cancel_time", record["created"]), state=state, message=message)
    status, problem = read_status_checked(record.get("status_path") or Path(record["run"]) / "status.json")
    exit_info = read_json(folder / EXIT_NAME)
    alive = launched_alive(record, folder) and exit_info is None  # after exit.json the supervisor is only finishing
    if not alive and exit_info is None:
        # the supervisor died without a word; its command runs on until the parent-death signal
        # has stopped it (a run saves its checkpoint first): it is still this job's, and running
        alive = is_alive(read_json(folder / COMMAND_NAME)) is True
    if problem and not alive:
        return corrupt_job(folder, problem, record)
    if problem:
        status = {"message": f"progress unreadable: {problem}"}
    fields = dict(step=int(status.get("step") or 0), total=int(status.get("total") or 0),
                  eta_s=status.get("eta_s"), metrics=status.get("metrics"), pid=launch.get("pid"),
                  started=launch.get("started"),
                  updated=max(status.get("updated") or 0, launch.get("started") or 0))
    outputs = base.pop("outputs")
    outputs.update(status.get("outputs") or {})
    if status.get("checkpoint"):
        outputs["checkpoint"] = status["checkpoint"]
    if alive:
        message = status.get("message") or ("cancelling…" if record.get("cancel_requested") else "")
        return Job(**base, **fields, outputs=outputs, state="running", message=message)
    returncode = exit_info.get("returncode") if exit_info else None
    ended = (exit_info or {}).get("ended") or fields["updated"]
    fields["updated"] = ended
    state = status.get("state")
    if state in FINAL_STATES:
        message = status.get("message") or ""
        if state == "failed" and not message:
            message = last_line(log_tail(folder, record, 5))
    elif record.get("cancel_requested"):
        state, message = "cancelled", "cancelled by the user"
    else:
        state = "failed"
        if exit_info is None:
            why = "its process is gone without a trace: killed (SIGKILL), out of memory, or the machine restarted"
        elif exit_info.get("signal"):
            why = f"its process was killed by signal {exit_info['signal']} ({exit_info.get('signal_name')})"
        else:
            why = f"its process exited with code {returncode}"
        last = last_line(log_tail(folder, record, 5))
        message = f"ended without writing a final state: {why}" + (f" — last output: {last}" if last else "")
    return Job(**base, **fields, outputs=outputs, state=state, message=message, returncode=returncode, ended=ended)


def launched_alive(record: dict, folder: Path) -> bool:
    """Whether the supervisor of a launched job is alive (its identity, else a fresh heartbeat).

    Where the identity cannot be checked, a fresh heartbeat counts; and a supervisor whose pid
    still runs while it has not yet written its first heartbeat (launched moments ago) is not
    declared dead on a start time read by another process: a job is never frozen ``failed``
    while its process may run."""
    launch = record.get("launch") or {}
    alive = is_alive(launch)
    if alive is None:  # cannot tell from the pid: trust a fresh heartbeat
        return heartbeat_age(folder) < HEARTBEAT_DEAD_S
    if not alive and heartbeat_age(folder) == float("inf") and _pid_runs(launch.get("pid")):
        started = launch.get("started")
        return isinstance(started, (int, float)) and abs(time.time() - started) < HEARTBEAT_DEAD_S
    return alive


def _pid_runs(pid) -> bool:
    import psutil

    try:
        return isinstance(pid, int) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def corrupt_job(folder: Path, reason: str, record: dict | None = None) -> Job:
    """A job shown as ``corrupt``: what its record still says (if it could be read), and why."""
    try:
        when = (folder / RECORD_NAME).stat().st_mtime
    except OSError:
        when = 0.0
    record = record or {}
    return Job(id=folder.name, kind=record.get("kind", "?"), name=record.get("name") or folder.name, state="corrupt",
               command=record.get("command", []), run=record.get("run", str(folder)),
               created=record.get("created", when), updated=when, summary=record.get("summary") or {},
               message=f"{reason}; `hkd jobs delete {folder.name} --yes` removes it", folder=str(folder))


def final_of(job: Job) -> dict:
    """What ``job.json`` keeps of an ended job (``final``)."""
    out = {k: getattr(job, k) for k in FINAL_KEYS}
    out["eta_s"] = 0 if job.state == "succeeded" else None
    return out
