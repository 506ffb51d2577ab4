"""Face-detection latency and throughput: jaxvision MTCNN vs the reference implementations.

    .venv/bin/python benchmarks/face_detection.py [--quick] \
        [--facenet-python /work/refvenv/bin/python] [--tf-python /tmp/tfvenv/bin/python]

Per image latency (median of --repeats, after a warm-up that includes compilation) at
512x512, 640x480 and 1280x720, and throughput for a batch of 8 640x480 images. All
use the same original weights and the same photo (skimage's astronaut, resized with
Pillow, faces included). The references run in their own interpreters (their
dependencies are not jaxvision's): facenet-pytorch's detect_face (torch CPU) and the
`mtcnn` package (TensorFlow); each is skipped when its interpreter cannot import it.
Compile time of ours is reported separately (once per input size).
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
# This folder holds compression.py, which would shadow the stdlib module jax imports.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]


def _face_reference():
  import importlib.util
  spec = importlib.util.spec_from_file_location("face_reference",
                                                os.path.join(HERE, "face_reference.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod
SIZES = [(512, 512), (480, 640), (720, 1280)]  # (H, W)


def test_image(h: int, w: int) -> np.ndarray:
  from PIL import Image
  astro = _face_reference().photos()["astronaut"]
  return np.asarray(Image.fromarray(astro).resize((w, h), Image.BILINEAR))


def _time(fn, repeats: int) -> float:
  ts = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t)
  return statistics.median(ts)


def run_ours(sizes, repeats, batch):
  import jax
  from jaxvision.faces.detector import mtcnn_detector
  det = mtcnn_detector()
  out = {}
  for h, w in sizes:
    x = test_image(h, w)[None]
    t = time.perf_counter()
    n = len(det.detect(x)[0])
    compile_s = time.perf_counter() - t
    out[f"{w}x{h}"] = {"latency": _time(lambda: det.raw(x), repeats), "faces": n,
                       "compile": compile_s}
  h, w = sizes[min(1, len(sizes) - 1)]
  xb = np.repeat(test_image(h, w)[None], batch, 0)
  det.raw(xb)
  out[f"batch{batch}"] = {"latency": _time(lambda: det.raw(xb), repeats)}
  out["device"] = str(jax.devices()[0].device_kind)
  return out


def worker(kind, sizes, repeats, batch):
  """Runs inside the reference's interpreter; prints JSON."""
  out = {}
  if kind == "facenet":
    detect, version = _face_reference().facenet_detector()
    run = lambda x: detect(x)
  else:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from mtcnn import MTCNN
    from importlib.metadata import version as v
    m = MTCNN(device="CPU:0")
    import tensorflow as tf
    version = f"mtcnn {v('mtcnn')} (tensorflow {tf.__version__})"
    run = lambda x: m.detect_faces(list(x) if len(x) > 1 else x[0])
  for h, w in sizes:
    x = test_image(h, w)[None]
    r = run(x)
    out[f"{w}x{h}"] = {"latency": _time(lambda: run(x), repeats)}
  h, w = sizes[min(1, len(sizes) - 1)]
  xb = np.repeat(test_image(h, w)[None], batch, 0)
  run(xb)
  out[f"batch{batch}"] = {"latency": _time(lambda: run(xb), repeats)}
  out["version"] = version
  del r
  print("RESULT " + json.dumps(out))


def run_reference(python, kind, args):
  if not python or not os.path.exists(python):
    return None
  cmd = [python, os.path.abspath(__file__), "--worker", kind, "--repeats", str(args.repeats),
         "--batch", str(args.batch)] + (["--quick"] if args.quick else [])
  try:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
  except subprocess.TimeoutExpired:
    return None
  for line in p.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[7:])
  print(f"({kind} reference failed: {(p.stderr.strip().splitlines() or ['?'])[-1][:200]})")
  return None


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="512x512 only, 3 repeats, batch 2")
  ap.add_argument("--repeats", type=int, default=10)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--facenet-python", default="/work/refvenv/bin/python")
  ap.add_argument("--tf-python", default="/tmp/tfvenv/bin/python")
  ap.add_argument("--worker", choices=("facenet", "tf"), help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.quick:
    args.repeats, args.batch = min(args.repeats, 3), min(args.batch, 2)
  sizes = SIZES[:1] if args.quick else SIZES
  if args.worker:
    return worker(args.worker, sizes, args.repeats, args.batch)

  ours = run_ours(sizes, args.repeats, args.batch)
  refs = {"facenet-pytorch": run_reference(args.facenet_python, "facenet", args),
          "mtcnn (TF)": run_reference(args.tf_python, "tf", args)}
  cols = ["jaxvision"] + [k for k, v in refs.items() if v]
  print(f"\nMTCNN, original weights, median of {args.repeats}; ours on {ours['device']}"
        + "".join(f"; {k}: {refs[k]['version']}" for k in cols[1:]))
  print(f"| input | {' | '.join(cols)} | our compile | faces |")
  print("|---" * (len(cols) + 3) + "|")
  for key in [f"{w}x{h}" for h, w in sizes] + [f"batch{args.batch}"]:
    cells = [ours[key]["latency"]] + [refs[k][key]["latency"] for k in cols[1:]]
    label = key if not key.startswith("batch") else \
        f"batch of {args.batch} ({sizes[min(1, len(sizes) - 1)][1]}x{sizes[min(1, len(sizes) - 1)][0]}), images/s"
    if key.startswith("batch"):
      txt = [f"{args.batch / c:.1f}" for c in cells]
    else:
      txt = [f"{1000 * c:.0f} ms" for c in cells]
    extra = (f"{ours[key]['compile']:.1f} s | {ours[key]['faces']}" if "compile" in ours[key]
             else " | ")
    print(f"| {label} | {' | '.join(txt)} | {extra} |")


if __name__ == "__main__":
  main()
