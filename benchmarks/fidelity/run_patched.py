"""Main venv: jaxvision's MTCNN on images with candidate fixes patched in at run time.

    .venv/bin/python benchmarks/fidelity/run_patched.py OUT.json [--exact-windows]
        [--buffers per_scale,proposals,stage2,stage3] IMAGE...

--exact-windows replaces boxes.cell_windows with floor((2c + 1) / scale) computed the
reference's way (a correctly rounded float32 division, tabulated with numpy per level and
gathered), instead of (2c + 1) * (1 / scale). Works with the one-jit detector of HEAD
(`_stage1` calls cell_windows with a static scale). Investigation tool.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path[:] = [p for p in sys.path if not p.rstrip("/").endswith(("benchmarks", "fidelity"))]


def exact_cell_windows(idx, cols, scale, window=12, length=16384):
  from jaxvision.faces import boxes as B
  xp = B.array_module(idx)
  t = np.arange(length, dtype=np.float32)
  s = np.float32(scale)
  start = np.floor((2 * t + 1) / s).astype(np.float32)
  end = np.floor((2 * t + window) / s).astype(np.float32)
  start, end = xp.asarray(start), xp.asarray(end)
  yy, xx = idx // cols, idx % cols
  return xp.stack([start[xx], start[yy], end[xx], end[yy]], axis=1)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("out")
  ap.add_argument("images", nargs="+")
  ap.add_argument("--exact-windows", action="store_true")
  ap.add_argument("--buffers", default=None)
  a = ap.parse_args()
  from jaxvision.core import io
  from jaxvision.faces import boxes as B
  from jaxvision.faces import detector as D
  if a.exact_windows:
    B.cell_windows = exact_cell_windows
    D.cell_windows = exact_cell_windows
  cfg = {}
  if a.buffers:
    cfg = dict(zip(("per_scale", "proposals", "stage2", "stage3"), map(int, a.buffers.split(","))))
  det = D.mtcnn_detector(**cfg)
  res = {}
  for p in a.images:
    res[p] = det.detect(io.load_image_file(p))[0]
    print(os.path.basename(p), len(res[p]), flush=True)
  json.dump(res, open(a.out, "w"), indent=1)


if __name__ == "__main__":
  main()
