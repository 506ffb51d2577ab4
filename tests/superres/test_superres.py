"""Super-resolution: pixel shuffle, shapes, imresize, Y-PSNR, pairs, EDSR import, tiled upscale."""
from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxvision.core import registry, weights
from jaxvision.superres import convert as _convert  # noqa: F401  (registers the EDSR converters)
from jaxvision.superres import data as srdata
from jaxvision.superres import eval as sreval
from jaxvision.superres import models as msr
from jaxvision.superres import resize

TINY = {
    "espcn": {"features": (4, 4)},
    "edsr_baseline": {"n_resblocks": 1, "n_feats": 4},
    "edsr": {"n_resblocks": 1, "n_feats": 4},
    "wdsr_a": {"n_resblocks": 1, "n_feats": 4},
    "wdsr_b": {"n_resblocks": 1, "n_feats": 4},
    "rcan": {"n_resgroups": 1, "n_resblocks": 1, "n_feats": 4, "reduction": 2},
    "johnson_sr": {"features": 4, "n_resblocks": 1},
}


# ---------------------------------------------------------------- pixel shuffle
@pytest.mark.parametrize("r,c", [(2, 3), (3, 2)])
def test_pixel_shuffle_matches_index_formula(r, c):
  x = np.random.default_rng(0).normal(size=(2, 3, 5, c * r * r)).astype(np.float32)
  got = np.asarray(msr.pixel_shuffle(jnp.asarray(x), r))
  want = np.empty((2, 3 * r, 5 * r, c), np.float32)
  for h in range(3):
    for w in range(5):
      for i in range(r):
        for j in range(r):
          for k in range(c):  # PyTorch PixelShuffle: channel k*r*r + i*r + j
            want[:, h * r + i, w * r + j, k] = x[:, h, w, k * r * r + i * r + j]
  np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- shapes
def test_every_model_is_registered_and_scales_odd_sizes():
  assert set(msr.SR_MODELS) <= set(registry.list_models())
  x = jnp.zeros((1, 7, 5, 3))
  for name in msr.SR_MODELS:
    for s in ((4, 8) if name == "johnson_sr" else (2, 3, 4)):
      m = registry.create_model(name, scale=s, **TINY[name])
      v = jax.eval_shape(lambda x, m=m: m.init(jax.random.key(0), x), x)
      y = jax.eval_shape(lambda v, x, m=m: m.apply(v, x), v, x)
      assert y.shape == (1, 7 * s, 5 * s, 3), (name, s, y.shape)
  with pytest.raises(ValueError, match="scale"):
    registry.create_model("edsr", scale=5)
  with pytest.raises(ValueError, match="scale"):
    registry.create_model("johnson_sr", scale=2)


def test_published_parameter_counts():
  def count(name, **kw):
    m = registry.create_model(name, **kw)
    v = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
    return sum(math.prod(a.shape) for a in jax.tree.leaves(v["params"]))
  assert abs(count("edsr_baseline", scale=2) - 1.37e6) < 0.01e6   # EDSR paper / ANCHORS
  assert abs(count("edsr", scale=2) - 40.7e6) < 0.1e6
  assert abs(count("wdsr_a", scale=2) - 1.19e6) < 0.01e6


# ---------------------------------------------------------------- imresize
def _direct_resize(img, scale):
  """Float64 double sum over every input pixel: out(i, j) = sum_kl h(u_i - k) h(u_j - l)
  x(mirror(k), mirror(l)) / normalisation, MATLAB's definition written out directly."""
  h_in, w_in = img.shape
  oh, ow = math.ceil(h_in * scale), math.ceil(w_in * scale)
  ker = (lambda t: scale * resize.cubic(scale * t)) if scale < 1 else resize.cubic
  support = 2.0 / scale if scale < 1 else 2.0

  def taps(i, n):
    u = (i + 1) / scale + 0.5 * (1 - 1 / scale)
    ks = np.arange(math.floor(u - support) - 1, math.ceil(u + support) + 2)
    wts = ker(u - ks)
    mirrored = [(k - 1) % (2 * n) for k in ks]
    idx = [m if m < n else 2 * n - 1 - m for m in mirrored]
    return wts / wts.sum(), idx

  out = np.zeros((oh, ow))
  for i in range(oh):
    wi, ii = taps(i, h_in)
    for j in range(ow):
      wj, jj = taps(j, w_in)
      out[i, j] = sum(wi[a] * wj[b] * img[ii[a], jj[b]]
                      for a in range(len(ii)) for b in range(len(jj)))
  return out


@pytest.mark.parametrize("scale", [0.5, 1 / 3, 0.25, 2.0, 3.0])
def test_imresize_matches_direct_float64_formula(scale):
  img = np.random.default_rng(1).uniform(size=(9, 7))
  np.testing.assert_allclose(resize.imresize(img, scale), _direct_resize(img, scale), atol=1e-12)


