"""embed-faces / verify-faces / cluster-faces end to end, and Chinese whispers."""
import importlib.util
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxvision.recognition.cluster import chinese_whispers
from jaxvision.recognition import convert as C

needs_file = pytest.mark.skipif(
    not (C.package_models_dir() and os.path.isfile(os.path.join(C.package_models_dir(),
                                                                C.DLIB_FILE))),
    reason="face-recognition-models is not installed")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=6), st.integers(0, 1000))
def test_chinese_whispers_finds_separated_identities(sizes, seed):
  """Identities far apart (distance 10) with members close together (< 0.1): the clusters
  are exactly the identities, numbered in order of first appearance."""
  rng = np.random.default_rng(seed)
  centres = np.eye(len(sizes), 8) * 10
  truth = np.repeat(np.arange(len(sizes)), sizes)
  perm = rng.permutation(len(truth))
  truth = truth[perm]
  emb = centres[truth] + rng.normal(0, 0.01, (len(truth), 8))
  labels = chinese_whispers(emb, 0.6, seed=seed)
  _, first = np.unique(truth, return_index=True)
  order = {t: k for k, t in enumerate(truth[np.sort(first)])}
  np.testing.assert_array_equal(labels, [order[t] for t in truth])


def test_chinese_whispers_leaves_isolated_faces_alone():
  emb = np.array([[0.0, 0], [1, 0], [2, 0], [3, 0]])  # neighbours 1 apart, threshold 0.5
  np.testing.assert_array_equal(chinese_whispers(emb, 0.5), [0, 1, 2, 3])
  assert len(chinese_whispers(np.zeros((0, 4)), 0.6)) == 0


def _photos(tmp_path):
  from PIL import Image

  from jaxvision.core.io import write_png
  d = os.path.join(list(importlib.util.find_spec("skimage").submodule_search_locations)[0],
                   "data")
  astro = np.asarray(Image.open(os.path.join(d, "astronaut.png")))[..., :3]
  camera = np.asarray(Image.open(os.path.join(d, "camera.png")))
  folder = tmp_path / "photos"
  folder.mkdir()
  write_png(str(folder / "a.png"), astro[:300, 100:400])
  write_png(str(folder / "b.png"), np.ascontiguousarray(astro[:300, 100:400][:, ::-1]))
  write_png(str(folder / "c.png"), camera[:300, 100:400])
  (folder / "d.png").write_bytes(b"not a png")
  return folder


@pytest.mark.longrun
@needs_file
def test_commands_on_a_folder_of_photos(tmp_path, capsys):
  """The astronaut and her mirror image are one person (dlib distance < 0.6), the cameraman
  another; a damaged file is one error line and the others still finish (exit status 1)."""
  from jaxvision import cli
  folder = _photos(tmp_path)
  out = tmp_path / "e.json"
  assert cli.main(["embed-faces", str(folder), "--json", str(out)]) == 1
  err = capsys.readouterr().err
  assert "d.png" in err and len([l for l in err.splitlines() if "d.png" in l]) == 1
  got = json.loads(out.read_text())
  assert sorted(os.path.basename(p) for p in got) == ["a.png", "b.png", "c.png"]
  e = {os.path.basename(p): np.array(v[0]["embedding"]) for p, v in got.items()}
  assert all(len(v[0]["landmarks"]) == 5 and len(v[0]["embedding"]) == 128
             for v in got.values())
  assert np.linalg.norm(e["a.png"] - e["b.png"]) < 0.6
  assert np.linalg.norm(e["a.png"] - e["c.png"]) > 0.6

  assert cli.main(["verify-faces", str(folder / "a.png"), str(folder / "b.png")]) == 0
  assert "same person" in capsys.readouterr().out
  assert cli.main(["verify-faces", str(folder / "a.png"), str(folder / "c.png")]) == 0
  assert "different people" in capsys.readouterr().out
  assert cli.main(["verify-faces", str(folder / "a.png"), str(folder / "d.png")]) == 1
  assert len(capsys.readouterr().err.strip().splitlines()) == 1

  cj = tmp_path / "c.json"
  assert cli.main(["cluster-faces", str(folder), "--json", str(cj)]) == 1
  clusters = json.loads(cj.read_text())["clusters"]
  names = sorted(sorted(os.path.basename(f["path"]) for f in c) for c in clusters)
  assert names == [["a.png", "b.png"], ["c.png"]]


