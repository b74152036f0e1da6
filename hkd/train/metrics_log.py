"""What a run writes as it goes: ``metrics.jsonl`` with TensorBoard events beside it, and ``log.txt``."""
from __future__ import annotations

import logging

from hkd.train.run_folder import RunFolder


def scalars(record: dict, prefix: str = "") -> list[tuple[str, float]]:
    """A metrics record's numbers as ``(tag, value)``, nested keys joined by ``/`` (``eval/mr/Reasonable``)."""
    out = []
    for key, value in record.items():
        if not prefix and key == "step":
            continue
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(scalars(value, tag + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((tag, float(value)))
    return out


class MetricsLog:
    """``metrics.jsonl`` plus TensorBoard event files in the run folder, with the same keys.

    ``tensorboard --logdir runs/`` then shows every run, and in it every loss term
    under its ``det/`` / ``kd/<level>/`` key. ``first_step``: a resumed run drops the
    events from that step on, as it drops those lines of ``metrics.jsonl``.
    """

    def __init__(self, run: RunFolder, *, first_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run = run
        self.writer = SummaryWriter(log_dir=str(run.root), purge_step=first_step, flush_secs=30)

    def append(self, record: dict) -> None:
        self.run.append_metrics(record)
        for tag, value in scalars(record):
            self.writer.add_scalar(tag, value, global_step=record["step"])

    def close(self) -> None:
        self.writer.close()


_handler: logging.Handler | None = None


def attach_log(run: RunFolder) -> None:
    """Send the ``hkd`` loggers' records to the run's ``log.txt`` too (one run at a time)."""
    global _handler
    detach_log()
    _handler = _RunLogHandler(run.log_path)
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("hkd")
    root.addHandler(_handler)
    root.setLevel(logging.INFO)


class _RunLogHandler(logging.FileHandler):
    """The run's log.txt. A line that cannot be written (a full disk) is dropped without
    logging's own traceback: the error that matters reaches the user as the run's failure."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        pass


def detach_log() -> None:
    global _handler
    if _handler is not None:
        logging.getLogger("hkd").removeHandler(_handler)
        _handler.close()
        _handler = None
