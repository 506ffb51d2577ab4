"""`jaxvision classify`: the top-5 classes of image files with a trained or converted classifier.

  jaxvision classify --checkpoint WORKDIR IN [IN ...]     top-5 classes per image
                                                         (IN: a file or a folder of them)

The workdir is a `configs/classify.py` run or a `jaxvision convert` of timm/torchvision
weights; images are preprocessed as the evaluation split was (`data.eval_transform`:
short side to size / crop_fraction, centre crop).
"""
from __future__ import annotations

import numpy as np

from jaxvision.core.inputs import positive_int
from jaxvision.core.registry import register_commands

TOPK = 5
# Images classified at once: bounds memory on a folder of thousands of photos. Every batch
# is padded to one of BATCH_SIZES, so that runs on folders of any length compile at most
# these few programs, not one per image count (images are resized to one size anyway).
BATCH = 32
BATCH_SIZES = (1, 4, 8, 16, BATCH)


def topk_fn(model, variables, k: int = TOPK):
  """Jitted images f32 [0, 1] (N,H,W,3) -> (probabilities, indices) of the k most likely
  classes; one function for all batches of a command (one trace, one compile)."""
  import jax
  import jax.numpy as jnp

  @jax.jit
  def run(x):
    p = jax.nn.softmax(model.apply(variables, x, train=False).astype(jnp.float32))
    return jax.lax.top_k(p, min(k, p.shape[-1]))

  return run


def predict_topk(model, variables, images: np.ndarray, k: int = TOPK):
  """(probabilities, indices) of the k most likely classes per image; images f32 [0, 1].

  Batches of at most BATCH images, each padded (repeating its last image) to the next of
  BATCH_SIZES; the padding's answers are dropped."""
  run = topk_fn(model, variables, k)
  n = len(images)
  ps, is_ = [], []
  for s in range(0, n, BATCH):
    chunk = images[s:s + BATCH]
    size = next(b for b in BATCH_SIZES if b >= len(chunk))
    if len(chunk) < size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), 0)])
    p, i = run(chunk)
    ps.append(np.asarray(p)[:len(images[s:s + BATCH])])
    is_.append(np.asarray(i)[:len(images[s:s + BATCH])])
  return np.concatenate(ps)[:n], np.concatenate(is_)[:n]


def classify(args) -> None:
  """Image files and folders of them (see `core.inputs`): one line per image, in order."""
  from jaxvision.classification import data
  from jaxvision.classification import models  # noqa: F401  (registers what load_model creates)
  from jaxvision.core import checkpoint, inputs, io

  config, model, variables, step = checkpoint.load_model(args.checkpoint, "classification",
                                                         "a classifier")
  d = config.get("data", {})
  size = int(args.size or d.get("image_size", 224))
  frac = float(d.get("crop_fraction", 0.875 if size >= 128 else 1.0))
  paths = inputs.image_files(args.inputs)
  single = len(paths) == 1 and not inputs.any_folder(args.inputs)
  loaded = inputs.for_each(
      paths, lambda path: data.eval_transform(io.load_image_file(path), size, frac),
      command=args.command, strict=single)
  good = list(loaded.results)
  if good:
    probs, idx = predict_topk(model, variables, np.stack([loaded.results[p] for p in good]))
    names = data.class_names(config, int(getattr(model, "num_classes", 0)))
    for path, p, i in zip(good, probs, idx):
      inputs.say(f"{path}: " + ", ".join(f"{names[j] if j < len(names) else j} {q:.3f}"
                                         for q, j in zip(p, i)))
  loaded.raise_if_failed()


def add(sub) -> None:
  """Adds this family's subcommands to the `jaxvision` parser."""
  p = sub.add_parser("classify", help="top-5 classes of images with a trained or converted "
                     "classifier", description="Prints the 5 most likely classes per image.")
  p.add_argument("--checkpoint", required=True, metavar="WORKDIR",
                 help="workdir of a configs/classify.py run or of `jaxvision convert`")
  p.add_argument("--size", type=positive_int, default=None,
                 help="input side (default: the training image_size, 224 for converted weights)")
  p.add_argument("inputs", nargs="+", metavar="IN", help="image files, or folders of them")
  p.set_defaults(func=classify)


register_commands(add)
