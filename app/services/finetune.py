"""Fine-tunes launched from HKD Studio's Distill page: run configs built from the shipped ones,
submitted to the background job queue (:mod:`hkd.jobs`), and their curves.

A config is plain data: the page starts from a shipped run config (``assets/configs/*.yaml``),
inlines its distill section, applies the user's switches and weights, and writes the result as
YAML into the jobs folder — the same file a user can pass to ``hkd distill --config``.
"""
from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from hkd.jobs import Job, JobQueue
from hkd.train.run_folder import RunFolder

from app.services import settings
from app.services.jobs import queue  # noqa: F401 (finetune.queue(), as before)

CONFIGS = settings.REPO_ROOT / "assets" / "configs"
# label → shipped run config; the first is the default
PRESETS = {
    "Quick demo (≤ 5 min on a 2-core CPU)": "quick_demo.yaml",
    "Full HKD (all hierarchies, 800 steps)": "student_hkd.yaml",
    "HKD + trust in the teacher (no KD where it is wrong)": "student_hkd_trust.yaml",
    "HKD + self-supervised aux heads (HSAKD)": "student_hkd_aux.yaml",
    "Online: teacher and student train together": "student_online.yaml",
    "ROI head only": "student_hkd_roi.yaml",
    "FPN only": "student_hkd_fpn.yaml",
    "Backbone only": "student_hkd_backbone.yaml",
    "RPN only": "student_hkd_rpn.yaml",
    "No KD (plain fine-tune)": "student_baseline.yaml",
    "Single-stage pair: focal KD + FPN hints (RetinaNet)": "retina_student_kd.yaml",
}
HIERARCHIES = {"backbone": "Backbone", "neck": "FPN", "rpn": "RPN", "roi": "ROI head", "head": "dense head"}


def app_threads() -> int:
    """Torch threads for the app's own forwards: the cores the running jobs leave free (at least 1).

    OpenMP threads spin while they wait, so two threads of the app beside a one-thread job on two
    cores are several times slower than one (docs/DESIGN.md, "Threads")."""
    cores = os.cpu_count() or 2
    try:
        busy = sum(j.threads for j in queue().list(advance=False) if j.state == "running")
    except OSError:
        busy = 0
    return max(1, cores - busy)


def load_preset(file_name: str) -> dict:
    """A shipped run config as plain data, every path absolute and the distill section inline."""
    from hkd.train.config import resolve_paths

    raw = yaml.safe_load((CONFIGS / file_name).read_text()) or {}
    resolve_paths(raw, CONFIGS)  # as `hkd distill --config` resolves them: relative to the file
    if isinstance(raw.get("distill"), str):
        source = Path(raw["distill"])
        inline = yaml.safe_load(source.read_text()) or {}
        raw["distill"] = inline.get("distill", inline)
        aux = raw["distill"].get("aux")
        if isinstance(aux, dict) and isinstance(aux.get("checkpoint"), str):  # relative to the distill file
            aux["checkpoint"] = str((source.parent / Path(aux["checkpoint"]).expanduser()).resolve())
    return raw


# the soft-target losses that take the trust params (hkd.distill.losses.trust)
TRUST_LOSSES = ("kd_kl", "soft_bce", "focal_kd")
TRUST_MODES = {
    "none": "trust it everywhere (plain KD)",
    "label": "drop KD where its class is wrong",
    "confidence": "weigh by its probability of the true class",
    "iou": "weigh by the row's IoU with its object",
}


