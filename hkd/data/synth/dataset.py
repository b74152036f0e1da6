"""Write a SynthPed dataset to disk, summarise it, and draw a contact sheet.

Layout: ``DIR/images/000000.jpg ...`` and ``DIR/annotations.json`` whose
``file_name`` entries are relative to ``DIR/images`` (as in CityPersons).

Image ``i`` depends only on ``(seed, i)`` and the config: its random stream
is ``SeedSequence(seed, spawn_key=(i,))``. So the same seed gives the same
bytes whatever the number of worker processes, and the first images of a
large run equal a smaller run with the same seed.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np

from hkd.data.synth import sources
from hkd.data.synth.compose import Resources, Scene, render_scene
from hkd.data.synth.config import SynthConfig

CATEGORIES = [{"id": 1, "name": "pedestrian"}]
HEIGHT_BINS = (("<20", 0, 20), ("20-50", 20, 50), ("50-75", 50, 75), ("75-150", 75, 150), ("150+", 150, float("inf")))
VIS_BINS = (("<0.2", 0.0, 0.2), ("0.2-0.65", 0.2, 0.65), ("0.65-1", 0.65, 1.01))

_RESOURCES: dict[bool, Resources] = {}


def rng_for(seed: int, index: int) -> np.random.Generator:
    """The random stream of image ``index`` of a dataset with ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=(int(index),)))


def needs_vtest(config: SynthConfig) -> bool:
    """Whether a config uses vtest.avi (real cutouts or the background plate)."""
    return config.real_fraction > 0 or config.background_mix[1] > 0


def load_resources(config: SynthConfig | None = None) -> Resources:
    """Photos and (when the config uses it) the vtest cutout bank, loaded once per process."""
    with_bank = needs_vtest(config or SynthConfig())
    if with_bank not in _RESOURCES:
        _RESOURCES[with_bank] = Resources(photos=sources.load_photos(),
                                          bank=sources.load_bank() if with_bank else None)
    return _RESOURCES[with_bank]


def render_image(seed: int, index: int, config: SynthConfig | None = None) -> Scene:
    """Image ``index`` of the dataset ``seed``: uint8 RGB image, JPEG quality, annotations (no ids), meta."""
    config = config or SynthConfig()
    return render_scene(rng_for(seed, index), config, load_resources(config))


def encode_jpeg(image_rgb: np.ndarray, quality: int) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return data.tobytes()


def _work(job: tuple[int, int, dict, str]) -> tuple[dict, list[dict]]:
    index, seed, config_dict, out_dir = job
    config = SynthConfig.from_dict(config_dict)
    scene = render_image(seed, index, config)
    name = f"{index:06d}.jpg"
    (Path(out_dir) / "images" / name).write_bytes(encode_jpeg(scene.image, scene.quality))
    record = {"id": index + 1, "file_name": name, "width": config.width, "height": config.height,
              "jpeg_quality": scene.quality, **scene.meta}
    return record, scene.annotations


def _init_worker(config_dict: dict) -> None:
    cv2.setNumThreads(1)
    load_resources(SynthConfig.from_dict(config_dict))


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Create ``out_dir``; an existing non-empty one needs ``overwrite`` (then only our outputs are removed)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} is not empty; pass overwrite=True (--overwrite) to replace its dataset")
        shutil.rmtree(out_dir / "images", ignore_errors=True)
        (out_dir / "annotations.json").unlink(missing_ok=True)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)


# one dataset's images at most: what a disk holds in JPEGs, and a bound on a mistyped --num
MAX_IMAGES = 1_000_000


