"""Super-resolution benchmark: training throughput and inference time per output megapixel.

  .venv/bin/python benchmarks/superres.py --quick          # tiny widths, a smoke test
  .venv/bin/python benchmarks/superres.py --scale 4        # the published sizes

For every model: a jit-compiled train step (forward, L1 loss, backward, Adam) on a batch of
LR patches (`--batch` x `--patch`^2, the EDSR recipe's 16 x 48^2), timed over `--steps`
steps after compilation -> steps/s and output megapixels/s; then inference on one LR image
of `--infer` pixels square -> milliseconds per output megapixel. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

# The repo root instead of benchmarks/ (whose compression.py would shadow the stdlib module).
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxvision.core.registry import create_model  # noqa: E402
from jaxvision.superres import models as _sr_models  # noqa: E402,F401  (registers them)

QUICK_KWARGS = {
    "espcn": {"features": (16, 8)},
    "edsr_baseline": {"n_resblocks": 2, "n_feats": 16},
    "edsr": {"n_resblocks": 2, "n_feats": 32, "res_scale": 0.1},
    "wdsr_a": {"n_resblocks": 2, "n_feats": 8},
    "wdsr_b": {"n_resblocks": 2, "n_feats": 8},
    "rcan": {"n_resgroups": 1, "n_resblocks": 2, "n_feats": 16, "reduction": 4},
    "johnson_sr": {"features": 16, "n_resblocks": 1},
}


def bench(name, scale, kwargs, batch, patch, steps, infer, dtype):
  model = create_model(name, scale=scale, dtype=dtype, **kwargs)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(batch, patch, patch, 3)), jnp.float32)
  y = jnp.asarray(rng.uniform(size=(batch, patch * scale, patch * scale, 3)), jnp.float32)
  variables = jax.jit(lambda: model.init(jax.random.key(0, impl="rbg"), x[:1]))()
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}
  tx = optax.adam(1e-4)
  opt = tx.init(params)

  @jax.jit
  def step(params, state, opt, x, y):
    def loss(p):
      if state:
        out, new = model.apply({"params": p, **state}, x, train=True, mutable=list(state))
      else:
        out, new = model.apply({"params": p}, x, train=True), state
      return jnp.mean(jnp.abs(out - y)), new
    (l, new), g = jax.value_and_grad(loss, has_aux=True)(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), new, opt, l

  t = time.perf_counter()
  out = step(params, state, opt, x, y)
  jax.block_until_ready(out)
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  for _ in range(steps):
    params, state, opt, l = step(params, state, opt, x, y)
  jax.block_until_ready(l)
  train_s = (time.perf_counter() - t) / steps

  fwd = jax.jit(lambda v, a: model.apply(v, a, train=False))
  v = {"params": params, **state}
  img = jnp.asarray(rng.uniform(size=(1, infer, infer, 3)), jnp.float32)
  jax.block_until_ready(fwd(v, img))
  reps = max(1, steps // 2)
  t = time.perf_counter()
  for _ in range(reps):
    o = fwd(v, img)
  jax.block_until_ready(o)
  infer_s = (time.perf_counter() - t) / reps
  out_mp = (infer * scale) ** 2 / 1e6
  n_params = sum(a.size for a in jax.tree.leaves(params))
  return {"params": n_params, "compile_s": compile_s, "steps_s": 1 / train_s,
          "train_mpix_s": batch * (patch * scale) ** 2 / 1e6 / train_s,
          "ms_per_mpix": infer_s * 1e3 / out_mp}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", default="espcn,edsr_baseline,edsr,wdsr_a,wdsr_b,rcan,johnson_sr")
  p.add_argument("--scale", type=int, default=4)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--patch", type=int, default=48)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--infer", type=int, default=128, help="LR side of the inference image")
  p.add_argument("--dtype", default="float32", help="float32 or bfloat16 (accelerators)")
  p.add_argument("--quick", action="store_true",
                 help="tiny widths, batch 2 of 16^2, 2 steps, 32^2 inference (smoke test)")
  a = p.parse_args(argv)
  if a.quick:
    a.batch, a.patch, a.steps, a.infer = 2, 16, 2, 32
  dev = jax.devices()[0]
  print(f"device: {dev.platform} ({dev.device_kind}), {jax.device_count()} device(s); "
        f"x{a.scale}, batch {a.batch} x {a.patch}^2 LR, {a.dtype}"
        + (", --quick (tiny widths)" if a.quick else ""))
  print("| model | params | compile s | train steps/s | train out-MP/s | infer ms / out-MP |")
  print("|---|---|---|---|---|---|")
  for name in a.models.split(","):
    scale = a.scale if name != "johnson_sr" else max(4, a.scale)
    kw = QUICK_KWARGS[name] if a.quick else {}
    r = bench(name, scale, kw, a.batch, a.patch, a.steps, a.infer, a.dtype)
    print(f"| {name} x{scale} | {r['params'] / 1e6:.2f}M | {r['compile_s']:.1f} | "
          f"{r['steps_s']:.2f} | {r['train_mpix_s']:.2f} | {r['ms_per_mpix']:.0f} |", flush=True)


if __name__ == "__main__":
  main()
