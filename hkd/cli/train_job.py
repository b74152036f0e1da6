"""The ``train`` and ``distill`` commands as background jobs (:mod:`hkd.jobs.kinds`): a run
config checked before a process starts (refuse what would die at step 0), its command line, and
the run folder the job owns, resumes and reads metrics from."""
from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

from hkd.jobs import JobError, JobKind, Launch, default_threads, register
from hkd.train.run_folder import RunFolder, RunFolderError


def prepare(kind: str, folder: Path, *, config: str | os.PathLike, out: str | os.PathLike | None = None,
            overrides: list[str] | None = None, resume: bool = False, name: str | None = None,
            threads: int | None = None) -> Launch:
    """``hkd train|distill --config CONFIG --out OUT``, checked first (:func:`check_run`).

    Without ``out`` the run folder is ``<job folder>/run``. ``threads`` (default: all cores but
    one) goes to the run as ``--set train.threads=N``.
    """
    out_path = Path(out).expanduser().resolve() if out else folder / "run"
    threads = int(threads or default_threads())
    if threads < 1:
        raise JobError(f"threads must be ≥ 1, got {threads}")
    sets = [*(overrides or []), f"train.threads={threads}"]
    cfg = check_run(kind, config, sets, out_path, resume=resume)
    args = ["--config", str(Path(config).expanduser().resolve()), "--out", str(out_path), "--no-progress"]
    for item in sets:
        args += ["--set", item]
    if resume:
        args.append("--resume")
    return Launch(args, name=name or folder.name, threads=threads, summary=run_summary(cfg), run=out_path)


def resume_problem(run: Path) -> str | None:
    """Why the run in ``run`` cannot be continued with ``--resume``, or None."""
    return None if RunFolder(run).can_resume else f"stopped before its first checkpoint ({run} holds none)"


def read_metrics(run: Path) -> list[dict]:
    return RunFolder(run).read_metrics()


def check_run(kind: str, config: str | os.PathLike, overrides: list[str], out: str | os.PathLike, *,
              resume: bool = False):
    """The validated run config of a train/distill job, or :class:`JobError` naming the problem:
    an invalid config, a teacher/student pair that cannot be distilled, a missing dataset, an
    ``out`` folder that already holds a run (without ``resume``) or has nothing to resume."""
    from hkd.models.meta import CheckpointError, read_meta
    from hkd.models.presets import get_preset
    from hkd.train.config import ConfigError, load_config

    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        raise JobError(f"config {config}: {exc}") from None
    if kind == "distill" and not cfg.distills:
        raise JobError(f"config {config}: a distill job needs a `teacher:` checkpoint (or an `online:` teacher)")
    if kind == "train" and cfg.distills:
        raise JobError(f"config {config}: names a teacher; submit it as a distill job")
    student = get_preset(cfg.model.preset)
    if cfg.model.init:
        try:
            init = read_meta(cfg.model.init)
        except CheckpointError as exc:
            raise JobError(f"model.init: {exc}") from None
        if init.preset != cfg.model.preset:
            raise JobError(f"model.init {cfg.model.init} holds {init.preset}, not {cfg.model.preset}")
    if cfg.model.init_backbone:
        try:
            read_meta(cfg.model.init_backbone)
        except CheckpointError as exc:
            raise JobError(f"model.init_backbone: {exc}") from None
    if cfg.distills:
        if cfg.teacher:
            try:
                teacher = read_meta(cfg.teacher)
            except CheckpointError as exc:
                raise JobError(f"teacher: {exc}") from None
            name, teacher_preset, classes = Path(cfg.teacher).name, teacher.preset, list(teacher.classes)
        else:
            name = teacher_preset = cfg.online.teacher_preset
            classes = list(get_preset(teacher_preset).classes)
        if classes != list(student.classes):
            raise JobError(f"teacher {name} predicts {classes}, the student "
                           f"({cfg.model.preset}) {list(student.classes)}: a pair must share its classes")
        from hkd.distill.config import ConfigError as DistillConfigError
        from hkd.distill.config import load_config as load_distill

        teacher_spec = get_preset(teacher_preset).hierarchy
        try:
            distill = load_distill(cfg.distill or {}, teacher_spec, student.hierarchy)
        except (DistillConfigError, OSError) as exc:
            raise JobError(f"distill: {exc}") from None
        if distill.aux is not None:
            _check_aux(distill.aux, teacher_spec, online=cfg.online is not None)
    for what, path in (("data.train", cfg.data.train), ("data.val", cfg.data.val)):
        if path:
            _check_dataset(what, path)
    try:
        RunFolder(out).check_not_written()
        RunFolder(out).check_new(resume=resume)
    except RunFolderError as exc:
        raise JobError(str(exc)) from None
    return cfg


