"""Deterministic synthetic images with learnable class structure (pure numpy).

The rule: image ``i`` of class ``k`` (of ``K``) is a sinusoidal grating at angle
``180° * k / K`` with a random phase, spatial frequency, contrast and brightness, plus
Gaussian pixel noise; colour images get a random tint that carries no class information.
Orientation is the only class signal, so a small CNN learns it in an epoch or two, while
noise and low-contrast images keep it from being trivial.

Images are produced in aligned chunks of :data:`CHUNK` indices, each from its own seeded
generator, so image ``i`` is identical whichever range, partition or process asks for it.
"""
from __future__ import annotations

import numpy as np

CHUNK = 1000


def class_names(n_classes: int) -> list[str]:
    """Self-describing names: the grating angle in degrees (``angle_000``, ``angle_018``...)."""
    return [f"angle_{round(180 * k / n_classes):03d}" for k in range(n_classes)]


def _chunk(seed: int, chunk_no: int, n_classes: int, height: int, width: int, channels: int):
    rng = np.random.default_rng([seed, chunk_no, height, width, channels, n_classes])
    n = CHUNK
    labels = rng.integers(0, n_classes, n)
    angle = np.pi * labels / n_classes + rng.normal(0, 0.04, n)
    cycles = rng.uniform(2.5, 4.5, n)                      # periods across the image
    phase = rng.uniform(0, 2 * np.pi, n)
    contrast = rng.uniform(0.15, 0.5, n)
    brightness = rng.uniform(0.3, 0.7, n)
    yy, xx = np.meshgrid(np.linspace(-0.5, 0.5, height), np.linspace(-0.5, 0.5, width),
                         indexing="ij")
    proj = (np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy)
    wave = np.sin(2 * np.pi * cycles[:, None, None] * proj + phase[:, None, None])
    base = brightness[:, None, None] + contrast[:, None, None] * wave        # n, h, w
    if channels == 3:
        tint = rng.uniform(0.6, 1.0, (n, 1, 1, 3))
        img = base[..., None] * tint
    else:
        img = base[..., None]
    img = img + rng.normal(0, 0.12, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), labels.astype(np.uint8)


def synthetic_images(start: int, count: int, n_classes: int, height: int, width: int,
                     channels: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Images ``start .. start+count-1``: (uint8[count, h, w, c], labels uint8[count])."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if not 2 <= n_classes <= 256:
        raise ValueError(f"n_classes must be between 2 and 256, got {n_classes}")
    images, labels = [], []
    first, last = start // CHUNK, (start + count - 1) // CHUNK if count else start // CHUNK - 1
    for c in range(first, last + 1):
        imgs, labs = _chunk(seed, c, n_classes, height, width, channels)
        lo = max(start - c * CHUNK, 0)
        hi = min(start + count - c * CHUNK, CHUNK)
        images.append(imgs[lo:hi])
        labels.append(labs[lo:hi])
    if not images:
        return np.empty((0, height, width, channels), np.uint8), np.empty((0,), np.uint8)
    return np.concatenate(images), np.concatenate(labels)
