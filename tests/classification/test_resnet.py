"""ResNet / SE-ResNet(X) / SPP-net: registry sweep, parameter counts, SPP, weight import."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.classification import convert as C
from jaxvision.classification import models as R
from jaxvision.core import weights
from jaxvision.core.registry import create_model, list_models
from tests.classification.reference import reference_shapes

ARCHS = {  # name: (layers, bottleneck, groups, base_width, se, timm name)
    "resnet18": ((2, 2, 2, 2), False, 1, 64, False, "resnet18"),
    "resnet34": ((3, 4, 6, 3), False, 1, 64, False, "resnet34"),
    "resnet50": ((3, 4, 6, 3), True, 1, 64, False, "resnet50"),
    "resnet101": ((3, 4, 23, 3), True, 1, 64, False, "resnet101"),
    "resnet152": ((3, 8, 36, 3), True, 1, 64, False, "resnet152"),
    "se_resnet18": ((2, 2, 2, 2), False, 1, 64, True, "seresnet18"),
    "se_resnet34": ((3, 4, 6, 3), False, 1, 64, True, "seresnet34"),
    "se_resnet50": ((3, 4, 6, 3), True, 1, 64, True, "seresnet50"),
    "se_resnet101": ((3, 4, 23, 3), True, 1, 64, True, "seresnet101"),
    "se_resnet152": ((3, 8, 36, 3), True, 1, 64, True, "seresnet152"),
    "se_resnext50_32x4d": ((3, 4, 6, 3), True, 32, 4, True, "seresnext50_32x4d"),
    "se_resnext101_32x4d": ((3, 4, 23, 3), True, 32, 4, True, "seresnext101_32x4d"),
}
# timm 1.x `create_model(name)`: sum of parameter sizes and len(state_dict()) (1000 classes)
TIMM = {
    "resnet18": (11_689_512, 122), "resnet34": (21_797_672, 218),
    "resnet50": (25_557_032, 320), "resnet101": (44_549_160, 626),
    "resnet152": (60_192_808, 932), "seresnet18": (11_779_624, 154),
    "seresnet34": (21_960_416, 282), "seresnet50": (28_088_024, 384),
    "seresnet101": (49_326_872, 758), "seresnet152": (66_821_848, 1132),
    "seresnext50_32x4d": (27_559_896, 384), "seresnext101_32x4d": (48_955_416, 758),
}
KEY = lambda i=0: jax.random.key(i, impl="rbg")
# XLA:CPU compile time dominates these tests; skipping LLVM's expensive passes compiles
# faster (a per-compile option: nothing global). Not xla_backend_optimization_level=0:
# that gave NaN gradients through max-pooling here, which optimised XLA does not.
FAST_COMPILE = {"xla_llvm_disable_expensive_passes": True}


def fast_jit(f, *args):
  return jax.jit(f).lower(*args).compile(compiler_options=FAST_COMPILE)


def _n_params(shapes: dict) -> int:
  return sum(int(np.prod(s)) for k, s in shapes.items()
             if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))


@pytest.mark.parametrize("name", list(ARCHS))
def test_parameter_count_and_converter_keys_match_timm(name):
  """Full size, no compute: a reference-named state dict of zero-memory constant arrays
  (one value per key) converts, every key lands on the flax variable it names, and the
  parameter count is timm's."""
  layers, bottleneck, groups, bw, se, timm_name = ARCHS[name]
  count, n_keys = TIMM[timm_name]
  ref = reference_shapes(layers, bottleneck, groups, bw, se)
  assert (_n_params(ref), len(ref)) == (count, n_keys)  # the test's rules == timm
  value = {k: np.float32(i) for i, k in enumerate(ref)}
  sd = {k: np.broadcast_to(value[k], s) for k, s in ref.items()}
  variables = C.load(name, sd)  # traces the model once (jax.eval_shape)
  assert weights.param_count(variables["params"]) == count
  flat = {C.torch_key(tuple(p.key for p in path)[1:]): leaf for path, leaf in
          jax.tree_util.tree_flatten_with_path(variables)[0]}
  assert set(flat) == {k for k in ref if not k.endswith("num_batches_tracked")}
  for k, leaf in flat.items():
    assert leaf.flat[0] == value[k], k


