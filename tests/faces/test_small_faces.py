"""Fidelity on small and mixed-size faces: jaxvision's MTCNN against facenet-pytorch.

Photos with several real faces 20-40 px wide (LFW crops pasted at 28-52 px) next to large
ones (90-260 px), on canvases of several sizes (odd ones too). facenet-pytorch runs in the
dev-only peer venv (`bash benchmarks/peers/setup.sh` makes .venv-peers/; jaxvision's venv
has no torch) through benchmarks/peers/facenet_detect.py, on the same PNG files; the test
is skipped when that venv is missing. Every face must match: box IoU >= 0.95, |score
difference| <= 0.01, landmarks within 2 px, and the same number of faces.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEER_PY = os.environ.get("JAXVISION_PEERS_PYTHON",
                         os.path.join(ROOT, ".venv-peers", "bin", "python"))
FACENET = os.path.join(ROOT, "benchmarks", "peers", "facenet_detect.py")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.parity,
    pytest.mark.skipif(not os.path.exists(PEER_PY),
                       reason="no peer venv with facenet-pytorch (bash benchmarks/peers/setup.sh)"),
]


def _load(name):
  """tests/faces/<name>.py (face_folder, face_match: shared with benchmarks/)."""
  import importlib
  return importlib.import_module(f"tests.faces.{name}")


# (name, background photo, width, height, faces [(lfw index, pasted size, x, y)], grey)
# Pasted sizes 28-52 give MTCNN boxes of about 20-40 px.
CASES = [
    ("six_faces_640x480", "coffee", 640, 480,
     [(3, 32, 30, 40), (17, 36, 520, 30), (41, 44, 300, 400), (58, 48, 60, 380),
      (66, 120, 150, 120), (90, 200, 400, 180)], False),
    ("astronaut_512x512", "astronaut", 512, 512,
     [(5, 28, 40, 300), (29, 40, 420, 60), (77, 52, 380, 420)], False),
    ("odd_333x517", "hubble_deep_field", 333, 517,
     [(11, 30, 20, 20), (23, 46, 250, 90), (49, 150, 90, 300)], False),
    ("grey_800x600", "page", 800, 600,
     [(8, 34, 700, 40), (36, 38, 40, 500), (71, 50, 380, 60), (95, 160, 500, 300)], True),
    ("wide_1280x720", "grass", 1280, 720,
     [(2, 30, 100, 600), (14, 34, 1150, 40), (27, 40, 640, 640), (45, 52, 900, 500),
      (62, 96, 200, 150), (83, 260, 500, 200)], False),
    # a crowd: 72 faces (more than the 64 of the old fixed last-stage buffer)
    ("crowd_72_760x680", "grass", 760, 680,
     [((9 * r + c) % 100, 52, 12 + 82 * c, 14 + 82 * r) for r in range(8) for c in range(9)],
     False),
]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
  """{name: (path, RGB uint8 array)}, written as PNG for the peer."""
  from PIL import Image
  folder = _load("face_folder")
  d = tmp_path_factory.mktemp("small_faces")
  out = {}
  for name, src, w, h, faces, grey in CASES:
    img = folder.photo(src)
    if img.ndim == 2:
      img = np.repeat(img[..., None], 3, -1)
    img = folder.resize(img[..., :3], w, h)
    if grey:
      img = np.repeat(img[..., :1], 3, -1)
    img = folder.paste_faces(img, faces)
    path = str(d / f"{name}.png")
    Image.fromarray(img).save(path)
    out[name] = (path, img)
  return out


@pytest.fixture(scope="module")
def facenet(cases, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("facenet") / "facenet.json")
  p = subprocess.run([PEER_PY, FACENET, *[p for p, _ in cases.values()], "--json", out],
                     capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stderr[-2000:]
  got = json.load(open(out))
  return {name: got[path] for name, (path, _) in cases.items()}


@pytest.fixture(scope="module")
def ours(cases):
  from jaxvision.faces.detector import mtcnn_detector
  det = mtcnn_detector()
  return {name: det.detect(img)[0] for name, (_, img) in cases.items()}


def test_cases_hold_small_and_large_faces(facenet):
  """The reference itself finds the small faces: the comparison below is about them."""
  widths = [f["box"][2] - f["box"][0] for faces in facenet.values() for f in faces]
  assert sum(18 <= w <= 42 for w in widths) >= 10, widths
  assert sum(w >= 80 for w in widths) >= 5, widths


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_small_and_mixed_faces_match_facenet_pytorch(name, ours, facenet):
  m = _load("face_match")
  c = m.compare(ours[name], facenet[name])
  detail = m.summary({name: c}) or "ok"
  assert len(ours[name]) == len(facenet[name]), detail
  assert c["ok"], detail
