"""Shared fixtures: one TFDS data dir per test session (per xdist worker)."""
import atexit
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

# The suite compiles hundreds of small models. XLA:CPU compiles the default threefry PRNG
# about 7x slower than "rbg" (initialising a tiny Johnson net: 15 s vs 2 s), so tests (and
# the trainer subprocesses they start, which inherit this) use rbg; the library's default
# is unchanged.
os.environ.setdefault("JAX_DEFAULT_PRNG_IMPL", "rbg")

# The persistent compilation cache (jaxvision.core.compile) in a folder of this session (of
# this xdist worker), never the user's ~/.cache: the commands run in-process and the
# trainer subprocesses (which inherit it) share their compiled programs, so the many tiny
# runs of one config compile once (a tiny CAN run: 8.3 s without, 3.7 s warm). Tests that
# count compilations give their processes a fresh folder of their own.
_COMPILE_CACHE = tempfile.mkdtemp(prefix="jaxvision-test-xla-")
os.environ["JAXVISION_COMPILE_CACHE"] = _COMPILE_CACHE
atexit.register(shutil.rmtree, _COMPILE_CACHE, ignore_errors=True)
from jaxvision.core import compile as jv_compile  # noqa: E402  (jax after the env above)
jv_compile.enable_compile_cache()  # this process too, from its first compilation on

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Parity tests (marker `parity`) skip where the dev-only references (torch, facenet-pytorch,
# CompressAI: benchmarks/peers/setup.sh) are missing. .ci/run installs them and sets
# JAXVISION_REQUIRE_PEERS=1: there a skipped parity test is a failure, so fidelity to the
# references is guarded, not silently skipped.
REQUIRE_PEERS = os.environ.get("JAXVISION_REQUIRE_PEERS") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  outcome = yield
  report = outcome.get_result()
  if REQUIRE_PEERS and report.skipped and item.get_closest_marker("parity") is not None:
    reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = (f"parity test skipped with JAXVISION_REQUIRE_PEERS=1: {reason} "
                       "(bash benchmarks/peers/setup.sh; torch in the test venv)")


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


def image_folder(root, sizes=((20, 28), (33, 17), (24, 24)), grey=False):
  """`root/photos`: small random PNGs of different sizes (a.png, b.png, ...) plus
  `bad.png`, a truncated PNG (sorted between b and c: the run goes on after it), and a
  non-image `notes.txt` the commands skip.

  Returns (folder, names of the good images without extension, the damaged file's path),
  for the tests of each command's folder input."""
  import numpy as np
  from PIL import Image
  folder = os.path.join(str(root), "photos")
  os.makedirs(folder)
  rng = np.random.default_rng(0)
  stems = []
  for i, (h, w) in enumerate(sizes):
    stem = "abcdefgh"[i]
    shape = (h, w) if grey and i == 0 else (h, w, 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(
        os.path.join(folder, stem + ".png"))
    stems.append(stem)
  data = open(os.path.join(folder, "a.png"), "rb").read()
  damaged = os.path.join(folder, "bad.png")
  with open(damaged, "wb") as f:
    f.write(data[:len(data) // 2])
  with open(os.path.join(folder, "notes.txt"), "w") as f:
    f.write("not an image")
  return folder, stems, damaged


def assert_folder_run(code, err, out_dir, stems, damaged, ext, command):
  """What a folder run with one damaged input must do: exit 1, one error line naming the
  damaged file, the summary last, every good output written, nothing else (no output for
  the damaged file, no temp file)."""
  lines = err.strip().splitlines()
  assert code == 1, err
  named = [l for l in lines if "bad.png" in l]
  assert len(named) == 1 and named[0].startswith(f"jaxvision {command}: error: {damaged}: "), err
  assert lines[-1] == f"jaxvision {command}: error: 1 of {len(stems) + 1} inputs failed", err
  assert sorted(os.listdir(out_dir)) == sorted(s + ext for s in stems)