def test_converter_layout_and_errors():
  ref = reference_shapes((1, 1, 1, 1), True, se=True, width=8, num_classes=3)
  rng = np.random.default_rng(0)
  sd = {k: rng.standard_normal(s).astype(np.float32) for k, s in ref.items()}
  kw = dict(layers=(1, 1, 1, 1), width=8)
  v = C.load("se_resnet50", sd, num_classes=3, **kw)
  p = v["params"]["layer2_0"]
  np.testing.assert_array_equal(p["conv2"]["kernel"],
                                sd["layer2.0.conv2.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(p["se"]["fc1"]["kernel"], sd["layer2.0.se.fc1.weight"][:, :, 0, 0].T)
  np.testing.assert_array_equal(v["params"]["fc"]["kernel"], sd["fc.weight"].T)
  np.testing.assert_array_equal(v["batch_stats"]["layer2_0"]["downsample_bn"]["var"],
                                sd["layer2.0.downsample.1.running_var"])
  # a missing key, a stray key and a wrong head size are one-line errors naming the key
  with pytest.raises(weights.WeightsError, match="layer1.0.bn1.running_var"):
    C.load("se_resnet50", {k: x for k, x in sd.items() if k != "layer1.0.bn1.running_var"},
           num_classes=3, **kw)
  with pytest.raises(weights.WeightsError, match="extra.weight"):
    C.load("se_resnet50", {**sd, "extra.weight": np.zeros(1)}, num_classes=3, **kw)
  with pytest.raises(weights.WeightsError, match="num_classes=3"):
    C.load("se_resnet50", sd, **kw)
  backbone = C.load("se_resnet50", sd, num_classes=0, **kw)  # headless: fc.* skipped
  assert "fc" not in backbone["params"]
  with pytest.raises(weights.WeightsError, match="no converter"):
    weights.convert("spp_net", sd)


@pytest.mark.parametrize("name", ["resnet50", "se_resnet18"])
def test_features_interface_full_size(name):
  model = create_model(name)
  out, _ = R.abstract_init(model, (2, 64, 96, 3), features=True)  # no compute
  e = 4 if ARCHS[name][1] else 1
  assert out["logits"].shape == (2, 1000) and out["pre_logits"].shape == (2, 512 * e)
  for i in range(4):  # strides 4, 8, 16, 32
    s = 2 ** (i + 2)
    assert out["stages"][f"stage{i + 1}"].shape == (2, 64 // s, 96 // s, 64 * 2 ** i * e)


# Forward/backward sweep over the registry. The deep variants repeat the blocks of their
# shallow siblings, and XLA:CPU needs ~0.5 s to compile each convolution's backward, so
# every registered architecture runs with its block type, SE, groups and pooling in one
# one-block stage (stride-2 projections: the parity tests below); full depths are traced
# above.
def _tiny(name):
  if name == "spp_net":
    return create_model(name, widths=(8, 8, 8, 8, 8), fc_dim=16, num_classes=5)
  return create_model(name, layers=(1,), num_classes=5, width=16 if "resnext" in name else 8)


def _np_init(abstract, seed=0):
  """Random variables from shapes (no jitted init: its compile costs seconds on CPU)."""
  rng = np.random.default_rng(seed)

  def leaf(path, a):
    kind = path[-1].key
    if kind == "kernel":
      return (rng.standard_normal(a.shape) / np.sqrt(np.prod(a.shape[:-1]))).astype(np.float32)
    if kind in ("scale", "var"):
      return rng.uniform(0.5, 1.5, a.shape).astype(np.float32)
    return (0.1 * rng.standard_normal(a.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(leaf, abstract)


_CACHE: dict = {}


def _grad_check(model):
  """(variables, (loss, new model state, grads, eval features)); one compile per config."""
  if repr(model) not in _CACHE:
    _CACHE[repr(model)] = _run_grad_check(model)
  return _CACHE[repr(model)]


def _run_grad_check(model):
  x = jnp.asarray(np.random.default_rng(0).random((2, 32, 32, 3), np.float32))
  variables = _np_init(R.abstract_init(model, x.shape)[1])

  def step(variables):
    def loss(p):
      vs = {**variables, "params": p}
      mut = [k for k in variables if k != "params"]
      logits, state = model.apply(vs, x, train=True, mutable=mut, rngs={"dropout": KEY(1)})
      return jnp.sum(jax.nn.log_softmax(logits)[:, 0]), state
    (l, state), g = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    return l, state, g
  feats = jax.eval_shape(functools.partial(model.apply, train=False, features=True),
                         variables, x)
  return variables, (*fast_jit(step, variables)(variables), feats)


@pytest.mark.parametrize("name", list(ARCHS) + ["spp_resnet18", "spp_net"])
def test_every_model_trains_tiny(name):
  assert name in list_models()
  model = _tiny(name)
  variables, (loss, state, grads, feats) = _grad_check(model)
  assert np.isfinite(float(loss))
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    g = np.asarray(g)
    assert np.isfinite(g).all() and np.abs(g).max() > 0, f"{name}: no gradient for {path}"
  assert set(feats) == {"logits", "pre_logits", "stages"} and feats["logits"].shape == (2, 5)
  assert "stage1" in feats["stages"] and feats["pre_logits"].shape[0] == 2
  if "batch_stats" in variables:  # train mode updates every running statistic
    for a, b in zip(jax.tree.leaves(variables["batch_stats"]),
                    jax.tree.leaves(state["batch_stats"])):
      assert not np.allclose(a, b)


def _adaptive_max_pool_ref(x, n):
  b, h, w, c = x.shape
  out = np.empty((b, n, n, c), x.dtype)
  for i in range(n):
    for j in range(n):
      r0, r1 = (i * h) // n, -((-(i + 1) * h) // n)
      c0, c1 = (j * w) // n, -((-(j + 1) * w) // n)
      out[:, i, j] = x[:, r0:r1, c0:c1].max(axis=(1, 2))
  return out


@pytest.mark.parametrize("hw", [(1, 1), (3, 7), (20, 9)])
def test_spp_fixed_length_and_equal_to_adaptive_max_pool(hw):
  x = np.random.default_rng(1).standard_normal((2, *hw, 4)).astype(np.float32)
  y = np.asarray(fast_jit(R.spatial_pyramid_pool, x)(x))
  assert y.shape == (2, 4 * (36 + 9 + 4 + 1))
  ref = np.concatenate([_adaptive_max_pool_ref(x, n).reshape(2, -1) for n in (6, 3, 2, 1)], -1)
  np.testing.assert_array_equal(y, ref)


def test_spp_classifier_predicts_at_any_input_size():
  model = _tiny("spp_net")
  variables, _ = _grad_check(model)  # weights made at 32x32
  fn = functools.partial(model.apply, train=False)
  for h, w in [(45, 37), (24, 64)]:
    x = jnp.asarray(np.random.default_rng(h).random((1, h, w, 3), np.float32))
    y = fast_jit(fn, variables, x)(variables, x)
    assert y.shape == (1, 5) and np.isfinite(np.asarray(y)).all()
  # spp_resnet18 too (shapes only: its forward is the sweep's resnet18 with the SPP head)
  model = _tiny("spp_resnet18")
  for h, w in [(45, 37), (24, 64)]:
    y = jax.eval_shape(model.apply, _grad_check(model)[0],
                       jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32))
    assert y.shape == (1, 5)


# ---------------------------------------------------------------- parity with torch's ops
def _torch_resnet(sd, x, layers, bottleneck, groups, se):
  """The timm/torchvision forward (eval mode) in torch.nn.functional on a state dict."""
  import torch.nn.functional as F
  bn = lambda y, k: F.batch_norm(y, sd[k + ".running_mean"], sd[k + ".running_var"],
                                 sd[k + ".weight"], sd[k + ".bias"], False, 0.0, 1e-5)
  y = F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1"))
  y = F.max_pool2d(y, 3, 2, 1)
  for i, n in enumerate(layers):
    for j in range(n):
      p, s = f"layer{i + 1}.{j}", (2 if i > 0 and j == 0 else 1)
      if bottleneck:
        z = F.relu(bn(F.conv2d(y, sd[p + ".conv1.weight"]), p + ".bn1"))
        z = F.relu(bn(F.conv2d(z, sd[p + ".conv2.weight"], stride=s, padding=1,
                               groups=groups), p + ".bn2"))
        z = bn(F.conv2d(z, sd[p + ".conv3.weight"]), p + ".bn3")
      else:
        z = F.relu(bn(F.conv2d(y, sd[p + ".conv1.weight"], stride=s, padding=1), p + ".bn1"))
        z = bn(F.conv2d(z, sd[p + ".conv2.weight"], padding=1), p + ".bn2")
      if se:
        g = F.relu(F.conv2d(z.mean((2, 3), keepdim=True), sd[p + ".se.fc1.weight"],
                            sd[p + ".se.fc1.bias"]))
        z = z * F.conv2d(g, sd[p + ".se.fc2.weight"], sd[p + ".se.fc2.bias"]).sigmoid()
      if p + ".downsample.0.weight" in sd:
        y = bn(F.conv2d(y, sd[p + ".downsample.0.weight"], stride=s), p + ".downsample.1")
      y = F.relu(z + y)
  return F.linear(y.mean((2, 3)), sd["fc.weight"], sd["fc.bias"])


@pytest.mark.parity
@pytest.mark.parametrize("name,width", [("se_resnet18", 8), ("se_resnext50_32x4d", 16)])
def test_forward_parity_with_torch_functional(name, width):
  torch = pytest.importorskip("torch")
  layers, bottleneck, groups, bw, se, _ = ARCHS[name]
  layers = (1, 2)  # reduced depth: a projecting stride-2 block, then an identity one
  ref = reference_shapes(layers, bottleneck, groups, bw, se, width=width, num_classes=7)
  rng = np.random.default_rng(0)
  sd = {}
  for k, s in ref.items():
    if k.endswith("num_batches_tracked"):
      continue
    v = rng.standard_normal(s).astype(np.float32)
    if k.endswith("running_var"):
      v = rng.uniform(0.5, 1.5, s).astype(np.float32)
    elif k.endswith("weight") and len(s) == 4:  # He-scaled so activations stay O(1)
      v *= np.sqrt(2.0 / np.prod(s[1:]))
    elif k.endswith(("bias", "running_mean")) or k.endswith("fc.weight"):
      v *= 0.1
    sd[k] = v
  x = rng.random((2, 40, 56, 3), np.float32)
  mean, std = np.asarray(R.IMAGENET_MEAN), np.asarray(R.IMAGENET_STD)
  xt = torch.from_numpy(((x - mean) / std).transpose(0, 3, 1, 2).astype(np.float32))
  want = _torch_resnet({k: torch.from_numpy(v) for k, v in sd.items()}, xt, layers,
                       bottleneck, groups, se).numpy()
  model = create_model(name, layers=layers, width=width, num_classes=7)
  variables = C.load(name, sd, layers=layers, width=width, num_classes=7)
  got = fast_jit(model.apply, variables, x)(variables, x)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
