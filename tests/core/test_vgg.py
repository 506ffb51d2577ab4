"""VGG descriptors: converters map every key and layout (real shapes), Keras h5 through
h5py, preprocessing, convert CLI -> load_descriptor, optional parity with torch convs."""
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.core import perceptual, weights

TORCH_CONVS = {"vgg16": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28],
               "vgg19": [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]}


def fake_torch_sd(arch, width=1.0, seed=0):
  """A torchvision-layout state dict (OIHW) with the shapes the model has, plus a classifier."""
  shapes = perceptual.variable_shapes(arch, width)["params"]  # eval_shape: nothing computed
  r = np.random.RandomState(seed)
  sd = {}
  for name, n in perceptual.torch_indices(arch).items():
    kh, kw, i, o = shapes[name]["kernel"].shape
    sd[f"features.{n}.weight"] = r.standard_normal((o, i, kh, kw)).astype(np.float32) * 0.1
    sd[f"features.{n}.bias"] = r.standard_normal(o).astype(np.float32) * 0.1
  sd["classifier.0.weight"] = np.zeros((4, 4), np.float32)
  return sd


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_torch_indices_are_torchvisions(arch):
  assert list(perceptual.torch_indices(arch).values()) == TORCH_CONVS[arch]
  assert len(perceptual.layer_names(arch)) == len(TORCH_CONVS[arch])


def test_torch_converter_maps_every_key_and_layout():
  sd = fake_torch_sd("vgg16")
  v = weights.convert("vgg16", sd)
  p = v["params"]
  assert set(p) == set(perceptual.torch_indices("vgg16"))
  for name, n in perceptual.torch_indices("vgg16").items():
    w = sd[f"features.{n}.weight"]
    np.testing.assert_array_equal(p[name]["kernel"], w.transpose(2, 3, 1, 0))  # OIHW -> HWIO
    np.testing.assert_array_equal(p[name]["bias"], sd[f"features.{n}.bias"])
  shapes = perceptual.variable_shapes("vgg16")
  assert jax.tree.map(np.shape, v) == jax.tree.map(lambda s: s.shape, shapes)
  assert weights.param_count(p) == 14_714_688  # torchvision vgg16().features
  np.testing.assert_array_equal(v["preprocess"]["matrix"], np.eye(3))
  # A converter that drops or misreads weights fails with a one-line message naming the key.
  with pytest.raises(weights.WeightsError, match="features.28.bias"):
    weights.convert("vgg16", {k: x for k, x in sd.items() if k != "features.28.bias"})
  with pytest.raises(weights.WeightsError, match="features.0.weight: shape"):
    weights.convert("vgg16", {**sd, "features.0.weight": np.zeros((64, 3, 5, 5), np.float32)})
  with pytest.raises(weights.WeightsError, match="not mapped: features.99.weight"):
    weights.convert("vgg16", {**sd, "features.99.weight": np.zeros(1, np.float32)})


def test_keras_h5_converter(tmp_path):
  """A Keras vgg19 *_notop.h5 (Keras 2 naming block1_conv1/block1_conv1_W_1:0, HWIO),
  written with h5py, read through load_state_dict; Caffe preprocessing comes with it."""
  shapes = perceptual.variable_shapes("vgg19")["params"]
  r = np.random.RandomState(1)
  path = tmp_path / "vgg19_notop.h5"
  want = {}
  with h5py.File(path, "w") as f:
    for b, blk in enumerate(perceptual.CONFIGS["vgg19"]):
      for i in range(len(blk)):
        layer = f"block{b + 1}_conv{i + 1}"
        k = r.standard_normal(shapes[f"conv{b + 1}_{i + 1}"]["kernel"].shape).astype(np.float32)
        bias = r.standard_normal(k.shape[-1]).astype(np.float32)
        g = f.create_group(layer)
        g.create_dataset(f"{layer}_W_1:0", data=k)
        g.create_dataset(f"{layer}_b_1:0", data=bias)
        want[f"conv{b + 1}_{i + 1}"] = (k, bias)
    f.create_group("block5_pool")  # layers without weights are fine
  v = weights.convert("vgg19", str(path))
  assert set(v["params"]) == set(want)
  for name, (k, bias) in want.items():
    np.testing.assert_array_equal(v["params"][name]["kernel"], k)
    np.testing.assert_array_equal(v["params"][name]["bias"], bias)
  # Caffe preprocessing: BGR, 0-255, minus the BGR means.
  x = np.random.RandomState(2).rand(4, 3).astype(np.float32)
  pp = v["preprocess"]
  np.testing.assert_allclose((x @ pp["matrix"] - pp["mean"]) / pp["std"],
                             x[:, ::-1] * 255.0 - np.array(perceptual.CAFFE_MEAN_BGR), rtol=1e-5)


def test_convert_cli_then_load_descriptor(tmp_path, capsys):
  """safetensors -> `jaxvision convert` -> workdir -> load_descriptor (pretrained) gives the
  features of the converted weights; without weights: random, warned once."""
  from safetensors.numpy import save_file
  from jaxvision import cli
  sd = fake_torch_sd("vgg16", width=0.0625, seed=3)
  save_file(sd, str(tmp_path / "tiny.safetensors"))
  out = tmp_path / "vgg_wd"
  assert cli.main(["convert", "--model", "vgg16", "--kwargs", "width=0.0625",
                   str(tmp_path / "tiny.safetensors"), str(out)]) == 0
  fn, pretrained = perceptual.load_descriptor(str(out))
  assert pretrained
  x = jnp.asarray(np.random.RandomState(0).rand(1, 20, 20, 3).astype(np.float32))
  direct = perceptual.VGG(width=0.0625).apply(weights.convert("vgg16", sd, width=0.0625), x)
  got = fn(x)
  assert list(got) == perceptual.layer_names("vgg16")
  for k in got:
    np.testing.assert_allclose(got[k], direct[k], rtol=1e-5, atol=1e-6)
  capsys.readouterr()
  perceptual._WARNED.clear()  # warned once per process: forget earlier tests' random descriptors
  fn2, pretrained2 = perceptual.load_descriptor(None, width=0.0625)
  perceptual.load_descriptor(None, width=0.0625)
  assert not pretrained2 and capsys.readouterr().out.count("RANDOM weights") == 1
  assert fn2(x)["relu2_2"].shape == (1, 10, 10, 8)


@pytest.mark.parity
def test_forward_parity_with_torch():
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  width = 0.0625
  sd = fake_torch_sd("vgg16", width=width, seed=5)
  x = np.random.RandomState(6).rand(2, 23, 19, 3).astype(np.float32)  # odd sizes: floor pools
  got = perceptual.VGG(width=width).apply(weights.convert("vgg16", sd, width=width), jnp.asarray(x))
  mean = torch.tensor(perceptual.TORCH_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(perceptual.TORCH_STD).view(1, 3, 1, 1)
  h = (torch.from_numpy(x).permute(0, 3, 1, 2) - mean) / std
  idx = perceptual.torch_indices("vgg16")
  for b, blk in enumerate(perceptual.CONFIGS["vgg16"]):
    if b:
      h = F.max_pool2d(h, 2)
    for i in range(len(blk)):
      n = idx[f"conv{b + 1}_{i + 1}"]
      h = F.relu(F.conv2d(h, torch.from_numpy(sd[f"features.{n}.weight"]),
                          torch.from_numpy(sd[f"features.{n}.bias"]), padding=1))
      np.testing.assert_allclose(got[f"relu{b + 1}_{i + 1}"], h.permute(0, 2, 3, 1).numpy(),
                                 rtol=1e-4, atol=1e-5)
