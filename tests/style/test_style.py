"""Style networks: sizes kept for odd inputs, instance-norm statistics, Gatys lowers its
loss, a training step lowers the loss, and `python -m train` -> `jaxvision stylize`."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from jaxvision.core import perceptual, registry
from jaxvision.style import gatys, generators
from jaxvision.style import task as style_task  # noqa: F401  (registers the tasks)
from tests.conftest import run

TINY_VGG = 0.0625  # 4..32 channels


@pytest.mark.parametrize("name,kwargs", [("johnson", {"width": 4, "num_residual": 1}),
                                         ("texture_net", {"width": 4, "scales": 3}),
                                         ("texture_net", {"width": 4, "scales": 4,
                                                          "image_input": False})])
def test_generators_keep_odd_sizes(name, kwargs):
  m = registry.create_model(name, **kwargs)
  v = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3))))
  for h, w in [(17, 23), (31, 10)]:
    out = jax.eval_shape(lambda v, x: m.apply(v, x), v, jax.ShapeDtypeStruct((2, h, w, 3),
                                                                              jnp.float32))
    assert out.shape == (2, h, w, 3), (name, h, w)
  if name == "johnson":  # one real run (jitted: eager dispatch op by op is slower)
    x = jnp.asarray(np.random.RandomState(0).rand(1, 13, 11, 3).astype(np.float32))
    y = jax.jit(lambda x: m.apply(m.init(jax.random.PRNGKey(0), x), x))(x)
    assert y.shape == x.shape and float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_johnson_layout_matches_paper():
  """c9s1-32, d64, d128, 5 x res128, u64, u32, c9s1-3: parameters counted from the layers."""
  conv = lambda k, i, o, norm=True: k * k * i * o + o + (2 * o if norm else 0)
  want = (conv(9, 3, 32) + conv(3, 32, 64) + conv(3, 64, 128) + 10 * conv(3, 128, 128)
          + conv(3, 128, 64) + conv(3, 64, 32) + conv(9, 32, 3, norm=False))
  m = registry.create_model("johnson")
  v = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
  assert sum(x.size for x in jax.tree.leaves(v["params"])) == want


def test_instance_norm_statistics():
  r = np.random.RandomState(1)
  x = jnp.asarray((r.randn(3, 7, 9, 5) * r.rand(1, 1, 1, 5) * 10 + 4).astype(np.float32))
  y = np.asarray(generators.instance_normalize(x))
  np.testing.assert_allclose(y.mean(axis=(1, 2)), 0, atol=1e-5)
  np.testing.assert_allclose(y.var(axis=(1, 2)), 1, atol=1e-3)
  m = generators.InstanceNorm()
  params = {"params": {"scale": jnp.arange(1.0, 6.0), "bias": -jnp.arange(5.0)}}
  np.testing.assert_allclose(m.apply(params, x), y * np.arange(1, 6) - np.arange(5), rtol=1e-5,
                             atol=1e-5)
  # Per image: another image in the batch does not change this one's output.
  np.testing.assert_allclose(generators.instance_normalize(x[:1]), y[:1], rtol=1e-6)


@pytest.fixture(scope="module")
def tiny_descriptor():
  fn, pretrained = perceptual.load_descriptor(None, width=TINY_VGG)
  assert not pretrained
  return fn


@pytest.mark.parametrize("method", ["lbfgs", "adam"])
def test_gatys_lowers_the_loss(tiny_descriptor, method):
  r = np.random.RandomState(2)
  content, s = r.rand(16, 16, 3).astype(np.float32), r.rand(12, 12, 3).astype(np.float32) ** 3
  y, values = gatys.gatys(tiny_descriptor, content, s, steps=8, method=method,
                          learning_rate=0.05)
  assert y.shape == content.shape and np.all(np.isfinite(values))
  assert values[-1] < 0.7 * values[0]


def test_train_step_lowers_the_loss(tiny_descriptor):
  """The task's loss under a jitted Adam step: the style network learns."""
  import ml_collections
  config = ml_collections.ConfigDict(dict(
      descriptor=dict(arch="vgg16", weights="", width=TINY_VGG),
      style=dict(image="immunohistochemistry", size=24, loss="gram", content_layer="relu2_2",
                 style_layers=["relu1_2", "relu2_2"], content_weight=1.0, style_weight=1e3,
                 tv_weight=1.0, histogram_weight=1.0)))
  task = registry.get_task("style_transfer")
  m = registry.create_model("johnson", width=4, num_residual=1)
  x = jnp.asarray(np.random.RandomState(3).rand(2, 16, 16, 3).astype(np.float32))
  x = x.at[1].set(0.5)  # a uniform crop: left out of the loss, no overflow
  params = m.init(jax.random.PRNGKey(0), x)["params"]
  # Measured (rbg keys, seeds 0-2): lr 1e-3 ends 10 steps at 0.42x, 0.009x, 0.02x the first
  # loss; 1e-2 overshoots on the random tiny descriptor.
  tx = optax.adam(1e-3)

  @jax.jit
  def step(params, opt_state):
    (loss, (terms, _)), g = jax.value_and_grad(
        lambda p: task.loss(m, {"params": p}, {"input": x}, None, True, config), has_aux=True)(params)
    updates, opt_state = tx.update(g, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, optax.tree.norm(g)

  opt_state, losses = tx.init(params), []
  for _ in range(10):
    params, opt_state, loss, gnorm = step(params, opt_state)
    assert np.isfinite(float(gnorm))
    losses.append(float(loss))
  assert losses[-1] < 0.6 * losses[0], losses


def test_train_then_stylize_end_to_end(tmp_path, tfds_dir):
  """`python -m train --config configs/johnson.py` (tiny) says the descriptor is random and
  trains; `jaxvision stylize` uses the workdir on an odd-sized photo."""
  from jaxvision import cli
  wd = tmp_path / "run"
  overrides = {
      "model.kwargs.width": 4, "model.kwargs.num_residual": 1, "descriptor.width": TINY_VGG,
      "style.size": 24, "data.crop_size": 16, "data.eval_crop": 24, "data.eval_max_images": 1,
      "data.worker_count": 0, "total_steps": 4, "log_every": 2, "eval_every": 4,
      "checkpoint_every": 4, "batch_size": 2}
  p = run([sys.executable, "-m", "train", "--config", "configs/johnson.py", "--workdir", str(wd)]
          + [f"--config.{k}={v}" for k, v in overrides.items()], tfds_dir)
  out = p.stdout + p.stderr
  assert "RANDOM weights" in out and "done: step 4" in out
  src = tmp_path / "in.png"
  Image.fromarray((np.random.RandomState(4).rand(21, 30, 3) * 255).astype(np.uint8)).save(src)
  assert cli.main(["stylize", "--checkpoint", str(wd), str(src), str(tmp_path / "o.png")]) == 0
  assert Image.open(tmp_path / "o.png").size == (30, 21)
  # User mistakes: one line, non-zero, no file.
  assert cli.main(["stylize", str(src), str(tmp_path / "x.png")]) == 1
  assert cli.main(["stylize", "--checkpoint", str(tmp_path / "nowhere"), str(src),
                   str(tmp_path / "x.png")]) == 1
  assert not os.path.exists(tmp_path / "x.png")


def test_stylize_a_folder(tmp_path, capsys):
  """stylize --checkpoint WORKDIR DIR OUT_DIR: the network loaded once, each good image at
  its own (odd) size, the damaged one named, exit 1. Random weights from shapes (no init
  compile) in a converted-style workdir."""
  from jaxvision import cli
  from jaxvision.core import weights
  from tests.conftest import assert_folder_run, image_folder
  m = registry.create_model("johnson", width=4, num_residual=1)
  shapes = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3))))
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype),
                           shapes)
  wd = str(tmp_path / "wd")
  weights.save_workdir(wd, variables, task="style_transfer", model_name="johnson",
                       model_kwargs={"width": 4, "num_residual": 1},
                       extra_config={"style": {"image": "random"}})
  folder, stems, damaged = image_folder(tmp_path)
  out = tmp_path / "styled"
  code = cli.main(["stylize", "--checkpoint", wd, folder, str(out)])
  assert_folder_run(code, capsys.readouterr().err, out, stems, damaged, ".png", "stylize")
  for s in stems:
    assert Image.open(out / f"{s}.png").size == Image.open(os.path.join(folder, f"{s}.png")).size


