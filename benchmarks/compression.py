"""Learned-compression benchmark: codec encode/decode time and entropy-coder throughput.

  python benchmarks/compression.py                 # 768x512, zoo quality 3, all models
  python benchmarks/compression.py --quick         # 256x256, tiny N/M, 1 rep
  python benchmarks/compression.py --models mbt2018-mean --compressai
  python benchmarks/compression.py --folder DIR    # whole commands vs CompressAI, see below

--folder DIR: what a user sees. The whole `jaxvision compress DIR OUT` and `jaxvision
decompress OUT PNGS` commands (subprocesses, wall clock: start-up, imports, checkpoint,
compilation or compile-cache loading, coding, files) first with an empty compilation cache
(JAXVISION_COMPILE_CACHE=<new folder>) and then again with it filled (warm), side by side
in the same run with benchmarks/peers/compressai_codec.py doing the same work in one
CompressAI process (peer venv .venv-peers, benchmarks/peers/setup.sh), run twice too. Both
use the same weights: a freshly initialised CompressAI model (torch.manual_seed(0)) exported
by the peer and converted (`compression.convert.from_compressai`) into a jaxvision workdir.
DIR is made by benchmarks/make_compression_folder.py (12 photos, 12 sizes) when missing.
The runs alternate (ours cold, peer, ours warm, peer) so that a change of machine load hits
both; --rounds N repeats the warm pair and reports the medians.

Per model: encode and decode time of one image (median of --reps after a warm-up
run that compiles), split into network time (jitted JAX, including host
transfers and the serial context steps of mbt2018) and entropy-coding time
(constriction ANS on the host), plus the coded size. Weights are random (timing
does not depend on training; sizes do): flax's initialisation with the quantiles solved
exactly, or with --compressai the peer's: the same architectures of CompressAI
(`update()`, its C++ rANS; peer venv .venv-peers, benchmarks/peers/setup.sh) are timed
on the same image (median of 5 after a warm-up), both with the same weights, CompressAI's
fresh initialisation (torch.manual_seed(0)) exported and converted into a jaxvision
workdir, so the sizes compare too.

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
sys.path.insert(0, os.path.dirname(_here))

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


def _random_variables(model):
  import jax
  import jax.numpy as jnp
  from jaxvision.compression.layers import EntropyBottleneck
  variables = jax.jit(functools.partial(model.init, train=False))(
      {"params": jax.random.key(0, impl="rbg")}, jnp.zeros((1, 64, 64, 3)))
  p = dict(variables["params"])
  eb = p["entropy_bottleneck"]
  p["entropy_bottleneck"] = EntropyBottleneck(eb["quantiles"].shape[0]).solve_quantiles(eb)
  return {"params": p}


def bench_ours(name, quality, nm, x, reps, variables=None):
  import jax
  from jaxvision import models
  from jaxvision.compression import tables as T
  kw = {"N": nm[0], "M": nm[1]} if nm else {}
  model = models.create(name, quality=quality, **kw)
  t = time.perf_counter()
  if variables is None:
    variables = _random_variables(model)
  variables = jax.device_put(variables)
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


def bench_compressai(name, quality, size, peer, npz, image):
  """CompressAI in the peer venv on the same weights and image
  (benchmarks/peers/compressai_codec.py --latency: median of 5 after a warm-up)."""
  _, out = _timed([peer, os.path.join(HERE, "peers", "compressai_codec.py"), "--model", name,
                   "--quality", str(quality), "--weights", npz, "--latency", size,
                   "--image", image])
  r = json.loads(out.strip().splitlines()[-1])
  w, h = map(int, size.lower().split("x"))
  return {"impl": f"compressai (torch {r['torch']}, {r['threads']} threads)", "model": name,
          "encode_s": r["encode_s"], "decode_s": r["decode_s"], "bytes": r["bytes"],
          "bpp": round(8 * r["bytes"] / (h * w), 4)}


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


HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEERS_PYTHON = os.path.join(ROOT, ".venv-peers", "bin", "python")


def _jaxvision_cmd():
  exe = os.path.join(os.path.dirname(sys.executable), "jaxvision")
  return [exe] if os.path.exists(exe) else [sys.executable, "-m", "jaxvision.cli"]


def _timed(cmd, env=None):
  import subprocess
  t = time.perf_counter()
  p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
  wall = time.perf_counter() - t
  if p.returncode:
    raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr[-3000:]}")
  return wall, p.stdout


def _folder_workdir(name, quality, peer, work):
  """Exports the peer's initial weights and converts them into a jaxvision workdir."""
  import jax
  import jax.numpy as jnp
  from jaxvision import models
  from jaxvision.compression import convert
  from jaxvision.core import weights
  npz = os.path.join(work, f"{name}.npz")
  _timed([peer, os.path.join(HERE, "peers", "compressai_codec.py"), "--model", name,
          "--quality", str(quality), "--export-weights", npz])
  model = models.create(name, quality=quality)
  with np.load(npz) as z:
    variables = convert.from_compressai(model, {k: z[k] for k in z.files})
  wd = os.path.join(work, f"{name}_q{quality}")
  weights.save_workdir(wd, {"params": jax.tree.map(jnp.asarray, variables["params"])},
                       task="compression", model_name=name, model_kwargs={"quality": quality})
  return npz, wd


