"""Backgrounds with a ground plane: real photos, the vtest.avi plate, procedural streets.

Every background comes with a ground-plane calibration: a person standing
with feet at image row ``y`` is ``scale * (y - horizon)`` px tall (a pinhole
camera over flat ground, calibrated to a 1.7 m person). For the procedural
street the calibration is exact; for the vtest plate it is fitted to the
walkers of frames 0-450; for the three street photos it was measured by
hand; for the other photos (walls, aerial views, indoor clutter) it is a
random guess -- scenes unlike any street, for variety.

Procedural streets are ray-cast per pixel: every pixel finds the nearest of
the ground plane (road, kerbs, pavement), the two side facades and the
facade closing the street, and evaluates that surface's texture at the
world point it sees, fading fine detail where a pixel covers more than a
texture period (so far windows and tiles do not alias).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from hkd.data.synth.figures import jitter_color
from hkd.data.synth.sources import CutoutBank

PERSON_M = 1.7
PLATE_GROUND_TOP = 110.0  # plate rows above this are buildings, not walkable ground


@dataclass
class Background:
    """``image`` is RGB float32 (H, W, 3) in [0, 1]."""

    image: np.ndarray
    horizon: float
    scale: float  # person px per px below the horizon
    ground_top: float  # smallest foot row for ground-plane objects
    kind: str  # photo | plate | street
    name: str
    calibrated: bool = True  # False: a guessed ground plane (walls, aerial and indoor photos)
    furniture: list[tuple[float, float]] = field(default_factory=list)  # (x, y) kerb spots for poles, lamps
    walls: list[tuple[float, float]] = field(default_factory=list)  # (x, y) spots at the foot of facades
    sun: float = 0.0  # -1 .. 1: cast shadows fall towards +x (> 0) or -x (< 0); 0 = overcast

    def person_height(self, foot_y: float) -> float:
        return self.scale * (foot_y - self.horizon)

    def foot_row(self, person_height: float) -> float:
        return self.horizon + person_height / self.scale


def _fit_crop(rng: np.random.Generator, src_w: int, src_h: int, width: int, height: int,
              zoom: tuple[float, float], low_bias: float = 0.0) -> tuple[float, float, float, float]:
    """A random crop (x0, y0, w, h) of the source with the target aspect ratio."""
    aspect = width / height
    cw_max = min(src_w, src_h * aspect)
    cw = cw_max * rng.uniform(*zoom)
    ch = cw / aspect
    x0 = rng.uniform(0, src_w - cw)
    y0 = (src_h - ch) * (rng.uniform(low_bias, 1.0))
    return x0, y0, cw, ch


def _crop_resize(image: np.ndarray, crop: tuple[float, float, float, float], width: int, height: int) -> np.ndarray:
    x0, y0, cw, ch = crop
    sx, sy = width / cw, height / ch
    if sx < 1:  # shrinking: warpAffine has no area filter, so cut then resize
        part = image[int(y0):int(np.ceil(y0 + ch)), int(x0):int(np.ceil(x0 + cw))]
        return cv2.resize(part, (width, height), interpolation=cv2.INTER_AREA)
    matrix = np.array([[sx, 0, -x0 * sx], [0, sy, -y0 * sy]], np.float64)
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _jitter(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image
    gray = image.mean(axis=2, keepdims=True)
    image = gray + (image - gray) * float(rng.uniform(0.65, 1.2))  # saturation
    return np.clip(image * float(rng.uniform(0.85, 1.12)), 0, 1)


def photo_background(rng: np.random.Generator, photos, width: int, height: int) -> Background:
    """A crop of an example photo; street photos keep their measured ground plane, others get a random one."""
    weights = np.array([4.0 if ground else 0.6 for _, _, ground in photos])
    name, image, ground = photos[int(rng.choice(len(photos), p=weights / weights.sum()))]
    ph = image.shape[0]
    crop = _fit_crop(rng, image.shape[1], ph, width, height, (0.55, 1.0) if ground else (0.5, 1.0),
                     low_bias=0.6 if ground else 0.0)
    out = _crop_resize(image, crop, width, height)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    s = height / crop[3]
    if ground:
        horizon = (ground[0] * ph - crop[1]) * s
        scale = ground[1] * float(rng.uniform(0.9, 1.1))
        ground_top = max(horizon + 2, (ground[2] * ph - crop[1]) * s)
    else:
        horizon = height * float(rng.uniform(0.22, 0.6))
        scale = height * float(rng.uniform(0.3, 0.85)) / (height - horizon)
        ground_top = horizon + 2
    return Background(image=_jitter(rng, np.ascontiguousarray(out)), horizon=horizon, scale=scale,
                      ground_top=ground_top, kind="photo", name=name, calibrated=ground is not None)


def plate_background(rng: np.random.Generator, bank: CutoutBank, width: int, height: int) -> Background:
    plate = bank.plate
    x0, y0, cw, ch = _fit_crop(rng, plate.shape[1], plate.shape[0], width, height, (0.55, 1.0), low_bias=0.3)
    out = _crop_resize(plate, (x0, y0, cw, ch), width, height)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    s = height / ch
    horizon, scale = bank.ground
    return Background(image=_jitter(rng, np.ascontiguousarray(out)), horizon=(horizon - y0) * s, scale=scale,
                      ground_top=max(0.0, (PLATE_GROUND_TOP - y0) * s), kind="plate", name="vtest_plate")


# --- procedural streets -------------------------------------------------------------------------
FACADES = ((0.56, 0.30, 0.22), (0.82, 0.75, 0.60), (0.88, 0.88, 0.85), (0.60, 0.60, 0.58), (0.85, 0.74, 0.46),
           (0.30, 0.36, 0.42), (0.78, 0.58, 0.52), (0.45, 0.42, 0.40), (0.70, 0.66, 0.60))
PAVING = ((0.62, 0.60, 0.57), (0.55, 0.52, 0.50), (0.70, 0.66, 0.60), (0.48, 0.46, 0.45))


def _band(distance: np.ndarray, half_width: float, footprint: np.ndarray) -> np.ndarray:
    """Coverage in [0, 1] of a stripe |distance| < half_width, anti-aliased over a pixel footprint."""
    return np.clip((half_width - np.abs(distance)) / np.maximum(footprint, 1e-6) + 0.5, 0.0, 1.0)


def _grid(coord: np.ndarray, period: float, half_width: float, footprint: np.ndarray) -> np.ndarray:
    """Coverage of thin periodic lines, fading to their mean where the footprint exceeds the period."""
    dist = np.abs((coord + period / 2) % period - period / 2)
    cover = _band(dist, half_width, footprint)
    fade = np.clip(footprint / (period * 0.5), 0.0, 1.0)
    return cover * (1 - fade) + (2 * half_width / period) * fade


def _segments(rng: np.random.Generator, start: float, stop: float, length: tuple[float, float]) -> list[dict]:
    segs, pos = [], start
    while pos < stop:
        size = float(rng.uniform(*length))
        color = np.array(jitter_color(rng, FACADES[int(rng.integers(len(FACADES)))], 0.05), np.float32)
        segs.append(dict(start=pos, stop=pos + size, height=float(rng.uniform(6, 26)), color=color,
                         floor=float(rng.uniform(2.9, 3.8)), win_w=float(rng.uniform(0.9, 1.7)),
                         win_h=float(rng.uniform(1.2, 2.0)),
                         bay=float(rng.uniform(2.4, 4.2)), brick=float(rng.random() < 0.35),
                         shop=float(rng.random() < 0.6),
                         glass=np.array(jitter_color(rng, (0.16, 0.2, 0.26), 0.2), np.float32),
                         frame=np.array((0.9, 0.9, 0.88) if rng.random() < 0.5 else (0.15, 0.15, 0.15), np.float32)))
        pos += size
    return segs


def _facade_color(segs: list[dict], along: np.ndarray, up: np.ndarray, fp_along: np.ndarray,
                  fp_up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Texture (n, 3) of a facade at (along the wall, height) in metres, and where a pixel is above the roof."""
    starts = np.array([s["start"] for s in segs], np.float32)
    index = np.clip(np.searchsorted(starts, along, side="right") - 1, 0, len(segs) - 1)

    def param(key: str) -> np.ndarray:
        return np.array([s[key] for s in segs], np.float32)[index]

    start, floor, bay = param("start"), param("floor"), param("bay")
    win_w, win_h = param("win_w"), param("win_h")
    color = np.array([s["color"] for s in segs], np.float32)[index]
    glass = np.array([s["glass"] for s in segs], np.float32)[index]
    frame = np.array([s["frame"] for s in segs], np.float32)[index]
    roof = up > param("height")
    brick = param("brick") > 0
    if brick.any():
        course = np.floor(up / 0.075) % 2
        mortar = _grid(up, 0.075, 0.007, fp_up) * 0.5 + _grid(along + 0.12 * course, 0.25, 0.007, fp_along) * 0.5
        color *= (1 - 0.35 * mortar * brick)[:, None]
    # windows: one row per floor above the ground floor, one per bay along the wall
    upper = up > floor
    floor_pos = up % floor - (0.9 + win_h / 2)
    bay_pos = (along - start) % bay - bay / 2
    window = _band(floor_pos, win_h / 2, fp_up) * _band(bay_pos, win_w / 2, fp_along) * upper
    frame_cov = _band(floor_pos, win_h / 2 + 0.1, fp_up) * _band(bay_pos, win_w / 2 + 0.1, fp_along) * upper
    pane = glass * (1.0 + 0.6 * np.clip((up % floor) / floor, 0, 1))[:, None]
    textured = color * (1 - frame_cov)[:, None] + frame * (frame_cov - window)[:, None] + pane * window[:, None]
    # far away a row of windows is a blur of glass and wall: fade the pattern into its mean
    fade = np.clip(np.maximum(fp_along / bay, fp_up / floor) * 2, 0, 1)[:, None]
    share = (win_w * win_h / (bay * floor))[:, None]
    mean = color * (1 - share) + glass * 1.3 * share
    color = textured * (1 - fade) + mean * fade
    shop = _band(up - 1.5, 1.1, fp_up) * _band((along - start) % 6.0 - 3.0, 2.2, fp_along) * param("shop")
    color = color * (1 - shop)[:, None] + glass * 1.4 * shop[:, None]
    grime = np.clip(1.0 - up / 4.0, 0, 1) * 0.15  # darker near the pavement
    return color * (1 - grime)[:, None], roof


