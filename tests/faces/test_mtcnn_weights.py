"""MTCNN / Cascade CNN networks and the original-weight converters (layouts, H/W swap)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.core.registry import create_model
from jaxvision.faces import boxes as geometry
from jaxvision.faces import convert as C
from jaxvision.faces import models as M


@pytest.fixture(scope="module")
def keras_arrays():
  d = C._package_dir("mtcnn")
  if d is None:
    pytest.skip("mtcnn package not installed")
  import os
  return {n: C._read_lz4_joblib(os.path.join(d, "assets", "weights", f"{n}.lz4"))
          for n in C._NETS}


def test_output_shapes_of_all_nets():
  cases = {"mtcnn-pnet": (13, 17), "mtcnn-rnet": (24, 24), "mtcnn-onet": (48, 48),
           "cascade-12net": (12, 31), "cascade-24net": (24, 24), "cascade-48net": (48, 48),
           "cascade-12cal": (12, 12), "cascade-24cal": (24, 24), "cascade-48cal": (48, 48)}
  for name, (h, w) in cases.items():
    net = create_model(name)
    x = jax.ShapeDtypeStruct((2, h, w, 3), jnp.float32)
    v = jax.eval_shape(net.init, jax.random.key(0), x)
    out = jax.eval_shape(net.apply, v, x)
    if name == "mtcnn-pnet":
      # conv3, pool 2/2 with ceil rounding, conv3, conv3: ceil((n - 2) / 2) - 4 cells
      assert out["logits"].shape == (2, 2, 4, 2)
      assert out["box"].shape[-1] == 4 and "landmarks" not in out
    elif name == "cascade-12net":
      assert out["logits"].shape == (2, 1, 10, 2) and set(out) == {"logits"}
    elif name.endswith("cal"):
      assert out["logits"].shape == (2, 45)
    elif name == "mtcnn-onet":
      assert {k: o.shape for k, o in out.items()} == {"logits": (2, 2), "box": (2, 4),
                                                       "landmarks": (2, 10)}
    else:
      assert out["logits"].shape == (2, 2)
  with pytest.raises(ValueError, match="24x24"):
    net = create_model("mtcnn-rnet")
    jax.eval_shape(net.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 25, 24, 3), jnp.float32))


def test_parameter_counts_match_the_released_nets(keras_arrays):
  for n, model, s in (("pnet", M.PNet(), 12), ("rnet", M.RNet(), 24), ("onet", M.ONet(), 48)):
    v = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, s, s, 3)))
    ours = sum(np.prod(x.shape) for x in jax.tree.leaves(v))
    assert ours == sum(a.size for a in keras_arrays[n])


# ---------------------------------------------------------------- numpy references
def _conv_valid(x, k, b):
  """NHWC x, HWIO k: the Keras/TF VALID convolution, as a sum over taps."""
  kh, kw = k.shape[:2]
  h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  out = np.zeros((x.shape[0], h, w, k.shape[3]))
  for i in range(kh):
    for j in range(kw):
      out += np.einsum("nhwc,co->nhwo", x[:, i:i + h, j:j + w], k[i, j])
  return out + b


def _prelu(x, a):
  return np.where(x >= 0, x, a.reshape(-1) * x)


def _pool_same(x, k, s):  # TF 'SAME' max pooling (pads at the end with -inf)
  n, h, w, c = x.shape
  oh, ow = -(-h // s), -(-w // s)
  ph, pw = max((oh - 1) * s + k - h, 0), max((ow - 1) * s + k - w, 0)
  xp = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)),
              constant_values=-np.inf)
  return np.stack([np.stack([xp[:, i * s:i * s + k, j * s:j * s + k].max((1, 2))
                             for j in range(ow)], 1) for i in range(oh)], 1)


def _pool_valid(x, k, s):
  n, h, w, c = x.shape
  oh, ow = (h - k) // s + 1, (w - k) // s + 1
  return np.stack([np.stack([x[:, i * s:i * s + k, j * s:j * s + k].max((1, 2))
                             for j in range(ow)], 1) for i in range(oh)], 1)


def _rnet_keras_numpy(w, x, swap=True):
  """The `mtcnn` package's Keras R-Net in numpy (Permute((2, 1, 3)) before Flatten)."""
  y = _pool_same(_prelu(_conv_valid(x, w[0], w[1]), w[2]), 3, 2)
  y = _pool_valid(_prelu(_conv_valid(y, w[3], w[4]), w[5]), 3, 2)
  y = _prelu(_conv_valid(y, w[6], w[7]), w[8])
  y = (y.transpose(0, 2, 1, 3) if swap else y).reshape(len(x), -1)
  y = _prelu(y @ w[9] + w[10], w[11])
  return y @ w[12] + w[13], y @ w[14] + w[15]  # box, face logits


