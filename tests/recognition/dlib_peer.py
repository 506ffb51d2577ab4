"""dlib's whole face pipeline on real faces, run in the peer venv (`import dlib`).

    .venv-peers/bin/python tests/recognition/dlib_peer.py OUT.npz

Photos: those of benchmarks/peers/recognition_dlib.py with faces (astronaut, its mirror
image, eight LFW faces upscaled 8x on one canvas) and large ones whose chips need dlib's
image pyramid: the astronaut upscaled 3x and turned by 25 degrees (one halving), one LFW
face upscaled to 640 px (two). For each face of dlib's HOG detector: the rectangle, the 5-point
shape (dlib's integers), `get_face_chip(img, shape, 150, 0.25)` and
`face_recognition_model_v1.compute_face_descriptor(img, shape)`; for each photo with
several faces, `get_face_chips(img, shapes)` (one pyramid over all faces).
"""
import os
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks", "peers"))
import recognition_dlib as R  # noqa: E402


def photos() -> list[np.ndarray]:
  base = R.photos()
  astro = Image.fromarray(base[0])
  big = astro.resize((1536, 1536), Image.BICUBIC)
  lfw = np.load(os.path.join(R.skimage_data_dir(), "lfw_subset.npy"))
  face = Image.fromarray((lfw[19] * 255).round().astype(np.uint8)).resize((640, 640),
                                                                         Image.BICUBIC)
  return [base[0], base[1], base[3], np.asarray(big.rotate(25, Image.BICUBIC)),
          np.repeat(np.asarray(face)[..., None], 3, -1)]


def main():
  import dlib
  out_path = sys.argv[1]
  models = R.models_dir()
  det = dlib.get_frontal_face_detector()
  sp = dlib.shape_predictor(os.path.join(models, "shape_predictor_5_face_landmarks.dat"))
  rec = dlib.face_recognition_model_v1(
      os.path.join(models, "dlib_face_recognition_resnet_model_v1.dat"))
  ims = [np.ascontiguousarray(p) for p in photos()]
  res = {"rects": [], "parts": [], "chips": [], "descriptors": [], "photo": [],
         "multi_chips": [], "multi_photo": []}
  for i, im in enumerate(ims):
    shapes = []
    for rect in det(im, 1 if im.shape[0] < 600 else 0):  # large photos: no upsampling
      shape = sp(im, rect)
      shapes.append(shape)
      res["rects"].append([rect.left(), rect.top(), rect.right(), rect.bottom()])
      res["parts"].append([[p.x, p.y] for p in shape.parts()])
      res["chips"].append(np.asarray(dlib.get_face_chip(im, shape, size=150, padding=0.25)))
      res["descriptors"].append(np.asarray(rec.compute_face_descriptor(im, shape)))
      res["photo"].append(i)
    if len(shapes) > 1:
      for chip in dlib.get_face_chips(im, dlib.full_object_detections(shapes), 150, 0.25):
        res["multi_chips"].append(np.asarray(chip))
        res["multi_photo"].append(i)
  out = {k: np.asarray(v) for k, v in res.items()}
  out["descriptors"] = out["descriptors"].astype(np.float32)
  for i, im in enumerate(ims):
    out[f"photo_{i}"] = im
  np.savez(out_path, **out)
  print(f"{len(res['chips'])} faces in {len(ims)} photos")


if __name__ == "__main__":
  main()
