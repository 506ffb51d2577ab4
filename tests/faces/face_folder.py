"""Writes a benchmark folder of real photos with real faces, from embedded data only.

    .venv/bin/python benchmarks/make_face_folder.py OUT_DIR [--list]

24 images in 21 different sizes (160x120 up to 1920x1080, odd ones such as 333x517 and
999x701; three share 640x480 and two 512x512, as in a camera folder): scikit-image's bundled
photos (astronaut, coffee, chelsea, camera, rocket, stereo_motorcycle, horse, brick, grass,
gravel, hubble, ihc, retina, page, text, coins, moon, logo), resized with Pillow, with
faces from `skimage.data.lfw_subset()` (25x25 grey LFW crops) pasted at several scales:
small ones 28-52 px (MTCNN boxes of about 20-40 px) and large ones up to 300 px. Most are
RGB PNGs; some are grey ('L') and some RGBA (partly transparent: jaxvision composites on
white, and benchmarks/peers/facenet_detect.py does the same). One photo has no face.

Deterministic: the same files every run (fixed layout and a seeded generator; PNG is
lossless). Needs scikit-image and Pillow (the main venv). `--list` prints the layout only.
`tests/faces/test_small_faces.py` uses `lfw_faces` and `paste_faces` from here.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
# This folder holds compression.py, which would shadow the stdlib module other code imports.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]

_cache: dict = {}


def lfw_faces() -> np.ndarray:
  """The 100 face crops of skimage's LFW subset as uint8 (100, 25, 25)."""
  if "lfw" not in _cache:
    from skimage import data
    _cache["lfw"] = (data.lfw_subset()[:100] * 255).round().astype(np.uint8)
  return _cache["lfw"]


def photo(name: str) -> np.ndarray:
  """A scikit-image photo as uint8 (H, W, 3), (H, W) for grey or (H, W, 4) for logo."""
  from skimage import data
  x = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
  if x.dtype == bool:
    x = x.astype(np.uint8) * 255
  return np.asarray(x, np.uint8)


def resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
  from PIL import Image
  return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((w, h), Image.LANCZOS))


def face_image(i: int, size: int, tint=(1.0, 0.86, 0.74)) -> np.ndarray:
  """LFW face i resized (bicubic) to size x size: uint8 (size, size, 3) multiplied by the
  skin `tint`, or (size, size) grey when tint is None."""
  from PIL import Image
  g = np.asarray(Image.fromarray(lfw_faces()[i]).resize((size, size), Image.BICUBIC))
  if tint is None:
    return g
  return np.clip(g[..., None].astype(np.float32) * np.asarray(tint, np.float32) + 0.5,
                 0, 255).astype(np.uint8)


def paste_faces(canvas: np.ndarray, faces) -> np.ndarray:
  """Copy of canvas (H, W[, C]) with faces [(lfw index, size, x, y)] pasted (top-left x, y).
  Grey canvases get the grey face; RGB(A) ones the tinted face (alpha set opaque there)."""
  out = np.array(canvas, np.uint8, copy=True)
  for i, s, x, y in faces:
    if out.ndim == 2:
      out[y:y + s, x:x + s] = face_image(i, s, tint=None)
    else:
      out[y:y + s, x:x + s, :3] = face_image(i, s)
      if out.shape[-1] == 4:
        out[y:y + s, x:x + s, 3] = 255
  return out


def place(rng, w: int, h: int, sizes, avoid=()) -> list[tuple[int, int, int]]:
  """Non-overlapping positions (size, x, y) for faces of `sizes` (a margin of 6 px), away
  from the boxes in `avoid` [(x1, y1, x2, y2)]; sizes that do not fit are dropped."""
  taken = [tuple(a) for a in avoid]
  out = []
  for s in sizes:
    for _ in range(400):
      if w - s - 4 <= 4 or h - s - 4 <= 4:
        break
      x, y = int(rng.integers(4, w - s - 4)), int(rng.integers(4, h - s - 4))
      box = (x - 6, y - 6, x + s + 6, y + s + 6)
      if all(box[2] <= a[0] or a[2] <= box[0] or box[3] <= a[1] or a[3] <= box[1] for a in taken):
        taken.append(box)
        out.append((s, x, y))
        break
  return out