def _psnr(a, b):
  d = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return float("inf") if d == 0 else float(10 * np.log10(255.0 ** 2 / d))


def run_folder(a):
  import tempfile
  from PIL import Image
  sys.path.insert(0, ROOT)
  folder = os.path.abspath(a.folder)
  pngs = lambda d: sorted(n for n in os.listdir(d) if n.lower().endswith(".png"))
  if not os.path.isdir(folder) or not pngs(folder):
    from benchmarks import make_compression_folder
    make_compression_folder.build(folder)
  names = pngs(folder)
  sizes = [Image.open(os.path.join(folder, n)).size for n in names]
  from jaxvision.compression import coding
  bucket_set = sorted({coding.bucket_for(h, w) for w, h in sizes})
  peer = a.peer_python
  if not os.path.exists(peer):
    sys.exit(f"no peer interpreter {peer}: bash benchmarks/peers/setup.sh")
  import jax
  device = f"{jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} CPUs"
  print(f"# folder {folder}: {len(names)} photos, {len(set(sizes))} sizes, "
        f"{sum(w * h for w, h in sizes) / 1e6:.2f} Mpixels, {len(bucket_set)} buckets; {device}")
  report = {"folder": folder, "images": len(names), "sizes": len(set(sizes)),
            "buckets": len(bucket_set), "device": device, "models": {}}
  for name in [m.strip() for m in a.models.split(",") if m.strip()]:
    work = tempfile.mkdtemp(prefix=f"compress_bench_{name}_")
    npz, wd = _folder_workdir(name, a.quality, peer, work)
    cache = os.path.join(work, "xla_cache")
    env = dict(os.environ, JAXVISION_COMPILE_CACHE=cache)
    jv = _jaxvision_cmd()

    def ours(tag):
      jvc, out = os.path.join(work, f"jvc_{tag}"), os.path.join(work, f"png_{tag}")
      t1, _ = _timed(jv + ["compress", "--checkpoint", wd, folder, jvc], env)
      t2, _ = _timed(jv + ["decompress", "--checkpoint", wd, jvc, out], env)
      return {"compress_s": t1, "decompress_s": t2, "total_s": t1 + t2,
              "bytes": sum(os.path.getsize(os.path.join(jvc, f)) for f in os.listdir(jvc))}, out

    def theirs(tag):
      out = os.path.join(work, f"cai_{tag}")
      t, stdout = _timed([peer, os.path.join(HERE, "peers", "compressai_codec.py"), "--model",
                          name, "--quality", str(a.quality), "--weights", npz, folder, out])
      inner = json.loads(stdout.strip().splitlines()[-1])
      return {"total_s": t, **{k: inner[k] for k in ("setup_s", "compress_s", "decompress_s")},
              "bytes": sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out)
                           if f.endswith(".bin"))}, out

    runs = {}
    runs["jaxvision, empty compile cache"], _ = ours("cold")
    runs["compressai, first run"], _ = theirs("1")
    warm, peer_runs = [], []
    for r in range(max(1, a.rounds)):
      w, jv_out = ours(f"warm{r}")
      p, cai_out = theirs(f"{r + 2}")
      warm.append(w)
      peer_runs.append(p)
    med = lambda rs, k: float(np.median([r[k] for r in rs]))
    runs["jaxvision, warm compile cache"] = {k: med(warm, k) for k in warm[0]}
    runs["compressai, warm"] = {k: med(peer_runs, k) for k in peer_runs[0]}
    psnrs = [_psnr(np.asarray(Image.open(os.path.join(jv_out, n))),
                   np.asarray(Image.open(os.path.join(cai_out, n)))) for n in names]
    entries = sum(len(f) for _, _, f in os.walk(cache))
    report["models"][name] = {"runs": runs, "compile_cache_entries": entries,
                              "psnr_jaxvision_vs_compressai_db_min": min(psnrs),
                              "rounds": a.rounds}
    cold = runs["jaxvision, empty compile cache"]["total_s"]
    w = runs["jaxvision, warm compile cache"]["total_s"]
    c = runs["compressai, warm"]["total_s"]
    print(f"\n{name} q{a.quality}: {entries} compile-cache entries; decoded images of the "
          f"two codecs agree to >= {min(psnrs):.1f} dB PSNR")
    print("| run | compress | decompress | total | bytes |")
    print("|---|---|---|---|---|")
    for k, r in runs.items():
      print(f"| {k} | {r['compress_s']:.2f} s | {r['decompress_s']:.2f} s | "
            f"{r['total_s']:.2f} s | {r['bytes']} |")
    print(f"warm: jaxvision {w:.2f} s vs CompressAI {c:.2f} s: {c / w:.2f}x; "
          f"cold: {cold:.2f} s ({c / cold:.2f}x)", flush=True)
  if a.out:
    with open(a.out, "w") as f:
      json.dump(report, f, indent=1)
  return report


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
  ap.add_argument("--folder", default="", help="whole commands on this folder vs CompressAI")
  ap.add_argument("--rounds", type=int, default=1, help="--folder: warm pairs (medians)")
  ap.add_argument("--peer-python", default=PEERS_PYTHON, help="interpreter with compressai")
  ap.add_argument("--out", default="", help="--folder: write the figures as JSON here")
  a = ap.parse_args()
  if a.folder:
    if a.models == ap.get_default("models"):
      a.models = "bmshj2018-hyperprior,mbt2018-mean"
    run_folder(a)
    return
  nm = None
  if a.quick:
    a.size, a.reps, a.symbols, nm = "256x256", 1, 100_000, (16, 24)
  w, h = map(int, a.size.lower().split("x"))
  x = _image(h, w)
  import jax
  print(f"# device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"image {w}x{h}, quality {a.quality}" + (f", N/M {nm}" if nm else ""))
  rows = []
  import tempfile
  work = tempfile.mkdtemp(prefix="compress_latency_")
  image = os.path.join(work, "image.npy")
  np.save(image, x)
  for name in [m.strip() for m in a.models.split(",") if m.strip()]:
    variables = npz = None
    if a.compressai and not nm:  # the same weights in both (the peer's initialisation)
      npz, wd = _folder_workdir(name, a.quality, a.peer_python, work)
      from jaxvision.core import checkpoint
      _, variables, _ = checkpoint.load_variables(wd)
    r = bench_ours(name, a.quality, nm, x, a.reps, variables)
    rows.append(r)
    print(json.dumps(r), flush=True)
    if npz:
      try:
        r2 = bench_compressai(name, a.quality, a.size, a.peer_python, npz, image)
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
