"""Learned-compression benchmark: codec encode/decode time and entropy-coder throughput.

  python benchmarks/compression.py                 # 768x512, zoo quality 3, all models
  python benchmarks/compression.py --quick         # 256x256, tiny N/M, 1 rep
  python benchmarks/compression.py --models mbt2018-mean --compressai

Per model: encode and decode time of one image (median of --reps after a warm-up
run that compiles), split into network time (jitted JAX, including host
transfers and the serial context steps of mbt2018) and entropy-coding time
(constriction ANS on the host), plus the coded size. Weights are random (timing
does not depend on training; sizes do): quantiles solved exactly, so the tables
are well formed. With --compressai the same architectures of CompressAI (random
weights, `update()`, its C++ rANS) are timed end to end on the same image, if
compressai imports (stub modules stand in for its unused optional dependencies).

Then the coder alone: --symbols integers with the Gaussian-conditional tables (64
scales from 0.11 to 256), each drawn from its table's own discretised Gaussian,
0.1% pushed far out of range (escapes); encode/decode symbols/s and size against
the ideal code length.
"""
import argparse
import functools
import json
import os
import sys
import time

# jax imports a top-level module named `compression` (its compilation cache tries
# an optional package of that name); this script's folder must not shadow it.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

import numpy as np  # noqa: E402

from jaxvision.compression import coding  # noqa: E402
from jaxvision.compression.layers import GaussianConditional  # noqa: E402


