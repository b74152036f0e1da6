"""Street objects: hard negatives (never labelled) and occluders.

Each kind draws itself in object units (its own height = 1, ground contact at
y = 0, y down) and has a real-world size range in metres, so the ground
plane gives it a height in pixels consistent with the people around it.
Hard negatives are the things detectors confuse with people: poles, lamps,
sign posts, trees, bollards, columns, doors, mannequins and faces. Occluders
(cars, benches, bins, low walls and hedges) stand in front of people.
"""
from __future__ import annotations

import numpy as np

from hkd.data.synth.figures import HAIR, SKIN_TONES, jitter_color, pick
from hkd.data.synth.raster import Drawing, Material, Sprite

PERSON_M = 1.7  # stature the ground plane is calibrated to

# kind -> (height range in metres, role)
OBJECTS: dict[str, tuple[tuple[float, float], str]] = {
    "pole": ((3.0, 6.0), "negative"),
    "street_lamp": ((4.5, 8.0), "negative"),
    "sign_post": ((2.2, 3.2), "negative"),
    "tree": ((4.0, 9.0), "negative"),
    "bollard": ((0.7, 1.1), "negative"),
    "column": ((3.0, 6.0), "negative"),
    "door": ((2.1, 2.6), "negative"),
    "mannequin": ((1.55, 1.85), "negative"),
    "face": ((0.0, 0.0), "negative"),  # close-up face: sized in pixels, not by the ground plane
    "poster": ((0.0, 0.0), "negative"),  # a face on an advert panel
    "bin": ((0.85, 1.15), "occluder"),
    "car": ((1.35, 1.65), "occluder"),
    "bench": ((0.8, 0.95), "occluder"),
    "wall": ((0.55, 1.1), "occluder"),
}
NEGATIVE_WEIGHTS = {"pole": 2.0, "street_lamp": 1.5, "sign_post": 1.5, "tree": 1.0, "bollard": 1.2, "column": 0.8,
                    "door": 0.8, "mannequin": 0.8, "bin": 1.0}
OCCLUDER_WEIGHTS = {"car": 3.0, "bench": 1.2, "bin": 1.0, "wall": 1.5}

METALS = (((0.35, 0.36, 0.38), 3), ((0.12, 0.13, 0.13), 2), ((0.15, 0.25, 0.18), 1), ((0.65, 0.66, 0.68), 1.5))
STONES = (((0.72, 0.70, 0.65), 2), ((0.55, 0.54, 0.52), 2), ((0.80, 0.76, 0.66), 1), ((0.50, 0.34, 0.26), 1))
CARS = (((0.85, 0.86, 0.87), 3), ((0.62, 0.63, 0.65), 3), ((0.08, 0.08, 0.09), 3), ((0.55, 0.08, 0.08), 1),
        ((0.12, 0.20, 0.42), 1.5), ((0.25, 0.27, 0.30), 2), ((0.75, 0.70, 0.60), 0.7))
WOODS = (((0.45, 0.30, 0.18), 2), ((0.30, 0.20, 0.12), 1), ((0.60, 0.45, 0.30), 1))


def object_height_m(rng: np.random.Generator, kind: str) -> float:
    low, high = OBJECTS[kind][0]
    return float(rng.uniform(low, high))


def _pole(d: Drawing, mat: Material, width: float, top: float = -1.0) -> None:
    d.rect(mat, -width / 2, top, width / 2, 0.0)
    d.rect(mat, -width * 0.8, -0.02, width * 0.8, 0.0)


