"""CompressAI state dicts -> jaxvision codecs: every key mapped, same outputs.

The inverse map (`to_compressai`) writes our params under CompressAI's names and
layouts; converting that back must give the same params and so the same forward.
With torch, the transposed-conv kernel flip is checked against PyTorch itself, and
if CompressAI imports (with stub modules for its unused optional dependencies) its
own models' state dicts and forward passes are compared with ours.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.compression import convert
from jaxvision.compression import layers as L
from jaxvision.compression import models as CM
from jaxvision.core import weights
from jaxvision.core.registry import create_model
from tests.compression.compressai_import import import_compressai

N, M = 8, 12


def _random_params(model, seed=0):
  """Random params of the right shapes without running init (no compile)."""
  rng = np.random.default_rng(seed)
  shapes = convert._param_shapes(model)
  return {"params": jax.tree.map(
      lambda s: jnp.asarray(rng.normal(0, 0.3, s).astype(np.float32)), shapes,
      is_leaf=lambda s: isinstance(s, tuple))}


def _compressai_like(name, sd):
  """What a real CompressAI file adds: buffers, and the zoo's old key spelling."""
  sd = dict(sd)
  sd["g_a.1.beta_reparam.pedestal"] = np.array([2.0 ** -36], np.float32)
  sd["entropy_bottleneck._quantized_cdf"] = np.zeros((N if name != "bmshj2018-factorized"
                                                      else M, 7), np.int32)
  sd["entropy_bottleneck.target"] = np.array([-20.7, 0, 20.7], np.float32)
  if name != "bmshj2018-factorized":
    sd["gaussian_conditional.scale_table"] = L.GaussianConditional().scales()
  if name == "mbt2018":
    sd["context_prediction.mask"] = np.ones_like(sd["context_prediction.weight"])
  for i in range(5):  # published zoo checkpoints: `_matrices.0`, CompressAI 1.2: `matrices.0`
    sd[f"entropy_bottleneck._matrices.{i}"] = sd.pop(f"entropy_bottleneck.matrices.{i}")
  return sd


@pytest.mark.parametrize("name", CM.MODEL_NAMES)
def test_inverse_map_round_trip(name, tmp_path):
  model = create_model(name, N=N, M=M)
  variables = _random_params(model, seed=len(name))
  sd = convert.to_compressai(model, variables)
  # CompressAI's names and layouts.
  assert sd["g_a.0.weight"].shape == (N, 3, 5, 5)
  assert sd["g_s.0.weight"].shape == (M, N, 5, 5)  # ConvTranspose2d: (in, out, kh, kw)
  assert sd["g_a.1.gamma"].shape == (N, N)
  assert sd["entropy_bottleneck.quantiles"].shape[1:] == (1, 3)
  if name == "mbt2018":
    assert sd["context_prediction.weight"].shape == (2 * M, M, 5, 5)
    assert sd["entropy_parameters.0.weight"].shape == (M * 10 // 3, 4 * M, 1, 1)
    assert sd["entropy_parameters.4.weight"].shape == (2 * M, M * 8 // 3, 1, 1)
  n_params = len(jax.tree.leaves(variables))
  assert len(sd) == n_params
  back = weights.convert(name, _compressai_like(name, sd), quality=3, N=N, M=M)
  if name == "mbt2018":  # from a file, as `jaxvision convert` reads it
    from safetensors.numpy import save_file
    path = str(tmp_path / "m.safetensors")
    save_file({k: np.ascontiguousarray(v) for k, v in _compressai_like(name, sd).items()}, path)
    from_file = weights.convert(name, path, quality=3, N=N, M=M)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), back, from_file)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               variables, back)
  # (equal params, so equal outputs; the forward itself is compared with CompressAI's
  # below and the deconv layout with PyTorch's)
  # A missing parameter, a wrong shape, an unknown key: one-line errors.
  bad = dict(sd)
  bad.pop("g_a.2.bias")
  with pytest.raises(weights.WeightsError, match="g_a.2.bias"):
    weights.convert(name, bad, N=N, M=M)
  bad = dict(sd, **{"g_s.0.weight": sd["g_s.0.weight"][:, :-1]})
  with pytest.raises(weights.WeightsError, match="g_s.0.weight: shape"):
    weights.convert(name, bad, N=N, M=M)
  with pytest.raises(weights.WeightsError, match="not mapped: extra.weight"):
    weights.convert(name, dict(sd, **{"extra.weight": np.zeros(1)}), N=N, M=M)
  with pytest.raises(weights.WeightsError, match="pass --kwargs"):
    weights.convert(name, sd, quality=3)  # zoo N, M differ from the file's


@pytest.mark.parity
def test_deconv_flip_matches_torch():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  w = rng.normal(size=(4, 3, 5, 5)).astype(np.float32)  # torch (in, out, kh, kw)
  x = rng.normal(size=(1, 4, 6, 7)).astype(np.float32)
  want = torch.nn.functional.conv_transpose2d(
      torch.from_numpy(x), torch.from_numpy(w), stride=2, padding=2, output_padding=1).numpy()
  layer = CM._deconv(3)
  got = layer.apply({"params": {"kernel": convert._to_ours(w, "deconv"), "bias": np.zeros(3)}},
                    x.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, atol=1e-4)


def _import_compressai():
  pytest.importorskip("torch")
  return import_compressai(on_fail=pytest.skip)


_CLASSES = {"bmshj2018-factorized": "FactorizedPrior", "bmshj2018-hyperprior": "ScaleHyperprior",
            "mbt2018-mean": "MeanScaleHyperprior", "mbt2018": "JointAutoregressiveHierarchicalPriors"}


# Two models cover every layer kind (GDN/IGDN, deconvs, entropy bottleneck, h_a/h_s,
# masked context, entropy parameters); the others only re-combine them.
@pytest.mark.parity
@pytest.mark.parametrize("name", ["bmshj2018-hyperprior", "mbt2018"])
def test_real_compressai_state_dict_and_forward(name):
  cm = _import_compressai()
  import torch
  torch.manual_seed(0)
  net = getattr(cm, _CLASSES[name])(N, M).eval()
  with torch.no_grad():  # GDN/quantiles as after training, not at their init values
    for k, p in net.named_parameters():
      if k.endswith(("beta", "gamma")):
        p.add_(0.02 * torch.rand_like(p))
  sd = {k: v.numpy() for k, v in net.state_dict().items()}
  model = create_model(name, N=N, M=M)
  variables = weights.convert(name, sd, N=N, M=M)
  x = np.random.default_rng(2).random((1, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    ref = net(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  out = model.apply(variables, x, train=False)
  np.testing.assert_allclose(out["x_hat"], ref["x_hat"].numpy().transpose(0, 2, 3, 1),
                             atol=2e-4)
  for k, v in out["likelihoods"].items():
    np.testing.assert_allclose(v, ref["likelihoods"][k].numpy().transpose(0, 2, 3, 1),
                               rtol=2e-3, atol=1e-6)