def test_gatys_paper_layers_on_vgg19_lower_the_loss():
  """Gatys et al.'s own setting: VGG-19, style relu1_1..relu5_1, content relu4_2 (what
  `stylize --optimize` uses by default); on a tiny-width VGG-19 the loss falls."""
  fn, _ = perceptual.load_descriptor(None, arch="vgg19", width=TINY_VGG)
  assert fn.arch == "vgg19"
  content_layer, style_layers = gatys.layers_for("vgg19")
  assert content_layer == "relu4_2" and style_layers == (
      "relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
  r = np.random.RandomState(3)
  content, s = r.rand(32, 32, 3).astype(np.float32), r.rand(32, 32, 3).astype(np.float32) ** 3
  y, values = gatys.gatys(fn, content, s, steps=8, method="lbfgs", content_layer=content_layer,
                          style_layers=style_layers)
  assert y.shape == content.shape and values[-1] < 0.7 * values[0]


def test_descriptor_arch_is_read_from_the_weights():
  """arch 'auto': a torchvision or Keras VGG file says by its 16 or 13 convolutions which
  VGG it is; anything else is one clear error."""
  def torch_like(arch):
    idx = perceptual.torch_indices(arch)
    return {**{f"features.{i}.weight": np.zeros((1, 1, 3, 3), np.float32) for i in idx.values()},
            **{f"features.{i}.bias": np.zeros(1, np.float32) for i in idx.values()},
            "classifier.0.weight": np.zeros((2, 2), np.float32)}
  assert perceptual.arch_of_state_dict(torch_like("vgg19")) == "vgg19"
  assert perceptual.arch_of_state_dict(torch_like("vgg16")) == "vgg16"
  keras = {f"block{b}_conv{i}/block{b}_conv{i}_W_1:0": np.zeros((3, 3, 1, 1), np.float32)
           for b, n in enumerate((2, 2, 4, 4, 4), 1) for i in range(1, n + 1)}
  assert perceptual.arch_of_state_dict(keras) == "vgg19"
  from jaxvision.core.errors import WeightsError
  with pytest.raises(WeightsError, match="x.pth: 12 convolution kernels"):
    perceptual.arch_of_state_dict(dict(list(torch_like("vgg16").items())[:12]), "x.pth")


@pytest.mark.longrun
def test_stylize_optimize_defaults_to_vgg19_and_the_papers_layers(tmp_path, capsys):
  """`stylize --optimize` without --arch or --vgg: VGG-19 with Gatys et al.'s layers."""
  from jaxvision import cli
  r = np.random.default_rng(0)
  Image.fromarray(r.integers(0, 255, (40, 48, 3), np.uint8)).save(tmp_path / "c.png")
  Image.fromarray(r.integers(0, 255, (40, 40, 3), np.uint8)).save(tmp_path / "s.png")
  assert cli.main(["stylize", "--optimize", "--style", str(tmp_path / "s.png"), "--steps", "2",
                   "--optimizer", "adam", str(tmp_path / "c.png"), str(tmp_path / "o.png")]) == 0
  out = capsys.readouterr().out
  assert "RANDOM vgg19 (content relu4_2, style relu1_1, relu2_1, relu3_1, relu4_1, relu5_1)" in out
  assert Image.open(tmp_path / "o.png").size == (48, 40)


# longrun (15 s of the README's run): the paper's reflection-padding variant.
@pytest.mark.longrun
def test_johnson_paper_padding():
  """padding="valid" (configs/johnson.py's default): a 40-px reflection-padded input and
  unpadded residual convolutions with 2-px-cropped shortcuts; the same parameters as the
  "same" variant (the model's default, what older workdirs hold), outputs of the input's
  size for odd sizes too, a different function, and no shape buckets (per-size programs)."""
  from configs import johnson as johnson_config
  x = jnp.asarray(np.random.default_rng(0).random((1, 37, 53, 3)), jnp.float32)
  same = generators.Johnson(width=4, num_residual=5)
  valid = generators.Johnson(width=4, num_residual=5, padding="valid")
  assert same.padding == "same"
  v = same.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, valid.init(jax.random.key(0), x))
  a, b = same.apply(v, x), valid.apply(v, x)
  assert a.shape == b.shape == x.shape and float(jnp.abs(a - b).max()) > 1e-3
  assert generators.bucketable(same, 37, 53) and not generators.bucketable(valid, 37, 53)
  assert johnson_config.get_config("").model.kwargs.padding == "valid"
  with pytest.raises(ValueError, match="padding"):
    generators.Johnson(width=4, padding="zeros").init(jax.random.key(0), x)