STREET_RENDER_SCALE = 0.6  # streets are ray-cast at this scale and upsampled: 1/3 of the cost, a slightly soft look


def street_background(rng: np.random.Generator, width: int, height: int, sunny: bool) -> Background:
    out_w, out_h = width, height
    width, height = int(round(width * STREET_RENDER_SCALE)), int(round(height * STREET_RENDER_SCALE))
    focal = width * float(rng.uniform(0.75, 1.4))
    cam_h = float(rng.uniform(1.4, 6.5))
    horizon = height * float(rng.uniform(0.28, 0.55))
    vx = width * float(rng.uniform(0.25, 0.75))
    road_x = float(rng.uniform(-5.0, 5.0))
    road_w = float(rng.uniform(6.0, 14.0))
    plaza = rng.random() < 0.3
    walk = float(rng.uniform(3.0, 8.0))
    walls = {"left": road_x - road_w / 2 - walk if rng.random() < 0.8 else None,
             "right": road_x + road_w / 2 + walk if rng.random() < 0.8 else None}
    street_end = float(rng.uniform(50.0, 160.0))

    xs = np.arange(width, dtype=np.float32) + 0.5
    ys = np.arange(height, dtype=np.float32) + 0.5
    dx = np.broadcast_to(xs - vx, (height, width))
    dy = np.broadcast_to((ys - horizon)[:, None], (height, width))
    far = np.float32(1e9)
    with np.errstate(divide="ignore"):
        depth = np.where(dy > 0.5, focal * cam_h / dy, far).astype(np.float32)
        depth[depth > street_end] = far
        surface = np.zeros((height, width), np.uint8)  # 0 ground, 1 left, 2 right, 3 street end
        for code, key in ((1, "left"), (2, "right")):
            wall = walls[key]
            if wall is None:
                continue
            d = np.where(dx * wall > 0, focal * wall / dx, far).astype(np.float32)
            d[d > street_end] = far
            closer = d < depth
            depth[closer], surface[closer] = d[closer], code
    end = depth >= far
    depth[end], surface[end] = street_end, 3
    image = np.empty((height, width, 3), np.float32)
    sky_mask = np.zeros(height * width, bool)

    # ground: road with markings and kerbs, or a paved plaza
    g = np.flatnonzero(surface.ravel() == 0)
    z = depth.ravel()[g]
    wx = dx.ravel()[g] * z / focal
    fp_x = z / focal  # metres per pixel across
    fp_z = z * z / (focal * cam_h)  # metres per pixel along the depth
    paving = np.array(jitter_color(rng, PAVING[int(rng.integers(len(PAVING)))], 0.04), np.float32)
    asphalt = np.array(jitter_color(rng, (0.36, 0.36, 0.37), 0.05), np.float32)
    tile = float(rng.uniform(0.3, 0.8))
    tiles = np.clip(_grid(wx, tile, 0.012, fp_x) + _grid(z, tile, 0.012, fp_z), 0, 1)
    ground = paving * (1 - 0.3 * tiles)[:, None]
    if not plaza:
        on_road = _band(wx - road_x, road_w / 2, fp_x)
        dash = _band((z % 9.0) - 4.5, 1.5, fp_z) * _band(wx - road_x, 0.07, fp_x)
        edges = _band(np.abs(wx - road_x) - road_w / 2 + 0.35, 0.07, fp_x)
        marks = dash + edges
        if rng.random() < 0.4:
            zc = float(rng.uniform(6.0, 30.0))
            marks = marks + _band(z - zc - 2.0, 2.0, fp_z) * _grid(wx - road_x, 1.0, 0.25, fp_x) * on_road
        marks = np.clip(marks, 0, 1)[:, None]
        road = asphalt * (1 - marks) + np.float32(0.9) * marks
        kerb = _band(np.abs(wx - road_x) - road_w / 2 - 0.1, 0.1, fp_x)[:, None]
        ground = ground * (1 - on_road[:, None]) + road * on_road[:, None]
        ground = ground * (1 - 0.25 * kerb) + 0.3 * kerb * paving
    stains = cv2.resize(rng.standard_normal((12, 16), dtype=np.float32), (width, height),
                        interpolation=cv2.INTER_CUBIC).ravel()[g]
    grain = rng.standard_normal(len(z), dtype=np.float32) * np.clip(0.05 / np.maximum(fp_x, fp_z), 0, 1)
    ground = ground * (1 + 0.05 * stains + 0.05 * grain)[:, None]
    sun = 0.0
    if sunny:
        sun = float(rng.choice([-1.0, 1.0]) * float(rng.uniform(0.3, 1.0)))
        wall = walls["left" if sun > 0 else "right"]
        if wall is not None:  # the sunlit wall's opposite casts a strip of shade on the pavement
            shade_w = float(rng.uniform(1.0, 6.0))
            ground *= (1 - 0.45 * _band(wx - (wall + np.sign(sun) * shade_w / 2), shade_w / 2, fp_x))[:, None]
    image.reshape(-1, 3)[g] = ground

    # side facades and the facade closing the street
    for code, key in ((1, "left"), (2, "right"), (3, "end")):
        f = np.flatnonzero(surface.ravel() == code)
        if not len(f):
            continue
        z = depth.ravel()[f]
        up = cam_h - dy.ravel()[f] * z / focal
        if code == 3:
            along, fp_along, fp_up = dx.ravel()[f] * z / focal, z / focal, z / focal
            segs = _segments(rng, -250.0, 250.0, (10.0, 35.0))
        else:
            along, fp_along, fp_up = z, z * z / (focal * abs(walls[key])), z / focal
            segs = _segments(rng, 0.0, street_end + 1, (8.0, 30.0))
        color, roof = _facade_color(segs, along, up, fp_along, fp_up)
        lit = 1.0 if code == 3 else (1.05 if sunny and (code == 1) == (sun > 0) else 0.82)
        image.reshape(-1, 3)[f] = color * lit
        sky_mask[f[roof]] = True

    # sky above the roofs
    s = np.flatnonzero(sky_mask)
    if len(s):
        sky_top = np.array(jitter_color(rng, (0.45, 0.62, 0.85) if sunny else (0.7, 0.72, 0.76), 0.08), np.float32)
        sky_low = np.clip(sky_top * 1.25 + 0.1, 0, 1)
        t = np.clip((s // width + 0.5) / max(horizon, 1.0), 0, 1)[:, None]
        clouds = cv2.resize(rng.standard_normal((6, 8), dtype=np.float32), (width, height),
                            interpolation=cv2.INTER_CUBIC).ravel()[s]
        image.reshape(-1, 3)[s] = sky_top * (1 - t) + sky_low * t + 0.04 * clouds[:, None]

    furniture = []
    for _ in range(12):
        side = float(rng.choice([-1.0, 1.0]))
        x_world = road_x + side * (road_w / 2 + float(rng.uniform(0.3, 0.8)))
        z_world = float(rng.uniform(3.0, min(60.0, street_end)))
        furniture.append((float(vx + focal * x_world / z_world), float(horizon + focal * cam_h / z_world)))
    at_walls = []
    for key in ("left", "right"):
        if walls[key] is not None:
            for _ in range(6):
                x_world = walls[key] - np.sign(walls[key] - road_x) * 0.25
                z_world = float(rng.uniform(4.0, min(60.0, street_end)))
                at_walls.append((float(vx + focal * x_world / z_world), float(horizon + focal * cam_h / z_world)))
    k = out_w / width
    image = cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_CUBIC)
    grain = cv2.GaussianBlur(rng.standard_normal((out_h, out_w), dtype=np.float32), (0, 0), 0.7)
    image *= (1.0 + 0.03 * grain)[..., None]
    return Background(image=np.clip(image, 0, 1), horizon=float(horizon * k), scale=PERSON_M / cam_h,
                      ground_top=float(horizon * k + 2), kind="street", name="street",
                      furniture=[(x * k, y * k) for x, y in furniture], walls=[(x * k, y * k) for x, y in at_walls],
                      sun=sun)


def sample_background(rng: np.random.Generator, mix: tuple[float, float, float], width: int, height: int,
                      photos, bank: CutoutBank | None, sunny: bool) -> Background:
    weights = np.array(mix, np.float64)
    if not photos:
        weights[0] = 0
    if bank is None:
        weights[1] = 0
    kind = int(rng.choice(3, p=weights / weights.sum()))
    if kind == 0:
        return photo_background(rng, photos, width, height)
    if kind == 1:
        return plate_background(rng, bank, width, height)
    return street_background(rng, width, height, sunny)
