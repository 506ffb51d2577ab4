"""One short `python -m train` run of configs/sr.py beats bicubic on held-out crops; then
`jaxvision sr-eval` and `jaxvision upscale` read its workdir."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
from PIL import Image

from tests.conftest import run


def test_short_espcn_run_beats_bicubic_and_commands_use_it(tmp_path, tfds_dir):
  wd = tmp_path / "espcn_x2"
  # Measured (rbg keys as conftest sets): bicubic 32.01 dB; 32.16-32.26 after 40 steps, seeds 0-2.
  overrides = {"total_steps": 40, "batch_size": 8, "log_every": 10, "eval_every": 40,
               "checkpoint_every": 40, "data.worker_count": 0, "data.eval_crop": 96,
               "optimizer.warmup_steps": 0}
  cmd = ([sys.executable, "-m", "train", "--config", "configs/sr.py:model=espcn,scale=2",
          "--workdir", str(wd)] + [f"--config.{k}={v}" for k, v in overrides.items()])
  run(cmd, tfds_dir)
  m = json.loads((wd / "metrics.json").read_text())["eval"]
  # Held-out photos (camera, coffee, rocket): Y-PSNR with a 2-pixel border shaved.
  assert m["psnr_y"] > m["bicubic_psnr_y"] + 0.03, m
  assert 20 < m["bicubic_psnr_y"] < 45, m
  assert os.path.exists(wd / "samples" / "final_00_bicubic_output_target.png")

  photo = tmp_path / "small.png"
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (21, 17, 3), np.uint8)).save(photo)
  out = tmp_path / "up.png"
  res = tmp_path / "eval.json"
  code = ("import sys; from jaxvision import cli; "
          f"assert cli.main(['sr-eval', '--checkpoint', {str(wd)!r}, '--max-images', '1', "
          f"'--json', {str(res)!r}]) == 0; "
          f"assert cli.main(['upscale', '--checkpoint', {str(wd)!r}, {str(photo)!r}, "
          f"{str(out)!r}]) == 0")
  p = run([sys.executable, "-c", code], tfds_dir)
  assert "| bicubic |" in p.stdout, p.stdout
  full = json.loads(res.read_text())
  assert full["model"]["images"] == 1
  assert abs(full["model"]["psnr_y"] - full["bicubic"]["psnr_y"]) < 3, full  # whole photo
  assert np.asarray(Image.open(out)).shape == (42, 34, 3)
