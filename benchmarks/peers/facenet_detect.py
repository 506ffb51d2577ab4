"""facenet-pytorch's MTCNN on a folder of images, as a user would run it; jaxvision's JSON.

    .venv-peers/bin/python benchmarks/peers/facenet_detect.py DIR_OR_FILES... --json OUT.json

The peer of `jaxvision detect-faces DIR --json OUT.json` (benchmarks/face_detection.py
times the two side by side): one process that imports torch and facenet-pytorch, builds
`MTCNN(keep_all=True, device='cpu')` (its bundled original weights, thresholds 0.6/0.7/0.7,
factor 0.709, min face 20) and for each image reads it with Pillow and calls
`.detect(img, landmarks=True)`. Pixels are made as jaxvision's reader makes them (grey
repeated to RGB, RGBA/LA composited on white), so both see the same RGB image. Writes
{path: [{"box": [x1, y1, x2, y2], "score", "landmarks": [[x, y] * 5]}]} with the faces of
each image sorted by score (best first, as jaxvision's), paths as given or as
os.path.join(DIR, name) for the files of a folder (sorted by name).

Needs the dev-only peer venv (benchmarks/peers/setup.sh); not a jaxvision dependency.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def list_inputs(inputs: list[str]) -> list[str]:
  out = []
  for p in inputs:
    if os.path.isdir(p):
      out += [os.path.join(p, n) for n in sorted(os.listdir(p))
              if n.lower().endswith(IMAGE_EXT) and os.path.isfile(os.path.join(p, n))]
    else:
      out.append(p)
  return out


def load_rgb(path: str):
  """Pillow -> (H, W, 3) uint8 numpy, with jaxvision.core.io's rules for the common modes
  (RGB, L, RGBA, LA, P): alpha composited on white as c * a + (1 - a) in float32."""
  import numpy as np
  from PIL import Image
  with Image.open(path) as im:
    im.load()
    if im.mode == "P":
      im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode not in ("RGB", "L", "RGBA", "LA"):
      im = im.convert("RGB")
    a = np.asarray(im)
  if a.ndim == 2:
    a = a[:, :, None]
  if a.shape[-1] in (2, 4):
    f = a.astype(np.float32) / 255.0
    colour, alpha = f[..., :-1], f[..., -1:]
    a = (np.clip(colour * alpha + (1.0 - alpha), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
  if a.shape[-1] == 1:
    a = np.repeat(a, 3, axis=-1)
  return np.ascontiguousarray(a)


def faces_of(boxes, probs, points) -> list[dict]:
  import numpy as np
  if boxes is None:
    return []
  order = np.argsort(-np.asarray(probs, np.float64), kind="stable")
  return [{"box": [float(v) for v in boxes[i]], "score": float(probs[i]),
           "landmarks": [[float(x), float(y)] for x, y in points[i]]} for i in order]


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("inputs", nargs="+", help="image files and/or folders")
  ap.add_argument("--json", required=True, metavar="OUT.json")
  ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
  args = ap.parse_args(argv)
  t0 = time.time()
  import torch
  from facenet_pytorch import MTCNN
  from PIL import Image
  if args.threads:
    torch.set_num_threads(args.threads)
  mtcnn = MTCNN(keep_all=True, device="cpu")
  paths = list_inputs(args.inputs)
  result = {}
  for p in paths:
    img = Image.fromarray(load_rgb(p))
    boxes, probs, points = mtcnn.detect(img, landmarks=True)
    result[p] = faces_of(boxes, probs, points)
  with open(args.json, "w") as f:
    json.dump(result, f, indent=1)
  n = sum(len(v) for v in result.values())
  print(f"{len(result)} image(s), {n} face(s) -> {args.json} ({time.time() - t0:.2f}s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