def form_defaults(label: str) -> dict:
    """The Distill form's fields (session-state keys) as the preset ``label`` of :data:`PRESETS` sets them."""
    preset = load_preset(PRESETS[label])
    t, terms = preset.get("train") or {}, terms_of(preset.get("distill"))
    steps = int(t.get("steps", 60))
    trust, wrong = trust_of(terms)
    online = preset.get("online")
    out = {
        "distill_steps": steps,
        "distill_lr": float(t.get("lr", 0.002)),
        "distill_val_images": int((preset.get("data") or {}).get("val_images", 100)),
        "distill_temperature": float(next((x.params.get("temperature", 2.0) for x in terms if x.loss == "kd_kl"), 2.0)),
        "distill_trust": trust,
        "distill_wrong": wrong,
        "distill_aux": True,
        "distill_aux_scale": 1.0,
        "distill_kd_after": min(int((online or {}).get("kd_after", 0)), max(0, steps // 4)),
        "distill_start": "ImageNet backbones" if online else "its current weights",
        "distill_name": label.split(" (")[0].split(":")[0].lower().replace(" + ", "-").replace(" ", "-"),
    }
    for h in HIERARCHIES:
        out[f"distill_on_{h}"] = any(term.hierarchy == h for term in terms)
        out[f"distill_scale_{h}"] = 1.0
    return out


def _registered(name: str | None):
    """The registry's :class:`hkd.models.presets.Preset` named ``name``; None for no or an unknown name."""
    from hkd.models.presets import get_preset

    try:
        return get_preset(name) if name else None
    except KeyError:
        return None


def family_of(preset: dict) -> str | None:
    """The detector family (``two_stage``, ``single_stage``) the preset trains; None if it names none."""
    detector = _registered((preset.get("model") or {}).get("preset"))
    return detector.family if detector else None


def hierarchies_of(preset: dict) -> dict[str, str]:
    """{hierarchy: title} of the detector the preset trains (``model.preset``), in :data:`HIERARCHIES`
    order: backbone, FPN, RPN, ROI head for a two-stage detector; backbone, FPN, dense head for a
    single-stage one. Every hierarchy where the preset names no known detector."""
    detector = _registered((preset.get("model") or {}).get("preset"))
    if detector is None:
        return dict(HIERARCHIES)
    present = {level.hierarchy for level in detector.hierarchy}
    return {h: title for h, title in HIERARCHIES.items() if h in present}


def pair_defaults(preset: dict, entries: list, pair: dict[str, str | None]) -> dict[str, str | None]:
    """The teacher and student the form starts with, by role (paths of ``entries``,
    :class:`app.services.models.CheckpointEntry`).

    The file the preset itself names (``teacher:``, ``model.init``; matched by file name, so the
    quick demo starts from the no-KD student its config and README name) wins where it is listed.
    Otherwise ``pair`` (the Models page's choice) is kept where a checkpoint is of the preset's
    detector family (two-stage or single-stage, from the preset's ``model.preset``), else the first
    listed checkpoint of that family and role. So a single-stage preset starts from the single-stage
    checkpoints while the Models page shows the two-stage pair, and the reverse."""
    def family(name: str | None) -> str | None:
        detector = _registered(name)
        return detector.family if detector else None

    wanted = family_of(preset)
    by_path = {e.path: e for e in entries}
    named = {"teacher": preset.get("teacher"), "student": (preset.get("model") or {}).get("init")}
    out = {}
    for role, path in pair.items():
        fits = [e for e in entries if wanted is None or family(e.preset) == wanted]
        own = [e for e in fits if named.get(role) and e.source != "job" and Path(e.path).name == Path(named[role]).name]
        if own:
            out[role] = own[0].path
        elif wanted is None or (path in by_path and family(by_path[path].preset) == wanted):
            out[role] = path
        else:
            fits.sort(key=lambda e: (e.role != role, Path(e.path).name))
            out[role] = fits[0].path if fits else path
    return out


def start_note(preset: dict, init: str | None) -> str:
    """A line saying which weights the fine-tune starts from and what the preset itself names."""
    from app.services import models

    named = (preset.get("model") or {}).get("init")
    what = f"`{models.display_name(init)}`" if init else "ImageNet backbones"
    if named and init and Path(init).name == Path(named).name:
        return f"Starts from {what}, as the config says (`model.init`)."
    if named:
        return f"Starts from {what}; the config itself starts from `{Path(named).name}`."
    return f"Starts from {what}."


def parent_of(job: Job) -> str:
    """What a train/distill job's student started from: a checkpoint's name (a fine-tune's after its
    job), ``ImageNet backbones``, or ``—`` where its config cannot be read."""
    from app.services import models

    try:
        config = Path(job.command[job.command.index("--config") + 1])
        init = ((yaml.safe_load(config.read_text()) or {}).get("model") or {}).get("init")
    except (ValueError, IndexError, OSError, yaml.YAMLError, AttributeError):
        return "—"
    return models.display_name(init) if init else "ImageNet backbones"


def trust_of(terms: list["Term"]) -> tuple[str, float]:
    """(trust mode, wrong_weight) of the first soft-target term, ``("none", 0.0)`` if it has none."""
    for term in terms:
        if term.loss in TRUST_LOSSES:
            return str(term.params.get("trust", "none")), float(term.params.get("wrong_weight", 0.0))
    return "none", 0.0


@dataclass
class Term:
    """One loss term of the table the page edits."""

    level: str
    loss: str
    weight: float
    params: dict

    @property
    def hierarchy(self) -> str:
        return self.level.split(".")[0]


def terms_of(distill: dict | None) -> list[Term]:
    out = []
    for level, entry in ((distill or {}).get("levels") or {}).items():
        for term in entry if isinstance(entry, list) else [entry]:
            if isinstance(term, str):
                term = {"loss": term}
            params = {k: v for k, v in term.items() if k not in ("loss", "weight")}
            out.append(Term(level, term["loss"], float(term.get("weight", 1.0)), params))
    return out


def build_config(preset: dict, *, teacher: str | None, init: str | None, train: str, val: str | None,
                 val_images: int, steps: int, lr: float, eval_every: int, terms: list[Term] | None,
                 enabled: dict[str, bool], scale: dict[str, float], temperature: float | None,
                 threads: int, trust: tuple[str, float] | None = None, aux: float | None = None,
                 kd_after: int | None = None) -> dict:
    """The run config of the form: ``preset`` with the user's choices; ``terms`` None means no KD.

    ``trust`` ``(mode, wrong_weight)`` replaces the trust params of every soft-target term (``None``:
    as the terms say); ``aux`` scales the weights of the preset's ``distill.aux`` section (``None`` or
    0: no aux heads); ``kd_after`` is an online preset's first KD step. An online preset (an
    ``online:`` section) trains its own teacher: ``teacher`` is not used."""
    cfg = copy.deepcopy(preset)
    cfg.setdefault("model", {})
    cfg["model"]["init"] = init
    if init:
        cfg["model"]["pretrained_backbone"] = True
    cfg.setdefault("data", {})
    cfg["data"].update(train=train, val=val, val_images=int(val_images))
    cfg.setdefault("train", {})
    cfg["train"].update(steps=int(steps), lr=float(lr), eval_every=int(eval_every), threads=int(threads))
    # a short fine-tune: no longer warm-up than a tenth of it, checkpoints often enough to cancel safely
    cfg["train"]["warmup_steps"] = min(int(cfg["train"].get("warmup_steps", 0)), max(1, int(steps) // 10))
    cfg["train"]["checkpoint_every"] = max(1, min(int(cfg["train"].get("checkpoint_every", 200)), int(steps) // 3 or 1))
    cfg["train"]["log_every"] = max(1, min(int(cfg["train"].get("log_every", 10)), int(steps) // 20 or 1))
    online = cfg.get("online") if terms is not None else None
    if terms is None or not (teacher or online):
        cfg.pop("teacher", None)
        cfg.pop("online", None)
        cfg.pop("distill", None)
        return cfg
    levels: dict[str, list[dict]] = {}
    for term in terms:
        if not enabled.get(term.hierarchy, True) or term.weight <= 0:
            continue
        params = dict(term.params)
        if temperature is not None and term.loss == "kd_kl":
            params["temperature"] = float(temperature)
        if trust is not None and term.loss in TRUST_LOSSES:
            params.pop("trust", None)
            params.pop("wrong_weight", None)
            if trust[0] != "none":
                params["trust"] = trust[0]
            if trust[0] == "label":
                params["wrong_weight"] = float(trust[1])
        levels.setdefault(term.level, []).append(
            {"loss": term.loss, "weight": round(term.weight * scale.get(term.hierarchy, 1.0), 6), **params})
    distill = {"levels": {lv: (ts[0] if len(ts) == 1 else ts) for lv, ts in levels.items()}}
    schedule = (preset.get("distill") or {}).get("schedule")
    if schedule and all(s.get("until_step", 0) < steps for s in schedule if "until_step" in s):
        distill["schedule"] = schedule  # a stage that would outlast the run is dropped with the schedule
    preset_aux = (preset.get("distill") or {}).get("aux")
    if preset_aux and aux:
        distill["aux"] = {**preset_aux, **{k: round(float(preset_aux.get(k, 1.0)) * float(aux), 6)
                                           for k in ("weight_kl", "weight_ce")}}
    if online:
        cfg.pop("teacher", None)
        cfg["online"] = dict(online)
        if kd_after is not None:
            cfg["online"]["kd_after"] = int(kd_after)
    else:
        cfg["teacher"] = teacher
    cfg["distill"] = distill
    return cfg


def config_yaml(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)


def write_config(cfg: dict) -> Path:
    """The config as a YAML file in the jobs folder (named by its content)."""
    text = config_yaml(cfg)
    path = settings.jobs_dir() / "configs" / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(text)
    return path


def submit(cfg: dict, name: str, threads: int) -> Job:
    """Check and queue the run; raises :class:`hkd.jobs.JobError` with the problem."""
    kind = "distill" if cfg.get("teacher") or cfg.get("online") else "train"
    return queue().submit_run(kind, write_config(cfg), name=name, threads=threads)


def finished_checkpoints(jobs_queue: JobQueue | None = None) -> list[tuple[Job, Path]]:
    """Final checkpoints of the succeeded train/distill jobs (of ``jobs_queue``, default :func:`queue`),
    oldest first: the one list of fine-tunes every model picker and the Evaluate page offer."""
    out = []
    try:
        jobs = (jobs_queue or queue()).list()
    except OSError:
        return out
    for job in jobs:
        if job.kind in ("train", "distill") and job.state == "succeeded":
            path = Path(job.outputs.get("checkpoint") or RunFolder(job.run).checkpoint("final"))
            if path.is_file():
                out.append((job, path))
    return out


def job_for_checkpoint(path: str | Path) -> Job | None:
    """The job whose run wrote ``path``, if it was one of the queue's."""
    path = Path(path).resolve()
    for job, ckpt in finished_checkpoints():
        if ckpt.resolve() == path:
            return job
    return None


def loss_series(metrics: list[dict]) -> dict[str, dict[str, list]]:
    """{group: {loss key: [steps, values]}} for the curves: det/*, kd/backbone.*, kd/neck.*, kd/rpn.*,
    kd/roi.*, kd/head.* by hierarchy, aux/* (self-supervised auxiliary heads), teacher/* (the teacher's
    own losses in online distillation) and the total."""
    groups: dict[str, dict[str, list]] = {}
    for record in metrics:
        if "eval" in record or "teacher_eval" in record:
            continue
        for key, value in record.items():
            if not isinstance(value, (int, float)) or not (key.startswith(LOSS_PREFIXES) or key == "loss"):
                continue
            if key == "loss":
                group = "total"
            elif key.startswith("det/"):
                group = "detection"
            elif key.startswith("teacher/"):
                group = "teacher (online)"
            elif key.startswith("aux/"):
                group = "aux heads"
            else:
                level = key.split("/")[1].split(".")[0]
                group = HIERARCHIES.get(level, level)
            series = groups.setdefault(group, {}).setdefault(key, [[], []])
            series[0].append(record["step"])
            series[1].append(value)
    return groups


# the loss keys of the training metrics: detection, KD terms, auxiliary heads, an online teacher's own
LOSS_PREFIXES = ("det/", "kd/", "aux/", "teacher/")


def eval_series(metrics: list[dict]) -> list[tuple[int, float]]:
    """(step, MR⁻² Reasonable) of every periodic and final validation."""
    return [(r["step"], r["eval"]["mr"]["Reasonable"]) for r in metrics
            if "eval" in r and "Reasonable" in r["eval"].get("mr", {})]
