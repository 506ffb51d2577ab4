"""P x K batches, the face_embedding task, the collapse detector, and a short training run."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxvision.core.errors import DataError, TrainingError
from jaxvision.recognition import data as D


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 6), st.integers(1, 4), st.integers(0, 10_000))
def test_pk_batches_hold_p_identities_with_k_images(p, k, seed):
  """Every batch holds exactly P distinct identities with K images each (identities with
  fewer images are drawn with replacement), the same batch for the same (seed, index)."""
  rng = np.random.default_rng(seed)
  ids = [[rng.random((6, 6)) for _ in range(rng.integers(1, 4))] for _ in range(7)]
  src = D.PKBatches(ids, p, k, 8, seed)
  b = src[3]
  assert b["input"].shape == (p * k, 8, 8, 3)
  labels, counts = np.unique(b["label"], return_counts=True)
  assert len(labels) == p and (counts == k).all()
  idents, icounts = np.unique(b["identity"], return_counts=True)
  assert len(idents) == p and (icounts == k).all()
  np.testing.assert_array_equal(src[3]["input"], b["input"])
  with pytest.raises(DataError):
    D.PKBatches(ids, 8, k, 8, seed)


def test_folder_identities_split_and_errors(tmp_path):
  from jaxvision.core.io import write_png
  for i in range(12):
    d = tmp_path / f"person{i:02d}"
    d.mkdir()
    for j in range(2 if i % 3 else 1):
      write_png(str(d / f"{j}.png"), np.full((10, 10, 3), 20 * i, np.uint8))
  train = D.identities(f"folder:{tmp_path}", "train")
  test = D.identities(f"folder:{tmp_path}", "test")
  assert len(train) + len(test) == 12 and len(test) >= 1
  assert not {p for ps in train for p in ps} & {p for ps in test for p in ps}
  with pytest.raises(DataError, match="no such folder"):
    D.identities(f"folder:{tmp_path}/missing", "train")
  with pytest.raises(DataError, match="unknown face dataset"):
    D.identities("mnist", "train")


def test_collapse_detector_stops_with_a_clear_message():
  from jaxvision.recognition.task import embedding_samples
  from configs.recognition import get_config
  cfg = get_config("")
  batch = {"input": np.zeros((4, 8, 8, 3), np.float32)}
  ok = {"embedding": np.random.default_rng(0).normal(size=(4, 16))}
  assert "eval_chips" in embedding_samples(batch, ok, cfg)
  with pytest.raises(TrainingError, match="collapsed"):
    embedding_samples(batch, {"embedding": np.ones((4, 16))}, cfg)


@pytest.mark.parametrize("loss", ["softmax_center"])
def test_every_loss_gives_a_finite_gradient(loss):
  """The task's loss through a tiny dlib_resnet with the class head: a finite gradient that
  reaches the embedding layer (the metric losses' gradients: test_losses.py; their training
  through the model: the longrun training test)."""
  from configs.recognition import get_config
  from jaxvision.core.registry import create_model
  from jaxvision.recognition import models  # noqa: F401  (registers dlib_resnet)
  from jaxvision.recognition.task import embedding_loss
  cfg = get_config(f"loss={loss}")
  kw = dict(cfg.model.kwargs, units=[[4, False], [8, True]], stem_features=4, embed_dim=8)
  kw["num_classes"] = 5 if loss == "softmax_center" else 0
  model = create_model("dlib_resnet", **kw)
  x = np.random.default_rng(0).uniform(0, 255, (8, 24, 24, 3)).astype(np.float32)
  v = model.init(jax.random.key(0), x)
  batch = {"input": x, "label": np.repeat(np.arange(4), 2).astype(np.int32),
           "identity": np.repeat(np.arange(4), 2).astype(np.int32)}
  g = jax.jit(jax.grad(lambda p: embedding_loss(model, {"params": p}, batch, None, True,
                                                cfg)[0]))(v["params"])
  leaves = jax.tree.leaves(g)
  assert all(np.isfinite(np.asarray(l)).all() for l in leaves)
  assert float(jnp.abs(g["fc"]["kernel"]).sum()) > 0
  assert float(jnp.abs(g["head"]["centres"]).sum()) > 0


TINY = {"total_steps": 16, "log_every": 4, "eval_every": 16, "checkpoint_every": 16,
        "data.image_size": 32, "data.identities_per_batch": 6, "data.images_per_identity": 3,
        "batch_size": 18, "model.kwargs.stem_features": 8, "model.kwargs.embed_dim": 32}


@pytest.mark.longrun
def test_short_training_lowers_the_loss_and_raises_auc(tmp_path):
  """A short semi-hard run of the generic trainer on the lfw_subset smoke-test set: the
  training loss falls below the untrained network's on the first batch, and the held-out
  pseudo-identities' verification AUC ends above the untrained network's."""
  from configs.recognition import get_config
  from jaxvision.core.registry import create_model, get_task
  from jaxvision.recognition import task  # noqa: F401  (registers the task)
  from train import trainer
  cfg = get_config("loss=semihard,widths=8-16d-32d")
  for k, v in TINY.items():
    *path, leaf = k.split(".")
    node = cfg
    for part in path:
      node = node[part]
    node[leaf] = v
  model = create_model("dlib_resnet", **cfg.model.kwargs)
  t = get_task("face_embedding")
  loader, evals = t.make_data(cfg)
  v0 = model.init(jax.random.key(cfg.seed), evals[0]["input"][:1], train=False)
  auc0 = float(jax.jit(lambda v, b: t.evaluate(model, v, b, cfg)["auc"][0])(v0, evals[0]))
  loss0 = float(jax.jit(lambda v, b: t.loss(model, v, b, None, False, cfg)[0])(
      v0, next(iter(loader))))
  m = trainer.train_and_evaluate(cfg, str(tmp_path / "w"))
  print(f"untrained: auc {auc0:.3f}, loss {loss0:.3f}; after {m['step']} steps: "
        f"auc {m['eval']['auc']:.3f}, loss {m['train']['loss']:.3f}")
  assert m["eval"]["auc"] > auc0
  assert m["train"]["loss"] < loss0
  # the trained workdir embeds with the commands: its own 32-px chips, unit-norm 32-D
  from jaxvision import cli
  from jaxvision.core.io import write_png
  write_png(str(tmp_path / "chip.png"), (evals[0]["input"][0]).astype(np.uint8))
  out = tmp_path / "e.json"
  assert cli.main(["embed-faces", str(tmp_path / "chip.png"), "--json", str(out), "--aligned",
                   "--checkpoint", str(tmp_path / "w")]) == 0
  e = np.array(json.loads(out.read_text())[str(tmp_path / "chip.png")][0]["embedding"])
  assert e.shape == (32,) and abs(np.linalg.norm(e) - 1) < 1e-4
