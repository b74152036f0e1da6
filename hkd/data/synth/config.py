"""Every knob of the SynthPed generator, in one frozen dataclass.

Ranges are ``(low, high)`` pairs; probabilities are in [0, 1]. The defaults
are the benchmark: changing any of them changes the dataset (the config is
stored in ``annotations.json["info"]["config"]`` so a dataset says how it was
made).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

MIN_SIDE = 96  # px; below this a scene cannot hold a 20 px person plus context


@dataclass(frozen=True)
class SynthConfig:
    # --- image -------------------------------------------------------------
    width: int = 640
    """Output width in px."""
    height: int = 480
    """Output height in px."""

    # --- people ------------------------------------------------------------
    people: tuple[int, int] = (3, 12)
    """Number of individually placed people per image (crowd members come on top)."""
    person_height_min: float = 12.0
    """Smallest full-body height (px) of a ground-plane person; heights are log-uniform
    between this and ``person_height_max`` and the ground plane decides where the feet go."""
    person_height_max: float = 0.62
    """Largest full-body height of a ground-plane person, as a fraction of the image height."""
    real_fraction: float = 0.4
    """Share of people pasted from real vtest.avi cutouts (the rest are procedural figures)."""
    child_fraction: float = 0.12
    """Share of procedural figures drawn with child proportions (0.55-0.8 of adult stature)."""
    walking_fraction: float = 0.7
    """Share of procedural figures in a walking pose (the rest stand)."""
    free_scale_prob: float = 0.18
    """Probability that an image also holds one close-up person off the ground plane."""
    free_scale_height: tuple[float, float] = (0.35, 0.9)
    """Height of that close-up person, as a fraction of the image height."""
    free_scale_below: tuple[float, float] = (0.0, 0.2)
    """How far below the bottom tenth of the image that close-up person's feet are, as a fraction
    of their height: 0.3-0.6 with heights above 1.0 puts people taller than the frame in view from
    the head down, cut by the bottom border (the split that measures ``detect(zoom_out=...)``)."""
    border_cut_prob: float = 0.35
    """Probability that an image moves one person across the left/right/bottom border."""

    # --- crowds ------------------------------------------------------------
    crowd_prob: float = 0.35
    """Probability that an image holds a crowd (a group of overlapping people)."""
    crowd_size: tuple[int, int] = (3, 9)
    """Number of people in a crowd group."""
    crowd_ignore_min_people: int = 5
    crowd_ignore_max_height: float = 60.0
    crowd_ignore_prob: float = 0.6
    """Ignore rule: a crowd of at least ``crowd_ignore_min_people`` whose median
    full-body height is below ``crowd_ignore_max_height`` px is, with this
    probability, annotated as ONE box (iscrowd=1, ignore=1) around its visible
    pixels instead of one box per person."""

    # --- occlusion and clutter ----------------------------------------------
    occluder_prob: float = 0.3
    """Probability, per person of at least 30 px, that an occluder (car, bench,
    bin, low wall) is placed just in front of them."""
    parked_cars: tuple[int, int] = (0, 3)
    """Extra cars/benches/bins placed at random on the ground."""
    hard_negatives: tuple[int, int] = (3, 10)
    """Poles, lamps, signs, trees, bins, bollards, columns, doors, mannequins per image."""
    face_prob: float = 0.2
    """Probability of a close-up face-like hard negative (poster or near the border)."""
    min_height: float = 20.0
    """People whose (clipped) box is shorter than this get ignore=1."""
    min_visible: float = 0.05
    """People less visible than this (vis_ratio) are not annotated at all."""

    # --- backgrounds ---------------------------------------------------------
    background_mix: tuple[float, float, float] = (0.3, 0.2, 0.5)
    """Weights of (real photographs, the vtest.avi background plate, procedural streets)."""
    cast_shadow_prob: float = 0.55
    """Probability of a sunny image: cast shadows along one light direction."""

    # --- photometric -------------------------------------------------------
    brightness: tuple[float, float] = (0.65, 1.25)
    contrast: tuple[float, float] = (0.75, 1.15)
    gamma: tuple[float, float] = (0.75, 1.35)
    color_cast: float = 0.1
    """Max relative gain per RGB channel."""
    blur_prob: float = 0.3
    """Probability of motion or defocus blur."""
    noise_sigma: tuple[float, float] = (0.0, 7.0)
    """Gaussian noise standard deviation in 8-bit levels."""
    jpeg_quality: tuple[int, int] = (60, 95)

    # ---------------------------------------------------------------------
    def __post_init__(self) -> None:
        if self.width < MIN_SIDE or self.height < MIN_SIDE:
            raise ValueError(f"image size {self.width}x{self.height} is too small: "
                             f"width and height must be >= {MIN_SIDE}")
        for name in ("real_fraction", "child_fraction", "walking_fraction", "free_scale_prob", "border_cut_prob",
                     "crowd_prob", "crowd_ignore_prob", "occluder_prob", "face_prob", "cast_shadow_prob",
                     "blur_prob", "min_visible"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} must be in [0, 1]")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, tuple) and len(value) == 2 and value[0] > value[1]:
                raise ValueError(f"{field.name}={value}: low must be <= high")
        if min(self.background_mix) < 0 or sum(self.background_mix) <= 0:
            raise ValueError(f"background_mix={self.background_mix} must be non-negative with a positive sum")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError(f"jpeg_quality={self.jpeg_quality} must lie within [1, 100]")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SynthConfig":
        """Build a config from plain data (e.g. JSON); unknown keys are an error naming the choices."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown SynthConfig key(s) {unknown}; choose from {sorted(names)}")
        kwargs = {}
        for key, value in data.items():
            default = getattr(cls, key)
            kwargs[key] = tuple(value) if isinstance(default, tuple) else type(default)(value)
        return cls(**kwargs)
