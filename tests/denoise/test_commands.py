"""`jaxvision denoise` and `denoise-eval` on workdirs written from initialised weights:
tiles equal the whole image (DnCNN exactly; the U-Net on its 32-pixel grid), grey and RGBA
in and out, a bad file among good ones, and one table with the classical baselines."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxvision import cli
from jaxvision.core import registry
from jaxvision.core.weights import save_workdir
from jaxvision.denoise import models  # noqa: F401
from jaxvision.denoise.eval import available_baselines, denoise_image, evaluate_source


def _model(name, **kw):
  m = registry.create_model(name, **kw)
  v = jax.jit(m.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  if "batch_stats" in v:  # non-trivial running statistics, as after training
    v = {**v, "batch_stats": jax.tree.map(lambda a: a + 0.1, v["batch_stats"])}
  return m, v


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  wd = tmp_path_factory.mktemp("dncnn")
  m, v = _model("dncnn", depth=4, features=8, zero_init_last=False)
  save_workdir(str(wd), v, task="denoise", model_name="dncnn",
               model_kwargs={"depth": 4, "features": 8, "zero_init_last": False},
               extra_config={"noise": "gaussian:25", "eval_noise": "gaussian:25"})
  return wd


@pytest.mark.parametrize("name,kw,hw,tile", [
    ("dncnn", {"depth": 4, "features": 8}, (90, 121), 24),  # radius 17: 58-pixel windows
    ("n2n_unet", {"features": 8}, (40, 430), 64)])  # 448 padded: 352-wide windows on the grid
def test_tiles_equal_the_whole_image(name, kw, hw, tile):
  m, v = _model(name, **kw)
  x = np.random.default_rng(0).uniform(0, 1, (*hw, 3)).astype(np.float32)
  whole = denoise_image(m, v, x)            # one window (fits max_pixels)
  calls = []
  fn = lambda w: calls.append(w.shape) or m.apply(v, w)  # noqa: E731
  tiled = denoise_image(m, v, x, tile=tile, apply_fn=fn)  # windows shifted at the borders
  assert len(calls) > 3 and all(c == calls[0] for c in calls), calls  # one window shape
  assert whole.shape == x.shape
  np.testing.assert_allclose(tiled, whole, atol=2e-5)


def test_denoise_file_grey_rgba_and_a_bad_file(workdir, tmp_path, capsys):
  rng = np.random.default_rng(1)
  grey = tmp_path / "in" / "grey.png"
  grey.parent.mkdir()
  Image.fromarray(rng.integers(0, 256, (33, 47), np.uint8)).save(grey)
  rgba = tmp_path / "in" / "rgba.png"
  Image.fromarray(rng.integers(0, 256, (40, 30, 4), np.uint8)).save(rgba)
  (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
  out = tmp_path / "one.png"
  assert cli.main(["denoise", "--checkpoint", str(workdir), str(grey), str(out)]) == 0
  assert np.asarray(Image.open(out)).shape == (33, 47)  # grey stays grey
  outdir = tmp_path / "out"
  code = cli.main(["denoise", "--checkpoint", str(workdir), str(tmp_path / "in"), str(outdir)])
  err = capsys.readouterr().err
  assert code == 1 and "broken.png" in err and "1 of 3 inputs failed" in err
  assert "Traceback" not in err
  assert np.asarray(Image.open(outdir / "rgba.png")).shape == (40, 30, 4)
  np.testing.assert_array_equal(np.asarray(Image.open(outdir / "rgba.png"))[..., 3],
                                np.asarray(Image.open(rgba))[..., 3])
  assert (outdir / "grey.png").exists()
  # not a denoiser's workdir, and a bad noise name: one line each
  assert cli.main(["denoise", "--checkpoint", str(tmp_path), str(grey), str(out)]) == 1
  assert cli.main(["denoise", "--checkpoint", str(workdir), "--add-noise", "salt", str(grey),
                   str(out)]) == 1
  err = capsys.readouterr().err
  assert "not a jaxvision workdir" in err and "unknown kind" in err


def test_eval_table_has_the_model_and_the_baselines(workdir, tmp_path, tfds_dir, capsys):
  res = tmp_path / "res.json"
  assert cli.main(["denoise-eval", "--checkpoint", str(workdir), "--noise", "gaussian:25",
                   "--max-images", "1", "--crop", "48", "--data-dir", tfds_dir,
                   "--json", str(res)]) == 0
  out = capsys.readouterr().out
  assert "| gaussian:25 | nl_means |" in out and "| gaussian:25 | noisy input |" in out
  rows = json.loads(res.read_text())["gaussian:25"]
  assert set(rows) == {"noisy input", *available_baselines(),
                       next(k for k in rows if k.startswith("dncnn"))}
  assert {"nl_means", "tv_chambolle", "wavelet"} <= set(rows)
  # the classical denoisers beat the noisy input at sigma 25
  for b in available_baselines():
    assert rows[b]["psnr"] > rows["noisy input"]["psnr"] + 1, rows


def test_evaluate_source_gives_every_method_the_same_noisy_image():
  src = [{"image": np.full((32, 32, 3), 128, np.uint8)}] * 2
  seen = []
  evaluate_source(src, ["gaussian:25"], {"a": lambda x: seen.append(x) or x,
                                         "b": lambda x: seen.append(x) or x})
  np.testing.assert_array_equal(seen[0], seen[2])  # image 0 for a and for b
  assert not np.array_equal(seen[0], seen[1])      # images 0 and 1: other draws


def test_the_blind_noise_estimate_finds_sigma():
  from jaxvision.denoise.eval import estimate_sigma
  from jaxvision.denoise.noise import add_noise_numpy
  from skimage import data as skd
  clean = skd.astronaut()[:256, :256].astype(np.float32) / 255
  for s in (10, 25, 50):
    est = estimate_sigma(add_noise_numpy(f"gaussian:{s}", clean, clip=False)) * 255
    assert abs(est - s) < 0.1 * s + 1.5, (s, est)
