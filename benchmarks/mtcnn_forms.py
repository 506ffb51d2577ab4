"""MTCNN's nets as flax modules against their fast forms (jaxvision.faces.programs), in-process.

    .venv/bin/python benchmarks/mtcnn_forms.py fast   [FOLDER]   # the detector as shipped
    .venv/bin/python benchmarks/mtcnn_forms.py module [FOLDER]   # the modules' apply

Run each form in its own process (JAX caches traces per function: one process cannot time
both), alternating. FOLDER (default /tmp/ff, made by benchmarks/make_face_folder.py): the
photos are decoded first, the programs compiled and two photos detected as a warm-up; then
three passes over the folder and the median of 7 single-photo detections of three of them
(the CLI's one device per core).
"""
from __future__ import annotations

import glob
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.insert(0, os.path.dirname(HERE))


def main():
  mode = sys.argv[1]
  folder = sys.argv[2] if len(sys.argv) > 2 else "/tmp/ff"
  from jaxvision.core import compile as jc
  jc.use_cpu_cores()
  import numpy as np
  from PIL import Image
  from jaxvision.faces import detector as D
  from jaxvision.faces import models as M
  from jaxvision.faces.convert import load_mtcnn_weights
  files = sorted(glob.glob(os.path.join(folder, "*.png")))
  ims = [np.asarray(Image.open(f).convert("RGB")) for f in files]
  if mode == "module":
    D._released_form = lambda *a: None
    v = load_mtcnn_weights("auto")
    det = D.FaceDetector({"pnet": (M.PNet(), v["pnet"]), "rnet": (M.RNet(), v["rnet"]),
                          "onet": (M.ONet(), v["onet"])}, D.DetectorConfig())
  else:
    det = D.mtcnn_detector()
  det.prepare(len(ims))
  list(det.detect_each(ims[:2]))
  ts = []
  for _ in range(3):
    t = time.perf_counter()
    out = list(det.detect_each(ims))
    ts.append(time.perf_counter() - t)
  print(mode, "folder", " ".join(f"{x:.2f}" for x in ts), "s,", sum(len(f) for f in out), "faces")
  for im, name in list(zip(ims, files))[:: max(1, len(ims) // 3)][:3]:
    next(det.detect_each([im]))
    t2 = []
    for _ in range(7):
      t = time.perf_counter()
      list(det.detect_each([im]))
      t2.append(time.perf_counter() - t)
    print(mode, os.path.basename(name), f"{np.median(t2) * 1e3:.0f} ms")


if __name__ == "__main__":
  main()
