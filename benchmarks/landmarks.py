"""Landmark throughput: jaxvision's dlib_ert_68 (the regression-tree cascade in JAX, jit)
side by side with dlib's own shape predictor, on the same faces; and MediaPipe's face mesh
(`--model facemesh`) side by side with a TFLite interpreter.

    .venv/bin/python benchmarks/landmarks.py [--quick]
        [--model dlib_ert_68|dlib_ert_5|facemesh] [--repeats N] [--out OUT.json]
        [--dlib-python .venv-peers/bin/python]

facemesh: the same 64 (photo, rectangle) faces as boxes; each call is the whole jitted
landmarker program (rotated 192 x 192 crops from the stacked photos, the network, the
mapping back) with 1 pass (MediaPipe's single-image mode) and 2 passes (the default:
re-cropped from the first mesh). The peer (ai-edge-litert in the peer venv, its default
XNNPACK kernels, batch 1 as the file fixes it) runs the network alone on 192 x 192
crops, so its figure has no crop in it.

Faces: the 24 (photo, rectangle) pairs of the parity test (tests/landmarks/photos.py:
dlib's detector rectangles and fixed ones on skimage's astronaut, camera and eight LFW
crops), repeated to 64. Batch 1: one face per call (median latency -> faces/s). Batch 64:
the 64 faces in one call; the images are stacked once (padded to a common size, their
true sizes passed) and each face names its image, so the batch is one compiled program.
Compilation is timed separately. dlib (benchmarks/peers/landmarks_dlib.py, in the peer
venv) runs one face per call; its batch 64 is a loop over the same 64 faces. Also the
one-time conversion cost: parsing the .dat file (`dlib_ert.read_shape_predictor`), and
`one_photo_batch64`: what `detect-landmarks` runs for a photo with 64 faces (the
Landmarker on the LFW mosaic, its 7 detections repeated, bucket-padded, one call).
`--rounds R` alternates our timing and dlib's R times (the middle round is reported,
with every round and the median and range of the speed-ups).
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
  # What `detect-landmarks` runs: the Landmarker on one photo's faces (64 rectangles on
  # the LFW mosaic: its 7 dlib detections repeated), the image bucket-padded, one call.
  from jaxvision.landmarks import predictor as Pr
  lm = Pr.Landmarker(net, variables, model_name)
  one = [r for n, r in fc if n == "lfw"]
  rects64 = np.array([one[i % len(one)] for i in range(64)], np.float32)
  lfw = rgb(ph["lfw"])
  lm(lfw, rects64)
  times = []
  for _ in range(repeats * 2):
    t = time.perf_counter()
    lm(lfw, rects64)
    times.append(time.perf_counter() - t)
  out["one_photo_batch64_faces_per_s"] = 64 / statistics.median(times)
  return out


def bench_facemesh(repeats: int) -> dict:
  import jax
  from jaxvision import families
  from jaxvision.core import tflite_format
  from jaxvision.core.registry import create_model
  from jaxvision.landmarks import convert
  from jaxvision.landmarks import predictor as Pr
  families.load("models")
  t = time.perf_counter()
  variables = convert.facemesh_variables(tflite_format.read_tflite(convert.facemesh_path()))
  out = {"read_tflite_and_map_s": time.perf_counter() - t}
  ph, fc = faces()
  names = sorted(ph)
  h = max(ph[n].shape[0] for n in names)
  w = max(ph[n].shape[1] for n in names)
  rgb = lambda a: a if a.ndim == 3 else np.repeat(a[..., None], 3, -1)
  stack = np.stack([np.pad(rgb(ph[n]), ((0, h - ph[n].shape[0]), (0, w - ph[n].shape[1]),
                                       (0, 0))) for n in names])
  sizes = np.array([ph[n].shape[:2] for n in names], np.float32)
  index = np.array([names.index(n) for n, _ in fc], np.int32)
  roi = np.array([Pr.facemesh_roi(r) for _, r in fc], np.float32)
  for passes in (1, 2):
    lm = Pr.FaceMeshLandmarker(create_model("facemesh"), variables, passes)
    for b in (1, 64):
      t = time.perf_counter()
      jax.block_until_ready(lm._run(lm.variables, stack, index[:b], sizes, roi[:b]))
      out[f"passes{passes}_batch{b}_compile_s"] = time.perf_counter() - t
      times = []
      for k in range(repeats * (10 if b == 1 else 1)):
        sl = slice(k % 64, k % 64 + 1) if b == 1 else slice(0, 64)
        t = time.perf_counter()
        jax.block_until_ready(lm._run(lm.variables, stack, index[sl], sizes, roi[sl]))
        times.append(time.perf_counter() - t)
      out[f"passes{passes}_batch{b}_faces_per_s"] = b / statistics.median(times)
  return out


_TFLITE_PEER = """
import json, sys, time, statistics, numpy as np
from ai_edge_litert.interpreter import Interpreter
it = Interpreter(model_path=sys.argv[1]); it.allocate_tensors()
inp = it.get_input_details()[0]["index"]
x = np.random.default_rng(0).uniform(0, 1, (64, 1, 192, 192, 3)).astype(np.float32)
it.set_tensor(inp, x[0]); it.invoke()
times = []
for k in range(int(sys.argv[2]) * 64):
  t = time.perf_counter(); it.set_tensor(inp, x[k % 64]); it.invoke()
  times.append(time.perf_counter() - t)
