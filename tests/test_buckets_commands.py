"""Shape buckets in the commands (jaxvision.core.buckets): `enhance`, `upscale`, `sr-eval` and
`stylize` on a folder of many sizes compile one program per bucket, not one per size, and
write what the per-size path (the model jitted on each whole image) writes.

The folder: five colour images of five sizes and a grey one, all sides in (32, 64]
except one of 31: two buckets, (64, 64) and (64, 32), for six sizes."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxvision import cli
from jaxvision import models as _registers  # noqa: F401  (every family's models)
from jaxvision.core import buckets, checkpoint, io, registry, tiling, weights
from jaxvision.core.compile import count_compiles
from jaxvision.style import generators
from jaxvision.superres import eval as sreval
from jaxvision.superres import models as srmodels

SIZES = [(37, 53), (40, 64), (61, 45), (64, 64), (50, 31), (45, 38)]  # the last one grey


def _folder(root, sizes=SIZES):
  """root/photos with a.png, b.png, ... of `sizes` (the last one grey); [(path, stem)]."""
  folder = os.path.join(str(root), "photos")
  os.makedirs(folder)
  rng = np.random.default_rng(0)
  files = []
  for i, (h, w) in enumerate(sizes):
    shape = (h, w) if i == len(sizes) - 1 else (h, w, 3)
    path = os.path.join(folder, "abcdefgh"[i] + ".png")
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    files.append((path, "abcdefgh"[i]))
  return folder, files


def _n_buckets(sizes, multiple=32, scale=1):
  return len({buckets.bucket_shape(h // scale, w // scale, multiple) for h, w in sizes})


def _png(path):
  return np.asarray(Image.open(path))


def _random_workdir(root, name, kwargs, task, extra=None, scale=0.1, seed=1):
  m = registry.create_model(name, **kwargs)
  shapes = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3))))
  rng = np.random.default_rng(seed)
  v = jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
  wd = os.path.join(str(root), name)
  weights.save_workdir(wd, v, task=task, model_name=name, model_kwargs=kwargs,
                       extra_config=extra)
  return wd, m, v


# ---------------------------------------------------------------- enhance
def _can_workdir(root):
  """A small CAN whose hidden layers are far from zero on a zero input (adaptive norm's BN
  weighted in, random kernels): unmasked padding would change the border."""
  kwargs = {"width": 8, "depth": 4}
  model = registry.create_model("can", **kwargs)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  rng = np.random.default_rng(3)

  def perturb(path, a):
    name = jax.tree_util.keystr(path)
    noise = rng.standard_normal(a.shape).astype(a.dtype)
    if "var" in name:
      return jnp.abs(a) + 0.5
    if "mu" in name:
      return a + 0.5
    return a + 0.1 * noise

  variables = jax.tree_util.tree_map_with_path(perturb, variables)
  wd = str(root / "can")
  weights.save_workdir(wd, variables, task="image_to_image", model_name="can",
                       model_kwargs=kwargs, extra_config={"data": {"operator": "random"}})
  return wd


def test_enhance_folder_one_program_per_bucket_same_pixels(tmp_path):
  work = _can_workdir(tmp_path)
  folder, files = _folder(tmp_path)
  out = tmp_path / "out"
  with count_compiles() as c:
    assert cli.main(["enhance", "--checkpoint", str(work), "--input", folder,
                     "--output", str(out)]) == 0
  # Measured: one program per bucket (2), nothing else; was one per size (6).
  assert c.requests <= _n_buckets(SIZES) < len(SIZES), c
  _, model, variables, _ = checkpoint.load_model(str(work))
  whole = jax.jit(lambda x: model.apply(variables, x, train=False))  # the per-size path
  for path, stem in files:
    image, _ = io.read_image(path)
    want = io.to_uint8(np.asarray(whole(image[None].astype(np.float32) / 255.0))[0])
    np.testing.assert_array_equal(_png(out / f"{stem}.png"), want)


def test_enhance_tiles_run_in_the_window_shape_and_buckets(tmp_path):
  """Large images in tiles: full windows unpadded in the one window shape, partial ones
  (a side under the window) in a bucket; the same pixels as the per-size tiler's."""
  work = _can_workdir(tmp_path)
  folder, files = _folder(tmp_path, [(150, 100), (130, 90), (150, 40)])
  out = tmp_path / "out"
  with count_compiles() as c:
    assert cli.main(["enhance", "--checkpoint", str(work), "--input", folder,
                     "--output", str(out), "--tile", "64"]) == 0
  assert c.requests <= 2, c  # the 72 x 72 window, and 72 x 64 for the 40-wide image's
  _, model, variables, _ = checkpoint.load_model(str(work))
  whole = jax.jit(lambda x: model.apply(variables, x, train=False))
  for path, stem in files:
    image, _ = io.read_image(path)
    y = tiling.apply_tiled(whole, image.astype(np.float32) / 255.0,
                           radius=model.receptive_radius(), tile=64)
    np.testing.assert_array_equal(_png(out / f"{stem}.png"), io.to_uint8(y))


