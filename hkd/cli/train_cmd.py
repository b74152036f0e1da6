"""``hkd train --config CFG --out RUN`` and ``hkd distill --config CFG --out RUN``.

``train`` fits a detector on its own (a teacher, or the no-KD student
baseline); ``distill`` trains the student with the teacher named in the
config (``teacher:``) at every configured hierarchy, or together with a teacher
that learns in the same run (``online:``, see :mod:`hkd.train.config`). Both write a run folder
(status.json, metrics.jsonl, log.txt, checkpoints/). Under
``torchrun --nproc_per_node N`` the same command trains with
DistributedDataParallel.
"""
from __future__ import annotations

from hkd.cli import CLIError


def add_parser(subparsers, name: str) -> None:
    what = "train a detector (teacher, or student without KD)" if name == "train" else \
        "distill a student from a teacher checkpoint (hierarchical KD)"
    p = subparsers.add_parser(name, help=what, description=what)
    p.add_argument("--config", required=True, help="run config (YAML or JSON)")
    p.add_argument("--out", required=True, help="run folder to create (or continue with --resume)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=100 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from hkd.models.checkpoint import CheckpointError
    from hkd.train.config import ConfigError, load_config
    from hkd.train.engine import TrainingError, train

    try:
        cfg = load_config(args.config, args.overrides)
        if args.command == "distill" and not cfg.distills:
            raise CLIError(f"{args.config}: `hkd distill` needs a `teacher:` checkpoint in the config "
                           "(or an `online:` section: a teacher trained in the same run)")
        if args.command == "train" and cfg.distills:
            raise CLIError(f"{args.config}: names a teacher; use `hkd distill` (or remove `teacher:`)")
        status = train(cfg, args.out, resume=args.resume, progress=False if args.no_progress else None)
    except (ConfigError, CheckpointError, TrainingError) as exc:
        raise CLIError(str(exc)) from None
    state = status.get("state", "?")
    if state == "succeeded":
        print(f"{args.command}: done → {status.get('checkpoint')}")
        metrics = status.get("metrics") or {}
        if metrics:
            mr = metrics.get("mr", {})
            print("MR-2 " + ", ".join(f"{k} {v:.2f}" for k, v in mr.items()) + f"; AP50 {metrics.get('ap50', 0):.3f}")
        return 0
    print(f"{args.command}: {state} — {status.get('message', '')}")
    return 1 if state == "failed" else 3
