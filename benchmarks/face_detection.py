"""Face-detection latency and throughput: jaxvision MTCNN vs the reference implementations.

    .venv/bin/python benchmarks/face_detection.py [--quick] [--folder DIR] [--rounds R] \
        [--out OUT.json] [--facenet-python .venv-peers/bin/python] [--tf-python TF_VENV/bin/python]

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

--rounds R (default 1): the warm folder runs and every latency figure are taken R times,
ours and the peer's alternating (the order swapped each round); the tables give medians,
ranges and the median of the per-round speed-ups. On a shared machine whose speed drifts
by a third within minutes, a ratio is only as good as the nearness of its two timings.

Per image latency (median of --repeats, after a warm-up that includes compilation) at
512x512, 640x480 and 1280x720, and throughput for a batch of 8 640x480 images. All
use the same original weights and the same photo (skimage's astronaut, resized with
Pillow, faces included). The references run in their own interpreters (their
dependencies are not jaxvision's), served one figure at a time so that their timings
alternate with ours: facenet-pytorch's detect_face (torch CPU) and the `mtcnn` package
(TensorFlow); each is skipped when its interpreter cannot import it.
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


def _input(key: str, sizes, batch: int) -> np.ndarray:
  """The (B, H, W, 3) input of figure `key`: "WxH" (one photo) or "batchB" (B copies of
  the second size)."""
  if key.startswith("batch"):
    h, w = sizes[min(1, len(sizes) - 1)]
    return np.repeat(test_image(h, w)[None], batch, 0)
  w, h = (int(v) for v in key.split("x"))
  return test_image(h, w)[None]


def _keys(sizes, batch: int) -> list[str]:
  return [f"{w}x{h}" for h, w in sizes] + [f"batch{batch}"]


class Ours:
  """jaxvision's MTCNN in this process, as the `jaxvision` command runs it."""

  def __init__(self, sizes, batch):
    from jaxvision.core.compile import use_cpu_cores
    use_cpu_cores()  # as the `jaxvision` command runs: one XLA CPU device per core
    import jax
    from jaxvision.faces.detector import mtcnn_detector
    self.det, self.sizes, self.batch = mtcnn_detector(), sizes, batch
    self.device = str(jax.devices()[0].device_kind)
    self.inputs, self.first = {}, {}
    for key in _keys(sizes, batch):  # the first call of each: compilation (or the cache)
      x = self.inputs[key] = _input(key, sizes, batch)
      t = time.perf_counter()
      n = len(self.det.detect(x)[0])
      self.first[key] = {"compile": time.perf_counter() - t, "faces": n}

  def latency(self, key: str, repeats: int) -> float:
    x = self.inputs[key]
    return _time(lambda: self.det.raw(x), repeats)


def _reference_runner(kind):
  """(run(batch), version) of reference `kind` in this interpreter."""
  if kind == "facenet":
    detect, version = _face_reference().facenet_detector()
    return detect, version
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  from mtcnn import MTCNN
  from importlib.metadata import version as v
  m = MTCNN(device="CPU:0")
  import tensorflow as tf
  return (lambda x: m.detect_faces(list(x) if len(x) > 1 else x[0]),
          f"mtcnn {v('mtcnn')} (tensorflow {tf.__version__})")


def worker(kind, sizes, batch):
  """Runs inside the reference's interpreter: prints READY {version}, then answers each
  request line {"key", "repeats"} on stdin with RESULT {"latency"} (the median of
  `repeats` calls, after one warm-up call the first time a key comes)."""
  run, version = _reference_runner(kind)
  print("READY " + json.dumps({"version": version}), flush=True)
  inputs = {}
  for line in sys.stdin:
    req = json.loads(line)
    key = req["key"]
    if key not in inputs:
      inputs[key] = _input(key, sizes, batch)
      run(inputs[key])
    x = inputs[key]
    print("RESULT " + json.dumps({"latency": _time(lambda: run(x), req["repeats"])}), flush=True)


