"""``hkd jobs``: background training/distillation jobs, the same queue HKD Studio shows.

    hkd jobs submit distill|train --config C [--out RUN] [--set K=V ...] [--resume] [--threads N] [--name NAME]
    hkd jobs list [--json]
    hkd jobs show ID [--json] [--lines N]
    hkd jobs cancel ID
    hkd jobs resume ID
    hkd jobs delete ID --yes

Jobs live under ``HKD_JOBS_DIR`` (default ``runs/jobs``); at most ``HKD_MAX_JOBS``
(default 1) run at once, and every ``hkd jobs`` call starts queued jobs as
slots free.
"""
from __future__ import annotations

import json
import time

from hkd.cli import CLIError


def add_parser(subparsers, name: str) -> None:
    p = subparsers.add_parser(name, help="background train/distill jobs (the queue HKD Studio shows)",
                              description=__doc__.splitlines()[0])
    p.add_argument("--jobs-dir", help="the queue folder (default: HKD_JOBS_DIR, else runs/jobs)")
    sub = p.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    s = sub.add_parser("submit", help="queue a run and return at once (prints the job id)")
    s.add_argument("kind", choices=("distill", "train"))
    s.add_argument("--config", required=True, help="run config (YAML or JSON)")
    s.add_argument("--out", help="run folder (default: <jobs dir>/<job id>/run)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable); paths are relative to the working directory")
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    s.add_argument("--threads", type=int, help="torch threads of the job (default: all cores but one)")
    s.add_argument("--name", help="a name for the job (default: its id)")
    lst = sub.add_parser("list", help="every job: id, state, step/total, run folder, times, message")
    lst.add_argument("--json", action="store_true", help="print a JSON list")
    sh = sub.add_parser("show", help="one job: status, last metrics and log tail")
    sh.add_argument("id")
    sh.add_argument("--json", action="store_true", help="print a JSON object")
    sh.add_argument("--lines", type=int, default=20, help="log lines to show (default 20)")
    c = sub.add_parser("cancel", help="cancel a queued or running job (SIGTERM; the run keeps its last checkpoint)")
    c.add_argument("id")
    r = sub.add_parser("resume", help="queue a cancelled or failed train/distill job again (--resume)")
    r.add_argument("id")
    d = sub.add_parser("delete", help="remove a job that is not running (and its run folder if inside it)")
    d.add_argument("id")
    d.add_argument("--yes", action="store_true", help="confirm")
    p.set_defaults(func=run)


LIST_KEYS = ("id", "state", "step", "total", "run", "created", "updated", "message")


def list_record(job) -> dict:
    """The public shape of ``hkd jobs list --json``: times as ISO 8601 strings."""
    return {"id": job.id, "kind": job.kind, "name": job.name, "state": job.state, "step": job.step,
            "total": job.total, "run": job.run, "created": job.to_dict()["created_iso"],
            "updated": job.to_dict()["updated_iso"], "message": job.message}


def run(args) -> int:
    from hkd.jobs import JobError, JobQueue

    try:
        queue = JobQueue(args.jobs_dir)
        return _ACTIONS[args.jobs_command](queue, args)
    except JobError as exc:
        raise CLIError(str(exc)) from None


def _submit(queue, args) -> int:
    job = queue.submit_run(args.kind, args.config, out=args.out, overrides=args.overrides, resume=args.resume,
                           name=args.name, threads=args.threads)
    print(job.id)
    return 0


def _list(queue, args) -> int:
    jobs = queue.list()
    if args.json:
        print(json.dumps([list_record(j) for j in jobs], indent=2))
        return 0
    if not jobs:
        print(f"no jobs in {queue.root}")
        return 0
    print(f"{'id':<21} {'kind':<8} {'state':<10} {'step':>11}  {'created':<19}  name / message")
    for job in jobs:
        step = f"{job.step}/{job.total}" if job.total else "—"
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.created))
        note = job.name + (f" — {job.message}" if job.message else "")
        print(f"{job.id:<21} {job.kind:<8} {job.state:<10} {step:>11}  {created:<19}  {note}")
    return 0


def _show(queue, args) -> int:
    job = queue.get(args.id)
    metrics = queue.metrics(args.id)
    last = next((m for m in reversed(metrics) if "eval" not in m), None)
    last_eval = next((m for m in reversed(metrics) if "eval" in m), None)
    log = queue.log_tail(args.id, args.lines)
    if args.json:
        print(json.dumps({**list_record(job), "job": job.to_dict(), "last_metrics": last, "last_eval": last_eval,
                          "log_tail": log}, indent=2))
        return 0
    print(f"job {job.id} ({job.kind}, {job.name}): {job.state}"
          + (f", step {job.step}/{job.total}" if job.total else "")
          + (f", ETA {job.eta_s:.0f} s" if job.state == "running" and job.eta_s else ""))
    if job.message:
        print(f"message: {job.message}")
    print(f"run folder: {job.run}")
    print(f"command: {job.command_line}")
    for key, value in job.outputs.items():
        print(f"{key}: {value}")
    if last:
        print("last metrics (step {}): ".format(last.get("step"))
              + ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k.startswith(("det/", "kd/", "loss"))))
    if last_eval:
        mr = last_eval["eval"].get("mr", {})
        print(f"last eval (step {last_eval.get('step')}): MR-2 " + ", ".join(f"{k} {v:.2f}" for k, v in mr.items()))
    if log:
        print("--- log tail ---")
        print(log)
    return 0


def _cancel(queue, args) -> int:
    job = queue.cancel(args.id)
    print(f"{job.id}: {job.state}" + (" (cancel requested; the run saves its last checkpoint)"
                                      if job.state == "running" else ""))
    return 0


def _resume(queue, args) -> int:
    job = queue.resume(args.id)
    print(f"{job.id}: {job.state}")
    return 0


def _delete(queue, args) -> int:
    if not args.yes:
        raise CLIError(f"deleting job {args.id} removes its folder; add --yes to confirm")
    queue.delete(args.id)
    print(f"{args.id}: deleted")
    return 0


_ACTIONS = {"submit": _submit, "list": _list, "show": _show, "cancel": _cancel, "resume": _resume,
            "delete": _delete}