def _image(h, w):
  """A smooth synthetic photo stand-in (gradients, discs, mild noise), float32 [0,1]."""
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:h, :w] / max(h, w)
  img = 0.5 + 0.3 * np.sin(6 * xx[..., None] + np.arange(3)) * np.cos(4 * yy[..., None])
  for _ in range(12):
    cy, cx, r = rng.uniform(0, 1, 3) * [h / max(h, w), w / max(h, w), 0.15]
    img = np.where((((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)[..., None], rng.uniform(0, 1, 3),
                   img)
  return np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1).astype(np.float32)[None]


def bench_ours(name, quality, nm, x, reps):
  import jax
  import jax.numpy as jnp
  from jaxvision import models
  from jaxvision.compression import tables as T
  from jaxvision.compression.layers import EntropyBottleneck
  kw = {"N": nm[0], "M": nm[1]} if nm else {}
  model = models.create(name, quality=quality, **kw)
  t = time.perf_counter()
  variables = jax.jit(functools.partial(model.init, train=False))(
      {"params": jax.random.key(0, impl="rbg")}, jnp.zeros((1, 64, 64, 3)))
  p = dict(variables["params"])
  eb = p["entropy_bottleneck"]
  p["entropy_bottleneck"] = EntropyBottleneck(eb["quantiles"].shape[0]).solve_quantiles(eb)
  variables = {"params": p}
  tables = T.update(model, variables)
  setup_s = time.perf_counter() - t
  h, w = x.shape[1:3]
  t = time.perf_counter()
  strings, shapes = coding.compress(model, variables, tables, x)  # compiles
  coding.decompress(model, variables, tables, strings, shapes, h, w)
  compile_s = time.perf_counter() - t
  enc, dec = [], []
  for _ in range(reps):
    te, td = coding.Timings(), coding.Timings()
    t = time.perf_counter()
    strings, shapes = coding.compress(model, variables, tables, x, timings=te)
    t1 = time.perf_counter()
    coding.decompress(model, variables, tables, strings, shapes, h, w, timings=td)
    t2 = time.perf_counter()
    enc.append((t1 - t, te.network, te.coding))
    dec.append((t2 - t1, td.network, td.coding))
  e, d = (sorted(v)[len(v) // 2] for v in (enc, dec))
  n_bytes = sum(map(len, strings))
  return {"impl": "jaxvision", "model": name, "N": model.N, "M": model.M,
          "encode_s": round(e[0], 4), "encode_network_s": round(e[1], 4),
          "encode_coding_s": round(e[2], 4), "decode_s": round(d[0], 4),
          "decode_network_s": round(d[1], 4), "decode_coding_s": round(d[2], 4),
          "bytes": n_bytes, "bpp": round(8 * n_bytes / (h * w), 4),
          "first_call_compile_s": round(compile_s, 2), "setup_s": round(setup_s, 2)}


_CLASSES = {"bmshj2018-factorized": "FactorizedPrior", "bmshj2018-hyperprior": "ScaleHyperprior",
            "mbt2018-mean": "MeanScaleHyperprior", "mbt2018": "JointAutoregressiveHierarchicalPriors"}


def _import_compressai():
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from tests.compression.compressai_import import import_compressai
  return import_compressai()


def bench_compressai(name, nm, x, reps):
  import torch
  cm = _import_compressai()
  net = getattr(cm, _CLASSES[name])(*nm).eval()
  net.update(force=True)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    out = net.compress(xt)  # warm-up
    net.decompress(out["strings"], out["shape"])
    enc, dec = [], []
    for _ in range(reps):
      t = time.perf_counter()
      out = net.compress(xt)
      t1 = time.perf_counter()
      net.decompress(out["strings"], out["shape"])
      t2 = time.perf_counter()
      enc.append(t1 - t)
      dec.append(t2 - t1)
  n_bytes = sum(len(s[0]) for s in out["strings"])
  h, w = x.shape[1:3]
  return {"impl": f"compressai (torch {torch.__version__}, {torch.get_num_threads()} threads)",
          "model": name, "N": nm[0], "M": nm[1], "encode_s": round(float(np.median(enc)), 4),
          "decode_s": round(float(np.median(dec)), 4), "bytes": n_bytes,
          "bpp": round(8 * n_bytes / (h * w), 4)}


def bench_coder(n_symbols, reps):
  tables = GaussianConditional().update()
  cdfs, lengths, offsets = (np.asarray(t) for t in tables)
  rng = np.random.default_rng(0)
  idx = rng.integers(0, len(lengths), n_symbols).astype(np.int32)
  scales = GaussianConditional().scales()[idx]
  vals = np.round(rng.normal(0, scales)).astype(np.int32)
  far = rng.random(n_symbols) < 1e-3
  vals[far] = rng.integers(-(2 ** 20), 2 ** 20, far.sum())
  enc, dec = [], []
  for _ in range(reps):
    t = time.perf_counter()
    data = coding.encode(vals, idx, cdfs, lengths, offsets)
    enc.append(time.perf_counter() - t)
    t = time.perf_counter()
    back = coding.decode(data, idx, cdfs, lengths, offsets)
    dec.append(time.perf_counter() - t)
  assert np.array_equal(back, vals)
  freqs = np.diff(cdfs, axis=1)
  direct = ~far & (vals - offsets[idx] >= 0) & (vals - offsets[idx] <= lengths[idx] - 3)
  ideal = -np.log2(freqs[idx[direct], (vals - offsets[idx])[direct]] / 65536.0).sum()
  return {"what": "entropy coder (constriction ANS via jaxvision.compression.coding)",
          "symbols": n_symbols, "escaped": int((~direct).sum()),
          "encode_symbols_per_s": round(n_symbols / min(enc)),
          "decode_symbols_per_s": round(n_symbols / min(dec)),
          "bytes": len(data), "bits_per_symbol": round(8 * len(data) / n_symbols, 4),
          "ideal_bits_per_symbol_without_escapes": round(ideal / direct.sum(), 4)}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--models", default="bmshj2018-factorized,bmshj2018-hyperprior,"
                  "mbt2018-mean,mbt2018")
  ap.add_argument("--quality", type=int, default=3, help="zoo quality: picks N, M")
  ap.add_argument("--size", default="768x512", help="WxH of the test image")
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--symbols", type=int, default=1_000_000)
  ap.add_argument("--compressai", action="store_true", help="also time CompressAI")
  ap.add_argument("--quick", action="store_true",
                  help="256x256, N=16/M=24 models, 1 rep, 100k symbols (a smoke run)")
  a = ap.parse_args()
  nm = None
  if a.quick:
    a.size, a.reps, a.symbols, nm = "256x256", 1, 100_000, (16, 24)
  w, h = map(int, a.size.lower().split("x"))
  x = _image(h, w)
  import jax
  print(f"# device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"image {w}x{h}, quality {a.quality}" + (f", N/M {nm}" if nm else ""))
  rows = []
  for name in [m.strip() for m in a.models.split(",") if m.strip()]:
    r = bench_ours(name, a.quality, nm, x, a.reps)
    rows.append(r)
    print(json.dumps(r), flush=True)
    if a.compressai:
      try:
        r2 = bench_compressai(name, (r["N"], r["M"]), x, a.reps)
        rows.append(r2)
        print(json.dumps(r2), flush=True)
      except Exception as e:  # noqa: BLE001 - a missing reference is reported, not fatal
        print(json.dumps({"impl": "compressai", "model": name,
                          "error": f"{type(e).__name__}: {e}"[:200]}), flush=True)
  print()
  print(f"{'model':22} {'impl':12} {'enc s':>8} {'(net':>7} {'code)':>7} {'dec s':>8} "
        f"{'(net':>7} {'code)':>7} {'bpp':>7}")
  for r in rows:
    impl = r["impl"].split(" ")[0]
    print(f"{r['model']:22} {impl:12} {r['encode_s']:8.3f} "
          f"{r.get('encode_network_s', float('nan')):7.3f} "
          f"{r.get('encode_coding_s', float('nan')):7.3f} {r['decode_s']:8.3f} "
          f"{r.get('decode_network_s', float('nan')):7.3f} "
          f"{r.get('decode_coding_s', float('nan')):7.3f} {r['bpp']:7.3f}")
  print()
  print(json.dumps(bench_coder(a.symbols, a.reps)))


if __name__ == "__main__":
  main()
