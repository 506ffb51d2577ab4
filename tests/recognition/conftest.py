"""Fixtures of the recognition tests: dlib's own chips and descriptors (peer venv)."""
import os
import subprocess

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEER_PY = os.environ.get("JAXVISION_PEERS_PYTHON",
                         os.path.join(ROOT, ".venv-peers", "bin", "python"))
PEER_DLIB = os.path.join(ROOT, "benchmarks", "peers", "recognition_dlib.py")


@pytest.fixture(scope="session")
def dlib_ref(tmp_path_factory):
  """benchmarks/peers/recognition_dlib.py's npz: dlib's chips, descriptors, 5-point parts,
  boxes and the photos (skips where the peer venv or its dlib is missing)."""
  if not os.path.exists(PEER_PY):
    pytest.skip("no peer venv with dlib-bin (bash benchmarks/peers/setup.sh)")
  out = tmp_path_factory.mktemp("dlibref") / "ref.npz"
  p = subprocess.run([PEER_PY, PEER_DLIB, str(out)], capture_output=True, text=True,
                     timeout=300)
  if p.returncode != 0 and "No module named 'dlib'" in p.stderr:
    pytest.skip("the peer venv has no dlib (pip install dlib-bin there)")
  assert p.returncode == 0, p.stderr[-2000:]
  return dict(np.load(out))


@pytest.fixture(scope="session")
def dlib_pipeline(tmp_path_factory):
  """tests/recognition/dlib_peer.py's npz: dlib's whole pipeline (HOG rectangles, 5-point
  shapes, get_face_chip, get_face_chips, compute_face_descriptor(img, shape)) on real faces,
  large ones included (skips where the peer venv or its dlib is missing)."""
  if not os.path.exists(PEER_PY):
    pytest.skip("no peer venv with dlib-bin (bash benchmarks/peers/setup.sh)")
  out = tmp_path_factory.mktemp("dlibpipe") / "ref.npz"
  p = subprocess.run([PEER_PY, os.path.join(os.path.dirname(__file__), "dlib_peer.py"),
                      str(out)], capture_output=True, text=True, timeout=300)
  if p.returncode != 0 and "No module named 'dlib'" in p.stderr:
    pytest.skip("the peer venv has no dlib (pip install dlib-bin there)")
  assert p.returncode == 0, p.stderr[-2000:]
  return dict(np.load(out))