def test_imresize_matlab_properties():
  # The x2 antialiased table: cubic(x/2)/2 at +-0.25 .. +-1.75, the well-known MATLAB taps.
  w, idx = resize.contributions(16, 8, 0.5)
  np.testing.assert_allclose(w[3], [-0.01171875, -0.03515625, 0.11328125, 0.43359375,
                                    0.43359375, 0.11328125, -0.03515625, -0.01171875])
  np.testing.assert_array_equal(idx[3], np.arange(3, 11))
  # symmetric border: 1-based indices -2, -1, 0 read pixels 3, 2, 1 (MATLAB's aux table)
  np.testing.assert_array_equal(idx[0, :5], [2, 1, 0, 0, 1])
  # A constant stays constant, down and up, whatever the size.
  for s in (0.5, 1 / 3, 0.25, 2.0, 3.0):
    out = resize.imresize(np.full((13, 11, 3), 0.37), s)
    assert out.shape == (math.ceil(13 * s - 1e-9), math.ceil(11 * s - 1e-9), 3)
    np.testing.assert_allclose(out, 0.37, atol=1e-12)
  # x2 down of a linear ramp x_k = k: the interior is the ramp at the output centres 2i + 0.5.
  ramp = np.tile(np.arange(20.0), (4, 1))
  out = resize.imresize(ramp, 0.5)
  np.testing.assert_allclose(out[:, 2:-2], np.tile(2 * np.arange(2, 8) + 0.5, (2, 1)),
                             atol=1e-12)
  # uint8 in -> rounded uint8 out.
  assert resize.imresize(np.full((8, 8), 200, np.uint8), 0.5).dtype == np.uint8


def test_imresize_vs_pil_bicubic_differs_only_at_borders():
  img = np.asarray(Image.open(os.path.join(os.path.dirname(__file__), "..", "..", "docs",
                                           "operators.jpg")).convert("RGB"))[:96, :128]
  ours = resize.imresize(img, 0.25).astype(np.int32)
  pil = np.asarray(Image.fromarray(img).resize((32, 24), Image.Resampling.BICUBIC)).astype(
      np.int32)
  interior = np.abs(ours - pil)[2:-2, 2:-2]
  assert interior.max() <= 1      # the same kernel and grid; PIL rounds in fixed point


# ---------------------------------------------------------------- pairs and metrics
def test_srpairs_equal_downscaling_the_whole_image():
  rng = np.random.default_rng(2)
  s, p = 3, 5
  hr = rng.uniform(size=(60, 60, 3)).astype(np.float32)
  lr_full = resize.downscale(hr, s)
  pairs = srdata.SRPairs(s, p)
  k = 4  # crop offset in LR pixels (aligned to the LR grid)
  crop = hr[s * k:s * k + pairs.crop_size, s * k:s * k + pairs.crop_size]
  out = pairs({"input": crop, "target": crop})
  np.testing.assert_allclose(out["input"], lr_full[k + 2:k + 2 + p, k + 2:k + 2 + p], atol=1e-6)
  np.testing.assert_array_equal(out["target"], hr[s * (k + 2):s * (k + 2 + p),
                                                  s * (k + 2):s * (k + 2 + p)])
  assert out["input"].shape == (p, p, 3) and out["target"].shape == (s * p, s * p, 3)
  np.testing.assert_array_equal(out["input"], np.round(out["input"] * 255) / 255)  # 8-bit LR


def test_y_psnr_and_ssim_against_reference_computation():
  rng = np.random.default_rng(3)
  s = 3
  hr = rng.integers(0, 256, size=(2, 30, 27, 3)) / 255.0
  sr_img = np.clip(hr + rng.normal(0, 0.05, size=hr.shape), 0, 1)
  q = np.round(sr_img * 255) / 255
  y = lambda a: 16.0 + a @ np.array([65.481, 128.553, 24.966])
  d = (y(q) - y(hr))[:, s:-s, s:-s]
  want = 10 * np.log10(255.0 ** 2 / np.mean(d * d, axis=(1, 2)))
  np.testing.assert_allclose(np.asarray(sreval.y_psnr(sr_img, hr, s)), want, atol=2e-3)
  skimage = pytest.importorskip("skimage.metrics")
  yq, yh = y(q)[0, s:-s, s:-s], y(hr)[0, s:-s, s:-s]
  ref = skimage.structural_similarity(yq, yh, data_range=255, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False)
  np.testing.assert_allclose(float(sreval.y_ssim(sr_img, hr, s)[0]), ref, atol=2e-3)


