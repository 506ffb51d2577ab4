"""configs/compress.py trains a codec through the generic trainer; the checkpoint
codes real bitstreams that decode to the model's own quantized reconstruction."""
import numpy as np
import pytest

from jaxvision.compression import coding
from jaxvision.compression import tables as T
from jaxvision.core import checkpoint as jv_ckpt
from jaxvision.core.registry import create_model
from tests.conftest import run, train_cmd

pytestmark = pytest.mark.slow


@pytest.mark.longrun
def test_train_then_code(tmp_path, tfds_dir, capsys):
  work = tmp_path / "codec"
  over = {"model.kwargs.N": 8, "model.kwargs.M": 12, "data.crop_size": 64,
          "data.eval_crop": 64, "total_steps": 4, "checkpoint_every": 4, "eval_every": 4}
  over = {k: v for k, v in over.items()}
  cmd = train_cmd(work, config="configs/compress.py:model=bmshj2018-hyperprior,quality=2",
                  **over)
  cmd = [c for c in cmd if not c.startswith(("--config.model.kwargs.width",
                                             "--config.model.kwargs.depth",
                                             "--config.data.max_side"))]
  p = run(cmd, tfds_dir)
  assert "done: step 4" in p.stdout and "bpp" in p.stdout
  config, variables, step = jv_ckpt.load_variables(str(work))
  assert step == 4 and config.lmbda == 0.0035
  model = create_model(config.model.name, **config.model.kwargs)
  assert (model.N, model.M) == (8, 12)
  tables = T.update(model, variables)
  x = np.random.default_rng(0).random((1, 70, 90, 3)).astype(np.float32)
  strings, shapes = coding.compress(model, variables, tables, x)
  y = coding.decompress(model, variables, tables, strings, shapes, 70, 90)
  np.testing.assert_allclose(y, coding.reconstruct(model, variables, x), atol=1e-6)

  # The command line: real .jvc files, decoded to the same reconstruction.
  from PIL import Image
  from jaxvision import cli
  img = (x[0] * 255).astype(np.uint8)
  Image.fromarray(img).save(tmp_path / "in.png")
  jvc, png = str(tmp_path / "a.jvc"), str(tmp_path / "a.png")
  assert cli.main(["compress", "--checkpoint", str(work), str(tmp_path / "in.png"), jvc]) == 0
  assert cli.main(["decompress", "--checkpoint", str(work), jvc, png]) == 0
  want = coding.reconstruct(model, variables, img[None].astype(np.float32) / 255)[0]
  got = np.asarray(Image.open(png)).astype(np.float32) / 255
  assert got.shape == (70, 90, 3) and np.abs(got - want).max() <= 0.5 / 255 + 1e-6
  # Damaged files: one-line error, exit 1, no output written.
  data = open(jvc, "rb").read()
  for i, bad in enumerate([data[:len(data) // 2], b"JVC\x00" + data[4:5] + b"x" * 40,
                           bytes([data[0] ^ 1]) + data[1:], data[:-1] + bytes([data[-1] ^ 8])]):
    open(tmp_path / f"bad{i}.jvc", "wb").write(bad)
    out = tmp_path / f"bad{i}.png"
    assert cli.main(["decompress", "--checkpoint", str(work), str(tmp_path / f"bad{i}.jvc"),
                     str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxvision decompress: error: "), err
    assert not out.exists()
