"""Development only: run a reference MTCNN on real photos and write its detections.

    .venv-peers/bin/python benchmarks/face_reference.py \
        --out tests/faces/data/mtcnn_reference.json

The reference is facenet-pytorch's `detect_face` (a port of davidsandberg/facenet's
align/detect_face.py, itself a port of the original MATLAB demo) with its own copies of
the original weights, thresholds 0.6/0.7/0.7, factor 0.709, min face 20. It needs torch
and facenet-pytorch (not jaxvision's dependencies); torchvision is shimmed with an exact
re-implementation of `torchvision.ops.batched_nms` (greedy IoU NMS, stable descending
sort) because only that function is used.

The photos are `tests/faces/reference.py`'s `photos()` (numpy and Pillow only, so this venv
without scikit-image and the tests build identical pixels): astronaut, camera (grey),
lfw_mosaic, wide, coffee.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reference():
  """tests/faces/reference.py, loaded by path (this venv need not import jaxvision)."""
  spec = importlib.util.spec_from_file_location(
      "face_photos", os.path.join(ROOT, "tests", "faces", "reference.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def photos(data_dir: str | None = None) -> dict[str, np.ndarray]:
  """{name: uint8 array (H, W, 3) or (H, W) for grey}: the reference photos."""
  return _reference().photos(data_dir)


def _shim_torchvision():
  """Just enough torchvision for facenet_pytorch.models.utils.detect_face, when none is
  installed (the peer venv of benchmarks/peers/setup.sh has a stand-in package; it wins)."""
  import torch
  if importlib.util.find_spec("torchvision") is not None:
    return

  def nms(boxes, scores, thr):
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    alive = torch.ones(len(b), dtype=torch.bool)
    keep = []
    for i in range(len(b)):
      if not alive[i]:
        continue
      keep.append(i)
      xx1 = torch.maximum(b[i, 0], b[:, 0])
      yy1 = torch.maximum(b[i, 1], b[:, 1])
      xx2 = torch.minimum(b[i, 2], b[:, 2])
      yy2 = torch.minimum(b[i, 3], b[:, 3])
      inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
      iou = inter / (area[i] + area - inter)
      alive &= ~(iou > thr)
    return order[torch.as_tensor(keep, dtype=torch.long)]

  def batched_nms(boxes, scores, idxs, thr):
    if boxes.numel() == 0:
      return torch.empty((0,), dtype=torch.long)
    off = idxs.to(boxes) * (boxes.max() + 1)
    return nms(boxes + off[:, None], scores, thr)

  tv = types.ModuleType("torchvision")
  ops = types.ModuleType("torchvision.ops")
  ops_boxes = types.ModuleType("torchvision.ops.boxes")
  ops_boxes.batched_nms = batched_nms
  ops.boxes = ops_boxes
  ops.batched_nms = batched_nms
  transforms = types.ModuleType("torchvision.transforms")
  transforms.functional = types.ModuleType("torchvision.transforms.functional")
  tv.ops, tv.transforms = ops, transforms
  for name, mod in {"torchvision": tv, "torchvision.ops": ops, "torchvision.ops.boxes": ops_boxes,
                    "torchvision.transforms": transforms,
                    "torchvision.transforms.functional": transforms.functional}.items():
    sys.modules.setdefault(name, mod)
  if "requests" not in sys.modules and importlib.util.find_spec("requests") is None:
    req = types.ModuleType("requests")
    req.adapters = types.ModuleType("requests.adapters")
    req.adapters.HTTPAdapter = object
    sys.modules["requests"] = req
    sys.modules["requests.adapters"] = req.adapters


def facenet_detector(threads: int | None = None):
  """(detect(batch uint8 (B, H, W, 3)) -> per image (boxes+scores (n, 5), points (n, 5, 2)),
  version string)."""
  _shim_torchvision()
  import torch
  if threads:
    torch.set_num_threads(threads)
  import facenet_pytorch
  from facenet_pytorch.models.mtcnn import MTCNN
  from facenet_pytorch.models.utils.detect_face import detect_face
  from importlib.metadata import version
  m = MTCNN(device="cpu")  # loads data/{pnet,rnet,onet}.pt

  def detect(batch):
    with torch.no_grad():
      boxes, points = detect_face(np.ascontiguousarray(batch), 20, m.pnet, m.rnet, m.onet,
                                  [0.6, 0.7, 0.7], 0.709, "cpu")
    return [(np.asarray(b, np.float64).reshape(-1, 5), np.asarray(p, np.float64).reshape(-1, 5, 2))
            for b, p in zip(boxes, points)]
  del facenet_pytorch
  return detect, f"facenet-pytorch {version('facenet-pytorch')} (torch {torch.__version__})"


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="tests/faces/data/mtcnn_reference.json")
  ap.add_argument("--skimage-data", default=None, help="scikit-image's data folder")
  args = ap.parse_args()
  detect, ref = facenet_detector()
  result = {"reference": ref, "settings": "detect_face(min_face=20, thresholds=[0.6, 0.7, 0.7], "
            "factor=0.709); torchvision.ops.batched_nms shimmed exactly",
            "photos": {}}
  for name, img in photos(args.skimage_data).items():
    rgb = img if img.ndim == 3 else np.repeat(img[..., None], 3, -1)
    t = time.time()
    (b, p), = detect(rgb[None])
    faces = [{"box": [round(float(v), 3) for v in bb[:4]], "score": round(float(bb[4]), 6),
              "landmarks": [[round(float(x), 3), round(float(y), 3)] for x, y in pp]}
             for bb, pp in zip(b, p)]
    result["photos"][name] = {"shape": list(img.shape), "faces": faces}
    print(f"{name}: {img.shape}, {len(faces)} faces, {time.time() - t:.2f}s")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print("wrote", args.out)


if __name__ == "__main__":
  main()