def generate(out_dir: Path | str, num: int, seed: int = 0, config: SynthConfig | None = None, *,
             workers: int | None = None, overwrite: bool = False, progress: bool = True,
             on_progress=None) -> dict[str, Any]:
    """Write ``num`` images and ``annotations.json`` into ``out_dir``; returns the COCO dict.

    ``on_progress(done, num)`` is called after each image (background jobs report through it).
    """
    from tqdm import tqdm

    if not 0 < num <= MAX_IMAGES:
        raise ValueError(f"num must be a number of images from 1 to {MAX_IMAGES:,}, got {str(num)[:40]}")
    config = config or SynthConfig()
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, overwrite)
    workers = default_workers() if workers is None else max(1, int(workers))
    workers = min(workers, num)
    if needs_vtest(config):
        sources.ensure_bank()  # build the cutout cache once, before any worker wants it
    settings = config.to_dict()
    jobs = ((i, seed, settings, str(out_dir)) for i in range(num))  # a stream: --num never builds a list of jobs
    images, annotations = [], []
    bar = tqdm(total=num, desc="synth", unit="img", disable=not progress)
    pool = None
    try:
        if workers == 1:
            results: Iterable = map(_work, jobs)
        else:
            pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker,
                                                             initargs=(config.to_dict(),))
            results = pool.imap(_work, jobs, chunksize=2)
        for record, anns in results:
            images.append(record)
            for ann in anns:
                annotations.append({"id": len(annotations) + 1, "image_id": record["id"], **ann})
            bar.update(1)
            if on_progress is not None:
                on_progress(len(images), num)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    resources = load_resources(config)
    coco = {
        "info": {
            "description": "SynthPed: generated pedestrian benchmark (hkd synth)",
            "seed": int(seed),
            "num_images": num,
            "config": config.to_dict(),
            "sources": {
                "vtest": str(sources.VTEST_PATH) if resources.bank else None,
                "vtest_last_frame": sources.LAST_TRAIN_FRAME,
                "real_cutouts": len(resources.bank.cutouts) if resources.bank else 0,
                "photos": [name for name, _, _ in resources.photos],
            },
            "annotation_rules": {
                "bbox": "full-body box clipped to the image; full_bbox is unclipped; truncated=1 when they differ",
                "height": "height of bbox in px",
                "vis_ratio": "visible mask px / full mask px (occluders, other people and the border hide)",
                "ignore": f"1 if height < {config.min_height:g} px, and for crowd boxes",
                "iscrowd": f"one box for a crowd of >= {config.crowd_ignore_min_people} people with median height "
                           f"< {config.crowd_ignore_max_height:g} px (chosen with p={config.crowd_ignore_prob:g})",
                "not annotated": f"people with vis_ratio < {config.min_visible:g}",
            },
        },
        "images": images,
        "categories": CATEGORIES,
        "annotations": annotations,
    }
    coco["info"]["stats"] = compute_stats(coco)
    write_annotations(out_dir / "annotations.json", coco)
    return coco


def write_annotations(path: Path, coco: dict[str, Any]) -> None:
    """COCO JSON with one image / annotation per line: small, diffable, byte-stable."""
    parts = ['{"info": ' + json.dumps(coco["info"], sort_keys=False) + ",\n"]
    for key in ("images", "categories", "annotations"):
        rows = ",\n".join(json.dumps(row) for row in coco[key])
        parts.append(f'"{key}": [\n{rows}\n]' + (",\n" if key != "annotations" else "\n"))
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text("".join(parts) + "}\n")
    os.replace(tmp, path)


def load(dataset_dir: Path | str) -> dict[str, Any]:
    path = Path(dataset_dir) / "annotations.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {dataset_dir} a SynthPed/COCO dataset folder?")
    return json.loads(path.read_text())


