"""One SynthPed image: plan a scene, paint it far to near, annotate from the masks.

Planning puts people, crowds, occluders and hard negatives on the
background's ground plane (a person's height follows the row of their feet),
plus optional close-ups off the plane. Painting sorts everything by depth
(foot row; close-ups last) and alpha-blends each sprite over the canvas after
its shadow, while an *owner map* records which object is on top at every
pixel. A person's ``vis_ratio`` is then exact: pixels they still own over
the pixels of their full mask (alpha >= 0.5), counting the parts that fall
outside the image as hidden.

Annotation rules (also in the package docstring):

- ``bbox`` is the full-body box clipped to the image; ``full_bbox`` keeps the
  unclipped box and ``truncated`` (0/1) says the two differ. ``height`` is the
  height of ``bbox``.
- ``vis_bbox`` is the box of the visible pixels; ``vis_ratio`` as above.
- People less than ``min_visible`` visible are not annotated.
- ``ignore=1`` for people whose ``bbox`` is shorter than ``min_height`` px.
- A dense crowd (see :class:`~hkd.data.synth.config.SynthConfig`) becomes one
  box with ``iscrowd=1, ignore=1`` around its members instead of one box each.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from hkd.data.synth import objects as obj
from hkd.data.synth.config import SynthConfig
from hkd.data.synth.figures import BOTTOMS, TOPS, pick, render_person
from hkd.data.synth.photometric import camera
from hkd.data.synth.raster import Sprite
from hkd.data.synth.scenes import Background, sample_background
from hkd.data.synth.sources import CutoutBank

CLOSE = 1e6  # depth of things in front of everything on the ground
KERBSIDE = ("pole", "street_lamp", "sign_post", "tree", "bollard", "bin")  # stand along kerbs in streets


@dataclass
class Resources:
    photos: tuple
    bank: CutoutBank | None


@dataclass
class Entity:
    kind: str  # "person" or an object kind
    x: float  # image position of the anchor (feet)
    y: float
    height_px: float
    depth: float  # paint order: larger is nearer
    height_m: float = 0.0
    source: str = ""  # people: procedural | real
    child: bool = False
    group: int = 0  # crowd group id (0 = none)
    shadow: bool = True
    lift: float = 0.0  # px the sprite is raised above its anchor (posters hang on walls)
    sprite: Sprite | None = None
    # filled while painting (people only)
    full_pixels: int = 0
    full_box: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 (exclusive), unclipped


@dataclass
class Scene:
    image: np.ndarray  # uint8 RGB
    quality: int
    annotations: list[dict]
    meta: dict = field(default_factory=dict)


def _loguniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(max(high, low * 1.001)))))


def _weighted(rng: np.random.Generator, weights: dict[str, float]) -> str:
    keys = list(weights)
    p = np.array([weights[k] for k in keys], np.float64)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


# --- sprites ----------------------------------------------------------------------------------
def _recolor(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """Re-dye the clothes of a real cutout with palette colours, keeping its shading, skin and hair."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    skin = (r > g) & (g > b) & (r - b > 0.08) & (r > 0.3) & (r - g < 0.35)
    lum = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    rows = np.linspace(0.0, 1.0, rgb.shape[0], dtype=np.float32)[:, None]
    out = rgb.copy()
    for lo, hi, palette in ((0.16, 0.5, TOPS), (0.47, 0.95, BOTTOMS)):
        if rng.random() < 0.25:
            continue
        target = np.array(pick(rng, palette), np.float32)
        part = (rows >= lo) & (rows < hi) & ~skin
        if part.sum() < 4:
            continue
        shade = np.clip(lum / (float(np.median(lum[part])) + 1e-3), 0.3, 1.8)
        dyed = rgb * 0.15 + target * shade[..., None] * 0.85
        out = np.where(part[..., None], dyed, out)
    return out


