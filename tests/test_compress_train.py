"""configs/compress.py trains a codec through the generic trainer; the checkpoint
codes real bitstreams that decode to the model's own quantized reconstruction."""
import numpy as np
import pytest

from jaxvision import checkpoint as jv_ckpt
from jaxvision import models
from jaxvision.models import compression as C
from tests.conftest import run, train_cmd

pytestmark = pytest.mark.slow


def test_train_then_code(tmp_path, tfds_dir):
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
  model = models.create(config.model.name, **config.model.kwargs)
  assert (model.N, model.M) == (8, 12)
  tables = C.update(model, variables)
  x = np.random.default_rng(0).random((1, 70, 90, 3)).astype(np.float32)
  strings, shapes = C.compress(model, variables, tables, x)
  y = C.decompress(model, variables, tables, strings, shapes, 70, 90)
  np.testing.assert_allclose(y, C.reconstruct(model, variables, x), atol=1e-6)
