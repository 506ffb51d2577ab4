"""dlib's own shape predictor timed on the landmark benchmark's faces (peer venv: dlib-bin).

    .venv-peers/bin/python benchmarks/peers/landmarks_dlib.py SKIMAGE_DATA MODEL.dat REPEATS

Prints JSON {"batch1_faces_per_s", "batch64_faces_per_s"}: dlib runs one face per call, so
"batch 64" is 64 calls in a loop over the same 64 (photo, rectangle) pairs the jaxvision
side uses (benchmarks/landmarks.py faces()).
"""
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, os.path.join(ROOT, "tests", "landmarks"))
import dlib  # noqa: E402
import numpy as np  # noqa: E402

import landmarks as bench  # noqa: E402  (benchmarks/landmarks.py: the same faces)


def main():
  data, model, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
  sp = dlib.shape_predictor(model)
  photos, faces = bench.faces(data)
  imgs = {k: np.ascontiguousarray(v) for k, v in photos.items()}
  rects = [(imgs[n], dlib.rectangle(*r)) for n, r in faces]
  sp(*rects[0])
  one = []
  for i in range(repeats * 20):
    t = time.perf_counter()
    sp(*rects[i % len(rects)])
    one.append(time.perf_counter() - t)
  many = []
  for _ in range(repeats):
    t = time.perf_counter()
    for im, r in rects[:64]:
      sp(im, r)
    many.append(time.perf_counter() - t)
  print(json.dumps({"batch1_faces_per_s": 1 / statistics.median(one),
                    "batch64_faces_per_s": 64 / statistics.median(many)}))


if __name__ == "__main__":
  main()
