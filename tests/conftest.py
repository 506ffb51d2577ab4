"""Shared fixtures: one TFDS data dir per test session (per xdist worker)."""
import os
import re
import subprocess
import sys

import pytest

# The suite compiles hundreds of small models. XLA:CPU compiles the default threefry PRNG
# about 7x slower than "rbg" (initialising a tiny Johnson net: 15 s vs 2 s), so tests (and
# the trainer subprocesses they start, which inherit this) use rbg; the library's default
# is unchanged.
os.environ.setdefault("JAX_DEFAULT_PRNG_IMPL", "rbg")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """A TFDS data dir shared by the tests of this worker (photos prepared once)."""
  d = os.environ.get("TFDS_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))
  return d


# Tiny CAN run: small net, small crops, few steps; every key is a real config key.
TINY = {
    "total_steps": 6, "batch_size": 8, "log_every": 2, "eval_every": 3,
    "checkpoint_every": 2, "keep_checkpoints": 3,
    "model.kwargs.width": 8, "model.kwargs.depth": 4,
    "data.crop_size": 32, "data.max_side": 96, "data.eval_crop": 64,
    "data.eval_max_images": 2, "data.worker_count": 0,
}


def train_cmd(workdir, config="configs/can.py:l0_smoothing", **overrides):
  o = {**TINY, **overrides}
  return ([sys.executable, "-m", "train", "--config", config, "--workdir", str(workdir)]
          + [f"--config.{k}={v}" for k, v in o.items()])


def run(cmd, tfds_dir, devices=1, timeout=600, check=True, **kw):
  env = {**os.environ, "TFDS_DATA_DIR": tfds_dir, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
         "PYTHONPATH": ROOT}
  p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                     timeout=timeout, **kw)
  if check and p.returncode != 0:
    raise AssertionError(f"{' '.join(map(str, cmd))} exited {p.returncode}\n"
                         f"--- stdout\n{p.stdout[-3000:]}\n--- stderr\n{p.stderr[-3000:]}")
  return p


def readme_command(marker: str) -> str:
  text = open(os.path.join(ROOT, "README.md")).read()
  m = re.search(rf"<!-- {marker} -->\s*```bash\n(.*?)\n```", text, re.S)
  assert m, f"README has no <!-- {marker} --> block"
  return m.group(1).strip()
