"""Datasets HKD Studio can train on and evaluate: the SynthPed splits (generated on demand as a
background job), the shipped samples, and the datasets found under ``HKD_DATA_ROOTS``.

A dataset is named by a key (``synthped:val``, ``samples:synthped``, ``path:/abs/path``) so that
caches and jobs can refer to it; :func:`choices` lists them with what ``hkd.data.open_dataset``
needs. Nothing here imports streamlit state: the pages pass keys in and get plain values out.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hkd.data.synth.splits import SPLITS
from hkd.jobs import Job

from app.services import settings
from app.services.jobs import queue

# name → (images, seed): hkd.data.synth.splits, the one place the splits are written
SYNTHPED_SPLITS = {name: (split.images, split.seed) for name, split in SPLITS.items()}
SYNTHPED_LABELS = {
    "train": "SynthPed train ({num} images, seed {seed})",
    "train_small": "SynthPed train, first {num} images (seed {seed}; the quick demo's)",
    "val": "SynthPed val ({num} images, seed {seed})",
    "tune": "SynthPed tune ({num} images, seed {seed}; for choosing configs)",
    "test": "SynthPed test ({num} images, seed {seed}; reported once per shipped model)",
}
# how deep under each HKD_DATA_ROOTS folder datasets are looked for
SCAN_DEPTH = 3


@dataclass(frozen=True)
class DatasetChoice:
    key: str
    label: str
    path: str  # what hkd.data.open_dataset takes: a folder with annotations.json, a .json or .odgt file
    images_dir: str
    exists: bool
    synth: dict | None = None  # {"num", "seed"} for a SynthPed split that can be generated

    @property
    def annotated(self) -> bool:
        from hkd.data.datasets import is_annotated

        return is_annotated(self.path)


def _synthped(name: str) -> DatasetChoice:
    num, seed = SYNTHPED_SPLITS[name]
    num = settings.synthped_sizes().get(name, num)
    folder = settings.synthped_dir() / name
    ready = (folder / "annotations.json").is_file()
    return DatasetChoice(f"synthped:{name}", SYNTHPED_LABELS[name].format(num=num, seed=seed), str(folder),
                         str(folder / "images"), ready, {"num": num, "seed": seed})


def _official(here: Path) -> list[DatasetChoice]:
    """The datasets of ``here`` as they are distributed: one per COCO split
    (``annotations/instances_<split>.json``), per CityPersons split (``anno_<split>.mat``), and
    Caltech's test split. Their images folder is found when one is evaluated (``images_dir`` "":
    :func:`hkd.evaluation.images_folder`; Caltech's frames are written once from the videos)."""
    from hkd.data.caltech import is_caltech_root
    from hkd.data.citypersons import citypersons_splits
    from hkd.data.coco import coco_splits

    out = [DatasetChoice(f"path:{file}", f"{here.name} {split} (COCO, {file})", str(file), "", True)
           for split, file in coco_splits(here).items()]
    out += [DatasetChoice(f"path:{file}", f"{here.name} {split} (CityPersons, {file})", str(file), "", True)
            for split, file in citypersons_splits(here).items()]
    if is_caltech_root(here):
        out.append(DatasetChoice(f"path:{here}", f"{here.name} test, every 30th frame (Caltech, {here})", str(here),
                                 "", True))
    return out


