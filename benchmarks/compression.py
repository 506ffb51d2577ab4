"""Learned-compression benchmark: host entropy-coder throughput (so far).

  python benchmarks/compression.py [--symbols 1000000]

Codes `--symbols` integers with the Gaussian-conditional tables of
`GaussianConditional.update()` (64 scales from 0.11 to 256): each symbol takes a
random table index and is drawn from that table's own discretised Gaussian, with
0.1% of values pushed far out of range so that the escape path is exercised.
Prints encode and decode symbols/s of `jaxvision.codec` (constriction ANS, one
model call per table) and the size against the ideal code length. The network
timings of the issue (768x512 encode/decode split into network and coding) come
with the models.
"""
import argparse
import json
import os
import sys
import time

# jax imports a top-level module named `compression` (its compilation cache tries
# an optional package of that name); this script's folder must not shadow it.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

import numpy as np  # noqa: E402

from jaxvision import codec  # noqa: E402
from jaxvision.models.compression_layers import GaussianConditional  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--symbols", type=int, default=1_000_000)
  ap.add_argument("--reps", type=int, default=3)
  a = ap.parse_args()
  tables = GaussianConditional().update()
  cdfs, lengths, offsets = (np.asarray(t) for t in tables)
  rng = np.random.default_rng(0)
  idx = rng.integers(0, len(lengths), a.symbols).astype(np.int32)
  scales = GaussianConditional().scales()[idx]
  vals = np.round(rng.normal(0, scales)).astype(np.int32)
  far = rng.random(a.symbols) < 1e-3
  vals[far] = rng.integers(-(2 ** 20), 2 ** 20, far.sum())
  enc, dec = [], []
  for _ in range(a.reps):
    t = time.perf_counter()
    data = codec.encode(vals, idx, cdfs, lengths, offsets)
    enc.append(time.perf_counter() - t)
    t = time.perf_counter()
    back = codec.decode(data, idx, cdfs, lengths, offsets)
    dec.append(time.perf_counter() - t)
  assert np.array_equal(back, vals)
  freqs = np.diff(cdfs, axis=1)
  direct = ~far & (vals - offsets[idx] >= 0) & (vals - offsets[idx] <= lengths[idx] - 3)
  ideal = -np.log2(freqs[idx[direct], (vals - offsets[idx])[direct]] / 65536.0).sum()
  print(json.dumps({
      "what": "entropy coder (constriction ANS via jaxvision.codec)",
      "symbols": a.symbols, "escaped": int((~direct).sum()),
      "encode_symbols_per_s": round(a.symbols / min(enc)),
      "decode_symbols_per_s": round(a.symbols / min(dec)),
      "bytes": len(data), "bits_per_symbol": round(8 * len(data) / a.symbols, 4),
      "ideal_bits_per_symbol_without_escapes": round(ideal / direct.sum(), 4)}))


if __name__ == "__main__":
  main()
