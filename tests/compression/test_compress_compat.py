""".jvc files and CDF-table files written by an earlier jaxvision still decode.

The fixtures in tests/compression/data were written by the jaxvision of commit fa81f30
(before the family moved into jaxvision/compression/) through its own `jaxvision
compress` / `decompress` (data/make_fixtures.py): a factorized file (RGB) with the
workdir's saved tables file, and an mbt2018 file (grey input: one channel in the
header; hyperprior, fixed-point context coding, version-2 tables CRC). The workdirs
are rebuilt here from numpy-only parameters (`reference.fixture_params`), pinned by
their parameter CRC. Decoding must give the very pixels the old code wrote, and
coding the same image again must give the very same bytes.
"""
import argparse
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from jaxvision.compression import commands, convert, files
from jaxvision.compression import tables as T
from jaxvision.compression.layers import EntropyBottleneck
from jaxvision.compression.models import is_hyperprior
from jaxvision.core import weights
from jaxvision.core.registry import create_model
from tests.compression.reference import fixture_image, fixture_params

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
H, W = 20, 28
# fixture: (model, kwargs, parameter seed, synthesis scale, grey input, params CRC of
# the old code), as in data/make_fixtures.py.
FIXTURES = {
    "factorized": ("bmshj2018-factorized", {"quality": 3, "N": 8, "M": 12}, 0, 0.2, False,
                   1121987838),
    "mbt2018": ("mbt2018", {"quality": 2, "N": 8, "M": 12}, 1, 0.15, True, 1440210990),
}


def _workdir(path, fixture):
  name, kwargs, seed, scale, _, crc = FIXTURES[fixture]
  model = create_model(name, **kwargs)
  p = fixture_params(convert._param_shapes(model), seed, scale)
  channels = model.N if is_hyperprior(model) else model.M
  p["entropy_bottleneck"] = EntropyBottleneck(channels).solve_quantiles(p["entropy_bottleneck"])
  variables = {"params": p}
  assert T.params_crc(variables) == crc, (
      "the rebuilt parameters differ from the fixture's (did numpy's RNG stream change?)")
  weights.save_workdir(str(path), variables, task="compression", model_name=name,
                       model_kwargs=kwargs)
  return model, variables


def _same(a, b):
  assert set(a) == set(b)
  for k in a:
    for x, y in zip(a[k], b[k]):
      assert x.dtype == y.dtype == np.int32 and np.array_equal(x, y)


@pytest.mark.parametrize("fixture", sorted(FIXTURES))
def test_pre_move_file_decodes_to_the_same_pixels(tmp_path, fixture, capsys):
  name, kwargs, seed, _, grey, _ = FIXTURES[fixture]
  work = tmp_path / "codec"
  model, variables = _workdir(work, fixture)
  old_tables = os.path.join(DATA, f"{fixture}_tables.npz")
  saved_path = work / T.TABLES_DIR / "0.npz"
  if os.path.exists(old_tables):  # the old workdir's tables file, as the old code saved it
    saved, fp = T.load_tables(old_tables)
    assert fp == T.params_crc(variables)
    _same(saved, T.update(model, variables))
    os.makedirs(saved_path.parent)
    shutil.copy(old_tables, saved_path)

  jvc = os.path.join(DATA, f"{fixture}.jvc")
  old_bytes = open(jvc, "rb").read()
  header, _ = files.read_jvc(old_bytes)
  assert (header.model, header.quality, header.height, header.width) == (
      name, kwargs["quality"], H, W)
  assert header.channels == (1 if grey else 3) and old_bytes[4] == 2  # version 2
  assert header.tables_crc == T.tables_crc(T.update(model, variables))

  out = tmp_path / "out.png"
  commands.decompress(argparse.Namespace(command="decompress", checkpoint=str(work), input=jvc,
                                         output=str(out)))
  got = np.asarray(Image.open(out))
  want = np.asarray(Image.open(os.path.join(DATA, f"{fixture}.png")))
  assert got.shape == want.shape == ((H, W) if grey else (H, W, 3))
  np.testing.assert_array_equal(got, want)
  if os.path.exists(old_tables):  # reused, not rebuilt
    assert saved_path.read_bytes() == open(old_tables, "rb").read()

  # The same image coded today: the very same bytes.
  image = fixture_image(H, W, seed)
  src = tmp_path / "in.png"
  if grey:
    Image.fromarray(image.mean(-1).round().astype(np.uint8), "L").save(src)
  else:
    Image.fromarray(image).save(src)
  new = tmp_path / "new.jvc"
  commands.compress(argparse.Namespace(command="compress", checkpoint=str(work), input=str(src),
                                       output=str(new)))
  assert new.read_bytes() == old_bytes
  assert f"{len(old_bytes)} bytes" in capsys.readouterr().out
