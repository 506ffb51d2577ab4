"""CAN throughput on the device present.

  python benchmarks/can.py [--model can24] [--batch 4] [--crop 256] [--steps 20]

Prints training throughput (images/s and megapixels/s of the jit-compiled,
data-parallel train step: forward, backward, Adam update) and inference latency
per megapixel at 512x512 and 1920x1080 (whole image, one jit call), as JSON lines.
Compile time is excluded (one warm-up call per shape); each figure is the median
of the timed repetitions, each ended by block_until_ready.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxvision import models
from jaxvision.core import registry
from train import trainer


def timed(fn, *args, reps: int):
  jax.block_until_ready(fn(*args))  # compile + warm up
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default="can24")
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--crop", type=int, default=256)
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  ap.add_argument("--sizes", default="512x512,1920x1080")
  a = ap.parse_args()

  dev = jax.devices()[0]
  info = {"device": f"{dev.platform}:{dev.device_kind}", "devices": jax.device_count(),
          "host": platform.processor() or platform.machine(), "jax": jax.__version__,
          "model": a.model, "dtype": a.dtype}
  model = models.create(a.model, dtype=jnp.dtype(a.dtype))
  config = ml_collections.ConfigDict(dict(
      loss="mse", total_steps=1000, optimizer=dict(name="adam", learning_rate=1e-4)))
  tx, _ = trainer.make_optimizer(config)
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  repl, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  x = jax.random.uniform(jax.random.PRNGKey(0), (a.batch, a.crop, a.crop, 3))
  batch = jax.device_put({"input": x, "target": x * 0.5}, shard)
  variables = model.init(jax.random.PRNGKey(0), x[:1])
  state = trainer.TrainState(
      step=jnp.zeros((), jnp.int32), params=variables["params"],
      model_state={k: v for k, v in variables.items() if k != "params"},
      opt_state=tx.init(variables["params"]), rng=jax.random.PRNGKey(1),
      bad_step=jnp.full((), -1, jnp.int32))
  state = jax.device_put(state, repl)
  step = jax.jit(trainer.make_train_step(model, registry.get_task("image_to_image"), tx, config),
                 in_shardings=(repl, shard), out_shardings=(repl, repl))

  def run_steps(state, batch):
    for _ in range(a.steps):
      state, m = step(state, batch)
    return m["loss"]

  t = timed(run_steps, state, batch, reps=max(1, a.reps // 2)) / a.steps
  ips = a.batch / t
  print(json.dumps({**info, "what": "train", "batch": a.batch, "crop": a.crop,
                    "step_ms": round(1e3 * t, 2), "images_per_s": round(ips, 2),
                    "megapixels_per_s": round(ips * a.crop * a.crop / 1e6, 3)}), flush=True)

  infer = jax.jit(lambda v, x: model.apply(v, x, train=False))
  for size in a.sizes.split(","):
    w, h = (int(s) for s in size.split("x"))
    img = jax.device_put(jax.random.uniform(jax.random.PRNGKey(2), (1, h, w, 3)))
    t = timed(infer, variables, img, reps=a.reps)
    print(json.dumps({**info, "what": "inference", "size": size,
                      "latency_ms": round(1e3 * t, 1),
                      "ms_per_megapixel": round(1e3 * t / (h * w / 1e6), 1)}), flush=True)


if __name__ == "__main__":
  main()
