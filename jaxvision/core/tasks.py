"""What the generic trainer trains: a task is a set of pure functions, registered by name.

A task provides
  make_data(config) -> (train_loader, eval_batches)          host side, grain + TFDS
  loss(model, variables, batch, rng, train, config) -> (loss, (metrics, new_model_state))
  evaluate(model, variables, batch, config) -> dict of per-example metrics and outputs
  samples(batch, outputs, config) -> dict name -> uint8 images (N, H, W, 3) to log / write

`loss` and `evaluate` run inside `jax.jit` (the config is closed over: it is static);
`make_data` and `samples` run on the host. Each family registers its tasks from its
`task.py` with `jaxvision.core.registry.register_task(name, Task(...))`; the trainer
finds them by `config.task`. The helpers below are shared by several families.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax

from jaxvision.core import data


@dataclasses.dataclass(frozen=True)
class Task:
  make_data: Callable
  loss: Callable
  evaluate: Callable
  samples: Callable
  # optional: (optax transformation, config, model) -> the transformation the trainer uses
  # (a task that trains only part of its model at each step chains its mask here)
  optimizer: Callable | None = None


def apply_model(model, variables, x, train: bool, **kwargs):
  """(output, new model state): batch statistics are updated in training when the
  model has any (every collection other than params is mutable then)."""
  if train and len(variables) > 1:
    mutable = [k for k in variables if k != "params"]
    return model.apply(variables, x, train=True, mutable=mutable, **kwargs)
  return model.apply(variables, x, train=train, **kwargs), {}


def image_data(config, pair_fn: Callable | None = None):
  """(train loader, eval batches) of image crops from `config.data.dataset`.

  `pair_fn(split, source)` returns the picklable per-record function that adds the
  target (an operator's output, a downscaled copy, ...) or None for the image alone.
  The global batch is split evenly over the processes; each reads its own shard."""
  d = config.data
  data_dir = d.get("data_dir") or None
  train_src = data.get_source(d.dataset, d.train_split, data_dir)
  eval_src = data.get_source(d.dataset, d.eval_split, data_dir)
  make_pairs = pair_fn or (lambda split, src: None)
  per_host = config.batch_size // jax.process_count()
  loader = data.make_train_loader(
      train_src, batch_size=per_host, crop_size=d.crop_size, seed=config.seed,
      pair_fn=make_pairs(d.train_split, train_src), worker_count=d.get("worker_count", 2))
  eval_batches = data.make_eval_batches(
      eval_src, crop_size=d.get("eval_crop") or None, pair_fn=make_pairs(d.eval_split, eval_src),
      max_images=d.get("eval_max_images") or None)
  return loader, eval_batches
