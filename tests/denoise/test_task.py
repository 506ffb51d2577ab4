"""The denoise task's pieces: Noise2Noise targets are independent draws, the annealed L0
exponent, the progress counter survives a save/restore of the data position, real pairs."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import denoise as denoise_config
from jaxvision.core.errors import DataError
from jaxvision.denoise import data, task


def _config(**kw):
  c = denoise_config.get_config(",".join(f"{k}={v}" for k, v in kw.items()))
  return c


def test_noisy_targets_are_independent_draws_of_the_same_noise():
  c = _config(noise="gaussian:25", target="noisy")
  clean = np.full((4, 32, 32, 3), 0.5, np.float32)
  x, t = task.noisy_pair(c, {"target": clean}, jax.random.PRNGKey(0))
  nx, nt = np.asarray(x) - clean, np.asarray(t) - clean
  assert abs(np.corrcoef(nx.ravel(), nt.ravel())[0, 1]) < 0.03   # independent
  assert abs(nt.std() * 255 - 25) < 1 and abs(nx.std() * 255 - 25) < 1  # same model
  c2 = _config(noise="gaussian:25", target="clean")
  x2, t2 = task.noisy_pair(c2, {"target": clean}, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(t2, clean)
  np.testing.assert_array_equal(x2, x)  # the same input draw for the same key


def test_losses_and_the_annealed_l0_exponent():
  pred, tgt = jnp.zeros((2, 4, 4, 3)), jnp.full((2, 4, 4, 3), 0.5)
  assert float(task.pixel_loss("l2", pred, tgt)) == pytest.approx(0.25)
  assert float(task.pixel_loss("l1", pred, tgt)) == pytest.approx(0.5)
  # gamma 2 at the start (= L2), 1 half way (= L1), 0 at the end (a constant: L0)
  assert float(task.pixel_loss("l0", pred, tgt, jnp.zeros(2))) == pytest.approx(0.25, 1e-6)
  assert float(task.pixel_loss("l0", pred, tgt, jnp.full(2, 0.5))) == pytest.approx(0.5, 1e-6)
  assert float(task.pixel_loss("l0", pred, tgt, jnp.ones(2))) == pytest.approx(1.0)
  assert _config(noise="impulse:0-0.95").loss == "l0"
  assert _config(noise="text:0-0.5").loss == "l1"
  assert _config(noise="gaussian:0-50").eval_noise == "gaussian:25"


def test_progress_counts_steps_and_survives_a_restore(tfds_dir):
  src = data.get_source("photos", "train", tfds_dir)
  from jaxvision.core import data as core_data
  make = lambda: data.ProgressLoader(core_data.make_train_loader(  # noqa: E731
      src, batch_size=2, crop_size=16, seed=0, pair_fn=data.CleanRecord(), worker_count=0), 10)
  it = iter(make())
  got = [float(next(it)["progress"][0]) for _ in range(3)]
  np.testing.assert_allclose(got, [0.0, 0.1, 0.2], rtol=1e-6)
  state = it.get_state()
  assert json.loads(state)[data._ProgressIterator.KEY] == 3
  following = next(it)
  it2 = iter(make())
  it2.set_state(state)
  b = next(it2)
  assert float(b["progress"][0]) == pytest.approx(0.3)
  np.testing.assert_array_equal(b["target"], following["target"])  # the same data position


def test_paired_folders_match_by_name_and_split(tmp_path):
  noisy, clean = tmp_path / "noisy", tmp_path / "clean"
  noisy.mkdir(), clean.mkdir()
  rng = np.random.default_rng(0)
  for i in range(12):
    im = rng.integers(0, 256, (20, 24, 3), np.uint8)
    Image.fromarray(im).save(clean / f"p{i:02d}.png")
    Image.fromarray(255 - im).save(noisy / f"p{i:02d}.jpg" if i == 3 else noisy / f"p{i:02d}.png")
  train = data.get_source(f"pairs:{noisy},{clean}", "train")
  test = data.get_source(f"pairs:{noisy},{clean}", "test")
  assert len(train) == 11 and len(test) == 1 and test.pairs[0][1] == "p09.png"
  rec = train[0]
  pair = data.NoisyCleanRecord()(rec)
  assert pair["input"].shape == pair["target"].shape == (20, 24, 3)
  np.testing.assert_array_equal(pair["input"], 255 - pair["target"])
  with pytest.raises(DataError, match="no file names in common"):
    data.get_source(f"pairs:{noisy},{tmp_path}", "train")
  Image.fromarray(im).save(clean / "only_clean.png")  # a clean image without its noisy pair
  with pytest.raises(DataError, match=r"only_clean.png: no noisy image of the same name "
                                      r"\(1 unmatched"):
    data.get_source(f"pairs:{noisy},{clean}", "train")
  with pytest.raises(DataError, match="pairs:/path/noisy,/path/clean"):
    data.get_source(f"pairs:{noisy}", "train")


def test_config_rejects_bad_arguments():
  for bad in ("model=vgg", "target=maybe", "noise=salt:3", "loss=l5"):
    with pytest.raises(ValueError):
      _config(**dict([bad.split("=")]))