# ---------------------------------------------------------------- upscale / sr-eval
def _sr_workdir(root, name="edsr_baseline", kwargs=None):
  kwargs = kwargs or {"scale": 2, "n_resblocks": 1, "n_feats": 4}
  model = registry.create_model(name, **kwargs)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  rng = np.random.default_rng(4)  # non-zero biases (the borders matter), outputs unsaturated
  variables = jax.tree.map(
      lambda a: a + (0.05 * rng.standard_normal(a.shape)).astype(a.dtype), variables)
  wd = str(root / name)
  weights.save_workdir(wd, variables, task="super_resolution", model_name=name,
                       model_kwargs=kwargs)
  return wd, model, variables


def test_upscale_folder_one_program_per_bucket_same_pixels(tmp_path):
  wd, model, variables = _sr_workdir(tmp_path)
  folder, files = _folder(tmp_path)
  out = tmp_path / "out"
  with count_compiles() as c:
    assert cli.main(["upscale", "--checkpoint", wd, folder, str(out)]) == 0
  assert c.requests <= _n_buckets(SIZES) < len(SIZES), c  # measured 2; was 6
  whole = jax.jit(lambda x: model.apply(variables, x, train=False))
  for path, stem in files:
    image, _ = io.read_image(path)
    y = np.clip(np.asarray(whole(image[None].astype(np.float32) / 255.0))[0], 0.0, 1.0)
    np.testing.assert_array_equal(_png(out / f"{stem}.png"),
                                  (y * 255.0 + 0.5).astype(np.uint8))


def test_sr_eval_folder_one_program_per_bucket_same_numbers(tmp_path):
  wd, model, variables = _sr_workdir(tmp_path, "espcn", {"scale": 2, "features": [8, 4],
                                                         "residual": True})
  folder, files = _folder(tmp_path)
  res_json = tmp_path / "res.json"
  with count_compiles() as c:
    assert cli.main(["sr-eval", "--checkpoint", wd, "--dataset", f"folder:{folder}",
                     "--split", "train", "--data-dir", str(tmp_path / "tfds"),
                     "--json", str(res_json)]) == 0
  hr_sizes = [(h - h % 2, w - w % 2) for h, w in SIZES]  # modcropped
  # the model on the LR images' buckets, the metrics on the HR images' (measured 1 + 2; the
  # per-size path compiled 9 programs per size, 54)
  assert c.requests <= _n_buckets(hr_sizes, scale=2) + _n_buckets(hr_sizes), c
  got = json.load(open(res_json))
  # The per-size path: the model jitted on each whole LR image, y_psnr / y_ssim per size.
  from jaxvision.superres.data import SREvalPairs
  whole = jax.jit(lambda x: model.apply(variables, x, train=False))
  pairs, rows = SREvalPairs(2), {"model": [], "bicubic": []}
  for path, _ in files:
    hr = io.load_image_file(path).astype(np.float32) / 255.0
    p = pairs({"target": hr})
    sr = np.clip(np.asarray(whole(p["input"][None]))[0], 0.0, 1.0)
    for key, img in (("model", sr), ("bicubic", p["bicubic"])):
      rows[key].append((float(sreval.y_psnr(img, p["target"], 2)),
                        float(sreval.y_ssim(img, p["target"], 2))))
  for key, v in rows.items():
    assert got[key]["images"] == len(files)
    # PSNR: the same float32 sums; SSIM: a global mean XLA may add in another order (1 ulp)
    assert got[key]["psnr_y"] == pytest.approx(np.mean([r[0] for r in v]), abs=1e-6)
    assert got[key]["ssim_y"] == pytest.approx(np.mean([r[1] for r in v]), abs=1e-6)


def test_bicubic_matrices_in_a_bucket_are_the_per_size_ones():
  """ESPCN's residual bicubic: the matrix built for a traced size inside a bucket has the
  per-size matrix's entries, bit for bit (borders mirrored at the image's size)."""
  for s in (2, 3, 4):
    for big in (16, 32, 64):
      f = jax.jit(lambda n: srmodels._bicubic_matrix_region(n, big, s))
      for n in range(1, big + 1):
        got = np.asarray(f(np.int32(n)))[:n * s]
        want = np.zeros((n * s, big), np.float32)
        want[:, :n] = srmodels._bicubic_matrix(n, s)
        np.testing.assert_array_equal(got, want, err_msg=f"x{s}, {n} in {big}")


SR_CASES = {
    "espcn": {"scale": 2, "features": (8, 4), "residual": True},
    "espcn_x3": {"scale": 3, "features": (8, 4), "residual": True},
    "edsr_baseline": {"scale": 2, "n_resblocks": 2, "n_feats": 8},
    "wdsr_a": {"scale": 2, "n_resblocks": 2, "n_feats": 8},
    "wdsr_b": {"scale": 3, "n_resblocks": 2, "n_feats": 8},
    "rcan": {"scale": 2, "n_resgroups": 2, "n_resblocks": 2, "n_feats": 16, "reduction": 4},
    "johnson_sr": {"scale": 4, "features": 8, "n_resblocks": 1},
}