def _cutout_sprite(rng: np.random.Generator, bank: CutoutBank, height_px: float) -> Sprite:
    # enlarge at most ~2.5x: a big person comes from one of the tall (near) cutouts
    tall = [c for c in bank.cutouts if c.height * 2.5 >= height_px]
    tall = tall or sorted(bank.cutouts, key=lambda c: -c.height)[:20]
    cut = tall[int(rng.integers(len(tall)))]
    rows = np.flatnonzero((cut.alpha >= 0.5).any(axis=1))
    cols = np.flatnonzero((cut.alpha >= 0.5).any(axis=0))
    body_h = rows[-1] - rows[0] + 1
    s = height_px / body_h
    size = (max(1, int(round(cut.alpha.shape[1] * s))), max(1, int(round(cut.alpha.shape[0] * s))))
    inter = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    rgb = cv2.resize(cut.rgb, size, interpolation=inter)
    alpha = cv2.resize(cut.alpha, size, interpolation=inter)
    anchor_x = (cols[0] + cols[-1] + 1) / 2 * s
    if rng.random() < 0.5:
        rgb, alpha = rgb[:, ::-1], alpha[:, ::-1]
        anchor_x = size[0] - anchor_x
    rgb = _recolor(rng, np.ascontiguousarray(rgb)) * float(rng.uniform(0.85, 1.15))
    return Sprite(rgb=np.clip(rgb, 0, 1), alpha=np.ascontiguousarray(alpha), anchor=(anchor_x, (rows[-1] + 1) * s))


def _render(rng: np.random.Generator, entity: Entity, config: SynthConfig, resources: Resources,
            light: tuple[float, float]) -> Sprite:
    if entity.kind == "person":
        if entity.source == "real":
            return _cutout_sprite(rng, resources.bank, entity.height_px)
        return render_person(rng, entity.height_px, walking_fraction=config.walking_fraction, child=entity.child,
                             light=light)
    return obj.render_object(rng, entity.kind, entity.height_m, entity.height_px, light)


# --- planning ---------------------------------------------------------------------------------
def _person(rng: np.random.Generator, config: SynthConfig, resources: Resources, x: float, y: float,
            height_px: float, group: int = 0, depth: float | None = None) -> Entity:
    real = resources.bank is not None and rng.random() < config.real_fraction
    child = not real and rng.random() < config.child_fraction
    if child:
        height_px *= float(rng.uniform(0.55, 0.8))
    return Entity("person", x, y, height_px, y if depth is None else depth, source="real" if real else "procedural",
                  child=child, group=group)


def _ground_person(rng: np.random.Generator, config: SynthConfig, bg: Background, low: float, high: float):
    """(foot row, height) of an adult on the ground plane, height log-uniform in [low, high] cut to
    what the ground plane can show (feet between ``ground_top`` and a quarter-height below the image), or None."""
    k, H = bg.scale, config.height
    h_min = max(low, k * (bg.ground_top - bg.horizon))
    h_max = min(high, k * (H - bg.horizon) / max(1.0 - 0.25 * k, 0.05) if k < 4 else high)
    if h_max < h_min or h_max <= 0:
        return None
    h = _loguniform(rng, max(h_min, 1.0), h_max)
    return bg.foot_row(h), h


