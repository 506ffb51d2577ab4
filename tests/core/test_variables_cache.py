"""The variables cache of core.checkpoint.load_variables: a hit skips orbax, every change to
the checkpoint folder is a miss, a damaged cache file is a miss, the cache off writes nothing."""
from __future__ import annotations

import os

import numpy as np
import pytest

from jaxvision.core import checkpoint as ck
from jaxvision.core import weights


def _workdir(path, scale):
  params = {"conv": {"kernel": np.full((3, 3, 2, 4), scale, np.float32),
                     "bias": np.arange(4, dtype=np.float32)},
            "count": np.int32(7)}
  weights.save_workdir(str(path), {"params": params, "batch_stats": {"m": np.ones(3, np.float32)}},
                       task="can", model_name="can24")
  return str(path)


def _cache_files(root):
  d = os.path.join(root, ck.VARIABLES_SUBDIR)
  return sorted(os.listdir(d)) if os.path.isdir(d) else []


def test_hit_miss_damage_and_off(tmp_path, monkeypatch):
  cache = str(tmp_path / "cache")
  monkeypatch.setattr(ck, "_cache_base", lambda: cache)
  wd = _workdir(tmp_path / "wd", 0.5)
  _, first, step = ck.load_variables(wd)
  assert len(_cache_files(cache)) == 1

  def no_orbax(*a, **k):
    raise AssertionError("orbax read on a cache hit")

  with monkeypatch.context() as m:
    m.setattr(ck, "_restore_variables", no_orbax)
    _, again, step2 = ck.load_variables(wd)
  assert step2 == step
  flat = lambda t: {k: np.asarray(v) for k, v in ck._flat(t).items()}
  a, b = flat(first), flat(again)
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype
                                      for k in a)

  # the checkpoint changes (another workdir written in its place): a miss, the new values
  import shutil
  shutil.rmtree(wd)
  wd = _workdir(tmp_path / "wd", 2.0)
  _, new, _ = ck.load_variables(wd)
  assert float(new["params"]["conv"]["kernel"][0, 0, 0, 0]) == 2.0

  # a damaged cache file: a miss, read from the checkpoint, replaced
  for name in _cache_files(cache):
    with open(os.path.join(cache, ck.VARIABLES_SUBDIR, name), "wb") as f:
      f.write(b"PK\x03\x04 not a zip")
  _, healed, _ = ck.load_variables(wd)
  assert float(healed["params"]["conv"]["kernel"][0, 0, 0, 0]) == 2.0
  key = ck._variables_cache_file(os.path.join(wd, ck.CHECKPOINT_DIR))
  assert ck._read_cached_variables(key) is not None

  # the cache off: nothing written
  monkeypatch.setattr(ck, "_cache_base", lambda: None)
  shutil.rmtree(cache)
  ck.load_variables(wd)
  assert not os.path.exists(cache)


def test_trees_it_cannot_hold_are_not_cached():
  assert ck._flat({"a": {"b": np.ones(2)}}) is not None
  assert ck._flat({"a": {}}) is None                      # an empty dict would not come back
  assert ck._flat({"a|b": np.ones(2)}) is None             # the separator in a key
  import ml_dtypes
  assert ck._flat({"a": np.ones(2, ml_dtypes.bfloat16)}) is None  # numpy reads it as void