def _found_under(root: Path) -> list[DatasetChoice]:
    """Annotated datasets under ``root``: folders with annotations.json + images/, COCO .json files
    with an images/ folder beside them, CrowdHuman .odgt files, and COCO, CityPersons and Caltech
    as they are distributed (:func:`_official`)."""
    found: list[DatasetChoice] = []
    if not root.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if len(here.relative_to(root).parts) > SCAN_DEPTH:
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in ("images", "Images"))
        if "annotations.json" in filenames and (here / "images").is_dir():
            found.append(DatasetChoice(f"path:{here}", f"{here.name} ({here})", str(here), str(here / "images"), True))
            dirnames[:] = []
            continue
        official = _official(here)
        if official:
            found += official
            dirnames[:] = []  # its image tree (leftImg8bit/, val2017/, set06/ …) holds no other dataset
            continue
        for name in sorted(filenames):
            file = here / name
            if name.endswith(".odgt"):
                images = here / "Images" if (here / "Images").is_dir() else here / "images"
                found.append(DatasetChoice(f"path:{file}", f"{name} (CrowdHuman, {here})", str(file), str(images),
                                           images.is_dir()))
            elif name.endswith(".json") and name != "annotations.json" and (here / "images").is_dir():
                found.append(DatasetChoice(f"path:{file}", f"{name} (COCO/CityPersons, {here})", str(file),
                                           str(here / "images"), True))
    return found


def choices() -> list[DatasetChoice]:
    """Every dataset the app offers: SynthPed splits (ready or not), the shipped samples, HKD_DATA_ROOTS'."""
    out = [_synthped(name) for name in ("val", "train_small", "train", "tune")]
    samples = settings.samples_dir() / "synthped"
    if (samples / "annotations.json").is_file():
        out.append(DatasetChoice("samples:synthped", f"shipped SynthPed samples ({samples})", str(samples),
                                 str(samples / "images"), True))
    seen = {c.path for c in out}
    for part in (os.environ.get("HKD_DATA_ROOTS") or "").split(os.pathsep):
        if part.strip():
            for choice in _found_under(Path(part.strip()).expanduser().resolve()):
                if choice.path not in seen:
                    seen.add(choice.path)
                    out.append(choice)
    return out


def get(key: str) -> DatasetChoice:
    for choice in choices():
        if choice.key == key:
            return choice
    raise KeyError(f"no dataset {key!r}; known: {', '.join(c.key for c in choices())}")


def generation_job(choice: DatasetChoice) -> Job | None:
    """The newest job generating ``choice`` (running, queued or finished), if any."""
    jobs = [j for j in queue().list(advance=False) if j.kind == "synth" and j.outputs.get("dataset") == choice.path]
    return jobs[-1] if jobs else None


def missing(keys: list[str | None]) -> list[DatasetChoice]:
    """The datasets of ``keys`` (None skipped) that are not on disk yet, read afresh."""
    by_key = {c.key: c for c in choices()}
    return [by_key[k] for k in dict.fromkeys(keys) if k in by_key and not by_key[k].exists]


def generation_text(choice: DatasetChoice, job: Job) -> str:
    """The progress line of an active generation job."""
    if job.state == "queued":
        return f"{choice.label}: queued, starts when the job before it ends"
    total = job.total or choice.synth["num"]
    return f"Generating {choice.label}: {job.step} / {total} images"


def generate(choice: DatasetChoice) -> Job:
    """Start generating a SynthPed split in the background (or return the job already doing it)."""
    if choice.synth is None:
        raise ValueError(f"{choice.label} is not a SynthPed split; only those can be generated")
    current = generation_job(choice)
    if current is not None and current.active:
        return current
    folder = Path(choice.path)
    if folder.is_dir() and not (folder / "annotations.json").is_file():
        # an interrupted generation: nothing of it is usable, since annotations.json is written last
        import shutil

        shutil.rmtree(folder)
    return queue().submit_synth(out=folder, num=choice.synth["num"], seed=choice.synth["seed"],
                                name=f"generate {choice.key}")


def coco_gt(choice: DatasetChoice, limit: int | None = None) -> tuple[dict, Path]:
    """The ground truth of the first ``limit`` images (all if None) as a COCO dict with height,
    vis_ratio and ignore, and the cached JSON file holding it (for ``hkd predict --gt``):
    :func:`hkd.evaluation.dataset_gt`, the one ``hkd compare --data`` uses."""
    from hkd.evaluation import dataset_gt

    return dataset_gt(choice.path, limit, settings.cache_dir())