# ---------------------------------------------------------------- EDSR import
def _edsr_state_dict(n_blocks, f, scale, rng):
  """An EDSR-PyTorch state dict built from its naming rules (random values)."""
  mean = np.array(msr.DIV2K_RGB_MEAN) * 255
  conv = lambda o, i: {"weight": rng.normal(0, 0.1, (o, i, 3, 3)).astype(np.float32),
                       "bias": rng.normal(0, 0.1, (o,)).astype(np.float32)}
  mods = {"head.0": conv(f, 3)}
  for i in range(n_blocks):
    mods[f"body.{i}.body.0"] = conv(f, f)
    mods[f"body.{i}.body.2"] = conv(f, f)
  mods[f"body.{n_blocks}"] = conv(f, f)
  for j, r in enumerate([3] if scale == 3 else [2] * int(math.log2(scale))):
    mods[f"tail.0.{2 * j}"] = conv(r * r * f, f)
  mods["tail.1"] = conv(3, f)
  sd = {f"{m}.{k}": v for m, d in mods.items() for k, v in d.items()}
  eye = np.eye(3, dtype=np.float32)[:, :, None, None]
  sd.update({"sub_mean.weight": eye, "sub_mean.bias": -mean.astype(np.float32),
             "add_mean.weight": eye, "add_mean.bias": mean.astype(np.float32)})
  return sd


@pytest.mark.parity
@pytest.mark.parametrize("scale", [3, 4])
def test_edsr_converter_maps_every_key_and_matches_torch(scale):
  rng = np.random.default_rng(4)
  sd = _edsr_state_dict(2, 4, scale, rng)
  variables = weights.convert("edsr_baseline", sd, scale=scale, n_resblocks=2, n_feats=4)
  n_flax = sum(x.size for x in jax.tree.leaves(variables["params"]))
  n_torch = sum(v.size for k, v in sd.items() if "mean" not in k)
  assert n_flax == n_torch
  with pytest.raises(weights.WeightsError, match="scale=4" if scale == 4 else "scale=3"):
    weights.convert("edsr_baseline", sd, scale=2, n_resblocks=2, n_feats=4)
  with pytest.raises(weights.WeightsError, match="not mapped"):
    weights.convert("edsr_baseline", {**sd, "extra.weight": np.zeros(1)}, scale=scale,
                    n_resblocks=2, n_feats=4)

  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  t = {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}
  c = lambda x, k: F.conv2d(x, t[k + ".weight"], t[k + ".bias"], padding=t[k + ".weight"].shape[-1] // 2)
  x = rng.uniform(size=(1, 3, 7, 6)).astype(np.float32)
  with torch.no_grad():  # EDSR-PyTorch forward, rgb_range 255
    h = c(torch.from_numpy(x) * 255, "sub_mean")
    h = c(h, "head.0")
    res = h
    for i in range(2):
      res = res + c(F.relu(c(res, f"body.{i}.body.0")), f"body.{i}.body.2")
    res = c(res, "body.2") + h
    for j, r in enumerate([3] if scale == 3 else [2] * int(math.log2(scale))):
      res = F.pixel_shuffle(c(res, f"tail.0.{2 * j}"), r)
    want = c(c(res, "tail.1"), "add_mean").numpy().transpose(0, 2, 3, 1) / 255
  model = registry.create_model("edsr_baseline", scale=scale, n_resblocks=2, n_feats=4)
  got = np.asarray(model.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1))))
  np.testing.assert_allclose(got, want, atol=2e-4)


# ---------------------------------------------------------------- upscale
def test_upscale_command_tiled_equals_untiled(tmp_path):
  from jaxvision import cli
  model = registry.create_model("edsr_baseline", scale=2, n_resblocks=1, n_feats=4)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  # Non-trivial biases so border handling matters.
  variables = jax.tree.map(lambda a: a + 0.05, variables)
  wd = str(tmp_path / "wd")
  weights.save_workdir(wd, variables, task="super_resolution", model_name="edsr_baseline",
                       model_kwargs={"scale": 2, "n_resblocks": 1, "n_feats": 4})
  img = np.random.default_rng(5).integers(0, 256, size=(29, 37, 3), dtype=np.uint8)
  src = str(tmp_path / "in.png")
  Image.fromarray(img).save(src)
  outs = []
  for extra in ([], ["--tile", "6"]):
    out = str(tmp_path / f"out{len(outs)}.png")
    assert cli.main(["upscale", "--checkpoint", wd, src, out, *extra]) == 0
    outs.append(np.asarray(Image.open(out)))
  assert outs[0].shape == (58, 74, 3)
  np.testing.assert_array_equal(outs[0], outs[1])
  # float-level equality too, with a window smaller than the image in both directions
  x = img.astype(np.float32) / 255
  whole = sreval.upscale(model, variables, x)
  tiled = sreval.upscale(model, variables, x, tile=7)
  np.testing.assert_allclose(tiled, whole, atol=1e-5)
  assert cli.main(["upscale", "--checkpoint", wd, src, str(tmp_path / "x.jpg")]) == 1
  assert cli.main(["upscale", "--checkpoint", wd, str(tmp_path / "missing.png"),
                   str(tmp_path / "y.png")]) == 1
  assert not os.path.exists(tmp_path / "y.png")


