"""Camera effects applied to a finished scene: exposure, contrast, gamma, colour cast, blur, noise, JPEG."""
from __future__ import annotations

import cv2
import numpy as np

from hkd.data.synth.config import SynthConfig


def _motion_kernel(length: int, angle: float) -> np.ndarray:
    kernel = np.zeros((length, length), np.float32)
    c = (length - 1) / 2
    dx, dy = np.cos(angle) * c, np.sin(angle) * c
    cv2.line(kernel, (int(round(c - dx)), int(round(c - dy))), (int(round(c + dx)), int(round(c + dy))), 1.0, 1,
             cv2.LINE_AA)
    return kernel / kernel.sum()


def camera(rng: np.random.Generator, image: np.ndarray, config: SynthConfig) -> tuple[np.ndarray, int]:
    """Return the uint8 RGB image a camera would deliver from the float32 RGB scene, and a JPEG quality."""
    mean = float(image.mean())
    contrast = float(rng.uniform(*config.contrast))
    gains = float(rng.uniform(*config.brightness)) * (1.0 + rng.uniform(-config.color_cast, config.color_cast, 3))
    gamma = float(rng.uniform(*config.gamma))
    # exposure, contrast, colour cast and gamma are one tone curve per channel: apply it as a lookup table
    levels = np.linspace(0.0, 1.0, 256)[:, None]
    curve = np.clip(((levels - mean) * contrast + mean) * gains[None, :], 0.0, 1.0) ** gamma
    lut = np.clip(curve * 255.0 + 0.5, 0, 255).astype(np.uint8).reshape(1, 256, 3)
    out = cv2.LUT(np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8), lut)
    if rng.random() < 0.3:  # lens vignetting
        h, w = out.shape[:2]
        yy, xx = np.ogrid[:h, :w]
        r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
        falloff = (1.0 - float(rng.uniform(0.1, 0.35)) * np.clip(r2 / 2, 0, 1)).astype(np.float32)
        out = (out * falloff[..., None] + 0.5).astype(np.uint8)
    if rng.random() < config.blur_prob:
        if rng.random() < 0.5:
            out = cv2.filter2D(out, -1, _motion_kernel(int(rng.integers(2, 5)) * 2 + 1, float(rng.uniform(0, np.pi))))
        else:
            out = cv2.GaussianBlur(out, (0, 0), float(rng.uniform(0.6, 1.7)))
    sigma = float(rng.uniform(*config.noise_sigma))
    if sigma > 0.25:
        noisy = out + rng.standard_normal(out.shape, dtype=np.float32) * np.float32(sigma)
        out = np.clip(noisy + 0.5, 0, 255).astype(np.uint8)
    quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
    return out, quality