print(json.dumps({"network_faces_per_s": 1 / statistics.median(times)}))
"""


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="3 repeats")
  ap.add_argument("--repeats", type=int, default=10)
  ap.add_argument("--rounds", type=int, default=1,
                  help="dlib models: alternate ours and dlib's timing this many times")
  ap.add_argument("--model", default="dlib_ert_68",
                  choices=("dlib_ert_68", "dlib_ert_5", "facemesh"))
  ap.add_argument("--dlib-python", default=PEERS_PYTHON)
  ap.add_argument("--out", default="landmarks_benchmark.json")
  a = ap.parse_args()
  repeats = 3 if a.quick else a.repeats
  if a.model == "facemesh":
    from jaxvision.landmarks import convert
    res = {"model": a.model, "jaxvision": bench_facemesh(repeats)}
    if os.path.exists(a.dlib_python):
      p = subprocess.run([a.dlib_python, "-c", _TFLITE_PEER, convert.facemesh_path(),
                          str(repeats)], capture_output=True, text=True)
      res["tflite"] = (json.loads(p.stdout) if p.returncode == 0
                       else {"error": p.stderr[-300:]})
    print(json.dumps(res, indent=1))
    with open(a.out, "w") as f:
      json.dump(res, f, indent=1)
    return
  import photos as P
  from jaxvision.landmarks import convert
  rounds = []
  for _ in range(a.rounds):  # ours, then dlib, alternating: the machine's drift hits both
    r = {"jaxvision": bench_jax(a.model, repeats)}
    if os.path.exists(a.dlib_python):
      p = subprocess.run([a.dlib_python, os.path.join(HERE, "peers", "landmarks_dlib.py"),
                          P.skimage_data_dir(), convert.default_path(a.model), str(repeats)],
                         capture_output=True, text=True)
      r["dlib"] = json.loads(p.stdout) if p.returncode == 0 else {"error": p.stderr[-300:]}
    if "batch64_faces_per_s" in r.get("dlib", {}):
      d = r["dlib"]["batch64_faces_per_s"]
      r["speedup_batch64"] = r["jaxvision"]["batch64_faces_per_s"] / d
      r["speedup_one_photo_batch64"] = r["jaxvision"]["one_photo_batch64_faces_per_s"] / d
    rounds.append(r)
  res = {"model": a.model, **rounds[len(rounds) // 2]}
  if len(rounds) > 1:
    res["rounds"] = rounds
    for key in ("speedup_batch64", "speedup_one_photo_batch64"):
      v = sorted(r[key] for r in rounds if key in r)
      if v:
        res[key + "_median"], res[key + "_range"] = statistics.median(v), [v[0], v[-1]]
  print(json.dumps(res, indent=1))
  with open(a.out, "w") as f:
    json.dump(res, f, indent=1)


if __name__ == "__main__":
  main()
