"""XLA:CPU options on every family: forward and forward+backward time, and the outputs'
agreement, with and without the oneDNN flags (issue 12, item 5).

    .venv/bin/python benchmarks/cpu_flags.py [--reps 5] [--only can24,resnet50]

Each setting runs in its own process (XLA_FLAGS is read once, at backend start-up); the
settings alternate, model by model, so that a load change on the machine hits both. Time:
median of --reps calls after a compiling warm-up, each ended by block_until_ready. The
forward outputs of every setting are compared with the default's (max abs difference).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

SETTINGS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
}
# name: (kwargs, input shape): a representative member of each family at a size a CPU user
# runs (published widths; batch and side kept small enough for a 2-core machine)
CASES = {
    "can24": ({}, (1, 256, 256, 3)),
    "mtcnn-pnet": ({}, (4, 256, 256, 3)),
    "mtcnn-rnet": ({}, (256, 24, 24, 3)),
    "mtcnn-onet": ({}, (64, 48, 48, 3)),
    "resnet50": ({}, (2, 128, 128, 3)),
    "se_resnet50": ({}, (2, 128, 128, 3)),
    "johnson": ({}, (1, 256, 256, 3)),
    "texture_net": ({}, (1, 256, 256, 3)),
    "edsr_baseline": ({"scale": 2}, (1, 96, 96, 3)),
    "wdsr_b": ({"scale": 2}, (1, 96, 96, 3)),
    "espcn": ({"scale": 3}, (1, 128, 128, 3)),
    "bmshj2018-hyperprior": ({"quality": 3}, (1, 256, 256, 3)),
    "mbt2018-mean": ({"quality": 3}, (1, 256, 256, 3)),
}

CHILD = r'''
import json, sys, time
import numpy as np, jax, jax.numpy as jnp
from jaxvision import families
families.load("models")
from jaxvision.core.registry import create_model
name, kw, shape, reps, out = sys.argv[1], json.loads(sys.argv[2]), tuple(json.loads(sys.argv[3])), int(sys.argv[4]), sys.argv[5]
m = create_model(name, **kw)
x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32))
v = m.init(jax.random.key(0), x[:1], train=False)
params, rest = v["params"], {k: t for k, t in v.items() if k != "params"}
def first(o):
  if isinstance(o, dict):
    o = o.get("x_hat", o.get("logits", next(iter(o.values()))))
  return o[0] if isinstance(o, (tuple, list)) else o
def fwd(p, x):
  return first(m.apply({"params": p, **rest}, x, train=False))
loss = lambda p, x: jnp.mean(jnp.square(fwd(p, x).astype(jnp.float32)))
f, g = jax.jit(fwd), jax.jit(jax.grad(loss))
def timed(fn):
  jax.block_until_ready(fn(params, x)); ts = []
  for _ in range(reps):
    t = time.perf_counter(); jax.block_until_ready(fn(params, x)); ts.append(time.perf_counter() - t)
  return float(np.median(ts))
res = {"fwd": timed(f), "bwd": timed(g)}
np.save(out, np.asarray(f(params, x), np.float32))
print(json.dumps(res))
'''


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--only", default="", help="comma-separated model names")
  ap.add_argument("--out", default="cpu_flags_benchmark.json")
  args = ap.parse_args(argv)
  names = [n for n in CASES if not args.only or n in args.only.split(",")]
  rows = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name in names:
      kw, shape = CASES[name]
      row = {}
      for setting, flags in SETTINGS.items():
        env = dict(os.environ, XLA_FLAGS=flags, JAXVISION_COMPILE_CACHE="0")
        out = os.path.join(tmp, f"{name}_{setting}.npy")
        p = subprocess.run([sys.executable, "-c", CHILD, name, json.dumps(kw), json.dumps(shape),
                            str(args.reps), out], capture_output=True, text=True, env=env)
        if p.returncode:
          row[setting] = {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
          continue
        row[setting] = json.loads(p.stdout.strip().splitlines()[-1])
      import numpy as np
      ref = os.path.join(tmp, f"{name}_default.npy")
      for setting in SETTINGS:
        o = os.path.join(tmp, f"{name}_{setting}.npy")
        if setting != "default" and os.path.exists(o) and os.path.exists(ref):
          row[setting]["max_abs_diff"] = float(np.abs(np.load(o) - np.load(ref)).max())
      rows[name] = row
      d, o = row.get("default", {}), row.get("onednn", {})
      if "fwd" in d and "fwd" in o:
        print(f"| {name} {shape} | {d['fwd'] * 1e3:.1f} / {o['fwd'] * 1e3:.1f} ms "
              f"({d['fwd'] / o['fwd']:.2f}x) | {d['bwd'] * 1e3:.1f} / {o['bwd'] * 1e3:.1f} ms "
              f"({d['bwd'] / o['bwd']:.2f}x) | {o.get('max_abs_diff', float('nan')):.1e} |",
              flush=True)
      else:
        print(f"| {name} | {d.get('error', '')} {o.get('error', '')} |", flush=True)
  with open(args.out, "w") as f:
    json.dump({"settings": SETTINGS, "results": rows}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
