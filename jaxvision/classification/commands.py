"""`jaxvision classify`: the top-5 classes of image files with a trained or converted classifier.

  jaxvision classify --checkpoint WORKDIR IN [IN ...]     top-5 classes per image

The workdir is a `configs/classify.py` run or a `jaxvision convert` of timm/torchvision
weights; images are preprocessed as the evaluation split was (`data.eval_transform`:
short side to size / crop_fraction, centre crop).
"""
from __future__ import annotations

import numpy as np

from jaxvision.core.registry import register_commands

TOPK = 5


def predict_topk(model, variables, images: np.ndarray, k: int = TOPK):
  """(probabilities, indices) of the k most likely classes per image; images f32 [0, 1]."""
  import jax
  import jax.numpy as jnp

  @jax.jit
  def run(x):
    p = jax.nn.softmax(model.apply(variables, x, train=False).astype(jnp.float32))
    return jax.lax.top_k(p, min(k, p.shape[-1]))

  p, i = run(jnp.asarray(images))
  return np.asarray(p), np.asarray(i)


def classify(args) -> None:
  from jaxvision.classification import data
  from jaxvision.classification import models  # noqa: F401  (registers what load_model creates)
  from jaxvision.core import checkpoint, io

  config, model, variables, step = checkpoint.load_model(args.checkpoint, "classification",
                                                         "a classifier")
  d = config.get("data", {})
  size = int(args.size or d.get("image_size", 224))
  frac = float(d.get("crop_fraction", 0.875 if size >= 128 else 1.0))
  xs = [data.eval_transform(io.load_image_file(path), size, frac) for path in args.inputs]
  probs, idx = predict_topk(model, variables, np.stack(xs))
  names = data.class_names(config, int(getattr(model, "num_classes", 0)))
  for path, p, i in zip(args.inputs, probs, idx):
    print(f"{path}: " + ", ".join(f"{names[j] if j < len(names) else j} {q:.3f}"
                                  for q, j in zip(p, i)))


def add(sub) -> None:
  """Adds this family's subcommands to the `jaxvision` parser."""
  p = sub.add_parser("classify", help="top-5 classes of images with a trained or converted "
                     "classifier", description="Prints the 5 most likely classes per image.")
  p.add_argument("--checkpoint", required=True, metavar="WORKDIR",
                 help="workdir of a configs/classify.py run or of `jaxvision convert`")
  p.add_argument("--size", type=int, default=None,
                 help="input side (default: the training image_size, 224 for converted weights)")
  p.add_argument("inputs", nargs="+", metavar="IN", help="image files")
  p.set_defaults(func=classify)


register_commands(add)