def _check_aux(aux, teacher_spec, *, online: bool) -> None:
    """What can be told of ``distill.aux`` from the heads' header, before a process starts: the
    file, its levels and their channels (the probe-feature check needs the teacher's weights and
    runs when the distiller is built)."""
    from hkd.distill.aux import read_aux_meta
    from hkd.models.meta import CheckpointError

    if online:
        raise JobError("distill.aux: the teacher's aux heads are fitted on a frozen teacher checkpoint "
                       "(`hkd train-aux`); an online teacher changes at every step — drop distill.aux or use `teacher:`")
    try:
        meta = read_aux_meta(aux.checkpoint)
    except CheckpointError as exc:
        raise JobError(f"distill.aux.checkpoint: {exc}") from None
    levels = list(aux.levels) if aux.levels is not None else list(meta.levels)
    for name in levels:
        if name not in meta.levels:
            raise JobError(f"distill.aux.levels: {name!r} has no teacher head in {aux.checkpoint}; "
                           f"it has: {', '.join(meta.levels)}")
        channels = teacher_spec[name].channels if name in teacher_spec else None
        if channels != meta.levels[name]:
            raise JobError(f"distill.aux.checkpoint {aux.checkpoint}: made for another teacher "
                           f"({meta.teacher.get('preset')}, {meta.teacher.get('file')}): its {name} head takes "
                           f"{meta.levels[name]} channels, this teacher's has {channels}; fit heads for this "
                           "teacher with `hkd train-aux`")


def _check_dataset(what: str, path: str) -> None:
    from hkd.data.datasets import DatasetError, open_dataset

    try:
        dataset = open_dataset(path)
    except (DatasetError, FileNotFoundError, ValueError, OSError) as exc:
        raise JobError(f"{what}: {exc}") from None
    if len(dataset) == 0:
        raise JobError(f"{what}: {path} holds no images")


def run_summary(cfg) -> dict:
    """A few words about a run config for the jobs table."""
    levels = {}
    distill = cfg.distill
    if isinstance(distill, str):
        from hkd.configfile import ConfigFileError, read_config_file

        with contextlib.suppress(ConfigFileError, AttributeError):
            distill = (read_config_file(distill) or {}).get("distill")
    if isinstance(distill, dict):
        distill = distill.get("distill", distill)
        for level, terms in (distill.get("levels") or {}).items():
            terms = terms if isinstance(terms, list) else [terms]
            levels[level] = ", ".join(t if isinstance(t, str) else f"{t.get('loss')}×{t.get('weight', 1.0):g}"
                                      for t in terms)
    teacher = Path(cfg.teacher).name if cfg.teacher else None
    if cfg.online is not None:
        teacher = f"online: {cfg.online.teacher_preset} (KD from step {cfg.online.kd_after})"
    return {"preset": cfg.model.preset, "teacher": teacher,
            "init": Path(cfg.model.init).name if cfg.model.init else None, "steps": cfg.train.steps,
            "lr": cfg.train.lr, "train": cfg.data.train, "levels": levels}


register(*(JobKind(kind, prepare=functools.partial(prepare, kind), run_folder=True, resume_problem=resume_problem,
                   read_metrics=read_metrics) for kind in ("train", "distill")))
