"""Deterministic stand-ins shared by the compression tests (pure numpy, no jaxvision).

`random_params` gives plausible codec parameters without `init` (no compile, and no
dependence on JAX's PRNG, whose streams may change between JAX versions): every leaf
drawn from N(0, 0.2²) by numpy, in sorted module / parameter order. The caller then
solves the entropy bottleneck's quantiles exactly (`EntropyBottleneck.solve_quantiles`).
`fixture_image` is a smooth gradient with a little noise. Both also build the workdirs
and inputs of the pre-move fixtures in tests/compression/data (see make_fixtures.py,
which imports this file by path), so they must never change.
"""
from __future__ import annotations

import numpy as np


def random_params(shapes: dict, seed: int) -> dict:
  """{module: {param: float32 array}} for {module: {param: shape}}, N(0, 0.2²)."""
  rng = np.random.default_rng(seed)
  return {mod: {k: rng.normal(0, 0.2, shapes[mod][k]).astype(np.float32)
                for k in sorted(shapes[mod])} for mod in sorted(shapes)}


def fixture_image(h: int, w: int, seed: int = 0) -> np.ndarray:
  """uint8 (h, w, 3): a colour gradient plus uniform noise in [0, 20)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:h, :w]
  img = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1) % 256 + rng.integers(0, 20, (h, w, 3))
  return np.clip(img, 0, 255).astype(np.uint8)


def fixture_params(shapes: dict, seed: int, synthesis_scale: float) -> dict:
  """`random_params` with g_s kernels scaled by `synthesis_scale` and 0.5 added to the
  last bias, so that the decoded pixels are varied and mostly unclipped (the plain
  N(0, 0.2²) synthesis saturates to 0 / 255)."""
  p = random_params(shapes, seed)
  for mod in p:
    if mod.startswith("g_s_") and "kernel" in p[mod]:
      p[mod]["kernel"] = p[mod]["kernel"] * np.float32(synthesis_scale)
  p["g_s_6"]["bias"] = p["g_s_6"]["bias"] + np.float32(0.5)
  return p
