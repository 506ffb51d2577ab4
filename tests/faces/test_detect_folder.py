"""`jaxvision detect-faces` with folders among its inputs: the command's side (which files,
the JSON, the drawings, the error policy) with a stand-in detector, so no cascade compiles
(the real cascade through the command is tests/faces/test_faces.py's CLI test)."""
import json
import os
import types

from jaxvision import cli
from jaxvision.faces import detector
from tests.conftest import image_folder

FACE = {"box": [1.0, 2.0, 9.0, 12.0], "score": 0.9, "landmarks": [[3.0, 4.0]] * 5}


class _Detector:
  """Finds one face in every image (as MTCNN's detector: a list of images in)."""
  config = types.SimpleNamespace(kind="mtcnn")

  def __init__(self):
    self.seen = []
    self.prepared = None

  def prepare(self, count, threads=None):  # the command compiles while it reads images
    self.prepared = count

  def detect_each(self, images, threads=None, count=None):
    for im in images:
      self.seen.append(im.shape)
      yield [dict(FACE)]


def test_folders_and_files_with_a_damaged_one(tmp_path, monkeypatch, capsys):
  det = _Detector()
  monkeypatch.setattr(detector, "mtcnn_detector", lambda *a, **k: det)
  folder, stems, damaged = image_folder(tmp_path, grey=True)
  extra = os.path.join(folder, "a.png")  # also given as a file: read once
  out, drawn = tmp_path / "faces.json", tmp_path / "drawn"
  code = cli.main(["detect-faces", folder, extra, "--json", str(out), "--draw", str(drawn)])
  cap = capsys.readouterr()
  err = cap.err.strip().splitlines()
  assert code == 1 and len(err) == 2, cap.err
  assert err[0].startswith(f"jaxvision detect-faces: error: {damaged}: not a readable image")
  assert err[1] == "jaxvision detect-faces: error: 1 of 4 inputs failed"
  res = json.loads(out.read_text())  # the format as before: {path: [faces]}, good ones only
  assert list(res) == [os.path.join(folder, f"{s}.png") for s in stems]
  assert all(v == [FACE] for v in res.values())
  assert sorted(os.listdir(drawn)) == [f"{s}.png" for s in stems]
  assert len(det.seen) == 3 and all(s[-1] == 3 for s in det.seen)  # grey a.png as RGB
  assert det.prepared == 4  # programs for every input given, prepared while reading
  assert "3 image(s), 3 face(s)" in cap.out


def test_progress_bar_counts_the_damaged_file_too(tmp_path, monkeypatch, capsys):
  """The bar ends at the number of inputs, the unreadable one included."""
  from jaxvision.core import inputs
  bars = []

  class Bar:
    def __init__(self, total, unit="file"):
      self.total, self.n = total, 0
      bars.append(self)

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      return False

    def update(self, k):
      assert k >= 0
      self.n += k

  monkeypatch.setattr(inputs, "progress", Bar)
  monkeypatch.setattr(detector, "mtcnn_detector", lambda *a, **k: _Detector())
  folder, stems, damaged = image_folder(tmp_path, grey=True)
  assert cli.main(["detect-faces", folder, "--json", str(tmp_path / "f.json")]) == 1
  capsys.readouterr()
  assert [(b.total, b.n) for b in bars] == [(len(stems) + 1, len(stems) + 1)]


def test_all_inputs_unreadable_writes_no_json(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(detector, "mtcnn_detector", lambda *a, **k: _Detector())
  bad = [tmp_path / "x.png", tmp_path / "y.png"]
  for p in bad:
    p.write_bytes(b"\x89PNG broken")
  out = tmp_path / "faces.json"
  assert cli.main(["detect-faces", *map(str, bad), "--json", str(out)]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 3 and err[-1] == "jaxvision detect-faces: error: 2 of 2 inputs failed"
  assert not out.exists()


def test_unwritable_outputs_are_one_line_before_any_work(tmp_path, monkeypatch, capsys):
  det = _Detector()
  monkeypatch.setattr(detector, "mtcnn_detector", lambda *a, **k: det)
  folder, stems, _ = image_folder(tmp_path, grey=True)
  as_dir = tmp_path / "faces.json"
  as_dir.mkdir()
  assert cli.main(["detect-faces", folder, "--json", str(as_dir)]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [f"jaxvision detect-faces: error: {as_dir}: is a folder, not an output file"]
  blocker = tmp_path / "file"
  blocker.write_bytes(b"")
  out = tmp_path / "ok.json"
  assert cli.main(["detect-faces", folder, "--json", str(out), "--draw",
                   str(blocker / "drawn")]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "cannot create the --draw folder" in err[0]
  assert not out.exists() and det.seen == []  # refused before detecting or writing


def test_a_device_per_core_gives_the_same_faces(tmp_path):
  """`jaxvision detect-faces` in its own process (one XLA CPU device per core, an image per
  device) finds what the detector finds in this process (one device)."""
  import subprocess
  import sys

  import numpy as np
  from PIL import Image

  from tests.conftest import ROOT
  from tests.faces import reference
  photos = reference.photos()
  paths = []
  for name in ("astronaut", "lfw_mosaic", "camera"):
    paths.append(str(tmp_path / f"{name}.png"))
    Image.fromarray(photos[name]).save(paths[-1])
  out = tmp_path / "faces.json"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  p = subprocess.run([sys.executable, "-m", "jaxvision.cli", "detect-faces", *paths, "--json",
                      str(out)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
  assert p.returncode == 0, p.stderr[-2000:]
  got = json.loads(out.read_text())
  det = detector.mtcnn_detector()
  for path in paths:
    want = det.detect(np.asarray(Image.open(path).convert("RGB")))[0]
    assert len(got[path]) == len(want) > 0
    for g, w in zip(got[path], want):
      np.testing.assert_allclose(g["box"], w["box"], atol=1e-4)
      np.testing.assert_allclose(g["score"], w["score"], atol=1e-6)
