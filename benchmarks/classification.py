"""The cost of Squeeze-and-Excitation: resnet50 vs se_resnet50 (or any registered models).

  .venv/bin/python benchmarks/classification.py                 # 224x224, batch 32
  .venv/bin/python benchmarks/classification.py --quick         # 64x64, batch 4, 3 iterations
  .venv/bin/python benchmarks/classification.py --dtype bfloat16 --batch 128   # GPU/TPU

Per model: parameters, forward FLOPs per image from XLA's cost analysis of the compiled
inference program, inference and training (SGD-momentum step with BatchNorm updates)
images/s after a warm-up, and on GPU/TPU the model-FLOPs utilisation (training counted
as 3x forward FLOPs) against --peak-tflops (default: H100 bf16 dense, 989). The paper
(Hu et al., Table 2): 3.86 vs 3.87 GFLOPs, forward+backward 190 vs 209 ms per 256-batch
on 8 GPUs (about +10% time for +0.3% FLOPs).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

# The repository root instead of benchmarks/ (whose script names could shadow modules).
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxvision import models  # noqa: E402


def _time(fn, n):
  out = fn()
  jax.block_until_ready(out)  # warm-up (compiled already)
  t = time.perf_counter()
  for _ in range(n):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / n


def bench(name, size, batch, iters, dtype):
  model = models.create(name, dtype=dtype)
  x = jnp.asarray(np.random.default_rng(0).random((batch, size, size, 3), np.float32))
  y = jnp.asarray(np.arange(batch) % 1000, jnp.int32)
  variables = jax.jit(lambda x: model.init(jax.random.key(0, impl="rbg"), x, train=False))(x)
  n_params = sum(v.size for v in jax.tree.leaves(variables["params"]))
  infer = jax.jit(lambda v, x: model.apply(v, x, train=False))
  compiled = infer.lower(variables, x).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float((cost or {}).get("flops", float("nan"))) / batch
  tx = optax.sgd(0.1, momentum=0.9)
  opt_state = tx.init(variables["params"])

  @jax.jit
  def train_step(params, state, opt_state):
    def loss(p):
      logits, new = model.apply({"params": p, **state}, x, train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new
    (l, new), g = jax.value_and_grad(loss, has_aux=True)(params)
    upd, opt_state = tx.update(g, opt_state, params)
    return optax.apply_updates(params, upd), new, opt_state, l

  params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
  t_inf = _time(lambda: compiled(variables, x), iters)
  t_train = _time(lambda: train_step(params, state, opt_state), iters)
  return dict(model=name, params=n_params, gflops=flops / 1e9, infer=batch / t_inf,
              train=batch / t_train, flops=flops)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", default="resnet50,se_resnet50")
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--iters", type=int, default=10)
  p.add_argument("--dtype", default="float32", help="compute dtype: float32 | bfloat16")
  p.add_argument("--peak-tflops", type=float, default=989.0,
                 help="accelerator peak for MFU (H100 SXM bf16 dense: 989)")
  p.add_argument("--quick", action="store_true", help="64x64, batch 4, 3 iterations")
  a = p.parse_args(argv)
  if a.quick:
    a.size, a.batch, a.iters = 64, 4, 3
  dev = jax.devices()[0]
  accel = dev.platform in ("gpu", "tpu")
  print(f"# {dev.platform} ({dev.device_kind}), {a.size}x{a.size}, batch {a.batch}, {a.dtype}")
  rows = [bench(m, a.size, a.batch, a.iters, a.dtype) for m in a.models.split(",")]
  head = "| model | params | GFLOPs/image (fwd) | inference img/s | train img/s |"
  head += " train MFU |" if accel else ""
  print(head)
  print("|" + "---|" * (6 if accel else 5))
  for r in rows:
    line = (f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['gflops']:.3f} | "
            f"{r['infer']:.1f} | {r['train']:.1f} |")
    if accel:
      line += f" {100 * 3 * r['flops'] * r['train'] / (a.peak_tflops * 1e12):.1f}% |"
    print(line)
  if len(rows) == 2:
    b, s = rows
    print(f"\n{s['model']} vs {b['model']}: FLOPs {100 * (s['flops'] / b['flops'] - 1):+.2f}%, "
          f"inference time {100 * (b['infer'] / s['infer'] - 1):+.1f}%, "
          f"training time {100 * (b['train'] / s['train'] - 1):+.1f}%")


if __name__ == "__main__":
  main()