class Reference:
  """A reference detector served by its own interpreter (its dependencies are not
  jaxvision's), asked for one figure at a time so that its runs alternate with ours."""

  def __init__(self, python, kind, args):
    self.kind, self.version, self.proc = kind, None, None
    if not python:
      return
    if not os.path.exists(python):
      print(f"({kind} reference left out: no interpreter at {python})")
      return
    cmd = [python, os.path.abspath(__file__), "--worker", kind, "--batch", str(args.batch)]
    cmd += ["--quick"] if args.quick else []
    # its stderr into a file: a pipe nobody reads would stall a chatty worker once full
    import tempfile
    self.log = tempfile.TemporaryFile("w+")
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=self.log, text=True)
    reply = self._read("READY ")
    if reply is None:
      print(f"({kind} reference failed: {self._error()})")
      self.proc = None
    else:
      self.version = reply["version"]

  def _read(self, tag):
    for line in self.proc.stdout:
      if line.startswith(tag):
        return json.loads(line[len(tag):])
    return None

  def _error(self) -> str:
    self.proc.kill()
    self.proc.wait()
    self.log.seek(0)
    return (self.log.read().strip().splitlines() or ["?"])[-1][:200]

  def latency(self, key: str, repeats: int) -> float | None:
    if self.proc is None:
      return None
    self.proc.stdin.write(json.dumps({"key": key, "repeats": repeats}) + "\n")
    self.proc.stdin.flush()
    reply = self._read("RESULT ")
    if reply is None:
      print(f"({self.kind} reference failed: {self._error()})")
      self.proc = None
      return None
    return reply["latency"]

  def close(self):
    if self.proc is not None:
      self.proc.stdin.close()
      self.proc.wait(timeout=60)


def run_latency(args, sizes) -> dict:
  """Warmed-up latencies, ours and the references', in --rounds alternating rounds: per
  round and figure, each runs --repeats calls (median) right after the other, the order
  swapped every round, so that a slow minute of a shared machine hits both columns."""
  ours = Ours(sizes, args.batch)
  refs = [Reference(args.facenet_python, "facenet", args), Reference(args.tf_python, "tf", args)]
  refs = [r for r in refs if r.proc is not None]
  keys = _keys(sizes, args.batch)
  runs = {"jaxvision": ours.latency, **{r.kind: r.latency for r in refs}}
  times = {name: {k: [] for k in keys} for name in runs}
  for rnd in range(args.rounds):
    for key in keys:
      order = list(runs) if rnd % 2 == 0 else list(runs)[::-1]
      for name in order:
        t = runs[name](key, args.repeats)
        if t is not None:
          times[name][key].append(t)
  for r in refs:
    r.close()
  names = {"facenet": "facenet-pytorch", "tf": "mtcnn (TF)"}
  out = {"repeats": args.repeats, "rounds": args.rounds, "device": ours.device,
         "jaxvision": {k: {"latency": statistics.median(v), "rounds": v, **ours.first[k]}
                       for k, v in times["jaxvision"].items()}}
  for r in refs:
    t = times[r.kind]
    if not all(t.values()):
      continue
    out[names[r.kind]] = {"version": r.version, **{k: {
        "latency": statistics.median(v), "rounds": v,
        # ratios within a round (ours and theirs minutes apart at most)
        "speedup_rounds": [a / b for a, b in zip(v, times["jaxvision"][k])]}
        for k, v in t.items()}}
  return out


