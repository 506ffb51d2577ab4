"""Writes the pre-move .jvc fixtures of test_compress_compat.py (run once, kept).

They were made by the jaxvision of commit fa81f30 (before the compression family
moved into jaxvision/compression/), through its own command line, so that the test
proves that files and CDF-table files written by that code still decode to the same
pixels. To remake them (only if the format is meant to change, which it is not):

  git worktree add /tmp/jv_old fa81f30   # or: git archive fa81f30 | tar -x -C /tmp/jv_old
  cd /tmp/jv_old && JAX_PLATFORMS=cpu JAX_DEFAULT_PRNG_IMPL=rbg \
      .venv/bin/python tests/compression/data/make_fixtures.py \
      tests/compression/data

The workdirs are rebuilt by the test from `reference.random_params` (numpy only), so
only the .jvc files, the decoded PNGs and one small CDF-table file are stored.
"""
import importlib.util
import os
import shutil
import sys
import tempfile

import numpy as np
from PIL import Image

# The pre-move tree (the current directory) provides jaxvision.
sys.path.insert(0, os.getcwd())
from jaxvision import cli, weights  # noqa: E402  (pre-move layout)
from jaxvision import models  # noqa: E402
from jaxvision.models import compression as C  # noqa: E402
from jaxvision.models.compression_layers import EntropyBottleneck  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "reference", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference.py"))
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)

# (fixture name, model, kwargs, parameter seed, synthesis scale, grey input)
FIXTURES = (("factorized", "bmshj2018-factorized", {"quality": 3, "N": 8, "M": 12}, 0, 0.2, False),
            ("mbt2018", "mbt2018", {"quality": 2, "N": 8, "M": 12}, 1, 0.15, True))
H, W = 20, 28


def variables(name, kwargs, seed, scale):
  model = models.create(name, **kwargs)
  p = reference.fixture_params(C._param_shapes(model), seed, scale)
  channels = model.M if name == "bmshj2018-factorized" else model.N
  p["entropy_bottleneck"] = EntropyBottleneck(channels).solve_quantiles(p["entropy_bottleneck"])
  return {"params": p}


def main(out):
  tmp = tempfile.mkdtemp()
  for fixture, name, kwargs, seed, scale, grey in FIXTURES:
    work = os.path.join(tmp, fixture)
    v = variables(name, kwargs, seed, scale)
    weights.save_workdir(work, v, task="compression", model_name=name, model_kwargs=kwargs)
    image = reference.fixture_image(H, W, seed)
    src = os.path.join(tmp, f"{fixture}_in.png")
    if grey:
      Image.fromarray(image.mean(-1).round().astype(np.uint8), "L").save(src)
    else:
      Image.fromarray(image).save(src)
    jvc, png = os.path.join(out, f"{fixture}.jvc"), os.path.join(out, f"{fixture}.png")
    assert cli.main(["compress", "--checkpoint", work, src, jvc]) == 0
    assert cli.main(["decompress", "--checkpoint", work, jvc, png]) == 0
    print(fixture, "params_crc", C.params_crc(v), "tables", os.listdir(os.path.join(
        work, C.TABLES_DIR)), os.path.getsize(os.path.join(work, C.TABLES_DIR, "0.npz")))
    if fixture == "factorized":  # the Gaussian tables of mbt2018 are too big to keep
      shutil.copy(os.path.join(work, C.TABLES_DIR, "0.npz"),
                  os.path.join(out, f"{fixture}_tables.npz"))
  shutil.rmtree(tmp)


if __name__ == "__main__":
  main(sys.argv[1])
