"""BM3D (the `bm3d` package, dev-only peer venv) on a batch of noisy images, for
benchmarks/denoise.py: reads IN.npz (noisy_0, noisy_1, ... float (H, W, 3), sigma_0, ... in
[0, 1] units), writes OUT.npz (out_0, ...) and the seconds each took (seconds_i).

  .venv-peers/bin/python benchmarks/peers/denoise_bm3d.py IN.npz OUT.npz

bm3d_rgb (CBM3D, opponent colour space, the 'np' profile) with the given noise standard
deviation; the caller passes the blind estimate it gives the other baselines.
"""
import sys
import time

import bm3d
import numpy as np


def main(src: str, dst: str) -> None:
  data = np.load(src, allow_pickle=False)
  n = len([k for k in data.files if k.startswith("noisy_")])
  out = {}
  for i in range(n):
    z = np.asarray(data[f"noisy_{i}"], np.float64)
    t = time.perf_counter()
    y = bm3d.bm3d_rgb(z, float(data[f"sigma_{i}"]))
    out[f"seconds_{i}"] = np.float64(time.perf_counter() - t)
    out[f"out_{i}"] = np.asarray(y, np.float32)
  np.savez(dst, **out)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