def _draw(rng: np.random.Generator, kind: str, height_m: float) -> Drawing:
    d = Drawing()
    u = 1.0 / max(height_m, 1e-3)  # one metre in object units
    metal = Material(pick(rng, METALS), "metal", rim=0.6)
    if kind == "pole":
        _pole(d, metal, float(rng.uniform(0.09, 0.2)) * u)
    elif kind == "street_lamp":
        w = float(rng.uniform(0.12, 0.2)) * u
        _pole(d, metal, w)
        reach = float(rng.uniform(0.8, 1.8)) * u
        sides = (1,) if rng.random() < 0.7 else (-1, 1)
        for s in sides:
            d.line(metal, [(0, -0.97), (s * reach * 0.5, -1.0 - 0.03), (s * reach, -0.99)], w * 0.6)
            d.ellipse(Material((0.92, 0.9, 0.8), "flat", rim=0.4), (s * reach, -0.975), (0.3 * u, 0.09 * u))
    elif kind == "sign_post":
        w = float(rng.uniform(0.06, 0.1)) * u
        _pole(d, metal, w)
        panel = str(rng.choice(["rect", "circle", "triangle", "tall"]))
        colors = [(0.1, 0.3, 0.65), (0.75, 0.1, 0.1), (0.1, 0.45, 0.3), (0.95, 0.95, 0.95), (0.95, 0.75, 0.1)]
        face = Material(jitter_color(rng, colors[int(rng.integers(len(colors)))], 0.04), "flat", rim=0.1)
        white = Material((0.93, 0.93, 0.93), "flat", rim=0.0)
        top = -1.0 + 0.05
        if panel == "circle":
            r = float(rng.uniform(0.28, 0.4)) * u
            d.ellipse(white, (0, top + r), (r, r))
            d.ellipse(face, (0, top + r), (r * 0.85, r * 0.85))
            d.rect(white, -r * 0.55, top + r * 0.85, r * 0.55, top + r * 1.15)
        elif panel == "triangle":
            r = float(rng.uniform(0.35, 0.5)) * u
            d.poly(face, [(-r, top + r * 1.5), (r, top + r * 1.5), (0, top)])
            d.poly(white, [(-r * 0.6, top + r * 1.3), (r * 0.6, top + r * 1.3), (0, top + r * 0.35)])
        else:
            wide = panel == "rect"
            pw = float(rng.uniform(0.5, 0.9) if wide else rng.uniform(0.35, 0.5)) * u
            ph = float(rng.uniform(0.35, 0.6) if wide else rng.uniform(0.6, 0.9)) * u
            d.rect(white, -pw / 2, top, pw / 2, top + ph)
            d.rect(face, -pw / 2 * 0.9, top + ph * 0.06, pw / 2 * 0.9, top + ph * 0.94)
            d.rect(white, -pw * 0.3, top + ph * 0.45, pw * 0.3, top + ph * 0.55)
    elif kind == "tree":
        trunk = Material(jitter_color(rng, (0.32, 0.24, 0.17), 0.08), "noise", rim=0.5)
        leaves = Material(jitter_color(rng, (0.25, 0.42, 0.16), 0.1), "foliage",
                          jitter_color(rng, (0.08, 0.16, 0.06), 0.1), rim=0.35)
        w = float(rng.uniform(0.2, 0.45)) * u
        d.poly(trunk, [(-w * 0.7, 0.0), (w * 0.7, 0.0), (w * 0.4, -0.6), (-w * 0.4, -0.6)])
        cw = float(rng.uniform(0.25, 0.4))
        for _ in range(int(rng.integers(5, 10))):
            cx, cy = rng.uniform(-cw * 0.6, cw * 0.6), rng.uniform(-0.85, -0.55)
            r = rng.uniform(0.12, 0.22)
            d.ellipse(leaves, (cx, cy), (r * rng.uniform(0.9, 1.3), r))
        d.ellipse(leaves, (0, -0.75), (cw, 0.24))
    elif kind == "bollard":
        w = float(rng.uniform(0.14, 0.26)) * u
        d.rect(metal, -w / 2, -0.96, w / 2, 0.0)
        d.ellipse(metal, (0, -0.96), (w / 2, w * 0.3))
        if rng.random() < 0.6:
            band = Material((0.95, 0.85, 0.2) if rng.random() < 0.5 else (0.92, 0.92, 0.92), "flat", rim=0.4)
            d.rect(band, -w / 2, -0.86, w / 2, -0.78)
    elif kind == "column":
        stone = Material(pick(rng, STONES), "noise", rim=0.7)
        w = float(rng.uniform(0.4, 0.9)) * u
        d.rect(stone, -w / 2, -1.0, w / 2, 0.0)
        d.rect(stone, -w * 0.65, -0.06, w * 0.65, 0.0)
        d.rect(stone, -w * 0.65, -1.0, w * 0.65, -0.95)
    elif kind == "door":
        frame = Material(pick(rng, STONES), "flat", rim=0.2)
        leaf = Material(pick(rng, WOODS + (((0.12, 0.12, 0.13), 2), ((0.2, 0.3, 0.4), 1))), "noise", rim=0.3)
        w = float(rng.uniform(0.9, 1.3)) * u
        d.rect(frame, -w / 2 - 0.12 * u, -1.0, w / 2 + 0.12 * u, 0.0)
        d.rect(leaf, -w / 2, -1.0 + 0.1 * u, w / 2, 0.0)
        if rng.random() < 0.5:
            d.rect(Material((0.25, 0.32, 0.38), "glass", (0.8, 0.85, 0.9), scale=0.3), -w * 0.35, -0.85, w * 0.35, -0.5)
        d.ellipse(Material((0.75, 0.7, 0.5), "flat"), (w * 0.35, -0.45), (0.03 * u, 0.03 * u))
    elif kind == "mannequin":
        body = Material(jitter_color(rng, [(0.9, 0.88, 0.85), (0.15, 0.15, 0.15), (0.85, 0.72, 0.6),
                                           (0.6, 0.6, 0.62)][int(rng.integers(4))], 0.03), "flat", rim=0.5)
        d.rect(body, -0.015, -0.45, 0.015, 0.0)  # stand
        d.ellipse(body, (0, -0.01), (0.12, 0.02))
        d.poly(body, [(-0.11, -0.82), (0.11, -0.82), (0.085, -0.62), (0.1, -0.45), (-0.1, -0.45), (-0.085, -0.62)])
        d.capsule(body, (0, -0.88), (0, -0.8), 0.025, 0.03)
        d.ellipse(body, (0, -0.935), (0.05, 0.065))
    elif kind == "bin":
        bin_mat = Material(pick(rng, METALS + (((0.1, 0.3, 0.15), 2), ((0.2, 0.3, 0.55), 1))), "noise", rim=0.5)
        w = float(rng.uniform(0.45, 0.65)) * u
        d.poly(bin_mat, [(-w / 2, -0.92), (w / 2, -0.92), (w * 0.45, 0.0), (-w * 0.45, 0.0)])
        d.ellipse(bin_mat, (0, -0.93), (w * 0.53, 0.06))
    elif kind == "car":
        d = _car(rng, u)
    elif kind == "bench":
        wood = Material(pick(rng, WOODS), "noise", rim=0.3)
        length = float(rng.uniform(1.5, 2.1)) * u
        dark = Material((0.1, 0.1, 0.1), "metal", rim=0.3)
        for x in (-length * 0.4, length * 0.4):
            d.rect(dark, x - 0.03 * u, -0.55, x + 0.03 * u, 0.0)
            d.rect(dark, x - 0.03 * u, -1.0, x + 0.03 * u, -0.5)
        d.rect(wood, -length / 2, -0.55, length / 2, -0.47)
        for y in (-1.0, -0.82):
            d.rect(wood, -length / 2, y, length / 2, y + 0.12)
    elif kind == "wall":
        length = float(rng.uniform(2.0, 6.0)) * u
        if rng.random() < 0.5:
            hedge = Material(jitter_color(rng, (0.2, 0.38, 0.14), 0.1), "foliage", (0.06, 0.14, 0.05), rim=0.3)
            d.rect(hedge, -length / 2, -0.92, length / 2, 0.0)
            for x in np.linspace(-length / 2, length / 2, 8):
                d.ellipse(hedge, (x, -0.92), (length / 14 + 0.05, 0.08))
        else:
            color = pick(rng, STONES)
            stone = Material(color, "brick", tuple(np.clip(np.array(color) * 1.25, 0, 1)), scale=0.08 * u, rim=0.15)
            d.rect(stone, -length / 2, -1.0, length / 2, 0.0)
            d.rect(Material(np.clip(np.array(stone.color) * 1.15, 0, 1).tolist(), "flat", rim=0.2),
                   -length / 2 - 0.03, -1.0, length / 2 + 0.03, -0.92)
    else:
        raise ValueError(f"unknown object kind {kind!r}; choose from {sorted(OBJECTS)}")
    return d


