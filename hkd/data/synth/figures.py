"""Procedural pedestrians: an articulated 2D skeleton dressed in layered shapes.

A :class:`FigureSpec` holds everything random about one person (view, gait
phase, proportions, clothes, hair, bags); :func:`figure_drawing` turns it into
a :class:`~hkd.data.synth.raster.Drawing` in object units (stature = 1, feet
on y = 0, y down). Side views are drawn far limbs first (darker), then legs,
torso, head and the near arm, so limbs overlap as they do on a real walker.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from hkd.data.synth.raster import Drawing, Material, Sprite

RGB = tuple[float, float, float]

SKIN_TONES: tuple[RGB, ...] = ((0.96, 0.80, 0.69), (0.92, 0.72, 0.58), (0.84, 0.63, 0.48),
                               (0.70, 0.50, 0.36), (0.52, 0.35, 0.24), (0.34, 0.22, 0.15))
HAIR: tuple[tuple[RGB, float], ...] = (((0.05, 0.04, 0.035), 3), ((0.17, 0.10, 0.06), 3), ((0.33, 0.21, 0.12), 2),
                                       ((0.72, 0.58, 0.34), 1), ((0.58, 0.57, 0.55), 0.7), ((0.45, 0.18, 0.08), 0.5))
TOPS: tuple[tuple[RGB, float], ...] = (
    ((0.07, 0.07, 0.08), 3.0), ((0.22, 0.22, 0.24), 2.0), ((0.48, 0.48, 0.50), 1.0), ((0.86, 0.86, 0.84), 1.0),
    ((0.10, 0.13, 0.28), 2.0), ((0.18, 0.28, 0.50), 1.0), ((0.62, 0.10, 0.12), 0.7), ((0.40, 0.08, 0.12), 0.6),
    ((0.74, 0.66, 0.52), 1.0), ((0.40, 0.27, 0.17), 1.0), ((0.33, 0.35, 0.20), 0.8), ((0.14, 0.38, 0.22), 0.5),
    ((0.85, 0.70, 0.15), 0.4), ((0.55, 0.70, 0.85), 0.7), ((0.85, 0.55, 0.62), 0.4), ((0.88, 0.45, 0.12), 0.3),
    ((0.38, 0.22, 0.48), 0.3))
BOTTOMS: tuple[tuple[RGB, float], ...] = (
    ((0.20, 0.28, 0.45), 4.0), ((0.12, 0.16, 0.27), 2.0), ((0.07, 0.07, 0.08), 3.0), ((0.30, 0.30, 0.32), 2.0),
    ((0.66, 0.60, 0.46), 1.5), ((0.35, 0.25, 0.17), 1.0), ((0.85, 0.85, 0.82), 0.3), ((0.45, 0.55, 0.70), 0.8))
SHOES: tuple[tuple[RGB, float], ...] = (((0.05, 0.05, 0.05), 4), ((0.30, 0.18, 0.10), 2), ((0.90, 0.90, 0.88), 2),
                                        ((0.45, 0.45, 0.47), 1))
BAGS: tuple[tuple[RGB, float], ...] = (((0.06, 0.06, 0.06), 3), ((0.35, 0.20, 0.10), 2), ((0.12, 0.15, 0.30), 1),
                                       ((0.60, 0.12, 0.12), 0.7), ((0.50, 0.50, 0.50), 1), ((0.75, 0.65, 0.45), 0.7))


def pick(rng: np.random.Generator, options: tuple[tuple[RGB, float], ...], jitter: float = 0.06) -> RGB:
    """A weighted palette colour with a small HSV jitter."""
    weights = np.array([w for _, w in options], np.float64)
    color = options[int(rng.choice(len(options), p=weights / weights.sum()))][0]
    return jitter_color(rng, color, jitter)


def jitter_color(rng: np.random.Generator, color: RGB, amount: float) -> RGB:
    h, s, v = colorsys.rgb_to_hsv(*color)
    h = (h + rng.uniform(-amount, amount) * 0.5) % 1.0
    s = float(np.clip(s * rng.uniform(1 - amount * 2, 1 + amount * 2), 0, 1))
    v = float(np.clip(v * rng.uniform(1 - amount * 2, 1 + amount * 2), 0, 1))
    return colorsys.hsv_to_rgb(h, s, v)


def cloth(rng: np.random.Generator, color: RGB, *, denim: bool = False, plain: bool = False) -> Material:
    """A garment material; ``plain`` garments (trousers, skirts) get no stripes or checks."""
    folds = float(rng.uniform(0.05, 0.14))
    if denim:
        return Material(color, "denim", folds=folds)
    kinds, p = ["flat", "noise", "stripes", "check", "knit"], [0.45, 0.27, 0.12, 0.06, 0.10]
    if plain:
        kinds, p = ["flat", "noise"], [0.6, 0.4]
    kind = rng.choice(kinds, p=p)
    second = pick(rng, TOPS) if kind in ("stripes", "check") else None
    return Material(color, str(kind), second, scale=float(rng.uniform(0.025, 0.07)), folds=folds)


@dataclass(frozen=True)
class FigureSpec:
    view: str  # "right" | "left" (side views) | "front" | "back"
    phase: float  # gait phase, radians
    stride: float  # thigh swing amplitude, radians (~0 when standing)
    arm_swing: float  # radians
    lean: float  # forward torso lean, radians
    head: float  # head height / stature
    legs: float  # hip height / stature
    build: float  # width factor (slim < 1 < wide)
    hips: float  # extra hip width (skirts, wider hips)
    skin: RGB
    hair: RGB
    hair_style: str  # short | long | bun | bald | hat | cap
    hat: RGB
    top: Material
    sleeves: str  # long | short
    coat: bool
    bottom: Material
    lower: str  # trousers | shorts | skirt
    skirt: float  # skirt length, fraction of the thigh below the hip
    shoes: RGB
    bag: str  # none | backpack | shoulder | hand
    bag_color: RGB


def sample_figure(rng: np.random.Generator, *, walking_fraction: float = 0.7, child: bool = False) -> FigureSpec:
    walking = rng.random() < walking_fraction
    view = str(rng.choice(["right", "left", "front", "back"], p=[0.33, 0.33, 0.17, 0.17]))
    feminine = rng.random() < 0.4
    lower = "trousers"
    roll = rng.random()
    if feminine and roll < 0.35:
        lower = "skirt"
    elif roll > 0.93:
        lower = "shorts"
    bottom_color = pick(rng, BOTTOMS)
    denim = lower == "trousers" and bottom_color[2] > bottom_color[0] + 0.08 and rng.random() < 0.8
    styles = {"short": 0.45, "long": 0.27 if feminine else 0.03, "bun": 0.08 if feminine else 0.01,
              "bald": 0.02 if feminine else 0.12, "hat": 0.09, "cap": 0.09}
    weights = np.array(list(styles.values()))
    hair_style = str(rng.choice(list(styles), p=weights / weights.sum()))
    return FigureSpec(
        view=view,
        phase=float(rng.uniform(0, 2 * np.pi)),
        stride=float(rng.uniform(0.22, 0.5) if walking else rng.uniform(0.0, 0.08)),
        arm_swing=float(rng.uniform(0.15, 0.45) if walking else rng.uniform(0.0, 0.1)),
        lean=float(rng.uniform(0.0, 0.08) if walking else rng.uniform(-0.02, 0.03)),
        head=float(rng.uniform(0.155, 0.19) if child else rng.uniform(0.122, 0.138)),
        legs=float(rng.uniform(0.43, 0.46) if child else rng.uniform(0.47, 0.52)),
        build=float(rng.uniform(0.85, 1.1) if child else rng.uniform(0.82, 1.2)),
        hips=float(rng.uniform(0.01, 0.025) if feminine else rng.uniform(0.0, 0.01)),
        skin=jitter_color(rng, SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], 0.03),
        hair=pick(rng, HAIR),
        hair_style=hair_style,
        hat=pick(rng, TOPS),
        top=cloth(rng, pick(rng, TOPS)),
        sleeves="short" if rng.random() < 0.18 else "long",
        coat=bool(rng.random() < 0.2),
        bottom=cloth(rng, bottom_color, denim=denim, plain=lower != "skirt" or rng.random() < 0.7),
        lower=lower,
        skirt=float(rng.uniform(0.6, 1.1)),
        shoes=pick(rng, SHOES),
        bag=str(rng.choice(["none", "backpack", "shoulder", "hand"], p=[0.55, 0.17, 0.17, 0.11])),
        bag_color=pick(rng, BAGS),
    )


def _rot(points: np.ndarray, pivot: np.ndarray, angle: float) -> np.ndarray:
    """Rotate (n, 2) points about pivot; positive angle tips the top towards +x (forward lean)."""
    c, s = np.cos(angle), np.sin(angle)
    d = points - pivot
    return pivot + np.stack([d[:, 0] * c - d[:, 1] * s, d[:, 0] * s + d[:, 1] * c], axis=1)


def _shaded(material: Material, shade: float) -> Material:
    return Material(material.color, material.texture, material.color2, material.scale, shade, material.rim,
                    material.folds)


def figure_drawing(spec: FigureSpec) -> Drawing:
    """The figure in object units (stature 1, sole at y = 0, y down, facing +x for side views)."""
    side = spec.view in ("left", "right")
    flip = -1.0 if spec.view == "left" else 1.0
    b, hh = spec.build, spec.head
    skin = Material(spec.skin, "flat", rim=0.25)
    hair = Material(spec.hair, "hair", scale=0.05, rim=0.2)
    shoe = Material(spec.shoes, "flat", rim=0.2)
    bag = Material(spec.bag_color, "noise", rim=0.3)
    top, bottom = spec.top, spec.bottom
    ankle = 0.045
    thigh = shin = (spec.legs - ankle) / 2
    upper_arm, forearm = 0.19 * (1 - spec.legs + 0.5) * 0.95, 0.16 * (1 - spec.legs + 0.5) * 0.95

    # --- legs: hip-relative joint positions, then lift so the lowest foot touches y = 0 ----------
    legs = []
    for offset in (0.0, np.pi):  # leg A (near), leg B (far)
        phi = spec.phase + offset
        theta = spec.stride * np.sin(phi)
        knee_bend = 0.06 + (spec.stride / 0.45) * 1.0 * max(0.0, np.cos(phi)) ** 2
        shin_angle = theta - knee_bend
        if side:
            knee = np.array([np.sin(theta) * thigh, np.cos(theta) * thigh])
            foot = knee + np.array([np.sin(shin_angle) * shin, np.cos(shin_angle) * shin])
        else:  # seen from the front/back: only the vertical foreshortening of the swing shows
            knee = np.array([0.0, np.cos(theta) * thigh])
            foot = knee + np.array([0.0, np.cos(shin_angle) * shin])
        legs.append((knee, foot, shin_angle))
    hip_y = -max(leg[1][1] for leg in legs) - ankle
    shoulder_y = -1.0 + hh + 0.05 * (hh / 0.13)
    hip = np.array([0.0, hip_y])
    d = Drawing()

    def P(*xy: tuple[float, float]) -> np.ndarray:
        pts = np.asarray(xy, np.float64).reshape(-1, 2)
        return np.stack([pts[:, 0] * flip, pts[:, 1]], axis=1)

    lean_pivot = np.array([0.0, hip_y])

    def U(*xy: tuple[float, float]) -> np.ndarray:
        """Upper-body points: leaned forward about the hip, then mirrored."""
        pts = np.asarray(xy, np.float64).reshape(-1, 2)
        if side:
            pts = _rot(pts, lean_pivot, spec.lean)
        return np.stack([pts[:, 0] * flip, pts[:, 1]], axis=1)

    lower_mat = bottom if spec.lower == "trousers" else skin
    leg_r = 0.052 * b + (0.006 if spec.lower == "trousers" else 0.0)

    def draw_leg(index: int, shade: float, x_offset: float) -> None:
        knee, foot, shin_angle = legs[index]
        h0 = hip + (x_offset, 0.0)
        k, f = h0 + knee, h0 + foot
        f_ground = f + (0.0, ankle * 0.55)
        mat = _shaded(lower_mat, shade)
        d.capsule(mat, P(h0)[0], P(k)[0], leg_r, leg_r * 0.72)
        d.capsule(mat, P(k)[0], P(f)[0], leg_r * 0.72, leg_r * 0.5)
        if spec.lower == "shorts":
            d.capsule(_shaded(bottom, shade), P(h0)[0], P(h0 + knee * 0.6)[0], leg_r + 0.008, leg_r * 0.9)
        shoe_mat = _shaded(shoe, shade)
        if side:
            tilt = float(np.clip(shin_angle, -0.5, 0.4)) * 0.6
            toe = np.array([np.cos(tilt), -np.sin(tilt)]) * 0.085
            heel = np.array([-np.cos(tilt), np.sin(tilt)]) * 0.02
            d.capsule(shoe_mat, P(f_ground + heel + (0.0, -0.006))[0], P(f_ground + toe)[0], 0.022, 0.017)
        else:
            d.ellipse(shoe_mat, P(f_ground + (0.0, -0.008))[0], (0.03, 0.022))

    def draw_arm(sign: float, shade: float, phase_offset: float, holds_bag: bool = False) -> None:
        swing = -spec.arm_swing * np.sin(spec.phase + phase_offset)
        bend = 0.2 + 0.45 * max(0.0, swing) / max(spec.arm_swing, 1e-3) * min(1.0, spec.arm_swing * 3)
        sleeve = _shaded(top, shade)
        fore_mat = sleeve if spec.sleeves == "long" else _shaded(skin, shade)
        r0 = 0.034 * b + 0.004
        if side:
            sh = np.array([0.0, shoulder_y + 0.03])
            el = sh + np.array([np.sin(swing), np.cos(swing)]) * upper_arm
            wr = el + np.array([np.sin(swing + bend), np.cos(swing + bend)]) * forearm
            hand = wr + np.array([np.sin(swing + bend), np.cos(swing + bend)]) * 0.03
        else:
            out = 0.12 + 0.05 * b
            sx = sign * (0.118 * b - 0.02)
            sh = np.array([sx, shoulder_y + 0.03])
            el = sh + np.array([sign * np.sin(out) * upper_arm, np.cos(out) * np.cos(swing) * upper_arm])
            wr = el + np.array([sign * np.sin(out * 0.4) * forearm, np.cos(swing + bend) * forearm])
            hand = wr + np.array([0.0, 0.03])
        pts = U(sh, el, wr, hand)
        d.capsule(sleeve, pts[0], pts[1], r0, r0 * 0.85)
        d.capsule(fore_mat, pts[1], pts[2], r0 * 0.85, r0 * 0.65)
        d.ellipse(_shaded(skin, shade), pts[3], (0.024, 0.032))
        if spec.bag == "hand" and holds_bag:
            d.line(bag, [pts[3], pts[3] + (0.0, 0.05)], 0.006)
            d.rect(bag, pts[3][0] - 0.06, pts[3][1] + 0.05, pts[3][0] + 0.06, pts[3][1] + 0.16)

    # torso outline in hip-relative object units
    ys, yh = shoulder_y, hip_y
    hem = yh + (thigh * 0.85 if spec.coat else 0.03)
    if side:
        torso = U((-0.055 * b, ys - 0.005), (0.03 * b, ys - 0.012), (0.068 * b, ys + 0.07), (0.055 * b, yh - 0.11),
                  (0.06 * b + spec.hips * 0.5, yh + 0.02), (0.06 * b + 0.01, hem), (-0.07 * b - spec.hips, hem),
                  (-0.066 * b - spec.hips, yh - 0.02), (-0.058 * b, yh - 0.13), (-0.068 * b, ys + 0.06))
    else:
        sw = 0.118 * b
        hw = 0.092 * b + spec.hips
        flare = 0.02 if spec.coat else 0.0
        torso = U((-sw + 0.02, ys - 0.01), (sw - 0.02, ys - 0.01), (sw, ys + 0.03), (0.1 * b, ys + 0.1),
                  (0.085 * b, yh - 0.12), (hw, yh - 0.01), (hw + flare, hem), (-hw - flare, hem), (-hw, yh - 0.01),
                  (-0.085 * b, yh - 0.12), (-0.1 * b, ys + 0.1), (-sw, ys + 0.03))
    head_c = np.array([0.012 if side else 0.0, -1.0 + hh / 2])
    head_axes = (hh * (0.44 if side else 0.39), hh / 2)

    # --- back to front ------------------------------------------------------------------------
    if spec.hair_style == "long":
        hx, hy, hw = head_c[0], head_c[1], head_axes[0]
        d.poly(hair, U((hx - hw * 1.05, hy), (hx + hw * (0.2 if side else 1.05), hy),
                       (hx + hw * (0.1 if side else 1.1), ys + 0.07), (hx - hw * 1.15, ys + 0.07)))
    if side:
        draw_arm(-1.0, 0.72, np.pi)
        if spec.bag == "backpack":
            d.poly(bag, U((-0.05 * b, ys + 0.02), (-0.14 * b, ys + 0.04), (-0.15 * b, ys + 0.2),
                          (-0.05 * b, ys + 0.23)))
        draw_leg(1, 0.75, -0.01)
        draw_leg(0, 1.0, 0.01)
    else:
        for index, x in ((1, -0.05 * b - spec.hips * 0.5), (0, 0.05 * b + spec.hips * 0.5)):
            draw_leg(index, 0.92 if index else 1.0, x)
    if spec.lower == "skirt":
        knee_y = yh + thigh * spec.skirt
        spread = 0.03 + spec.stride * 0.12
        if side:
            d.poly(bottom, P((-0.07 * b - spec.hips, yh - 0.06), (0.06 * b, yh - 0.06), (0.08 * b + spread, knee_y),
                             (-0.09 * b - spread, knee_y)))
        else:
            d.poly(bottom, P((-0.09 * b - spec.hips, yh - 0.06), (0.09 * b + spec.hips, yh - 0.06),
                             (0.12 * b + spec.hips + spread * 0.5, knee_y),
                             (-0.12 * b - spec.hips - spread * 0.5, knee_y)))
    d.poly(top, torso)
    if spec.view == "back" and spec.bag == "backpack":
        d.poly(bag, U((-0.085 * b, ys + 0.03), (0.085 * b, ys + 0.03), (0.09 * b, ys + 0.23), (-0.09 * b, ys + 0.23)))
    if not side:
        if spec.view == "front" and spec.bag == "backpack":
            for sx in (-1, 1):
                d.line(bag, U((sx * 0.07 * b, ys), (sx * 0.08 * b, ys + 0.16)), 0.018)
        draw_arm(-1.0, 0.95, np.pi)
        draw_arm(1.0, 0.95, 0.0, holds_bag=True)
    # neck and head
    neck_mat = skin
    d.capsule(neck_mat, U((0.005, -1.0 + hh * 0.8))[0], U((0.0, ys + 0.01))[0], 0.026 * b, 0.03 * b)
    hc = U(tuple(head_c))[0]
    d.ellipse(skin, hc, head_axes, np.degrees(spec.lean * flip) if side else 0.0)
    ax, ay = head_axes
    if spec.hair_style != "bald":
        if spec.view == "back":
            d.ellipse(hair, hc + (0.0, -0.004), (ax * 1.04, ay * 1.0))
        elif side:
            d.ellipse(hair, hc + (-0.25 * ax * flip, -0.22 * ay), (ax * 0.9, ay * 0.82))
        else:
            d.ellipse(hair, hc + (0.0, -0.42 * ay), (ax * 1.04, ay * 0.62))
    if spec.hair_style in ("hat", "cap"):
        hat = Material(spec.hat, "knit" if spec.hair_style == "hat" else "flat")
        d.ellipse(hat, hc + (0.0, -0.45 * ay), (ax * 1.06, ay * 0.6))
        if spec.hair_style == "cap" and spec.view != "back":
            brim = (0.9 * ax * flip, -0.2 * ay) if side else (0.0, -0.05 * ay)
            d.ellipse(hat, hc + brim, (ax * (0.55 if side else 0.9), ay * 0.12))
    if spec.view == "front":
        dark = Material((0.12, 0.08, 0.07), "flat", rim=0.0)
        for sx in (-1, 1):
            d.ellipse(dark, hc + (sx * 0.36 * ax, -0.02 * ay), (0.13 * ax, 0.07 * ay))
        mouth = Material(tuple(np.array(spec.skin) * 0.7), "flat", rim=0.0)
        d.ellipse(mouth, hc + (0.0, 0.45 * ay), (0.3 * ax, 0.05 * ay))
    elif side:
        eye = Material((0.12, 0.08, 0.07), "flat", rim=0.0)
        d.ellipse(eye, hc + (0.55 * ax * flip, -0.05 * ay), (0.08 * ax, 0.06 * ay))
        d.ellipse(skin, hc + (0.92 * ax * flip, 0.12 * ay), (0.14 * ax, 0.1 * ay))
    # near side, drawn last
    if spec.bag == "shoulder":
        strap_top = U((-0.04 * b, ys)) if side else U((0.08 * b, ys))
        bag_c = U((-0.02 * b, yh - 0.02)) if side else U((-0.1 * b, yh - 0.02))
        d.line(bag, [strap_top[0], bag_c[0]], 0.012)
        d.rect(bag, bag_c[0][0] - 0.07, bag_c[0][1] - 0.05, bag_c[0][0] + 0.07, bag_c[0][1] + 0.06)
    if side:
        draw_arm(1.0, 1.0, 0.0, holds_bag=True)
    return d


def render_person(rng: np.random.Generator, height_px: float, *, walking_fraction: float = 0.7,
                  child: bool = False, light: tuple[float, float] = (0.0, 0.1)) -> Sprite:
    """A procedural pedestrian ``height_px`` tall (stature; the box is within a few % of it)."""
    spec = sample_figure(rng, walking_fraction=walking_fraction, child=child)
    return figure_drawing(spec).render(rng, height_px, light=light)
