"""Compile time of every registered model's train step, default architecture, small input.

    python benchmarks/compile_times.py                      # every registered model
    python benchmarks/compile_times.py --only rcan,edsr     # some
    python benchmarks/compile_times.py --unrolled           # scan=False where a model has it
    python benchmarks/compile_times.py --dtype bfloat16     # the bf16-compute step (GPU recipe)
    python benchmarks/compile_times.py --quick              # one process for all models

Each model runs in its own process (a clean compiler, and a timeout per model): it builds
the model with its default arguments (the real depth), a batch of 1 at a small input size
(64x64, or the model's own input size), and jit-compiles one train step: value_and_grad of
the mean square of its float outputs and an Adam update (`lower` = trace + StableHLO,
`compile` = XLA). The persistent compilation cache is off. Prints a table and writes
benchmarks/compile_times.json.

`--quick` compiles every model in this one process (jax.clear_caches() between models, no
per-model timeout): it saves the imports of a process per model (all 54 models in 8.7
minutes on the shared 2-core machine); its figures were within -20% to +39% of earlier
per-process ones there (load and code changes included: read either to about +-40%).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
sys.path.insert(0, os.path.dirname(_here))

# input sizes of models that take a fixed one (the registry sweep's DEFAULT_INPUT)
INPUT = {"mtcnn-pnet": (1, 12, 12, 3), "mtcnn-rnet": (1, 24, 24, 3), "mtcnn-onet": (1, 48, 48, 3),
         "cascade-12net": (1, 12, 12, 3), "cascade-24net": (1, 24, 24, 3),
         "cascade-48net": (1, 48, 48, 3), "cascade-12cal": (1, 12, 12, 3),
         "cascade-24cal": (1, 24, 24, 3), "cascade-48cal": (1, 48, 48, 3),
         "deepface": (1, 152, 152, 3), "deepid": (1, 39, 31, 3),
         "facenet_inception_resnet_v1": (1, 160, 160, 3), "dlib_resnet": (1, 150, 150, 3),
         "openface_nn4_small2": (1, 96, 96, 3),
         "sid_unet": (1, 32, 32, 4),           # packed RGGB Bayer planes
         "facemesh": (1, 192, 192, 3)}         # the crop size of face_landmark.tflite


def one(name: str, unrolled: bool, dtype: str = "") -> dict:
  import inspect

  import jax
  import jax.numpy as jnp
  import optax

  from jaxvision import models
  base = {"dtype": jnp.dtype(dtype)} if dtype else {}
  kw = {"scan": False} if unrolled else {}
  try:
    model = models.create(name, **base, **kw)
  except TypeError:
    model = models.create(name, **base)
    kw = {}
  shape = INPUT.get(name, (1, 64, 64, 3))
  x = jnp.zeros(shape, jnp.float32)
  call = {"train": True} if "train" in inspect.signature(type(model).__call__).parameters else {}
  v = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0),
                                         "noise": jax.random.PRNGKey(1),
                                         "dropout": jax.random.PRNGKey(2)}, x))
  params = v["params"]
  rest = {k: a for k, a in v.items() if k != "params"}
  tx = optax.adam(1e-4)

  def loss(p, rest, key):
    kw2 = {"mutable": list(rest)} if rest else {}
    out = model.apply({"params": p, **rest}, x, rngs={"noise": key, "dropout": key},
                      **call, **kw2)
    out = out[0] if rest else out
    leaves = [o for o in jax.tree.leaves(out) if jnp.issubdtype(o.dtype, jnp.floating)]
    return sum(jnp.mean(jnp.square(o.astype(jnp.float32))) for o in leaves)

  def step(p, rest, o, key):
    value, g = jax.value_and_grad(loss)(p, rest, key)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, value

  t = time.perf_counter()
  lowered = jax.jit(step).lower(params, rest, jax.eval_shape(tx.init, params),
                                jax.random.PRNGKey(0))
  t_lower = time.perf_counter() - t
  t = time.perf_counter()
  lowered.compile()
  t_compile = time.perf_counter() - t
  n = sum(int(a.size) for a in jax.tree.leaves(params))
  return {"model": name, "scan": not unrolled and "scan" in getattr(
      type(model), "__dataclass_fields__", {}), "params": n, "input": list(shape),
          "lower_s": t_lower, "compile_s": t_compile, "total_s": t_lower + t_compile}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--only", default="")
  ap.add_argument("--unrolled", action="store_true")
  ap.add_argument("--dtype", default="", help="compute dtype, e.g. bfloat16 (default: the "
                  "model's, float32)")
  ap.add_argument("--quick", action="store_true", help="every model in this one process")
  ap.add_argument("--timeout", type=float, default=600)
  ap.add_argument("--out", default=os.path.join(_here, "compile_times.json"))
  ap.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    print(json.dumps(one(args.child, args.unrolled, args.dtype)))
    return
  env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
         "JAXVISION_COMPILE_CACHE": "0", "PYTHONPATH": os.path.dirname(_here)}
  if args.quick:  # before jax is imported: the same settings as the children's
    os.environ.update({k: env[k] for k in ("JAX_PLATFORMS", "JAXVISION_COMPILE_CACHE")})
  from jaxvision import models
  names = [n for n in args.only.split(",") if n] or models.list_models()
  rows = []
  print(f"{'model':30} {'params':>12} {'lower s':>8} {'compile s':>9} {'total s':>8}")
  for name in names:
    if args.quick:
      import jax
      jax.clear_caches()
      try:
        row = one(name, args.unrolled, args.dtype)
      except Exception as e:  # noqa: BLE001 (a benchmark row, not a crash)
        row = {"model": name, "error": f"{type(e).__name__}: {e}"[:200]}
      rows.append(row)
      _print(row)
      continue
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name] + (
        ["--unrolled"] if args.unrolled else []) + (["--dtype", args.dtype] if args.dtype else [])
    try:
      p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
      row = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else {
          "model": name, "error": (p.stderr.strip().splitlines() or ["?"])[-1][:200]}
    except subprocess.TimeoutExpired:
      row = {"model": name, "error": f"did not compile within {args.timeout:.0f} s"}
    rows.append(row)
    _print(row)
  with open(args.out, "w") as f:
    json.dump({"unrolled": args.unrolled, "dtype": args.dtype or "float32", "quick": args.quick,
               "rows": rows}, f, indent=1)
  print(f"-> {args.out}")


def _print(row: dict) -> None:
  name = row["model"]
  if "error" in row:
    print(f"{name:30} {row['error']}", flush=True)
  else:
    print(f"{name:30} {row['params']:>12,} {row['lower_s']:>8.1f} {row['compile_s']:>9.1f} "
          f"{row['total_s']:>8.1f}", flush=True)


if __name__ == "__main__":
  main()