def _car(rng: np.random.Generator, u: float) -> Drawing:
    d = Drawing()
    paint = Material(pick(rng, CARS, 0.03), "flat", rim=0.35)
    glass = Material((0.16, 0.19, 0.22), "glass", (0.7, 0.75, 0.8), scale=float(rng.uniform(0.3, 0.8)), rim=0.1)
    tyre = Material((0.05, 0.05, 0.05), "flat", rim=0.2)
    hub = Material((0.6, 0.6, 0.62), "metal", rim=0.4)
    if rng.random() < 0.6:  # side view
        length = float(rng.uniform(3.9, 4.8)) * u
        x0, x1 = -length / 2, length / 2
        d.poly(paint, [(x0 + 0.02, -0.62), (x1 - 0.04, -0.6), (x1, -0.45), (x1, -0.12), (x0, -0.12), (x0, -0.5)])
        d.poly(paint, [(x0 + length * 0.22, -0.62), (x0 + length * 0.33, -0.98), (x1 - length * 0.33, -0.98),
                       (x1 - length * 0.18, -0.62)])
        d.poly(glass, [(x0 + length * 0.25, -0.64), (x0 + length * 0.345, -0.93), (-0.01, -0.93), (-0.01, -0.64)])
        d.poly(glass, [(0.02, -0.64), (0.02, -0.93), (x1 - length * 0.345, -0.93), (x1 - length * 0.22, -0.64)])
        for x in (x0 + length * 0.2, x1 - length * 0.2):
            d.ellipse(tyre, (x, -0.2), (0.21, 0.2))
            d.ellipse(hub, (x, -0.2), (0.1, 0.095))
        d.rect(Material((0.9, 0.2, 0.1), "flat"), x0, -0.5, x0 + 0.05, -0.4)
        d.rect(Material((0.95, 0.92, 0.8), "flat"), x1 - 0.05, -0.5, x1, -0.42)
    else:  # seen from behind or in front
        width = float(rng.uniform(1.7, 1.9)) * u
        x0, x1 = -width / 2, width / 2
        d.rect(tyre, x0 + 0.05, -0.15, x0 + 0.25, 0.0)
        d.rect(tyre, x1 - 0.25, -0.15, x1 - 0.05, 0.0)
        d.poly(paint, [(x0, -0.62), (x1, -0.62), (x1, -0.12), (x0, -0.12)])
        d.poly(paint, [(x0 + 0.1, -0.62), (x0 + 0.2, -0.98), (x1 - 0.2, -0.98), (x1 - 0.1, -0.62)])
        d.poly(glass, [(x0 + 0.16, -0.66), (x0 + 0.24, -0.93), (x1 - 0.24, -0.93), (x1 - 0.16, -0.66)])
        light = Material((0.85, 0.12, 0.08) if rng.random() < 0.6 else (0.95, 0.92, 0.8), "flat")
        d.rect(light, x0 + 0.03, -0.55, x0 + 0.3, -0.45)
        d.rect(light, x1 - 0.3, -0.55, x1 - 0.03, -0.45)
        d.rect(Material((0.92, 0.92, 0.9), "flat"), -0.22, -0.38, 0.22, -0.28)
        d.rect(Material((0.08, 0.08, 0.08), "flat"), x0, -0.2, x1, -0.12)
    return d


