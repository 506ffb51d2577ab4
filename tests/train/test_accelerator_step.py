"""The accelerator-ready train step (issue 14): FLOPs and MFU in the logs, a profiler
trace on request, bf16 compute close to float32, and the device prefetch bit-identical to
the plain loop, resume included."""
import glob
import json
import os

import jax
import numpy as np
import pytest

from jaxvision.core import checkpoint as jv_ckpt
from tests.conftest import run, train_cmd

pytestmark = pytest.mark.slow


def _params(workdir):
  _, variables, step = jv_ckpt.load_variables(str(workdir))
  return variables, step


def _max_diff(a, b) -> float:
  d = jax.tree.map(lambda x, y: float(np.abs(np.asarray(x, np.float64) -
                                             np.asarray(y, np.float64)).max()), a, b)
  return max(jax.tree.leaves(d))


@pytest.mark.longrun
def test_flops_mfu_profile_and_bf16(tmp_path, tfds_dir):
  f32 = tmp_path / "f32"
  p = run(train_cmd(f32, peak_flops=2e12, profile_steps="2:3"), tfds_dir)
  assert "GFLOP per step" in p.stdout and "profile of steps 2-3" in p.stdout
  m = json.load(open(f32 / "metrics.json"))
  assert m["step_flops"] > 0
  t = m["train"]
  # MFU is the achieved per-device FLOP/s over the peak given
  assert t["mfu"] == pytest.approx(t["tflops_per_sec_per_device"] * 1e12 / 2e12, rel=1e-6)
  assert t["tflops_per_sec_per_device"] == pytest.approx(
      m["step_flops"] * t["steps_per_sec"] / 1e12, rel=1e-6)
  traces = glob.glob(f"{f32}/profile/**/*.xplane.pb", recursive=True)
  assert traces and os.path.getsize(traces[0]) > 0
  from tests.train.test_train import read_event_tags
  tags = read_event_tags(glob.glob(f"{f32}/tensorboard/events.out.tfevents.*")[0])
  assert {"train/mfu", "train/images_per_sec", "train/tflops_per_sec_per_device"} <= tags["scalar"]

  bf16 = tmp_path / "bf16"
  run(train_cmd(bf16, dtype="bfloat16"), tfds_dir)
  mb = json.load(open(bf16 / "metrics.json"))
  va, _ = _params(f32)
  vb, _ = _params(bf16)
  # parameters stay float32 under bf16 compute
  assert {np.asarray(x).dtype for x in jax.tree.leaves(vb["params"])} == {np.dtype("float32")}
  assert np.isfinite(mb["train"]["loss"]) and np.isfinite(mb["eval"]["psnr"])
  # 6 steps from the same init: bf16 (8-bit mantissa) stays close to float32
  assert mb["train"]["loss"] == pytest.approx(m["train"]["loss"], rel=0.1)
  assert abs(mb["eval"]["psnr"] - m["eval"]["psnr"]) < 0.5
  assert mb["step_flops"] == m["step_flops"]


def test_bad_accelerator_keys_are_one_line(tmp_path, tfds_dir):
  p = run(train_cmd(tmp_path / "a", profile_steps="5:2"), tfds_dir, check=False)
  assert p.returncode == 1 and p.stderr.strip().splitlines()[-1] == (
      "error: config.profile_steps='5:2': need 1 <= START <= STOP")
  p = run(train_cmd(tmp_path / "b", dtype="int8"), tfds_dir, check=False)
  assert p.returncode == 1 and "config.dtype='int8'" in p.stderr.strip().splitlines()[-1]


@pytest.mark.longrun
def test_prefetch_is_bit_identical_and_resumes_exactly(tmp_path, tfds_dir):
  """3 batches read ahead, stopped at step 4 and resumed: bit for bit the run without
  prefetch. The data position saved is that of the last batch trained on (a position
  taken after the read-ahead would skip 3 batches and change the parameters)."""
  over = {"data.worker_count": 2}
  plain = tmp_path / "plain"
  run(train_cmd(plain, prefetch=0, **over), tfds_dir)
  resumed = tmp_path / "resumed"
  run(train_cmd(resumed, prefetch=3, total_steps=4, **over), tfds_dir)
  p = run(train_cmd(resumed, prefetch=3, **over), tfds_dir)
  assert "resuming from checkpoint step 4" in p.stdout
  va, sa = _params(plain)
  vc, sc = _params(resumed)
  assert sa == sc == 6 and _max_diff(va, vc) == 0.0
