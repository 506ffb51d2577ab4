"""FaceNet's converter against facenet-pytorch's own InceptionResnetV1 (peer venv)."""
import importlib.util
import os
import subprocess

import numpy as np
import pytest

from tests.recognition.conftest import PEER_PY

HERE = os.path.dirname(os.path.abspath(__file__))
REPEATS = (1, 2, 1)  # a shortened network of the original's own blocks (compile time)


def _face_crops() -> np.ndarray:
  """Real faces as FaceNet crops (160 px): the astronaut's (dlib's detector rectangle,
  facenet's margin crop) and an LFW face (25 px, upscaled)."""
  from PIL import Image

  from jaxvision.recognition import align as A
  d = os.path.join(list(importlib.util.find_spec("skimage").submodule_search_locations)[0],
                   "data")
  astro = np.asarray(Image.open(os.path.join(d, "astronaut.png")))[..., :3]
  crops = [A.warp(astro, A.facenet_crop_matrix([175, 76, 265, 166], astro.shape[:2])[None],
                  160)[0]]
  lfw = np.load(os.path.join(d, "lfw_subset.npy"))
  for i in (19,):
    face = Image.fromarray((lfw[i] * 255).round().astype(np.uint8)).resize((160, 160),
                                                                           Image.BILINEAR)
    crops.append(np.repeat(np.asarray(face, np.float32)[..., None], 3, -1))
  return np.stack(crops)


@pytest.mark.parity
def test_facenet_converter_matches_facenet_pytorch(tmp_path, capsys):
  """`jaxvision convert --model facenet_inception_resnet_v1 facenet.pt W` of a randomly
  initialised facenet-pytorch InceptionResnetV1 (every batch norm given random scales,
  shifts and statistics) embeds random images and real face crops as the original does in
  eval mode: every embedding within 1e-4."""
  if not os.path.exists(PEER_PY):
    pytest.skip("no peer venv with facenet-pytorch (bash benchmarks/peers/setup.sh)")
  from jaxvision import cli
  from jaxvision.core import weights
  from jaxvision.recognition import embed
  rng = np.random.default_rng(0)
  images = np.concatenate([rng.uniform(0, 255, (2, 160, 160, 3)), _face_crops()])
  images = images.astype(np.float32)
  np.savez(tmp_path / "in.npz", images=images)
  p = subprocess.run([PEER_PY, os.path.join(HERE, "facenet_peer.py"), str(tmp_path / "in.npz"),
                      str(tmp_path / "ref")] + [str(r) for r in REPEATS],
                     capture_output=True, text=True, timeout=300)
  if p.returncode and "No module named 'facenet_pytorch'" in p.stderr:
    pytest.skip("facenet-pytorch is not installed in the peer venv")
  assert p.returncode == 0, p.stderr[-2000:]
  want = np.load(tmp_path / "ref" / "emb.npy")
  pt, work = str(tmp_path / "ref" / "facenet.pt"), str(tmp_path / "w")
  # the command refuses the shortened network for the full-depth model, in one line ...
  assert cli.main(["convert", "--model", "facenet_inception_resnet_v1", pt, work]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "1/2/1 blocks" in err[0]
  # ... and converts it as what it is with the command's own two calls
  name = "facenet_inception_resnet_v1"
  variables = weights.convert(name, pt, repeats=REPEATS)
  weights.save_workdir(work, variables, task="face_embedding", model_name=name,
                       model_kwargs={"repeats": list(REPEATS)}, source=pt)
  emb = embed.load_embedder(checkpoint=work)
  got = emb.embed_chips(images)
  err = np.abs(got - want).max(-1)
  print(f"facenet-pytorch parity: max |diff| random {err[:2].max():.2e}, "
        f"faces {err[2:].max():.2e}")
  assert got.shape == want.shape == (len(images), 512)
  assert err.max() < 1e-4


def test_facenet_converter_refuses_another_depth():
  """A state dict whose block counts differ from the model's is refused with the counts
  it has (one line), not loaded into the wrong places."""
  from jaxvision.core.errors import WeightsError
  from jaxvision.recognition.convert import convert_facenet
  sd = {f"repeat_{j}.{i}.branch0.conv.weight": np.zeros(1) for j, n in ((1, 2), (2, 1),
                                                                         (3, 1)) for i in range(n)}
  with pytest.raises(WeightsError, match="2/1/1 blocks.*the model 5/10/5"):
    convert_facenet(sd)