def render_object(rng: np.random.Generator, kind: str, height_m: float, height_px: float,
                  light: tuple[float, float] = (0.0, 0.1)) -> Sprite:
    """Render ``kind`` ``height_px`` tall; its proportions follow ``height_m``."""
    if kind in ("face", "poster"):
        return render_face(rng, height_px, light, poster=kind == "poster")
    return _draw(rng, kind, height_m).render(rng, height_px, light=light)


def render_face(rng: np.random.Generator, height_px: float, light: tuple[float, float] = (0.0, 0.1),
                poster: bool = False) -> Sprite:
    """A close-up face-like ellipse with hair and features, ``height_px`` tall; anchored at its chin.

    A ``poster`` face sits on a rectangular panel (an advert on a wall)."""
    d = Drawing()
    if poster:
        panel = Material(pick(rng, METALS + STONES + (((0.85, 0.82, 0.7), 2), ((0.2, 0.35, 0.6), 1))), "flat", rim=0.05)
        d.rect(Material((0.1, 0.1, 0.1), "flat", rim=0.0), -0.66, -1.08, 0.66, 0.2)
        d.rect(panel, -0.62, -1.05, 0.62, 0.17)
    skin = Material(jitter_color(rng, SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], 0.03), "flat", rim=0.5)
    hair = Material(pick(rng, HAIR), "hair", scale=0.2, rim=0.3)
    dark = Material((0.1, 0.07, 0.06), "flat", rim=0.0)
    w = float(rng.uniform(0.36, 0.42))
    if rng.random() < 0.5:
        d.ellipse(hair, (0, -0.52), (w * 1.12, 0.5))
    d.ellipse(skin, (-w * 0.98, -0.5), (0.07, 0.12))
    d.ellipse(skin, (w * 0.98, -0.5), (0.07, 0.12))
    d.ellipse(skin, (0, -0.5), (w, 0.5))
    d.ellipse(hair, (0, -0.86), (w * 1.02, 0.2))
    for s in (-1, 1):
        d.ellipse(Material((0.95, 0.95, 0.93), "flat", rim=0.0), (s * w * 0.42, -0.55), (0.075, 0.035))
        d.ellipse(dark, (s * w * 0.42, -0.55), (0.032, 0.032))
        d.line(Material(pick(rng, HAIR), "flat", rim=0.0), [(s * w * 0.2, -0.64), (s * w * 0.62, -0.66)], 0.025)
    d.poly(Material(np.clip(np.array(skin.color) * 0.85, 0, 1).tolist(), "flat", rim=0.0),
           [(-0.04, -0.45), (0.04, -0.45), (0.0, -0.55)])
    d.ellipse(Material((0.55, 0.25, 0.22), "flat", rim=0.0), (0, -0.24), (w * 0.36, 0.04))
    return d.render(rng, height_px, light=light)