# --- statistics ------------------------------------------------------------------------------
def compute_stats(coco: dict[str, Any]) -> dict[str, Any]:
    """Counts that show how hard a dataset is (people = annotations with iscrowd=0)."""
    people = [a for a in coco["annotations"] if not a.get("iscrowd", 0)]
    crowds = [a for a in coco["annotations"] if a.get("iscrowd", 0)]

    def count(pred) -> int:
        return sum(1 for a in people if pred(a))

    h = lambda a: a["height"]  # noqa: E731
    v = lambda a: a.get("vis_ratio", 1.0)  # noqa: E731
    negatives: Counter = Counter()
    occluders: Counter = Counter()
    backgrounds: Counter = Counter()
    for image in coco["images"]:
        negatives.update(image.get("hard_negatives", {}))
        occluders.update(image.get("occluders", {}))
        backgrounds[str(image.get("background", "unknown")).split(":")[0]] += 1
    return {
        "images": len(coco["images"]),
        "people": len(people),
        "height_bins": {name: count(lambda a, lo=lo, hi=hi: lo <= h(a) < hi) for name, lo, hi in HEIGHT_BINS},
        "vis_bins": {name: count(lambda a, lo=lo, hi=hi: lo <= v(a) < hi) for name, lo, hi in VIS_BINS},
        "border_cut": count(lambda a: a.get("truncated", 0)),
        "in_crowd": count(lambda a: a.get("crowd_group", 0)) + sum(a.get("num_people", 0) for a in crowds),
        "crowd_regions": len(crowds),
        "ignore": count(lambda a: a.get("ignore", 0)) + sum(1 for a in crowds if a.get("ignore", 0)),
        "sources": dict(sorted(Counter(a.get("source", "unknown") for a in people).items())),
        "backgrounds": dict(sorted(backgrounds.items())),
        "hard_negatives": dict(sorted(negatives.items())),
        "occluders": dict(sorted(occluders.items())),
        "setups": {
            "Reasonable": count(lambda a: h(a) >= 50 and v(a) >= 0.65 and not a.get("ignore", 0)),
            "Small": count(lambda a: 50 <= h(a) <= 75 and v(a) >= 0.65 and not a.get("ignore", 0)),
            "Heavy": count(lambda a: h(a) >= 50 and 0.2 <= v(a) <= 0.65 and not a.get("ignore", 0)),
            "All": count(lambda a: h(a) >= 20 and v(a) >= 0.2 and not a.get("ignore", 0)),
        },
    }


def format_stats(stats: dict[str, Any]) -> str:
    lines = [f"images        {stats['images']}", f"people        {stats['people']}"]
    for key, title in (("height_bins", "height (px)"), ("vis_bins", "vis_ratio"), ("setups", "CityPersons setups"),
                       ("sources", "people from"), ("backgrounds", "backgrounds"),
                       ("hard_negatives", "hard negatives"), ("occluders", "occluders")):
        lines.append(f"{title}:")
        lines += [f"  {name:<13} {value}" for name, value in stats[key].items()]
    for key in ("border_cut", "in_crowd", "crowd_regions", "ignore"):
        lines.append(f"{key:<13} {stats[key]}")
    return "\n".join(lines)


# --- contact sheet -----------------------------------------------------------------------------
GREEN, YELLOW, GREY = (40, 220, 40), (255, 210, 0), (150, 150, 150)


def box_color(ann: dict[str, Any]) -> tuple[int, int, int]:
    """RGB colour of a ground-truth box: grey ignore/crowd, yellow heavily occluded (vis < 0.65), green otherwise."""
    if ann.get("ignore", 0) or ann.get("iscrowd", 0):
        return GREY
    return YELLOW if ann.get("vis_ratio", 1.0) < 0.65 else GREEN


def contact_sheet(dataset_dir: Path | str, out: Path | str, n: int = 12, cols: int = 4,
                  tile_width: int = 400) -> Path:
    """A grid of the first ``n`` images with their ground-truth boxes, written as JPEG to ``out``."""
    dataset_dir, out = Path(dataset_dir), Path(out)
    coco = load(dataset_dir)
    images = sorted(coco["images"], key=lambda im: im["id"])[:n]
    if not images:
        raise ValueError(f"{dataset_dir} has no images")
    by_image: dict[int, list] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    tiles = []
    for record in images:
        path = dataset_dir / "images" / record["file_name"]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(path)
        s = tile_width / image.shape[1]
        image = cv2.resize(image, (tile_width, int(round(image.shape[0] * s))), interpolation=cv2.INTER_AREA)
        anns = sorted(by_image.get(record["id"], []), key=lambda a: box_color(a) == GREEN)
        for ann in anns:
            x, y, w, h = (v * s for v in ann["bbox"])
            r, g, b = box_color(ann)
            cv2.rectangle(image, (int(round(x)), int(round(y))), (int(round(x + w)) - 1, int(round(y + h)) - 1),
                          (b, g, r), 1, cv2.LINE_AA)
        cv2.putText(image, record["file_name"], (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                    cv2.LINE_AA)
        tiles.append(image)
    rows = -(-len(tiles) // cols)
    th, tw = tiles[0].shape[:2]
    sheet = np.full((rows * th + (rows + 1) * 4, cols * tw + (cols + 1) * 4, 3), 24, np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        sheet[4 + r * (th + 4):4 + r * (th + 4) + th, 4 + c * (tw + 4):4 + c * (tw + 4) + tw] = tile
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), sheet, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return out