@needs_file
def test_aligned_chips_are_embedded_whole(tmp_path):
  """--aligned embeds each image as one chip: the JSON holds exactly the model's descriptor
  of that image (the converted-workdir path is checked in test_dlib_resnet.py)."""
  import jax

  from jaxvision import cli
  from jaxvision.core.io import write_png
  from jaxvision.recognition.models import dlib_resnet
  chip = (np.random.default_rng(0).random((150, 150, 3)) * 255).astype(np.uint8)
  write_png(str(tmp_path / "chip.png"), chip)
  (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
  out = tmp_path / "e.json"
  assert cli.main(["embed-faces", str(tmp_path), "--json", str(out), "--aligned"]) == 1
  got = json.loads(out.read_text())
  assert list(got) == [str(tmp_path / "chip.png")]
  want = np.asarray(jax.jit(dlib_resnet().apply)(C.dlib_resnet_variables(),
                                                 chip[None].astype(np.float32)))[0]
  np.testing.assert_allclose(got[str(tmp_path / "chip.png")][0]["embedding"], want, atol=1e-5)


@needs_file
def test_eval_faces_on_a_constructed_lfw_folder(tmp_path, capsys):
  """Two identities whose two images are the same chip: same pairs at distance 0,
  different pairs apart, so every fold is right at the threshold of the other: accuracy 1,
  AUC 1; a missing image is skipped and counted."""
  from jaxvision import cli
  from jaxvision.core.io import write_png
  rng = np.random.default_rng(0)
  for name in ("Ann", "Bob"):
    chip = (rng.random((150, 150, 3)) * 255).astype(np.uint8)
    (tmp_path / name).mkdir()
    for i in (1, 2):
      write_png(str(tmp_path / name / f"{name}_{i:04d}.png"), chip)
  pairs = tmp_path / "pairs.txt"
  pairs.write_text("2\t2\nAnn\t1\t2\nBob\t1\t2\nAnn\t1\tBob\t1\nAnn\t2\tBob\t2\n"
                   "Ann\t1\t2\nBob\t1\t2\nAnn\t1\tBob\t2\nAnn\t2\tBob\t9\n")
  out = tmp_path / "m.json"
  assert cli.main(["eval-faces", "--pairs", str(pairs), "--folder", str(tmp_path),
                   "--ext", ".png", "--aligned", "--json", str(out)]) == 0
  m = json.loads(out.read_text())
  assert m["accuracy"] == 1.0 and m["auc"] == 1.0 and m["folds"] == 2
  assert m["skipped_pairs"] == 1 and m["skipped_images"] == 1
  assert "accuracy 1.0000" in capsys.readouterr().out


@needs_file
def test_alignment_default_and_the_landmarker_service(monkeypatch):
  """The landmarks family offers its 5- and 68-point predictors through the registry (an
  unknown name is refused with the registered ones); dlib_resnet aligns with dlib's
  5-point pipeline by default when it is available and otherwise falls back to MTCNN's
  landmarks with a one-line notice; --align mtcnn is taken as asked, without a notice."""
  from jaxvision import families
  from jaxvision.core.errors import UserError
  from jaxvision.core.registry import get_landmarker, list_landmarkers
  from jaxvision.recognition import embed
  families.load("commands")
  assert {"dlib_ert_5", "dlib_ert_68"} <= set(list_landmarkers())
  with pytest.raises(ValueError, match="unknown landmark predictor 'dlib_ert_6'.*dlib_ert_5"):
    get_landmarker("dlib_ert_6")
  monkeypatch.setattr(embed, "dlib_landmarks_available", lambda: True)
  emb = embed.load_embedder("dlib_resnet")
  assert (emb.align, emb.notice) == ("dlib", "")
  assert embed.load_embedder("dlib_resnet", align_with="mtcnn").align == "mtcnn"
  monkeypatch.setattr(embed, "dlib_landmarks_available", lambda: False)
  emb = embed.load_embedder("dlib_resnet")
  assert emb.align == "mtcnn" and embed.DLIB_5PT_FILE in emb.notice
  assert len(emb.notice.splitlines()) == 1
  with pytest.raises(UserError, match="--align dlib"):
    embed.load_embedder("dlib_resnet", align_with="dlib")
