"""Face-detection latency and throughput: jaxvision MTCNN vs the reference implementations.

    .venv/bin/python benchmarks/face_detection.py [--quick] [--folder DIR] [--out OUT.json] \
        [--facenet-python .venv-peers/bin/python] [--tf-python TF_VENV/bin/python]

--folder DIR: a folder of photos as a user has them, timed as a user runs the command: the
whole `jaxvision detect-faces DIR --json OUT.json` (a subprocess, wall clock: start-up,
imports, image decoding, compilation and detection) first with an empty compilation cache
(JAXVISION_COMPILE_CACHE=<new empty folder>: every program compiled) and then again with
that cache filled (warm), side by side with its facenet-pytorch peer
(benchmarks/peers/facenet_detect.py DIR, one process, PIL + MTCNN(keep_all=True).detect
per image, run twice too), in the same run. DIR is made with benchmarks/make_face_folder.py
(24 photos, 21 sizes, faces 20-300 px) when it does not exist or is empty. The two JSON
outputs are compared face by face (tests/faces/face_match.py: IoU >= 0.95, score within
0.01, landmarks within 2 px). --folder-only skips the per-image latencies below;
--files passes the folder's files instead of the folder.

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
ROOT = os.path.dirname(HERE)
PEERS_PYTHON = os.path.join(ROOT, ".venv-peers", "bin", "python")
# This folder holds compression.py, which would shadow the stdlib module jax imports.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]


def _load(name):
  """benchmarks/<name>.py, loaded by path (this folder is kept off sys.path)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(HERE, f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _face_reference():
  return _load("face_reference")


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
  from jaxvision.core.compile import use_cpu_cores
  use_cpu_cores()  # as the `jaxvision` command runs: one XLA CPU device per core
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
  if not python:
    return None
  if not os.path.exists(python):
    print(f"({kind} reference left out: no interpreter at {python})")
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


# ---------------------------------------------------------------- the folder, as a user runs it
def _machine() -> dict:
  import platform
  return {"cpus": os.cpu_count(), "platform": platform.platform(),
          "python": platform.python_version()}


def _write(path: str, report: dict, say: bool = True) -> None:
  with open(path, "w") as f:
    json.dump(report, f, indent=1)
  if say:
    print(f"(figures -> {path})")


def _jaxvision_cmd() -> list[str]:
  exe = os.path.join(os.path.dirname(sys.executable), "jaxvision")
  return [exe] if os.path.exists(exe) else [sys.executable, "-m", "jaxvision.cli"]


def _timed(cmd, env=None, timeout=3600) -> dict:
  """Runs cmd; -> {"wall_s", "rc", "last_line"} (wall clock of the whole process)."""
  t = time.perf_counter()
  p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
  wall = time.perf_counter() - t
  lines = (p.stdout.strip() or p.stderr.strip()).splitlines()
  out = {"wall_s": wall, "rc": p.returncode, "last_line": lines[-1][:300] if lines else ""}
  if p.returncode:
    out["stderr"] = p.stderr[-2000:]
  return out


def _folder_images(folder: str) -> list[str]:
  ext = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
  return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.lower().endswith(ext))