def plan(rng: np.random.Generator, config: SynthConfig, bg: Background, resources: Resources) -> list[Entity]:
    W, H = config.width, config.height
    low, high = config.person_height_min, config.person_height_max * H
    ents: list[Entity] = []
    for _ in range(int(rng.integers(config.people[0], config.people[1] + 1))):
        spot = _ground_person(rng, config, bg, low, high)
        if spot:
            ents.append(_person(rng, config, resources, float(rng.uniform(0.02, 0.98)) * W, spot[0], spot[1]))
    if rng.random() < config.crowd_prob:
        spot = _ground_person(rng, config, bg, max(low, 14.0), min(high, 0.4 * H))
        if spot:
            group = 1
            y0, h0 = spot
            m = int(rng.integers(config.crowd_size[0], config.crowd_size[1] + 1))
            spacing = float(rng.uniform(0.12, 0.3)) * h0
            x0 = float(rng.uniform(0.1, 0.9)) * W - spacing * (m - 1) / 2
            for i in range(m):
                y = y0 + float(rng.normal(0, 0.05)) * h0
                x = x0 + i * spacing + float(rng.normal(0, 0.06)) * h0
                ents.append(_person(rng, config, resources, x, y, max(4.0, bg.person_height(y)), group=group))
    people = [e for e in ents if e.kind == "person"]
    if people and rng.random() < config.border_cut_prob:
        target = people[int(rng.integers(len(people)))]
        edge = int(rng.integers(3))
        if edge == 2:  # feet below the bottom edge: nearer, so taller
            target.y = H + float(rng.uniform(0.05, 0.45)) * target.height_px
            target.height_px = max(target.height_px, bg.person_height(target.y))
            target.depth = target.y
        else:
            half = 0.16 * target.height_px
            target.x = (0.0 if edge == 0 else float(W)) + float(rng.uniform(-1.2, 1.2)) * half
    if rng.random() < config.free_scale_prob:
        h = float(rng.uniform(*config.free_scale_height)) * H
        y = float(rng.uniform(0.9, 1.0)) * H + float(rng.uniform(*config.free_scale_below)) * h
        x = float(rng.uniform(-0.05, 1.05)) * W
        ents.append(_person(rng, config, resources, x, y, h, depth=CLOSE + 1))

    # occluders just in front of people, then parked ones anywhere on the ground
    for person in [e for e in ents if e.kind == "person" and e.depth < CLOSE and e.height_px >= 30]:
        if rng.random() >= config.occluder_prob:
            continue
        kind = _weighted(rng, obj.OCCLUDER_WEIGHTS)
        y = person.y + float(rng.uniform(0.01, 0.12)) * person.height_px
        x = person.x + float(rng.uniform(-0.35, 0.35)) * person.height_px
        _add_object(rng, ents, bg, kind, x, y, 3.0 * H)
    for _ in range(int(rng.integers(config.parked_cars[0], config.parked_cars[1] + 1))):
        spot = _ground_person(rng, config, bg, 12.0, 0.7 * H)
        if spot:
            _add_object(rng, ents, bg, _weighted(rng, obj.OCCLUDER_WEIGHTS), float(rng.uniform(0, W)), spot[0], 2.0 * H)
    for _ in range(int(rng.integers(config.hard_negatives[0], config.hard_negatives[1] + 1))):
        kind = _weighted(rng, obj.NEGATIVE_WEIGHTS)
        spot = _ground_person(rng, config, bg, 12.0, 0.6 * H)
        if bg.furniture and kind in KERBSIDE and rng.random() < 0.7:
            x, y = bg.furniture[int(rng.integers(len(bg.furniture)))]
        elif bg.walls and kind in ("door", "column", "mannequin"):
            x, y = bg.walls[int(rng.integers(len(bg.walls)))]
        elif spot:
            x, y = float(rng.uniform(0, W)), spot[0]
        else:
            continue
        # on a guessed ground plane, keep objects smaller than the frame so people stay the subject
        _add_object(rng, ents, bg, kind, x, y, (1.2 if kind == "tree" else 2.0 if bg.calibrated else 0.9) * H)
    if rng.random() < config.face_prob:
        if bg.walls and rng.random() < 0.6:  # an advert face on a facade, 1-2 m tall, hung 0.6-1.2 m up
            x, y = bg.walls[int(rng.integers(len(bg.walls)))]
            metre = bg.person_height(y) / obj.PERSON_M
            h, lift = float(rng.uniform(1.0, 2.0)) * metre, float(rng.uniform(0.6, 1.2)) * metre
            if h >= 10:
                ents.append(Entity("poster", x, y, h, y, shadow=False, lift=lift))
        else:  # a face right in front of the camera, partly outside the frame
            h = float(rng.uniform(0.14, 0.45)) * H
            inward = float(rng.uniform(-0.1, 0.45)) * 0.8 * h  # face centre from the side edge
            x = inward if rng.random() < 0.5 else W - inward
            ents.append(Entity("face", x, float(rng.uniform(h * 1.1, H)), h, CLOSE + 2, shadow=False))
    return ents


