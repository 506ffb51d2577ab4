"""Milliseconds per image: feed-forward style networks vs the Gatys optimisation baseline.

  .venv/bin/python benchmarks/style.py            # 512x512 and 1024x1024
  .venv/bin/python benchmarks/style.py --quick    # 128x128, 1 repeat, few Gatys steps

Johnson (full width: c9s1-32 ... c9s1-3) and texture_net (5 scales, 8 channels) are timed
per image after compilation (median of --repeats). Gatys is VGG-16 L-BFGS for --gatys-steps
steps (the papers run hundreds; the time per step is measured and scaled to --gatys-paper-steps
for the ratio). VGG weights do not change the timing, so random weights are used.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

# benchmarks/ must not shadow modules (benchmarks/compression.py vs jax's `compression`).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [os.path.dirname(_HERE)]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def timed(fn, *args, repeats: int = 3) -> float:
  jax.block_until_ready(fn(*args))  # compile + warm up
  ts = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append(time.perf_counter() - t)
  return float(np.median(ts)) * 1e3


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--gatys-steps", type=int, default=10)
  ap.add_argument("--gatys-paper-steps", type=int, default=500)
  ap.add_argument("--quick", action="store_true")
  args = ap.parse_args()
  if args.quick:
    args.sizes, args.repeats, args.gatys_steps = [128], 1, 2

  from jaxvision import models
  from jaxvision.core import perceptual
  from jaxvision.style import gatys, generators  # noqa: F401  (generators: johnson, texture_net)
  fn, _ = perceptual.load_descriptor(None)
  dev = jax.devices()[0]
  print(f"device: {dev.platform} ({dev.device_kind}), {jax.device_count()} device(s)")
  rows = []
  for s in args.sizes:
    x = jnp.asarray(np.random.RandomState(0).rand(1, s, s, 3).astype(np.float32))
    row = {"size": f"{s}x{s}"}
    for name in ("johnson", "texture_net"):
      m = models.create(name)
      v = jax.jit(m.init)(jax.random.PRNGKey(0), x)
      apply = jax.jit(lambda v, x, m=m: m.apply(v, x))
      row[name] = timed(apply, v, x, repeats=args.repeats)
    style_img = np.random.RandomState(1).rand(256, 256, 3).astype(np.float32)
    content = np.asarray(x[0])
    gatys.gatys(fn, content, style_img, steps=args.gatys_steps)  # compile
    t = time.perf_counter()
    gatys.gatys(fn, content, style_img, steps=args.gatys_steps)
    per_step = (time.perf_counter() - t) * 1e3 / args.gatys_steps
    row["gatys_step"] = per_step
    row["gatys"] = per_step * args.gatys_paper_steps
    rows.append(row)

  print(f"\n| image | johnson ms | texture_net ms | Gatys L-BFGS ms/step | Gatys {args.gatys_paper_steps} "
        "steps ms | Gatys / johnson |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['size']} | {r['johnson']:.1f} | {r['texture_net']:.1f} | {r['gatys_step']:.1f} | "
          f"{r['gatys']:.0f} | {r['gatys'] / r['johnson']:.0f}x |")


if __name__ == "__main__":
  main()
