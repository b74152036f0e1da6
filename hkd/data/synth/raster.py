"""Anti-aliased rendering of layered 2D shapes into RGBA sprites.

People and street objects are described as a list of primitives (polygons,
ellipses, tapered capsules, thick polylines) in *object units* -- the object's
nominal height is 1, y points down -- each with a :class:`Material`. A
:class:`Drawing` rasterises them into an id map at a supersampled resolution
(so parts keep crisp, separable labels), colours each pixel from its
material's texture, shades the result (light gradient, darker rim, thin seams
between parts) and averages it down, which anti-aliases edges and alpha.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

_SHIFT = 4  # sub-pixel bits for cv2 drawing
_MAX_DETAIL_PX = 300  # drawings taller than this are rendered at this height and upscaled
_CANVAS_PX = 60_000  # supersampling budget: fewer samples per pixel for big sprites
_ONE = 1 << _SHIFT


@dataclass(frozen=True)
class Material:
    """How a part is coloured. Colours are RGB in [0, 1]; ``scale`` is the texture period in object units."""

    color: tuple[float, float, float]
    texture: str = "flat"  # flat noise stripes check denim hair foliage metal glass knit brick
    color2: tuple[float, float, float] | None = None
    scale: float = 0.05
    shade: float = 1.0
    rim: float = 0.3  # how much the silhouette rim darkens (0 = flat)
    folds: float = 0.0  # strength of soft light/dark folds (cloth)

    def __post_init__(self) -> None:  # plain float tuples: hashable, so equal materials are shared
        object.__setattr__(self, "color", tuple(float(c) for c in self.color))
        if self.color2 is not None:
            object.__setattr__(self, "color2", tuple(float(c) for c in self.color2))


@dataclass
class Sprite:
    """An object ready to paste: ``rgb`` (h, w, 3) float32 in [0, 1], ``alpha`` (h, w) float32,
    and ``anchor`` = (x, y) of its ground-contact point (feet) in sprite pixels."""

    rgb: np.ndarray
    alpha: np.ndarray
    anchor: tuple[float, float]


@dataclass
class Drawing:
    materials: list[Material] = field(default_factory=list)
    prims: list[tuple] = field(default_factory=list)  # (kind, material index, geometry...)

    # --- building ------------------------------------------------------------
    def _mat(self, material: Material) -> int:
        try:
            return self.materials.index(material)
        except ValueError:
            self.materials.append(material)
            return len(self.materials) - 1

    def poly(self, material: Material, points) -> None:
        self.prims.append(("poly", self._mat(material), np.asarray(points, np.float64)))

    def rect(self, material: Material, x0: float, y0: float, x1: float, y1: float) -> None:
        self.poly(material, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])

    def ellipse(self, material: Material, center, axes, angle: float = 0.0) -> None:
        """``axes`` are semi-axes in object units; ``angle`` in degrees."""
        self.prims.append(("ellipse", self._mat(material), np.asarray(center, np.float64),
                           np.asarray(axes, np.float64), float(angle)))

    def capsule(self, material: Material, p0, p1, r0: float, r1: float) -> None:
        """A limb: a segment with radius r0 at p0 tapering to r1 at p1, round ends."""
        self.prims.append(("capsule", self._mat(material), np.asarray(p0, np.float64),
                           np.asarray(p1, np.float64), float(r0), float(r1)))

    def line(self, material: Material, points, width: float) -> None:
        self.prims.append(("line", self._mat(material), np.asarray(points, np.float64), float(width)))

    # --- rendering -----------------------------------------------------------
    def _bounds(self) -> tuple[float, float, float, float]:
        xs, ys = [], []
        for prim in self.prims:
            kind = prim[0]
            if kind == "poly":
                xs += list(prim[2][:, 0]); ys += list(prim[2][:, 1])
            elif kind == "ellipse":
                r = float(prim[3].max())
                xs += [prim[2][0] - r, prim[2][0] + r]; ys += [prim[2][1] - r, prim[2][1] + r]
            elif kind == "capsule":
                for p, r in ((prim[2], prim[4]), (prim[3], prim[5])):
                    xs += [p[0] - r, p[0] + r]; ys += [p[1] - r, p[1] + r]
            else:
                w = prim[3] / 2
                xs += list(prim[2][:, 0] - w) + list(prim[2][:, 0] + w)
                ys += list(prim[2][:, 1] - w) + list(prim[2][:, 1] + w)
        return min(xs), min(ys), max(xs), max(ys)

    def render(self, rng: np.random.Generator, height_px: float, *, light: tuple[float, float] = (0.0, 0.1),
               anchor: tuple[float, float] = (0.0, 0.0), edge: float = 0.78) -> Sprite:
        """Rasterise at ``height_px`` pixels per object unit.

        ``light`` = brightness change per object unit along (x, -y); ``anchor`` is the ground-contact
        point in object units; ``edge`` darkens the seams between overlapping parts.
        """
        assert len(self.prims) < 255, "too many primitives for a uint8 id map"
        if height_px > _MAX_DETAIL_PX:  # big things: render at a capped size and upscale (cheap, soft edges)
            small = self.render(rng, _MAX_DETAIL_PX, light=light, anchor=anchor, edge=edge)
            f = height_px / _MAX_DETAIL_PX
            size = (max(1, int(round(small.alpha.shape[1] * f))), max(1, int(round(small.alpha.shape[0] * f))))
            return Sprite(rgb=cv2.resize(small.rgb, size, interpolation=cv2.INTER_LINEAR),
                          alpha=cv2.resize(small.alpha, size, interpolation=cv2.INTER_LINEAR),
                          anchor=(small.anchor[0] * f, small.anchor[1] * f))
        x0, y0, x1, y1 = self._bounds()
        # supersample 2-4x, less for wide things so the canvas stays small
        area = max((x1 - x0) * (y1 - y0), 1e-6) * height_px * height_px
        ss = int(np.clip(min(np.ceil(120.0 / max(height_px, 1.0)), np.sqrt(_CANVAS_PX / area)), 1, 4))
        scale = height_px * ss  # supersampled px per object unit
        pad = 2 * ss
        # align the canvas origin to the output pixel grid so downsampling by ss is exact
        ox = np.floor(x0 * height_px) / height_px
        oy = np.floor(y0 * height_px) / height_px
        width = int(np.ceil((x1 - ox) * height_px)) * ss + 2 * pad
        height = int(np.ceil((y1 - oy) * height_px)) * ss + 2 * pad

        def to_px(points: np.ndarray) -> np.ndarray:
            px = (points - (ox, oy)) * scale + pad
            return np.round(px * _ONE).astype(np.int32)

        ids = np.zeros((height, width), np.uint8)
        for number, prim in enumerate(self.prims, start=1):
            kind = prim[0]
            if kind == "poly":
                cv2.fillPoly(ids, [to_px(prim[2])], number, cv2.LINE_8, _SHIFT)
            elif kind == "ellipse":
                center = tuple(int(v) for v in to_px(prim[2]))
                axes = tuple(max(1, int(round(a * scale * _ONE))) for a in prim[3])
                cv2.ellipse(ids, center, axes, prim[4], 0, 360, number, -1, cv2.LINE_8, _SHIFT)
            elif kind == "capsule":
                p0, p1, r0, r1 = prim[2], prim[3], prim[4], prim[5]
                d = p1 - p0
                n = np.hypot(d[0], d[1])
                if n > 1e-9:
                    normal = np.array([-d[1], d[0]]) / n
                    quad = np.array([p0 + normal * r0, p1 + normal * r1, p1 - normal * r1, p0 - normal * r0])
                    cv2.fillPoly(ids, [to_px(quad)], number, cv2.LINE_8, _SHIFT)
                for p, r in ((p0, r0), (p1, r1)):
                    center = tuple(int(v) for v in to_px(p))
                    cv2.circle(ids, center, max(1, int(round(r * scale * _ONE))), number, -1, cv2.LINE_8, _SHIFT)
            else:
                thickness = max(1, int(round(prim[3] * scale)))
                cv2.polylines(ids, [to_px(prim[2])], False, number, thickness, cv2.LINE_8, _SHIFT)

        mask = ids > 0
        mat_of_id = np.zeros(len(self.prims) + 1, np.intp)
        mat_of_id[1:] = [prim[1] for prim in self.prims]
        mats = mat_of_id[ids]
        # object coordinates of every canvas pixel (broadcast row / column vectors)
        u = ((np.arange(width, dtype=np.float32) - pad + 0.5) / scale + ox)[None, :]
        v = ((np.arange(height, dtype=np.float32) - pad + 0.5) / scale + oy)[:, None]
        smooth = _smooth_noise(rng, height, width, cell=max(2.0, 0.06 * scale))
        fine = rng.standard_normal((height, width), dtype=np.float32)
        base = np.array([m.color for m in self.materials], np.float32)
        rgb = base[mats] * (1 + 0.035 * smooth + 0.012 * fine)[..., None]
        present = np.unique(mat_of_id[1:])
        for index in present:
            material = self.materials[index]
            if material.texture == "flat":
                continue
            sel = mats == index
            ys, xs = np.nonzero(sel)
            if not len(ys):
                continue  # hidden under other parts
            r0, r1, c0, c1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            patch = _texture(material, u[:, c0:c1], v[r0:r1], smooth[r0:r1, c0:c1], fine[r0:r1, c0:c1])
            region = rgb[r0:r1, c0:c1]
            np.copyto(region, patch, where=sel[r0:r1, c0:c1, None])
        shade = np.array([m.shade for m in self.materials], np.float32)[mats]
        rim = np.array([m.rim for m in self.materials], np.float32)[mats]
        folds = np.array([m.folds for m in self.materials], np.float32)[mats]
        # light from one side and from above, and a darker rim: reads as volume
        gain = shade * (1.0 + light[0] * (u - (x0 + x1) / 2) - light[1] * (v - (y0 + y1) / 2))
        dist = cv2.distanceTransform(mask.view(np.uint8), cv2.DIST_L2, 3) * np.float32(1.0 / (0.035 * scale))
        gain *= 1.0 - rim * (1.0 - np.sqrt(np.minimum(dist, 1.0)))
        gain *= 1.0 + folds * smooth
        # thin darker seams where one part lies over another (an arm over the torso)
        seam = np.zeros_like(mask)
        seam[:, 1:] |= (ids[:, 1:] != ids[:, :-1]) & mask[:, 1:] & mask[:, :-1]
        seam[1:, :] |= (ids[1:, :] != ids[:-1, :]) & mask[1:, :] & mask[:-1, :]
        if ss >= 3:
            seam = cv2.dilate(seam.view(np.uint8), np.ones((2, 2), np.uint8)).view(bool)
        gain[seam] *= edge
        gain *= mask  # premultiplied by alpha: 0 outside
        rgb *= np.clip(gain, 0.0, 1.6)[..., None]
        np.clip(rgb, 0.0, 1.0, out=rgb)

        alpha = mask.astype(np.float32)
        out_w, out_h = width // ss, height // ss
        if ss > 1:
            alpha = cv2.resize(alpha, (out_w, out_h), interpolation=cv2.INTER_AREA)
            rgb = cv2.resize(rgb, (out_w, out_h), interpolation=cv2.INTER_AREA)
        else:  # no supersampling: soften the staircase a little
            alpha = cv2.GaussianBlur(alpha, (3, 3), 0.5)
            rgb = cv2.GaussianBlur(rgb, (3, 3), 0.5)
        rgb /= np.maximum(alpha, 1e-4)[..., None]
        np.clip(rgb, 0.0, 1.0, out=rgb)
        ax = (anchor[0] - ox) * height_px + pad / ss
        ay = (anchor[1] - oy) * height_px + pad / ss
        return Sprite(rgb=rgb, alpha=alpha, anchor=(float(ax), float(ay)))


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Zero-mean, roughly unit-variance noise that varies over ``cell`` pixels."""
    gh, gw = max(2, int(height / cell) + 2), max(2, int(width / cell) + 2)
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def _texture(material: Material, u: np.ndarray, v: np.ndarray, smooth: np.ndarray, fine: np.ndarray) -> np.ndarray:
    """Colour (h, w, 3) of a canvas patch; ``u`` (1, w) and ``v`` (h, 1) are object coordinates."""
    color = np.asarray(material.color, np.float32)
    other = np.asarray(material.color2 if material.color2 is not None else color * 0.6, np.float32)
    kind, period = material.texture, max(material.scale, 1e-3)

    def mix(t: np.ndarray) -> np.ndarray:
        t = np.broadcast_to(t, smooth.shape)[..., None]
        return color * (1 - t) + other * t

    def tint(t: np.ndarray) -> np.ndarray:
        return color * np.broadcast_to(t, smooth.shape)[..., None]

    if kind == "stripes":
        return mix(np.clip(2.0 * np.sin(2 * np.pi * v / period) + 0.5, 0, 1))
    if kind == "check":
        return mix(0.5 + 0.25 * np.sin(2 * np.pi * u / period) + 0.25 * np.sin(2 * np.pi * v / period))
    if kind == "denim":
        return tint(1 + 0.08 * smooth + 0.07 * fine)
    if kind == "hair":
        return tint(1 + 0.12 * np.sin(2 * np.pi * u / (period * 0.3) + 2 * smooth) + 0.1 * fine)
    if kind == "foliage":
        t = np.clip(0.5 + 0.45 * smooth + 0.25 * fine, 0, 1)
        return other * (1 - t)[..., None] + color * t[..., None]
    if kind == "metal":
        return tint(1 + 0.04 * fine)
    if kind == "glass":
        t = np.clip(0.5 + 0.5 * np.sin(2 * np.pi * (u + 0.6 * v) / period), 0, 1)
        t = np.broadcast_to(t, smooth.shape)[..., None]
        return color * (1 - 0.35 * t) + other * 0.35 * t
    if kind == "knit":
        return tint(1 + 0.06 * np.sin(2 * np.pi * u / (period * 0.2)) + 0.06 * fine)
    if kind == "brick":
        row = np.floor(v / period)
        du = np.abs(((u / (2.2 * period) + 0.5 * (row % 2)) % 1.0) - 0.5) * 2.2 * period
        dv = np.abs((v / period % 1.0) - 0.5) * period
        mortar = ((dv > 0.42 * period) | (du > 1.0 * period)).astype(np.float32)[..., None]
        return tint(1 + 0.06 * smooth + 0.05 * fine) * (1 - mortar) + other * mortar
    if kind == "noise":
        return tint(1 + 0.07 * smooth + 0.04 * fine)
    raise ValueError(f"unknown texture {kind!r}")
