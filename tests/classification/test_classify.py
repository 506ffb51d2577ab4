"""Classification: embedded datasets, preprocessing, loss/metrics, config, train + CLI."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import classify as cfg
from jaxvision.classification import data as D
from tests.conftest import run


@pytest.mark.parametrize("name,n_train,n_test,k", [("digits", 1438, 359, 10), ("lfw", 160, 40, 2)])
def test_embedded_splits_are_fixed_disjoint_and_stratified(name, n_train, n_test, k):
  tr = D.get_dataset(name, "train", image_size=32)
  te = D.get_dataset(name, "test", image_size=32)
  assert (len(tr), len(te)) == (n_train, n_test)
  assert tr.images.shape[1:] == (32, 32, 3) and tr.images.dtype == np.uint8
  # every class in both splits in the same proportion (±1 image per class)
  ctr, cte = np.bincount(tr.labels, minlength=k), np.bincount(te.labels, minlength=k)
  assert (cte > 0).all() and np.all(np.abs(cte - 0.2 * (ctr + cte)) <= 1)
  labels = np.r_[tr.labels, te.labels]
  i_tr, i_te = (D._split_indices(np.sort(labels), 0.2, s) for s in ("train", "test"))
  assert not set(i_tr) & set(i_te) and len(i_tr) + len(i_te) == len(labels)
  assert repr(tr) == repr(D.get_dataset(name, "train", image_size=32))  # stable
  with pytest.raises(D.DataError, match="split"):
    D.get_dataset(name, "validation")


def test_unprepared_tfds_dataset_is_a_one_line_error(tmp_path):
  with pytest.raises(D.DataError, match="cifar10.*not readable"):
    D.get_dataset("cifar10", "train", data_dir=str(tmp_path))


def test_transforms_shapes_and_ranges():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (50, 80, 3), dtype=np.uint8)
  e = D.eval_transform(img, 32, 0.875)
  assert e.shape == (32, 32, 3) and e.dtype == np.float32 and 0 <= e.min() <= e.max() <= 1
  for aug in ("inception", "pad_crop", "none"):
    t = D.train_transform(img, rng, 24, aug, pad=3, flips=True)
    assert t.shape == (24, 24, 3) and t.dtype == np.float32 and 0 <= t.min() <= t.max() <= 1
  # pad_crop of a same-size image is a shifted copy: the centre of the window is the image
  sq = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  t = D.train_transform(sq, np.random.default_rng(1), 16, "pad_crop", pad=0, flips=False)
  np.testing.assert_array_equal(t, sq / np.float32(255.0))


def test_loss_and_topk_match_numpy():
  from jaxvision.classification import task as T
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((6, 7)).astype(np.float32)
  labels = rng.integers(0, 7, 6).astype(np.int32)
  s = 0.1
  target = np.full((6, 7), s / 7) + (1 - s) * np.eye(7)[labels]
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(T.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), s),
                             -(target * logp).sum(-1), rtol=1e-5)
  order = np.argsort(-logits, axis=-1)
  for k in (1, 5):
    want = [labels[i] in order[i, :k] for i in range(6)]
    np.testing.assert_array_equal(T.topk_correct(jnp.asarray(logits), jnp.asarray(labels), k), want)


def test_config_arguments():
  c = cfg.get_config("model=se_resnet50,data=imagenet2012,preset=paper")
  assert c.model.kwargs.to_dict() == {"num_classes": 1000, "dtype": "bfloat16"}
  assert c.optimizer.schedule == "step" and c.optimizer.name == "sgd"
  c = cfg.get_config("spp_net,data=lfw,opt=adamw")
  assert c.model.name == "spp_net" and c.model.kwargs.num_classes == 2
  assert c.optimizer.name == "adamw"
  assert cfg.get_config("resnet18,data=cifar10").model.kwargs.stem == "cifar"
  for bad in ("data=mnist", "preset=gpu", "colour=red", "resnet18,bogus", "opt=rmsprop"):
    with pytest.raises(ValueError):
      cfg.get_config(bad)


def test_train_on_digits_then_classify_and_convert(tmp_path, tfds_dir):
  """One short run of the real entry point: the held-out loss falls below half of chance's
  ln 10 and top-1 beats 0.7 (chance 0.1; measured 0.49 and 0.85 after these 60 steps);
  then `jaxvision classify` reads the workdir, and `jaxvision convert` turns a
  reference-named state dict into a workdir it reads too."""
  wd = tmp_path / "run"
  run([os.sys.executable, "-m", "train", "--config",
       "configs/classify.py:model=resnet18,data=digits", "--workdir", str(wd),
       "--config.total_steps=60", "--config.model.kwargs.width=8", "--config.log_every=20",
       "--config.eval_every=60", "--config.checkpoint_every=60", "--config.batch_size=32"],
      tfds_dir)
  m = json.load(open(wd / "metrics.json"))
  assert m["step"] == 60 and m["eval"]["loss"] < 0.5 * np.log(10)
  assert m["eval"]["top1"] > 0.7 and m["eval"]["top5"] >= m["eval"]["top1"]
  # held-out digits as PNG files through the command line
  te = D.get_dataset("digits", "test", image_size=32)
  paths = []
  for i in range(3):
    p = tmp_path / f"d{i}.png"
    Image.fromarray(te.images[i]).save(p)
    paths.append(str(p))
  from jaxvision import cli
  import contextlib
  import io
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert cli.main(["classify", "--checkpoint", str(wd), *paths]) == 0
  lines = out.getvalue().strip().splitlines()
  assert len(lines) == 3 and all(len(l.split(": ", 1)[1].split(", ")) == 5 for l in lines)
  # the command's top-1 (PNG file -> load -> preprocess) is the model's on the arrays
  from jaxvision.core import checkpoint as jv_ckpt
  from jaxvision.core.registry import create_model
  config, variables, _ = jv_ckpt.load_variables(str(wd))
  model = create_model(config.model.name, **config.model.kwargs)
  x = np.stack([D.eval_transform(te.images[i], 32) for i in range(3)])
  want = np.asarray(model.apply(variables, x)).argmax(-1)
  assert [l.split(": ", 1)[1].split(" ")[0] for l in lines] == [str(c) for c in want]
  assert cli.main(["classify", "--checkpoint", str(tmp_path / "nope"), paths[0]]) == 1

  # `jaxvision convert` of a reference-named state dict: a workdir holding its weights
  from jaxvision.classification import convert as C
  from tests.classification.reference import reference_shapes
  ref = reference_shapes((2, 2, 2, 2), False, width=8, num_classes=4)
  rng = np.random.default_rng(0)
  sd = {k: rng.standard_normal(s).astype(np.float32) for k, s in ref.items()}
  np.savez(tmp_path / "sd.npz", **sd)
  conv = tmp_path / "converted"
  with contextlib.redirect_stdout(io.StringIO()):
    assert cli.main(["convert", "--model", "resnet18", "--kwargs", "width=8,num_classes=4",
                     str(tmp_path / "sd.npz"), str(conv)]) == 0
  config, variables, step = jv_ckpt.load_variables(str(conv))
  assert config.task == "classification" and step == 0
  want = C.load("resnet18", sd, width=8, num_classes=4)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)


def test_classify_folders_and_files(tmp_path, capsys):
  """classify DIR FILE: a line per good image in order, the damaged one named on stderr,
  exit 1 with the summary. Random reference-named weights through the converter (no
  init compile), at 32 pixels."""
  from jaxvision import cli
  from jaxvision.classification import convert as C
  from jaxvision.core import weights
  from tests.classification.reference import reference_shapes
  from tests.conftest import image_folder
  ref = reference_shapes((2, 2, 2, 2), False, width=8, num_classes=4)
  rng = np.random.default_rng(1)
  sd = {k: rng.standard_normal(s).astype(np.float32) for k, s in ref.items()}
  wd = str(tmp_path / "wd")
  weights.save_workdir(wd, C.load("resnet18", sd, width=8, num_classes=4),
                       task="classification", model_name="resnet18",
                       model_kwargs={"width": 8, "num_classes": 4},
                       extra_config={"data": {"image_size": 32}})
  folder, stems, damaged = image_folder(tmp_path, grey=True)
  extra = tmp_path / "extra.png"
  Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(extra)
  code = cli.main(["classify", "--checkpoint", wd, folder, str(extra)])
  cap = capsys.readouterr()
  err = cap.err.strip().splitlines()
  assert code == 1 and len(err) == 2, cap.err
  assert err[0].startswith(f"jaxvision classify: error: {damaged}: not a readable image")
  assert err[1] == "jaxvision classify: error: 1 of 5 inputs failed"
  lines = cap.out.strip().splitlines()
  want = [os.path.join(folder, f"{s}.png") for s in stems] + [str(extra)]
  assert [l.split(": ", 1)[0] for l in lines] == want
  assert all(len(l.split(": ", 1)[1].split(", ")) == 4 for l in lines)  # 4 classes


def test_predict_topk_in_batches_equals_all_at_once():
  """A folder of many images goes in batches of BATCH (the last padded): same answers."""
  from jaxvision.classification import commands

  class Linear:  # any model with flax's apply signature
    def apply(self, variables, x, train=False):
      return x.reshape(x.shape[0], -1) @ variables

  rng = np.random.default_rng(0)
  w = rng.standard_normal((4 * 4 * 3, 7)).astype(np.float32)
  x = rng.random((2 * commands.BATCH + 5, 4, 4, 3)).astype(np.float32)
  p, i = commands.predict_topk(Linear(), w, x)
  logits = x.reshape(len(x), -1) @ w
  assert p.shape == (len(x), 5) and (i == np.argsort(-logits, axis=1)[:, :5]).all()
  q = np.exp(logits - logits.max(1, keepdims=True))
  np.testing.assert_allclose(p, np.take_along_axis(q / q.sum(1, keepdims=True), i, 1),
                             rtol=1e-5)


def test_predict_topk_compiles_a_few_batch_sizes():
  """Folders of 1..40 images compile at most len(BATCH_SIZES) programs, not one per count."""
  import jax.numpy as jnp

  from jaxvision.classification import commands
  from jaxvision.core.compile import count_compiles

  class Linear:
    def apply(self, variables, x, train=False):
      return jnp.reshape(x, (x.shape[0], -1)) @ variables

  rng = np.random.default_rng(0)
  w = rng.standard_normal((2 * 2 * 3, 6)).astype(np.float32)
  with count_compiles() as c:
    for n in (1, 2, 3, 5, 7, 9, 13, 20, 31, 40):
      x = rng.random((n, 2, 2, 3)).astype(np.float32)
      p, i = commands.predict_topk(Linear(), w, x)
      assert p.shape == (n, 5)
      assert (i == np.argsort(-(x.reshape(n, -1) @ w), axis=1)[:, :5]).all()
  assert c.compiles <= len(commands.BATCH_SIZES), c  # each call jits anew: cache hits after