def run_folder(args) -> dict:
  import tempfile
  folder = os.path.abspath(args.folder)
  if not os.path.isdir(folder) or not _folder_images(folder):
    print(f"making {folder} (benchmarks/make_face_folder.py)")
    _load("make_face_folder").main([folder])
  files = _folder_images(folder)
  from PIL import Image
  sizes = sorted({Image.open(p).size for p in files})
  work = tempfile.mkdtemp(prefix="face_bench_")
  cache = os.path.join(work, "xla_cache")
  os.makedirs(cache)
  inputs = files if args.files else [folder]
  env = dict(os.environ, JAXVISION_COMPILE_CACHE=cache)
  jv = _jaxvision_cmd() + ["detect-faces"] + inputs
  res = {"folder": folder, "images": len(files), "sizes": len(sizes), "runs": {}}
  runs = [("jaxvision, empty compile cache", jv + ["--json", f"{work}/jv_cold.json"], env),
          ("jaxvision, warm compile cache", jv + ["--json", f"{work}/jv_warm.json"], env)]
  peer = args.facenet_python
  if peer and os.path.exists(peer):
    fn = [peer, os.path.join(HERE, "peers", "facenet_detect.py")] + inputs
    runs += [("facenet-pytorch, first run", fn + ["--json", f"{work}/fn_1.json"], None),
             ("facenet-pytorch, second run", fn + ["--json", f"{work}/fn_2.json"], None)]
  else:
    print(f"(no facenet-pytorch peer at {peer}: bash benchmarks/peers/setup.sh)")
  for name, cmd, e in runs:
    shown = [os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd]
    if args.files and len(files) > 3:
      k = shown.index(files[0])
      shown[k:k + len(files)] = shown[k:k + 2] + [f"... ({len(files)} files)"]
    print(f"{name}: {' '.join(shown)}", flush=True)
    r = _timed(cmd, e)
    res["runs"][name] = r
    print(f"  {r['wall_s']:.1f} s, exit {r['rc']}: {r['last_line']}", flush=True)
  cache_files = sum(len(f) for _, _, f in os.walk(cache))
  res["compile_cache_entries"] = cache_files
  if os.path.exists(f"{work}/jv_warm.json") and os.path.exists(f"{work}/fn_2.json"):
    sys.path.insert(0, ROOT)
    from tests.faces import face_match as m
    ours, ref = json.load(open(f"{work}/jv_warm.json")), json.load(open(f"{work}/fn_2.json"))
    base = lambda d: {os.path.basename(k): v for k, v in d.items()}
    ours, ref = base(ours), base(ref)
    cmp = {k: m.compare(ours.get(k, []), ref[k]) for k in ref}
    pairs = [r for c in cmp.values() for r in c["pairs"]]
    res["fidelity"] = {
        "faces_facenet": sum(len(v) for v in ref.values()),
        "faces_jaxvision": sum(len(v) for v in ours.values()),
        "matched_within_tolerance": sum(r["ok"] for r in pairs),
        "matched_outside_tolerance": sum(not r["ok"] for r in pairs),
        "only_jaxvision": sum(len(c["only_got"]) for c in cmp.values()),
        "only_facenet": sum(len(c["only_ref"]) for c in cmp.values()),
        "min_iou": min((r["iou"] for r in pairs), default=None),
        "max_score_diff": max((r["score_diff"] for r in pairs), default=None),
        "max_landmark_px": max((r["landmark_px"] for r in pairs), default=None),
        "differences": m.summary(cmp).splitlines()}
  res["outputs"] = work
  n = len(files)
  print(f"\nFolder {folder}: {n} images, {len(sizes)} sizes; whole command, wall clock "
        f"(start-up, imports, decoding, compilation, detection); {os.cpu_count()} CPUs")
  print("| run | wall | per image |")
  print("|---|---|---|")
  for name, r in res["runs"].items():
    print(f"| {name} | {r['wall_s']:.1f} s | {1000 * r['wall_s'] / n:.0f} ms |"
          + ("" if r["rc"] == 0 else f" (exit {r['rc']})"))
  if "fidelity" in res:
    f = res["fidelity"]
    print(f"fidelity vs facenet-pytorch: {f['faces_jaxvision']} / {f['faces_facenet']} faces, "
          f"{f['matched_within_tolerance']} within tolerance, {f['matched_outside_tolerance']} "
          f"outside, {f['only_jaxvision']} only ours, {f['only_facenet']} only facenet")
    for line in f["differences"]:
      print("  " + line)
  return res


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="512x512 only, 3 repeats, batch 2")
  ap.add_argument("--repeats", type=int, default=10)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--facenet-python", default=PEERS_PYTHON,
                  help="interpreter with facenet-pytorch (default: the peer venv of "
                  "benchmarks/peers/setup.sh)")
  ap.add_argument("--folder", metavar="DIR", help="also time detect-faces on this folder "
                  "(made with make_face_folder.py when missing or empty)")
  ap.add_argument("--folder-only", action="store_true", help="only the folder timing")
  ap.add_argument("--files", action="store_true",
                  help="give detect-faces the folder's files instead of the folder")
  ap.add_argument("--out", default="face_detection_benchmark.json", metavar="OUT.json",
                  help="where the JSON of all figures goes (default: %(default)s)")
  ap.add_argument("--tf-python", default=os.environ.get("JAXVISION_TF_PYTHON", ""),
                  help="interpreter with the `mtcnn` TF package (default: $JAXVISION_TF_PYTHON; "
                  "without one the TF column is left out)")
  ap.add_argument("--worker", choices=("facenet", "tf"), help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.quick:
    args.repeats, args.batch = min(args.repeats, 3), min(args.batch, 2)
  sizes = SIZES[:1] if args.quick else SIZES
  if args.worker:
    return worker(args.worker, sizes, args.repeats, args.batch)

  report = {"command": sys.argv, "machine": _machine()}
  if args.folder:
    report["folder"] = run_folder(args)
    _write(args.out, report, say=args.folder_only)
  if args.folder_only:
    return
  ours = run_ours(sizes, args.repeats, args.batch)
  refs = {"facenet-pytorch": run_reference(args.facenet_python, "facenet", args),
          "mtcnn (TF)": run_reference(args.tf_python, "tf", args)}
  report["latency"] = {"repeats": args.repeats, "jaxvision": ours,
                       **{k: v for k, v in refs.items() if v}}
  _write(args.out, report)
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
