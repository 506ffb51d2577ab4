"""`jaxvision enhance`: tiled = whole image, alpha kept, clear one-line errors."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from jaxvision.core import checkpoint as jv_ckpt
from jaxvision import cli, models
from tests.conftest import run, train_cmd


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tfds_dir):
  w = tmp_path_factory.mktemp("cli") / "run"
  run(train_cmd(w, total_steps=4, checkpoint_every=4, eval_every=4), tfds_dir)
  return w


def test_enhance_tiles_equal_whole_image(workdir, tmp_path, capsys):
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (150, 230, 3), dtype=np.uint8)
  src, out = tmp_path / "in.png", tmp_path / "out.png"
  Image.fromarray(img).save(src)
  assert cli.main(["enhance", "--checkpoint", str(workdir), "--input", str(src),
                   "--output", str(out), "--tile", "64"]) == 0
  assert "150" in capsys.readouterr().out
  got = np.asarray(Image.open(out))
  config, variables, _ = jv_ckpt.load_variables(str(workdir))
  model = models.create(config.model.name, **config.model.kwargs)
  whole = np.asarray(model.apply(variables, img[None].astype(np.float32) / 255))[0]
  want = (np.clip(whole, 0, 1) * 255 + 0.5).astype(np.uint8)
  assert got.shape == img.shape
  # Same up to float rounding at the .5 boundary of the uint8 conversion.
  assert np.abs(got.astype(int) - want).max() <= 1


def test_enhance_keeps_alpha_and_accepts_grey(workdir, tmp_path):
  rgba = np.zeros((40, 50, 4), np.uint8)
  rgba[..., :3] = 128
  rgba[..., 3] = np.arange(50, dtype=np.uint8)[None, :] * 5
  Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
  assert cli.main(["enhance", "--checkpoint", str(workdir), "--input", str(tmp_path / "a.png"),
                   "--output", str(tmp_path / "b.png")]) == 0
  out = np.asarray(Image.open(tmp_path / "b.png"))
  assert out.shape == (40, 50, 4) and (out[..., 3] == rgba[..., 3]).all()
  Image.fromarray(np.full((30, 31), 77, np.uint8), "L").save(tmp_path / "g.png")
  assert cli.main(["enhance", "--checkpoint", str(workdir), "--input", str(tmp_path / "g.png"),
                   "--output", str(tmp_path / "g_out.png")]) == 0
  assert np.asarray(Image.open(tmp_path / "g_out.png")).shape == (30, 31, 3)


@pytest.mark.parametrize("case", ["no_workdir", "not_an_image", "truncated", "bad_output"])
def test_enhance_errors_are_one_line(workdir, tmp_path, capsys, case):
  good = tmp_path / "good.png"
  Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(good)
  ck, inp, out = str(workdir), str(good), str(tmp_path / "out.png")
  if case == "no_workdir":
    ck = str(tmp_path / "nowhere")
  elif case == "not_an_image":
    (tmp_path / "x.png").write_text("hello")
    inp = str(tmp_path / "x.png")
  elif case == "truncated":
    data = good.read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    inp = str(tmp_path / "t.png")
  elif case == "bad_output":
    out = str(tmp_path / "missing_dir" / "o.png")
  code = cli.main(["enhance", "--checkpoint", ck, "--input", inp, "--output", out])
  err = capsys.readouterr().err.strip()
  assert code == 1
  assert len(err.splitlines()) == 1 and err.startswith("jaxvision enhance: error: "), err
  assert not os.path.exists(out)
  assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_console_script_installed():
  exe = os.path.join(os.path.dirname(sys.executable), "jaxvision")
  assert os.path.exists(exe), "pip install -e . should install the `jaxvision` script"
  p = subprocess.run([exe, "models"], capture_output=True, text=True, timeout=120)
  assert p.returncode == 0 and "can24" in p.stdout.split()


DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def test_workdir_written_before_the_architecture_move_still_enhances(tmp_path):
  """tests/can/data/old_workdir was trained (2 steps of a tiny CAN) by the code of commit
  fa81f30, before the move into family packages, and old_expected.png is what that
  code's `jaxvision enhance` wrote for old_input.png: the new code reads the same
  workdir and writes the same pixels."""
  import shutil
  work = tmp_path / "old"
  shutil.copytree(os.path.join(DATA, "old_workdir"), work)
  out = tmp_path / "out.png"
  assert cli.main(["enhance", "--checkpoint", str(work), "--input",
                   os.path.join(DATA, "old_input.png"), "--output", str(out)]) == 0
  got = np.asarray(Image.open(out))
  want = np.asarray(Image.open(os.path.join(DATA, "old_expected.png")))
  assert got.shape == want.shape
  assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # XLA may reorder a sum
  config, model, variables, step = jv_ckpt.load_model(str(work), "image_to_image")
  assert (config.model.name, step) == ("can", 2)


def test_enhance_a_folder(tmp_path, capsys):
  """A folder in, a folder out (created): every good image written with its own size, the
  damaged one named once on stderr, exit 1 with the summary; nothing half-written."""
  import shutil
  from tests.conftest import assert_folder_run, image_folder
  work = tmp_path / "old"
  shutil.copytree(os.path.join(DATA, "old_workdir"), work)
  folder, stems, damaged = image_folder(tmp_path, grey=True)
  out = tmp_path / "out"
  code = cli.main(["enhance", "--checkpoint", str(work), "--input", folder,
                   "--output", str(out)])
  cap = capsys.readouterr()
  assert_folder_run(code, cap.err, out, stems, damaged, ".png", "enhance")
  for s in stems:
    src, got = Image.open(os.path.join(folder, s + ".png")), Image.open(out / (s + ".png"))
    assert got.size == src.size and got.mode == "RGB"
    assert f"{os.path.join(folder, s + '.png')} -> {out / (s + '.png')}" in cap.out
  # the output of a folder must be a folder; an input is never overwritten
  for bad in (str(tmp_path / "one.png"), folder):
    assert cli.main(["enhance", "--checkpoint", str(work), "--input", folder,
                     "--output", bad]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("jaxvision enhance: error: "), err
  assert not os.path.exists(tmp_path / "one.png")