@pytest.mark.parametrize("case", sorted(SR_CASES))
def test_sr_models_in_buckets_equal_whole_images(case):
  name = case.split("_x")[0]
  model = registry.create_model(name, **SR_CASES[case])
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  rng = np.random.default_rng(2)
  variables = jax.tree.map(  # non-zero biases, ESPCN's last layer not at zero
      lambda a: a + (0.05 * rng.standard_normal(a.shape)).astype(a.dtype), variables)
  variables = jax.tree_util.tree_map_with_path(  # positive BN variances
      lambda p, a: jnp.abs(a) + 0.5 if "var" in jax.tree_util.keystr(p) else a, variables)
  fn = lambda x: model.apply(variables, x, train=False)
  run, whole = sreval.bucketed_model(model, variables), jax.jit(fn)
  sizes = [(37, 53), (20, 31), (9, 5)]
  images = [rng.random((1, h, w, 3), dtype=np.float32) for h, w in sizes]
  with count_compiles() as c:
    outs = [run(x) for x in images]
  assert c.requests == _n_buckets(sizes) == 2
  for x, y in zip(images, outs):
    want = np.asarray(whole(x))
    assert y.shape == want.shape
    np.testing.assert_allclose(y, want, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- stylize
def test_stylize_folder_one_program_per_bucket_same_pixels(tmp_path):
  wd, _, _ = _random_workdir(tmp_path, "johnson", {"width": 4, "num_residual": 1},
                             "style_transfer", {"style": {"image": "random"}})
  folder, files = _folder(tmp_path)
  out = tmp_path / "out"
  with count_compiles() as c:
    assert cli.main(["stylize", "--checkpoint", wd, folder, str(out)]) == 0
  assert c.requests <= _n_buckets(SIZES) < len(SIZES), c  # measured 2; was 18
  from jaxvision.style.commands import load_generator
  whole, _, _ = load_generator(wd)  # the per-size path
  differ, pixels = 0, 0
  for path, stem in files:
    x = io.load_image_file(path).astype(np.float32) / 255.0
    want = io.to_uint8(np.asarray(whole(x[None], 0))[0])
    got = _png(out / f"{stem}.png")
    assert got.shape == want.shape
    d = np.abs(got.astype(int) - want)
    # Instance norm's means over the valid region: XLA:CPU adds the same numbers, in an order
    # that depends on the shape (float32 rounding, ~1e-6), so a value that falls on a .5 of
    # the uint8 rounding can land one level off.
    assert d.max() <= 1
    differ, pixels = differ + int((d > 0).sum()), pixels + d.size
  assert differ <= 1e-3 * pixels, (differ, pixels)


STYLE_CASES = {"johnson": {"width": 4, "num_residual": 1},
               "texture_net": {"width": 4, "scales": 4}}


@pytest.mark.parametrize("name", sorted(STYLE_CASES))
def test_style_generators_in_buckets_equal_whole_images(name):
  """Reflection at the valid border, strided convs, resizes to the valid sizes, instance
  norm over the valid region, the texture net's noise and image pyramid: the bucketed
  output is the whole-image output, to float32 rounding. Texture nets on images with a
  side <= 2**(scales-1) are not bucketable (and run per size in `stylize`)."""
  m = registry.create_model(name, **STYLE_CASES[name])
  shapes = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
  rng = np.random.default_rng(1)
  v = jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)

  def fn(x, seed):
    return m.apply(v, x, rngs={"noise": jax.random.key(seed, impl="rbg")})

  run, whole = buckets.bucketed_apply(fn, generators.bucket_multiple(m)), jax.jit(fn)
  sizes = [(37, 53), (40, 35), (3, 40)]  # one bucket, and a per-size one for texture_net
  for h, w in sizes:
    x = rng.random((1, h, w, 3), dtype=np.float32)
    if not generators.bucketable(m, h, w):
      assert name == "texture_net" and min(h, w) <= 2 ** (m.scales - 1)
      continue
    np.testing.assert_allclose(run(x, 3), np.asarray(whole(x, 3)), rtol=0, atol=1e-5,
                               err_msg=f"{name} {h}x{w}")
  with pytest.raises(ValueError, match="multiple of"):  # a bucket off the total stride
    buckets.bucketed_apply(fn, 2)(np.zeros((1, 5, 5, 3), np.float32), 0)  # in 6 x 6


@pytest.mark.parametrize("impl", ["rbg", "threefry2x32"])
def test_uniform_noise_is_a_prefix_of_the_flat_stream(impl):
  """What TextureNet's bucketed noise relies on: the (1, h, w, c) draw is the first h*w*c
  values of the flat draw of a bigger size, from the same key."""
  key = jax.random.key(3, impl=impl)
  small = np.asarray(jax.random.uniform(key, (1, 5, 7, 3)))
  flat = np.asarray(jax.random.uniform(key, (8 * 8 * 3,)))
  np.testing.assert_array_equal(small.ravel(), flat[:small.size])
