"""benchmarks/accelerator.py (issue 14) keeps working: its tiny CPU version runs every
workload and writes finite figures for each."""
import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.longrun
def test_accelerator_script_tiny(tmp_path):
  out = tmp_path / "acc.json"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  p = subprocess.run([sys.executable, "benchmarks/accelerator.py", "--tiny", "--out", str(out)],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
  r = json.load(open(out))
  names = {row["workload"] for row in r["rows"]}
  assert names == {"can24", "resnet50", "se_resnet50", "bmshj2018-hyperprior",
                   "edsr_baseline_x4", "rcan_x4", "johnson", "mtcnn_pnet",
                   "mtcnn_detect_faces", "hyperprior_codec"}
  for row in r["rows"]:
    for k in ("compile_s", "step_ms", "images_per_s", "gflop_per_step", "encode_ms",
              "decode_ms", "loss"):
      if k in row:
        assert math.isfinite(row[k]) and row[k] > 0 or k == "loss", (row["workload"], k, row[k])
    if row["kind"] == "train":
      assert row["gflop_per_step"] > 0 and math.isfinite(row["loss"])
  assert "MFU" in p.stdout and str(out) in p.stdout
