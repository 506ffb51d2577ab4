"""The Noise2Noise property, end to end through `python -m train`: trained briefly with
noisy targets only, DnCNN beats the noisy input's PSNR on the held-out photos; trained
the same way with clean targets it is at least as good (up to a short run's spread)."""
from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import run

# Measured (these settings, rbg keys; 96x96 crops of the 3 held-out photos, sigma 25):
# input 20.93 dB; noisy targets 22.46 dB, clean targets 22.53 dB after 40 steps.
TINY = {"total_steps": 40, "batch_size": 8, "log_every": 20, "eval_every": 40,
        "checkpoint_every": 40, "data.crop_size": 32, "data.eval_crop": 96,
        "data.worker_count": 0, "model.kwargs.depth": 5, "model.kwargs.features": 16,
        "optimizer.warmup_steps": 0}


def _train(tmp_path, tfds_dir, target):
  wd = tmp_path / target
  cmd = ([sys.executable, "-m", "train", "--config",
          f"configs/denoise.py:model=dncnn,noise=gaussian:25,target={target}",
          "--workdir", str(wd)] + [f"--config.{k}={v}" for k, v in TINY.items()])
  run(cmd, tfds_dir)
  print(target, json.loads((wd / "metrics.json").read_text())["eval"])
  return json.loads((wd / "metrics.json").read_text())["eval"]


@pytest.mark.longrun
def test_noisy_targets_beat_the_input_and_clean_targets_are_as_good(tmp_path, tfds_dir):
  n2n = _train(tmp_path, tfds_dir, "noisy")
  assert 18 < n2n["input_psnr"] < 23, n2n  # sigma 25 on [0, 1]: about 20.2 dB before clipping
  assert n2n["psnr"] > n2n["input_psnr"] + 1.0, n2n
  assert n2n["ssim"] > n2n["input_ssim"], n2n
  clean = _train(tmp_path, tfds_dir, "clean")
  assert clean["input_psnr"] == pytest.approx(n2n["input_psnr"])  # the same noisy eval inputs
  assert clean["psnr"] > n2n["psnr"] - 0.3, (clean, n2n)