# (file name, source photo, width, height, mode, face sizes, keep-out box of a real face)
# mode: RGB, L (grey) or RGBA. Face sizes are pasted LFW crops; MTCNN's box of a pasted
# crop is about 0.75 of its side wide (the crops are tight).
SMALL = (28, 32, 36, 40, 44, 48, 52)
LAYOUT = [
    ("astronaut_512x512.png", "astronaut", 512, 512, "RGB", (30, 40, 52), (150, 30, 300, 200)),
    ("coffee_600x400.png", "coffee", 600, 400, "RGB", (), None),
    ("chelsea_451x300.png", "chelsea", 451, 300, "RGB", (36, 90), None),
    ("camera_grey_512x512.png", "camera", 512, 512, "L", (32, 48, 120), (170, 90, 290, 230)),
    ("rocket_640x427.png", "rocket", 640, 427, "RGB", (28, 44, 150), None),
    ("motorcycle_640x480.png", "motorcycle", 640, 480, "RGB", (32, 40, 52, 110), None),
    ("horse_640x480_grey.png", "horse", 640, 480, "L", (36, 60), None),
    ("brick_640x480.png", "brick", 640, 480, "RGB", (28, 48, 180), None),
    ("grass_1280x720.png", "grass", 1280, 720, "RGB", (30, 34, 40, 52, 96, 260), None),
    ("gravel_1920x1080.png", "gravel", 1920, 1080, "RGB", SMALL + (140, 300), None),
    ("hubble_333x517.png", "hubble_deep_field", 333, 517, "RGB", (32, 48, 110), None),
    ("ihc_517x333.png", "immunohistochemistry", 517, 333, "RGBA", (36, 52, 120), None),
    ("retina_1000x1000.png", "retina", 1000, 1000, "RGB", (28, 40, 64, 200), None),
    ("page_800x600_grey.png", "page", 800, 600, "L", (30, 44, 150), None),
    ("text_257x383.png", "text", 257, 383, "RGB", (34, 80), None),
    ("coins_999x701_grey.png", "coins", 999, 701, "L", (28, 36, 48, 130), None),
    ("moon_300x300.png", "moon", 300, 300, "RGB", (40, 100), None),
    ("logo_555x777_rgba.png", "logo", 555, 777, "RGBA", (32, 44, 160), None),
    ("astronaut_1024x768.png", "astronaut", 1024, 768, "RGB", (28, 36, 48, 90), (300, 40, 600, 380)),
    ("chelsea_720x1280.png", "chelsea", 720, 1280, "RGB", (30, 40, 52, 240), None),
    ("coffee_1111x555.png", "coffee", 1111, 555, "RGB", (32, 40, 120), None),
    ("rocket_160x120.png", "rocket", 160, 120, "RGB", (40,), None),
    ("camera_768x1024_grey.png", "camera", 768, 1024, "L", (30, 44, 200), (250, 130, 440, 360)),
    ("motorcycle_401x299_rgba.png", "motorcycle", 401, 299, "RGBA", (34, 70), None),
]


def build(name: str, src: str, w: int, h: int, mode: str, sizes, avoid, seed: int):
  """-> (array uint8 in `mode`, faces [(lfw index, size, x, y)])."""
  rng = np.random.default_rng(seed)
  img = photo(src)
  if img.ndim == 3 and img.shape[-1] == 4:
    img = img[..., :3] if mode != "RGBA" else img
  if mode == "L" and img.ndim == 3:
    img = (img[..., :3].astype(np.float32) @ np.float32([0.299, 0.587, 0.114]) + 0.5
           ).astype(np.uint8)
  elif mode != "L" and img.ndim == 2:
    img = np.repeat(img[..., None], 3, -1)
  img = resize(img, w, h)
  if mode == "RGBA" and img.shape[-1] == 3:  # a transparent vignette around the edges
    yy, xx = np.mgrid[0:h, 0:w]
    edge = np.minimum(np.minimum(xx, w - 1 - xx), np.minimum(yy, h - 1 - yy))
    alpha = np.clip(edge * 8, 0, 255).astype(np.uint8)
    img = np.concatenate([img, alpha[..., None]], -1)
  spots = place(rng, w, h, sizes, [avoid] if avoid else [])
  faces = [(int(rng.integers(0, 100)), s, x, y) for s, x, y in spots]
  return paste_faces(img, faces), faces


def images():
  """[(file name, uint8 array, pasted faces)] of the whole folder, in LAYOUT order."""
  return [(n,) + build(n, src, w, h, mode, sizes, avoid, seed)
          for seed, (n, src, w, h, mode, sizes, avoid) in enumerate(LAYOUT)]


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("out_dir")
  ap.add_argument("--list", action="store_true", help="print the layout, write nothing")
  args = ap.parse_args(argv)
  from PIL import Image
  if not args.list:
    os.makedirs(args.out_dir, exist_ok=True)
  sizes = set()
  for name, arr, faces in images():
    sizes.add(arr.shape[:2])
    mode = "L" if arr.ndim == 2 else ("RGBA" if arr.shape[-1] == 4 else "RGB")
    print(f"{name}: {arr.shape[1]}x{arr.shape[0]} {mode}, {len(faces)} pasted faces "
          f"{sorted(s for _, s, _, _ in faces)}")
    if not args.list:
      Image.fromarray(arr, mode).save(os.path.join(args.out_dir, name), compress_level=3)
  print(f"{len(LAYOUT)} images, {len(sizes)} sizes" + ("" if args.list else f" -> {args.out_dir}"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
