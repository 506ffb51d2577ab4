"""Landmark throughput: jaxvision's dlib_ert_68 (the regression-tree cascade in JAX, jit)
side by side with dlib's own shape predictor, on the same faces.

    .venv/bin/python benchmarks/landmarks.py [--quick] [--model dlib_ert_68|dlib_ert_5]
        [--repeats N] [--out OUT.json] [--dlib-python .venv-peers/bin/python]

Faces: the 24 (photo, rectangle) pairs of the parity test (tests/landmarks/photos.py:
dlib's detector rectangles and fixed ones on skimage's astronaut, camera and eight LFW
crops), repeated to 64. Batch 1: one face per call (median latency -> faces/s). Batch 64:
the 64 faces in one call; the images are stacked once (padded to a common size, their
true sizes passed) and each face names its image, so the batch is one compiled program.
Compilation is timed separately. dlib (benchmarks/peers/landmarks_dlib.py, in the peer
venv) runs one face per call; its batch 64 is a loop over the same 64 faces. Also the
one-time conversion cost: parsing the .dat file (`dlib_ert.read_shape_predictor`).
Timings on a shared machine are not final figures.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEERS_PYTHON = os.path.join(ROOT, ".venv-peers", "bin", "python")
# this folder's compression.py would shadow the `compression` module jax imports
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.insert(0, os.path.join(ROOT, "tests", "landmarks"))
sys.path.insert(0, ROOT)


def faces(data_dir: str | None = None):
  """(photos, [(photo name, rect)] x 64): the parity test's faces (detector rectangles as
  dlib found them on these photos, recorded here so that no detector runs) + fixed ones."""
  import photos as P
  ph = P.photos(data_dir)
  detected = {"astronaut": [[175, 76, 265, 166]],
              "lfw": [[366, 20, 474, 128], [247, 163, 354, 271], [127, 163, 235, 271],
                      [8, 20, 115, 128], [247, 20, 354, 128], [378, 163, 485, 271],
                      [127, 32, 235, 140]]}
  pairs = [(n, r) for n, rs in detected.items() for r in rs]
  pairs += [(n, r) for n, rs in P.fixed_rects().items() for r in rs]
  return ph, [pairs[i % len(pairs)] for i in range(64)]


def bench_jax(model_name: str, repeats: int) -> dict:
  import jax
  from jaxvision.core.registry import create_model
  from jaxvision.landmarks import convert, dlib_ert
  from jaxvision import families
  families.load("models")
  t = time.perf_counter()
  dlib_ert.read_shape_predictor(convert.default_path(model_name))
  parse_s = time.perf_counter() - t
  variables, dims = convert.load_predictor(model_name)
  variables = jax.device_put(variables)   # once: numpy arguments are copied in per call
  net = create_model(model_name, **dims)
  ph, fc = faces()
  names = sorted(ph)
  h = max(ph[n].shape[0] for n in names)
  w = max(ph[n].shape[1] for n in names)
  def rgb(a):
    return a if a.ndim == 3 else np.repeat(a[..., None], 3, -1)
  stack = np.stack([np.pad(rgb(ph[n]), ((0, h - ph[n].shape[0]), (0, w - ph[n].shape[1]),
                                       (0, 0))) for n in names])
  sizes = np.array([ph[n].shape[:2] for n in names], np.float32)
  index = np.array([names.index(n) for n, _ in fc], np.int32)
  rects = np.array([r for _, r in fc], np.float32)
  run = jax.jit(lambda v, im, r, i, s: net.apply(v, im, r, i, s))
  out = {"parse_dat_s": parse_s}
  for b in (1, 64):
    args = (variables, stack, rects[:b], index[:b], sizes)
    t = time.perf_counter()
    jax.block_until_ready(run(*args))
    out[f"batch{b}_compile_s"] = time.perf_counter() - t
    times = []
    for k in range(repeats * (20 if b == 1 else 1)):
      a = (variables, stack, rects[k % 64:k % 64 + 1] if b == 1 else rects, index[k % 64:k % 64 + 1]
           if b == 1 else index, sizes)
      t = time.perf_counter()
      jax.block_until_ready(run(*a))
      times.append(time.perf_counter() - t)
    out[f"batch{b}_faces_per_s"] = b / statistics.median(times)
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="3 repeats")
  ap.add_argument("--repeats", type=int, default=10)
  ap.add_argument("--model", default="dlib_ert_68", choices=("dlib_ert_68", "dlib_ert_5"))
  ap.add_argument("--dlib-python", default=PEERS_PYTHON)
  ap.add_argument("--out", default="landmarks_benchmark.json")
  a = ap.parse_args()
  repeats = 3 if a.quick else a.repeats
  res = {"model": a.model, "jaxvision": bench_jax(a.model, repeats)}
  import photos as P
  from jaxvision.landmarks import convert
  if os.path.exists(a.dlib_python):
    p = subprocess.run([a.dlib_python, os.path.join(HERE, "peers", "landmarks_dlib.py"),
                        P.skimage_data_dir(), convert.default_path(a.model), str(repeats)],
                       capture_output=True, text=True)
    res["dlib"] = json.loads(p.stdout) if p.returncode == 0 else {"error": p.stderr[-300:]}
  if "batch64_faces_per_s" in res.get("dlib", {}):
    res["speedup_batch64"] = (res["jaxvision"]["batch64_faces_per_s"]
                              / res["dlib"]["batch64_faces_per_s"])
  print(json.dumps(res, indent=1))
  with open(a.out, "w") as f:
    json.dump(res, f, indent=1)


if __name__ == "__main__":
  main()