def test_upscale_a_folder(tmp_path, capsys):
  """upscale DIR OUT_DIR: each good image x2 into OUT_DIR (made), the damaged one named."""
  from jaxvision import cli
  from tests.conftest import assert_folder_run, image_folder
  model = registry.create_model("edsr_baseline", scale=2, n_resblocks=1, n_feats=4)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  wd = str(tmp_path / "wd")
  weights.save_workdir(wd, variables, task="super_resolution", model_name="edsr_baseline",
                       model_kwargs={"scale": 2, "n_resblocks": 1, "n_feats": 4})
  folder, stems, damaged = image_folder(tmp_path)
  out = tmp_path / "big"
  code = cli.main(["upscale", "--checkpoint", wd, folder, str(out)])
  assert_folder_run(code, capsys.readouterr().err, out, stems, damaged, ".png", "upscale")
  for s in stems:
    w, h = Image.open(os.path.join(folder, f"{s}.png")).size
    assert Image.open(out / f"{s}.png").size == (2 * w, 2 * h)


def test_espcn_on_y_as_in_the_paper():
  """ESPCN(channels="y"): the network sees BT.601 luma only and Cb/Cr are the bicubic
  upscale's; the zero-initialised residual variant is bicubic exactly (to the colour
  round trip). configs/sr.py trains this variant; the model's default stays "rgb", what
  older workdirs hold."""
  import jax
  import jax.numpy as jnp
  from configs import sr
  from jaxvision.core.metrics import rgb_to_ycbcr, ycbcr_to_rgb
  from jaxvision.superres.models import ESPCN, bicubic_upscale
  x = jnp.asarray(np.random.default_rng(0).random((1, 9, 11, 3)), jnp.float32)
  np.testing.assert_allclose(ycbcr_to_rgb(rgb_to_ycbcr(x)), x, atol=1e-6)
  m = ESPCN(scale=3, residual=True, channels="y")
  v = m.init(jax.random.key(0), x)
  assert v["params"]["conv1"]["kernel"].shape == (5, 5, 1, 64)
  assert v["params"]["conv3"]["kernel"].shape == (3, 3, 32, 9)
  up = bicubic_upscale(x, 3)
  np.testing.assert_allclose(m.apply(v, x), up, atol=2e-6)
  rng = np.random.default_rng(1)
  v = jax.tree.map(lambda a: jnp.asarray(0.3 * rng.standard_normal(a.shape), a.dtype), v)
  y, want = rgb_to_ycbcr(m.apply(v, x)), rgb_to_ycbcr(up)
  np.testing.assert_allclose(y[..., 1:], want[..., 1:], atol=2e-6)  # chroma: bicubic
  assert float(jnp.abs(y[..., 0] - want[..., 0]).max()) > 0.01     # luma: the network
  assert ESPCN().channels == "rgb"
  for preset in ("cpu", "paper"):
    assert sr.get_config(f"model=espcn,preset={preset}").model.kwargs.channels == "y"


def test_automatic_tiling_of_a_global_model_is_said(tmp_path, capsys):
  """RCAN pools over the whole image (channel attention), so tiles change its output: an
  image above --max-pixels, tiled without being asked, gets a note naming it; a local
  model (EDSR) tiled the same way is seam-free and gets none."""
  from jaxvision import cli
  img = np.random.default_rng(6).integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
  src = str(tmp_path / "in.png")
  Image.fromarray(img).save(src)
  for name, kw in (("rcan", TINY["rcan"]), ("edsr_baseline", TINY["edsr_baseline"])):
    model = registry.create_model(name, scale=2, **kw)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    wd = str(tmp_path / name)
    weights.save_workdir(wd, variables, task="super_resolution", model_name=name,
                         model_kwargs={"scale": 2, **kw})
    out = str(tmp_path / f"{name}.png")
    assert cli.main(["upscale", "--checkpoint", wd, src, out, "--max-pixels", "400"]) == 0
    said = capsys.readouterr().out
    assert (f"note: {src}: 40x30 is more than --max-pixels 400, so it ran in tiles" in said) \
        == (name == "rcan"), said
    assert np.asarray(Image.open(out)).shape == (60, 80, 3)
