"""Writes the mixed-size photo folder of the compression benchmark:

    python benchmarks/make_compression_folder.py OUT_DIR

12 of scikit-image's embedded photos (no download), each resized with Pillow (Lanczos) to
its own size between 377x283 and 1000x667 (12 sizes, 3.1 megapixels in all); two are
grey (coded as RGB and written back as grey by both codecs). PNG files, sorted names."""
import os
import sys

import numpy as np

# (skimage.data name, width, height)
PHOTOS = (
    ("astronaut", 512, 512), ("chelsea", 451, 300), ("coffee", 600, 400),
    ("rocket", 640, 427), ("camera", 377, 283), ("stereo_motorcycle", 741, 494),
    ("hubble_deep_field", 500, 375), ("immunohistochemistry", 333, 333),
    ("retina", 480, 480), ("coins", 384, 303), ("astronaut", 1000, 667),
    ("coffee", 555, 721),
)


def build(out: str) -> list[str]:
  import skimage.data
  from PIL import Image
  os.makedirs(out, exist_ok=True)
  paths = []
  for i, (name, w, h) in enumerate(PHOTOS):
    a = getattr(skimage.data, name)()
    a = np.asarray(a[0] if isinstance(a, tuple) else a)  # stereo_motorcycle: the left view
    im = Image.fromarray(a if a.ndim == 2 else a[..., :3])
    im = im.resize((w, h), Image.LANCZOS)
    path = os.path.join(out, f"{i:02d}_{name}_{w}x{h}.png")
    im.save(path)
    paths.append(path)
  return paths


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1:
    print(__doc__, file=sys.stderr)
    return 2
  paths = build(argv[0])
  print(f"{len(paths)} photos -> {argv[0]}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