def print_latency(out: dict, sizes, batch: int) -> None:
  cols = ["jaxvision"] + [k for k in ("facenet-pytorch", "mtcnn (TF)") if k in out]
  rounds = out["rounds"]
  print(f"\nMTCNN, original weights, median of {out['repeats']} calls"
        + (f", {rounds} alternating rounds (median; range)" if rounds > 1 else "")
        + f"; ours on {out['device']}"
        + "".join(f"; {k}: {out[k]['version']}" for k in cols[1:]))
  head = ["input", *cols, *(f"speed-up vs {k}" for k in cols[1:]), "our first call", "faces"]
  print("| " + " | ".join(head) + " |")
  print("|---" * len(head) + "|")
  for key in _keys(sizes, batch):
    per = key.startswith("batch")
    fmt = (lambda c: f"{batch / c:.1f}") if per else (lambda c: f"{1000 * c:.0f}")
    unit = "" if per else " ms"

    def cell(r):
      v = r["rounds"]
      m = fmt(r["latency"]) + unit
      return m if len(v) < 2 else f"{m} ({fmt(max(v) if per else min(v))}-{fmt(min(v) if per else max(v))})"

    ratio = []
    for k in cols[1:]:
      q = out[k][key]["speedup_rounds"]
      ratio.append(f"{statistics.median(q):.2f}x" + (f" ({min(q):.2f}-{max(q):.2f})"
                                                     if len(q) > 1 else ""))
    label = key if not per else \
        f"batch of {batch} ({sizes[min(1, len(sizes) - 1)][1]}x{sizes[min(1, len(sizes) - 1)][0]}), images/s"
    o = out["jaxvision"][key]
    row = [label, *(cell(out[k][key]) for k in cols), *ratio, f"{o['compile']:.1f} s",
           str(o["faces"])]
    print("| " + " | ".join(row) + " |")


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
  peer = args.facenet_python
  fn = None
  if peer and os.path.exists(peer):
    fn = [peer, os.path.join(HERE, "peers", "facenet_detect.py")] + inputs
  else:
    print(f"(no facenet-pytorch peer at {peer}: bash benchmarks/peers/setup.sh)")
  runs = [("jaxvision, empty compile cache", jv + ["--json", f"{work}/jv_cold.json"], env)]
  if fn:
    runs.append(("facenet-pytorch, first run", fn + ["--json", f"{work}/fn_1.json"], None))
  for k in range(args.rounds):  # the warm runs, alternating (the order swapped each round)
    tag = "" if args.rounds == 1 else f" (round {k + 1})"
    sfx = "" if k == 0 else f"_{k + 1}"
    pair = [(f"jaxvision, warm compile cache{tag}", jv + ["--json", f"{work}/jv_warm{sfx}.json"],
             env)]
    if fn:
      pair.append((f"facenet-pytorch, second run{tag}", fn + ["--json", f"{work}/fn_2{sfx}.json"],
                   None))
    runs += pair if k % 2 == 0 else pair[::-1]
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
  if args.rounds > 1:
    warm = {who: [r["wall_s"] for name, r in res["runs"].items()
                  if name.startswith(who) and "(round" in name]
            for who in ("jaxvision", "facenet-pytorch")}
    res["warm_median_s"] = {k: statistics.median(v) for k, v in warm.items() if v}
    if all(warm.values()):
      q = [b / a for a, b in zip(warm["jaxvision"], warm["facenet-pytorch"])]
      res["warm_speedup_rounds"] = q
      print(f"warm, {args.rounds} alternating rounds: jaxvision median "
            f"{res['warm_median_s']['jaxvision']:.2f} s, facenet-pytorch "
            f"{res['warm_median_s']['facenet-pytorch']:.2f} s; speed-up median "
            f"{statistics.median(q):.2f}x (range {min(q):.2f}-{max(q):.2f}x)")
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
  ap.add_argument("--repeats", type=int, default=10, help="calls per figure and round")
  ap.add_argument("--rounds", type=int, default=1,
                  help="alternating rounds of ours and the references' figures (default 1)")
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
    return worker(args.worker, sizes, args.batch)

  report = {"command": sys.argv, "machine": _machine()}
  if args.folder:
    report["folder"] = run_folder(args)
    _write(args.out, report, say=args.folder_only)
  if args.folder_only:
    return
  report["latency"] = run_latency(args, sizes)
  _write(args.out, report)
  print_latency(report["latency"], sizes, args.batch)


if __name__ == "__main__":
  main()