def test_rnet_dense_layer_needs_the_hw_swap(keras_arrays):
  w = [a.astype(np.float64) for a in keras_arrays["rnet"]]
  x = np.random.default_rng(0).uniform(-1, 1, (3, 24, 24, 3))
  box, face = _rnet_keras_numpy(w, x)
  out = M.RNet().apply(C.convert_keras("rnet", keras_arrays["rnet"]),
                       jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(out["box"], box, atol=2e-4)
  np.testing.assert_allclose(out["logits"], face, atol=2e-4)
  box_noswap, _ = _rnet_keras_numpy(w, x, swap=False)  # the layout matters
  assert np.abs(box_noswap - box).max() > 1e-2


def test_pnet_heads_keras_order(keras_arrays):
  """Keras lists the box head (4) before the face head (2)."""
  w = [a.astype(np.float64) for a in keras_arrays["pnet"]]
  x = np.random.default_rng(1).uniform(-1, 1, (2, 16, 14, 3))
  y = _pool_same(_prelu(_conv_valid(x, w[0], w[1]), w[2]), 2, 2)
  y = _prelu(_conv_valid(y, w[3], w[4]), w[5])
  y = _prelu(_conv_valid(y, w[6], w[7]), w[8])
  out = M.PNet().apply(C.convert_keras("pnet", keras_arrays["pnet"]),
                       jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(out["box"], _conv_valid(y, w[9], w[10]), atol=2e-4)
  np.testing.assert_allclose(out["logits"], _conv_valid(y, w[11], w[12]), atol=2e-4)


def _to_torch_layout(net, keras):
  """facenet-pytorch's state-dict layout built from the Keras arrays (OIHW, (out, in))."""
  p = C.convert_keras(net, keras)["params"]
  sd = {}
  n_conv = {"pnet": 3, "rnet": 3, "onet": 4}[net]
  for j in range(1, n_conv + 1):
    sd[f"conv{j}.weight"] = p[f"conv{j}"]["kernel"].transpose(3, 2, 0, 1)
    sd[f"conv{j}.bias"] = p[f"conv{j}"]["bias"]
    sd[f"prelu{j}.weight"] = p[f"prelu{j}"]["alpha"]
  if net == "pnet":
    for h, k in (("face", "conv4_1"), ("box", "conv4_2")):
      sd[f"{k}.weight"] = p[h]["kernel"].transpose(3, 2, 0, 1)
      sd[f"{k}.bias"] = p[h]["bias"]
  else:
    d = {"rnet": 4, "onet": 5}[net]
    sd[f"dense{d}.weight"], sd[f"dense{d}.bias"] = p[f"fc{d}"]["kernel"].T, p[f"fc{d}"]["bias"]
    sd[f"prelu{d}.weight"] = p[f"prelu{d}"]["alpha"]
    heads = ["face", "box"] + (["landmarks"] if net == "onet" else [])
    for i, h in enumerate(heads, 1):
      sd[f"dense{d + 1}_{i}.weight"], sd[f"dense{d + 1}_{i}.bias"] = p[h]["kernel"].T, p[h]["bias"]
  return sd


@pytest.mark.parity
def test_onet_torch_layout_matches_torch_computation(keras_arrays):
  """facenet-pytorch's O-Net computed with torch (NCHW, permute(0, 3, 2, 1) before the
  dense layer) equals ours with the converted state dict."""
  torch = pytest.importorskip("torch")
  F = torch.nn.functional
  sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in
        _to_torch_layout("onet", keras_arrays["onet"]).items()}
  x = np.random.default_rng(2).uniform(-1, 1, (2, 48, 48, 3)).astype(np.float32)
  with torch.no_grad():
    y = torch.from_numpy(x).permute(0, 3, 1, 2)
    y = F.max_pool2d(F.prelu(F.conv2d(y, sd["conv1.weight"], sd["conv1.bias"]), sd["prelu1.weight"]),
                     3, 2, ceil_mode=True)
    y = F.max_pool2d(F.prelu(F.conv2d(y, sd["conv2.weight"], sd["conv2.bias"]), sd["prelu2.weight"]),
                     3, 2, ceil_mode=True)
    y = F.max_pool2d(F.prelu(F.conv2d(y, sd["conv3.weight"], sd["conv3.bias"]), sd["prelu3.weight"]),
                     2, 2, ceil_mode=True)
    y = F.prelu(F.conv2d(y, sd["conv4.weight"], sd["conv4.bias"]), sd["prelu4.weight"])
    y = y.permute(0, 3, 2, 1).reshape(2, -1)
    y = F.prelu(F.linear(y, sd["dense5.weight"], sd["dense5.bias"]), sd["prelu5.weight"])
    face, box, lm = (F.linear(y, sd[f"dense6_{i}.weight"], sd[f"dense6_{i}.bias"]).numpy()
                     for i in (1, 2, 3))
  v = C.convert_torch("onet", {k: t.numpy() for k, t in sd.items()})
  out = M.ONet().apply(v, jnp.asarray(x))
  np.testing.assert_allclose(out["logits"], face, atol=2e-4)
  np.testing.assert_allclose(out["box"], box, atol=2e-4)
  np.testing.assert_allclose(out["landmarks"], lm, atol=2e-4)


def test_torch_and_keras_sources_agree_and_user_npz_path(keras_arrays, tmp_path):
  flat = {}
  for n in C._NETS:
    for k, v in _to_torch_layout(n, keras_arrays[n]).items():
      flat[f"{n}.{k}"] = v
  np.savez(tmp_path / "mtcnn.npz", **flat)
  a = C.load_mtcnn_weights("mtcnn")
  b = C.load_mtcnn_weights(str(tmp_path / "mtcnn.npz"))
  for n in C._NETS:
    jax.tree.map(np.testing.assert_array_equal, a[n], b[n])
  flat.pop("onet.dense6_3.bias")
  np.savez(tmp_path / "broken.npz", **flat)
  with pytest.raises(C.WeightsError, match="dense6_3.bias"):  # the key is named
    C.load_mtcnn_weights(str(tmp_path / "broken.npz"))


def test_convert_writes_a_workdir_that_detect_faces_reads(keras_arrays, tmp_path):
  """`jaxvision convert --model mtcnn auto WORKDIR`: the registered converter (with its own
  loader for the packages' multi-file formats) writes one workdir holding the three nets,
  and the detector built from it holds exactly the original weights."""
  from jaxvision.core import registry, weights
  from jaxvision.faces import detector
  conv = registry.get_converter("mtcnn")
  assert conv is not None and conv.task == "face_cascade" and conv.load is C.load_mtcnn_weights
  variables = weights.convert("mtcnn", "auto")
  assert set(variables) == {"params"} and set(variables["params"]) == set(C._NETS)
  wd = str(tmp_path / "mtcnn")
  weights.save_workdir(wd, variables, task=conv.task, model_name="mtcnn", source="auto")
  det = detector.detector_from_workdir(wd)
  assert det.config == detector.DetectorConfig(kind="mtcnn")
  want = C.load_mtcnn_weights("mtcnn")
  assert set(det.variables) == set(C._NETS)
  for n in C._NETS:
    jax.tree.map(np.testing.assert_array_equal, det.variables[n], want[n])
  # An already loaded flat state dict (facenet-pytorch layout, "pnet." prefixes) converts too.
  flat = {f"{n}.{k}": v for n in C._NETS for k, v in _to_torch_layout(n, keras_arrays[n]).items()}
  again = weights.convert("mtcnn", flat)
  jax.tree.map(np.testing.assert_array_equal, again, variables)
  with pytest.raises(TypeError):
    weights.convert("mtcnn", "auto", width=0.5)  # the released nets take no arguments


def test_weights_errors_are_one_line(monkeypatch, tmp_path):
  (tmp_path / "w.lz4").write_bytes(b"x")
  with pytest.raises(C.MTCNNWeightsError, match=r"\.pt, \.npz or \.safetensors"):
    C.load_mtcnn_weights(str(tmp_path / "w.lz4"))  # never unpickle a user's file
  with pytest.raises(C.MTCNNWeightsError, match="no such file"):
    C.load_mtcnn_weights(str(tmp_path / "nope.npz"))
  monkeypatch.setattr(C, "_package_dir", lambda name: None)
  with pytest.raises(C.MTCNNWeightsError, match="pip install mtcnn") as e:
    C.load_mtcnn_weights()
  assert "\n" not in str(e.value)
  from jaxvision.core.errors import UserError, WeightsError
  assert isinstance(e.value, WeightsError) and isinstance(e.value, UserError)


def test_calibration_inverts_a_known_shift_and_scale():
  pats = geometry.calibration_patterns()
  assert pats.shape == (45, 3) and len({tuple(r) for r in pats}) == 45
  face = np.array([[40.0, 30.0, 100.0, 110.0]])
  fw, fh = 60.0, 80.0
  k = geometry.calibration_label(1.21, -0.17, 0.17)
  s, xn, yn = pats[k]
  window = np.array([[40 + xn * fw, 30 + yn * fh, 40 + xn * fw + s * fw, 30 + yn * fh + s * fh]])
  probs = np.full((1, 45), 0.001)
  probs[0, k] = 0.9
  np.testing.assert_allclose(geometry.apply_calibration(window, probs, 0.1), face, atol=1e-4)
  np.testing.assert_allclose(  # jnp path, no confident pattern: unchanged
      geometry.apply_calibration(jnp.asarray(window), jnp.full((1, 45), 1 / 45), 0.1), window,
      atol=1e-5)


def test_cascade_24net_uses_its_12_branch():
  net = create_model("cascade-24net", width=0.25)
  v = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 24, 24, 3)))
  assert set(v["params"]) == {"features", "branch12", "face"}
  # the classifier sees 128/4 + 16/4 features
  assert v["params"]["face"]["kernel"].shape == (32 + 4, 2)


def test_shape_table_is_the_models():
  """convert.MTCNN_SHAPES (checked on every load, a table for speed) is what the linen
  models create."""
  for name, (net, s) in {"pnet": (M.PNet(), 12), "rnet": (M.RNet(), 24),
                         "onet": (M.ONet(), 48)}.items():
    ref = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, s, s, 3))))
    assert jax.tree.map(lambda a: tuple(a.shape), ref) == C.MTCNN_SHAPES[name], name
