"""The input pipeline alone: images/s of the grain loaders the trainer uses (issue 14).

    python benchmarks/input_pipeline.py                 # 0, 2 and all worker processes
    python benchmarks/input_pipeline.py --workers 0,4,8 --images 1024

It prepares, in a temporary TFDS data dir, an array_record dataset of JPEG-encoded photos
(scikit-image's and scikit-learn's sample photos, resized and cropped to ImageNet's typical
~500x375, quality 90), then times, after one warm-up batch:

  classification  jaxvision.classification.data's loader: JPEG decode + Inception-style
                  random-resized crop to 224x224 + flip, in the workers; batches of 256
  codec crops     jaxvision.core.data.make_train_loader: decode + random 256x256 crop + flip
                  (the compression and image-operator tasks); batches of 16

Decoding happens in the worker processes (tfds.data_source with SkipDecoding, decoded by
the source's __getitem__ inside each worker), so a loader scales with worker processes until
the host's cores are used. Divide an accelerator's train-step images/s
(benchmarks/accelerator.py) by the per-core rate here for the cores it needs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
sys.path.insert(0, os.path.dirname(_here))

import numpy as np  # noqa: E402


def _photos(n: int):
  import skimage.data
  from PIL import Image
  from sklearn.datasets import load_sample_images
  base = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(),
          skimage.data.rocket(), *load_sample_images().images]
  rng = np.random.default_rng(0)
  for i in range(n):
    im = Image.fromarray(base[i % len(base)])
    w, h = (500, 375) if i % 3 else (375, 500)
    s = max(w / im.width, h / im.height) * rng.uniform(1.0, 1.3)
    im = im.resize((max(w, round(im.width * s)), max(h, round(im.height * s))))
    x0, y0 = rng.integers(0, im.width - w + 1), rng.integers(0, im.height - h + 1)
    yield np.asarray(im.crop((x0, y0, x0 + w, y0 + h)))


def prepare(data_dir: str, n: int) -> str:
  import tensorflow_datasets as tfds

  class JvJpegBench(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
          "label": tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      import io

      from PIL import Image
      for i, im in enumerate(_photos(n)):  # encoded here: tfds' own JPEG encoder needs TF
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, "JPEG", quality=90)
        yield i, {"image": buf.getvalue(), "label": i % 10}

  b = JvJpegBench(data_dir=data_dir, file_format="array_record")
  b.download_and_prepare()
  return b.name


def _rate(loader, batches: int, batch_size: int) -> float:
  it = iter(loader)
  next(it)  # warm-up: workers start, first reads
  t = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * batch_size / (time.perf_counter() - t)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workers", default=f"0,2,{os.cpu_count()}")
  ap.add_argument("--images", type=int, default=512)
  ap.add_argument("--batches", type=int, default=4)
  ap.add_argument("--out", default=os.path.join(_here, "input_pipeline.json"))
  args = ap.parse_args()
  import grain

  from jaxvision.classification import data as cdata
  from jaxvision.core import data as jv_data
  jv_data._ensure_absl_flags_parsed()
  rows = []
  with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    name = prepare(d, args.images)
    print(f"prepared {args.images} JPEG records in {time.perf_counter() - t:.1f}s")
    cls_src = cdata.TfdsSource(name, "train", d)
    img_src = jv_data.get_source(name, "train", d)
    for w in sorted({int(x) for x in args.workers.split(",") if x.strip()}):
      sampler = grain.samplers.IndexSampler(num_records=len(cls_src), shuffle=True,
                                            num_epochs=None, seed=0)
      loader = grain.DataLoader(data_source=cls_src, sampler=sampler, worker_count=w,
                                operations=[cdata._train_op(224, "inception", 4, True),
                                            grain.transforms.Batch(256, drop_remainder=True)])
      r1 = _rate(loader, args.batches, 256)
      loader = jv_data.make_train_loader(img_src, batch_size=16, crop_size=256, seed=0,
                                         worker_count=w)
      r2 = _rate(loader, args.batches * 4, 16)
      rows.append({"workers": w, "classification_224_per_s": r1, "codec_256_per_s": r2})
      print(f"workers {w:>2}: classification 224² {r1:8.1f} images/s   codec 256² crops "
            f"{r2:8.1f} images/s", flush=True)
  with open(args.out, "w") as f:
    json.dump({"cpu_count": os.cpu_count(), "images": args.images, "rows": rows}, f, indent=1)
  print(f"-> {args.out}")


if __name__ == "__main__":
  main()