def _add_object(rng: np.random.Generator, ents: list[Entity], bg: Background, kind: str, x: float, y: float,
                max_px: float) -> None:
    height_m = obj.object_height_m(rng, kind)
    height_px = bg.person_height(y) * height_m / obj.PERSON_M
    if not 4 <= height_px <= max_px:
        return
    ents.append(Entity(kind, x, y, float(height_px), y, height_m=height_m))


# --- painting ---------------------------------------------------------------------------------
def _paste_box(sprite: Sprite, x: float, y: float) -> tuple[int, int]:
    return int(round(x - sprite.anchor[0])), int(round(y - sprite.anchor[1]))


def _cast_shadow(canvas: np.ndarray, sprite: Sprite, x: float, y: float, shear: tuple[float, float],
                 strength: float) -> None:
    """Darken the ground under a sprite's shadow: the sprite sheared/flattened from its feet."""
    H, W = canvas.shape[:2]
    ax, ay = sprite.anchor
    shx, shy = shear
    # sprite (xs, ys) -> image: X = x + (xs - ax) + shx * (ay - ys), Y = y + shy * (ay - ys)
    m = np.array([[1.0, -shx, x - ax + shx * ay], [0.0, -shy, y + shy * ay]], np.float64)
    h, w = sprite.alpha.shape
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64) @ m.T
    x0, y0 = np.floor(corners.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    m[:, 2] -= (x0, y0)
    shadow = cv2.warpAffine(sprite.alpha, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR)
    sigma = 0.6 + 0.012 * h
    shadow = cv2.GaussianBlur(shadow, (0, 0), sigma)
    canvas[y0:y1, x0:x1] *= (1.0 - strength * shadow)[..., None]


def _contact_shadow(canvas: np.ndarray, sprite: Sprite, x: float, y: float, strength: float) -> None:
    H, W = canvas.shape[:2]
    cols = np.flatnonzero(sprite.alpha[max(0, int(sprite.anchor[1]) - 3):int(sprite.anchor[1]) + 1].max(axis=0) > 0.3) \
        if sprite.alpha.shape[0] > 0 else []
    width = (cols[-1] - cols[0] + 1) if len(cols) else sprite.alpha.shape[1] * 0.5
    rx, ry = max(1.5, width * 0.65), max(1.0, width * 0.16)
    x0, x1 = int(max(0, x - rx * 2)), int(min(W, x + rx * 2 + 1))
    y0, y1 = int(max(0, y - ry * 2)), int(min(H, y + ry * 2 + 1))
    if x1 <= x0 or y1 <= y0:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    d = ((xx - x) / rx) ** 2 + ((yy - y) / ry) ** 2
    canvas[y0:y1, x0:x1] *= (1.0 - strength * np.exp(-d * 1.5))[..., None]


def paint(rng: np.random.Generator, config: SynthConfig, bg: Background, ents: list[Entity],
          resources: Resources, sunny: bool) -> tuple[np.ndarray, np.ndarray]:
    """Render and paint far to near; returns (canvas float32 RGB, owner map of entity index + 1)."""
    H, W = config.height, config.width
    canvas = bg.image.copy()
    owner = np.zeros((H, W), np.int32)
    sun = bg.sun if bg.sun else float(rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 1.0))
    shear = (sun * float(rng.uniform(0.3, 1.1)), float(rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.35)))
    shadow_strength = float(rng.uniform(0.3, 0.55))
    light = (-0.3 * np.sign(sun) if sunny else float(rng.uniform(-0.1, 0.1)), 0.12)
    soften = float(rng.uniform(0.0, 0.7))
    exposure = float(np.clip(np.sqrt(bg.image.mean() / 0.45), 0.8, 1.1))
    order = sorted(range(len(ents)), key=lambda i: (ents[i].depth, i))
    for i in order:
        ent = ents[i]
        sprite = _render(rng, ent, config, resources, light)
        if soften > 0.25:
            sprite = Sprite(cv2.GaussianBlur(sprite.rgb, (0, 0), soften),
                            cv2.GaussianBlur(sprite.alpha, (0, 0), soften), sprite.anchor)
        ent.sprite = sprite
        if ent.shadow:
            _contact_shadow(canvas, sprite, ent.x, ent.y, 0.45 * shadow_strength + 0.1)
            if sunny:
                _cast_shadow(canvas, sprite, ent.x, ent.y, shear, shadow_strength)
        x0, y0 = _paste_box(sprite, ent.x, ent.y - ent.lift)
        h, w = sprite.alpha.shape
        solid = sprite.alpha >= 0.5
        if ent.kind == "person":
            rows, cols = np.flatnonzero(solid.any(axis=1)), np.flatnonzero(solid.any(axis=0))
            ent.full_pixels = int(solid.sum())
            if ent.full_pixels:
                ent.full_box = (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        a = sprite.alpha[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0, None]
        rgb = sprite.rgb[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] * exposure
        region = canvas[cy0:cy1, cx0:cx1]
        region *= 1.0 - a
        region += rgb * a
        owner[cy0:cy1, cx0:cx1][solid[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]] = i + 1
    return canvas, owner


# --- annotation --------------------------------------------------------------------------------
def _box_xywh(x0: int, y0: int, x1: int, y1: int) -> list[int]:
    return [int(x0), int(y0), int(x1 - x0), int(y1 - y0)]


def annotate(config: SynthConfig, ents: list[Entity], owner: np.ndarray, crowd_groups: set[int]) -> list[dict]:
    """Annotations (without ids) from the owner map; see the module docstring for the rules."""
    H, W = owner.shape
    anns: list[dict] = []
    crowd_members: dict[int, list[dict]] = {}
    for i, ent in enumerate(ents):
        if ent.kind != "person" or not ent.full_pixels:
            continue
        fx0, fy0, fx1, fy1 = ent.full_box
        bx0, by0, bx1, by1 = max(fx0, 0), max(fy0, 0), min(fx1, W), min(fy1, H)
        if bx1 - bx0 < 2 or by1 - by0 < 2:
            continue
        mine = owner[by0:by1, bx0:bx1] == i + 1
        visible = int(mine.sum())
        vis_ratio = visible / ent.full_pixels
        if visible == 0 or vis_ratio < config.min_visible:
            continue
        rows, cols = np.flatnonzero(mine.any(axis=1)), np.flatnonzero(mine.any(axis=0))
        vis_box = (bx0 + int(cols[0]), by0 + int(rows[0]), bx0 + int(cols[-1]) + 1, by0 + int(rows[-1]) + 1)
        height = by1 - by0
        ann = {
            "category_id": 1,
            "bbox": _box_xywh(bx0, by0, bx1, by1),
            "area": int((bx1 - bx0) * (by1 - by0)),
            "height": int(height),
            "vis_ratio": round(vis_ratio, 4),
            "vis_bbox": _box_xywh(*vis_box),
            "ignore": int(height < config.min_height),
            "iscrowd": 0,
            "truncated": int((fx0, fy0, fx1, fy1) != (bx0, by0, bx1, by1)),
            "full_bbox": _box_xywh(fx0, fy0, fx1, fy1),
            "source": ent.source,
            "crowd_group": ent.group,
            "_visible": visible,
            "_full": ent.full_pixels,
        }
        if ent.group in crowd_groups:
            crowd_members.setdefault(ent.group, []).append(ann)
        else:
            anns.append(ann)
    for group, members in sorted(crowd_members.items()):
        if len(members) < config.crowd_ignore_min_people:  # too few left visible to be a crowd
            anns.extend(members)
            continue
        x0 = min(a["bbox"][0] for a in members)
        y0 = min(a["bbox"][1] for a in members)
        x1 = max(a["bbox"][0] + a["bbox"][2] for a in members)
        y1 = max(a["bbox"][1] + a["bbox"][3] for a in members)
        vx0 = min(a["vis_bbox"][0] for a in members)
        vy0 = min(a["vis_bbox"][1] for a in members)
        vx1 = max(a["vis_bbox"][0] + a["vis_bbox"][2] for a in members)
        vy1 = max(a["vis_bbox"][1] + a["vis_bbox"][3] for a in members)
        fx0 = min(a["full_bbox"][0] for a in members)
        fy0 = min(a["full_bbox"][1] for a in members)
        fx1 = max(a["full_bbox"][0] + a["full_bbox"][2] for a in members)
        fy1 = max(a["full_bbox"][1] + a["full_bbox"][3] for a in members)
        visible, full = sum(a["_visible"] for a in members), sum(a["_full"] for a in members)
        anns.append({
            "category_id": 1, "bbox": _box_xywh(x0, y0, x1, y1), "area": int((x1 - x0) * (y1 - y0)),
            "height": int(y1 - y0), "vis_ratio": round(visible / full, 4), "vis_bbox": _box_xywh(vx0, vy0, vx1, vy1),
            "ignore": 1, "iscrowd": 1, "truncated": int((fx0, fy0, fx1, fy1) != (x0, y0, x1, y1)),
            "full_bbox": _box_xywh(fx0, fy0, fx1, fy1), "source": "crowd", "crowd_group": group,
            "num_people": len(members), "_visible": visible, "_full": full,
        })
    for ann in anns:
        del ann["_visible"], ann["_full"]
    return anns


def _crowd_groups_to_ignore(rng: np.random.Generator, config: SynthConfig, ents: list[Entity]) -> set[int]:
    groups: dict[int, list[float]] = {}
    for ent in ents:
        if ent.kind == "person" and ent.group:
            groups.setdefault(ent.group, []).append(ent.height_px)
    chosen = set()
    for group, heights in sorted(groups.items()):
        roll = rng.random()  # drawn for every group so the decision never shifts the random stream
        dense = len(heights) >= config.crowd_ignore_min_people
        small = float(np.median(heights)) < config.crowd_ignore_max_height
        if dense and small and roll < config.crowd_ignore_prob:
            chosen.add(group)
    return chosen


def render_scene(rng: np.random.Generator, config: SynthConfig, resources: Resources) -> Scene:
    """Everything about one image, drawn from ``rng``."""
    sunny = rng.random() < config.cast_shadow_prob
    bg = sample_background(rng, config.background_mix, config.width, config.height, resources.photos,
                           resources.bank, sunny)
    ents = plan(rng, config, bg, resources)
    crowd_groups = _crowd_groups_to_ignore(rng, config, ents)
    canvas, owner = paint(rng, config, bg, ents, resources, sunny)
    anns = annotate(config, ents, owner, crowd_groups)
    image, quality = camera(rng, canvas, config)
    shown = np.unique(owner)
    negatives: dict[str, int] = {}
    occluders: dict[str, int] = {}
    for i in shown[shown > 0] - 1:
        kind = ents[i].kind
        if kind == "person":
            continue
        role = obj.OBJECTS[kind][1]
        table = negatives if role == "negative" else occluders
        table[kind] = table.get(kind, 0) + 1
    meta = {"background": bg.kind if bg.kind != "photo" else f"photo:{bg.name}",
            "hard_negatives": dict(sorted(negatives.items())), "occluders": dict(sorted(occluders.items()))}
    return Scene(image=image, quality=quality, annotations=anns, meta=meta)
