"""Every family's train step and inference on one accelerator, in one run (issue 14).

    python benchmarks/accelerator.py --out accelerator.json          # GPU/TPU: the real sizes
    python benchmarks/accelerator.py --tiny --out /tmp/acc.json      # CPU: a tiny version (CI)

For each workload it prints and writes: the compile time of the step, the median step time
over timed steps (each ended by `block_until_ready`), images (or frames) per second, the
model FLOPs of one step (jaxvision.core.flops: matrix products and convolutions, forward
and backward, scans multiplied out), MFU against the device's peak for the compute dtype
(jaxvision.core.flops.PEAK_FLOPS; `--peak-flops` overrides) and the device's peak memory
(`memory_stats()["peak_bytes_in_use"]`, where the backend reports it).

Train steps: Adam, donated state, synthetic batches already on the device, so that the
figure is the step's own (the input pipeline is measured by benchmarks/input_pipeline.py).
Losses are the families' usual ones on random targets: L2 (CAN), cross-entropy (ResNets),
rate + lambda * MSE with the likelihoods of the model (codec), L1 (super-resolution), L2
(Johnson's generator alone; the VGG loss network of a real run adds its own FLOPs), face
classification + box regression (P-Net). Full sizes (the issue's): CAN24 at 512², batch 8;
resnet50 and se_resnet50 at 224², batch 256; bmshj2018-hyperprior at 256², batch 16;
edsr_baseline and rcan x4 on 48² inputs, batch 16; Johnson at 256², batch 16; P-Net at 12²,
batch 4096; detect-faces on 1080p frames, 32 at a time; the hyperprior codec's encode and
decode of a 768x512 image, entropy coding included.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

# jax imports a top-level module named `compression`; benchmarks/compression.py must not
# shadow it (as in that script).
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
sys.path.insert(0, os.path.dirname(_here))

import numpy as np  # noqa: E402

# name: (model, full kwargs, tiny kwargs, full (batch, H, W), tiny (batch, H, W), kind, bf16)
TRAIN = {
    "can24": ("can24", {}, {"width": 8}, (8, 512, 512), (2, 32, 32), "image", True),
    "resnet50": ("resnet50", {}, {"layers": (1, 1, 1, 1), "width": 8, "num_classes": 10},
                 (256, 224, 224), (2, 32, 32), "class", True),
    "se_resnet50": ("se_resnet50", {}, {"layers": (1, 1, 1, 1), "width": 8, "num_classes": 10},
                    (256, 224, 224), (2, 32, 32), "class", True),
    "bmshj2018-hyperprior": ("bmshj2018-hyperprior", {"quality": 3},
                             {"quality": 1, "N": 8, "M": 8}, (16, 256, 256), (2, 64, 64),
                             "codec", False),
    "edsr_baseline_x4": ("edsr_baseline", {"scale": 4}, {"scale": 4, "n_resblocks": 2,
                                                         "n_feats": 8},
                         (16, 48, 48), (2, 8, 8), "sr", True),
    "rcan_x4": ("rcan", {"scale": 4}, {"scale": 4, "n_resgroups": 2, "n_resblocks": 2,
                                       "n_feats": 8, "reduction": 4},
                (16, 48, 48), (2, 8, 8), "sr", True),
    "johnson": ("johnson", {}, {"width": 4, "num_residual": 1}, (16, 256, 256), (2, 32, 32),
                "image", False),
    "mtcnn_pnet": ("mtcnn-pnet", {}, {}, (4096, 12, 12), (8, 12, 12), "pnet", False),
}


def _loss_fn(kind, model, batch):
  import jax
  import jax.numpy as jnp
  import optax

  def loss(params, rest, rng):
    v = {"params": params, **rest}
    mutable = [k for k in rest]
    kw = {"mutable": mutable} if mutable else {}
    if kind == "codec":
      out = model.apply(v, batch["x"], train=True, rngs={"noise": rng}, **kw)
    elif kind == "class":
      out = model.apply(v, batch["x"], train=True, rngs={"dropout": rng}, **kw)
    else:
      try:
        out = model.apply(v, batch["x"], train=True, **kw)
      except TypeError:
        out = model.apply(v, batch["x"], **kw)
    out, new = out if mutable else (out, {})
    if kind == "class":
      return optax.softmax_cross_entropy_with_integer_labels(
          out.astype(jnp.float32), batch["y"]).mean(), new
    if kind == "codec":
      n = batch["x"].shape[0] * batch["x"].shape[1] * batch["x"].shape[2]
      bits = sum(jnp.sum(jnp.log2(jnp.maximum(l, 1e-9))) for l in jax.tree.leaves(
          out["likelihoods"]))
      mse = jnp.mean(jnp.square(out["x_hat"].astype(jnp.float32) - batch["x"]))
      return -bits / n + 0.0130 * 255 ** 2 * mse, new
    if kind == "pnet":
      logits = out["logits"].reshape(-1, 2).astype(jnp.float32)
      box = out["box"].reshape(-1, 4).astype(jnp.float32)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
      return ce + 0.5 * jnp.mean(jnp.square(box - batch["box"])), new
    if kind == "sr":
      return jnp.mean(jnp.abs(out.astype(jnp.float32) - batch["t"])), new
    return jnp.mean(jnp.square(out.astype(jnp.float32) - batch["t"])), new

  return loss


def _batch(kind, model, n, h, w, rng):
  import jax.numpy as jnp
  x = rng.random((n, h, w, 3), np.float32)
  b = {"x": x}
  if kind == "class":
    b["y"] = rng.integers(0, model.num_classes, n).astype(np.int32)
  elif kind == "pnet":
    b["y"] = rng.integers(0, 2, n).astype(np.int32)
    b["box"] = rng.random((n, 4), np.float32)
  elif kind == "sr":
    b["t"] = rng.random((n, h * model.scale, w * model.scale, 3), np.float32)
  elif kind == "image":
    b["t"] = rng.random((n, h, w, 3), np.float32)
  return {k: jnp.asarray(v) for k, v in b.items()}


def _memory():
  import jax
  try:
    stats = jax.local_devices()[0].memory_stats() or {}
  except Exception:  # backends without memory statistics
    stats = {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2 ** 30


def train_workload(name, tiny, steps, peak_override, dtype):
  import jax
  import jax.numpy as jnp
  import optax

  from jaxvision import models
  from jaxvision.core import flops

  model_name, full_kw, tiny_kw, full_shape, tiny_shape, kind, can_bf16 = TRAIN[name]
  kw = dict(tiny_kw if tiny else full_kw)
  use = dtype if (can_bf16 and dtype) else None
  if use:
    kw["dtype"] = use
  model = models.create(model_name, **kw)
  n, h, w = tiny_shape if tiny else full_shape
  rng = np.random.default_rng(0)
  batch = _batch(kind, model, n, h, w, rng)
  init_kw = {"train": False} if kind != "pnet" else {}
  variables = jax.jit(lambda k: model.init(k, batch["x"][:1], **init_kw))(jax.random.PRNGKey(0))
  params = variables["params"]
  rest = {k: v for k, v in variables.items() if k != "params"}
  tx = optax.adam(1e-4)
  loss = _loss_fn(kind, model, batch)

  def step(state, key):
    params, rest, opt = state
    (l, new), g = jax.value_and_grad(loss, has_aux=True)(params, rest, key)
    u, opt = tx.update(g, opt, params)
    return (optax.apply_updates(params, u), {**rest, **new}, opt), l

  state = (params, rest, tx.init(params))
  key = jax.random.PRNGKey(1)
  t = time.perf_counter()
  traced = jax.jit(step, donate_argnums=0).trace(state, key)
  step_flops = flops.jaxpr_flops(traced.jaxpr)
  compiled = traced.lower().compile()
  compile_s = time.perf_counter() - t
  state, l = compiled(state, key)
  jax.block_until_ready(l)
  times = []
  for i in range(steps):
    t = time.perf_counter()
    state, l = compiled(state, jax.random.fold_in(key, i))
    jax.block_until_ready(l)
    times.append(time.perf_counter() - t)
  s = statistics.median(times)
  peak = peak_override or flops.peak_flops(dtype=use or "float32")
  return {"workload": name, "kind": "train", "batch": n, "size": f"{h}x{w}",
          "dtype": use or "float32", "compile_s": compile_s, "step_ms": 1e3 * s,
          "images_per_s": n / s, "gflop_per_step": step_flops / 1e9,
          "tflops_per_s": step_flops / s / 1e12,
          "mfu": (step_flops / s / peak) if peak else None,
          "peak_memory_gib": _memory(), "loss": float(l)}


def detect_workload(tiny, reps):
  import jax  # noqa: F401
  from jaxvision import families
  from jaxvision.core import registry
  families.load("commands")
  det = registry.get_face_detector("mtcnn")
  n, (h, w) = (2, (120, 160)) if tiny else (32, (1080, 1920))
  import skimage.data
  from PIL import Image
  photo = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((w, h)))
  frames = [photo] * n
  t = time.perf_counter()
  det.prepare(n, n) if hasattr(det, "prepare") else None
  faces = list(det.detect_each(frames, n))
  first = time.perf_counter() - t
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    faces = list(det.detect_each(frames, n))
    times.append(time.perf_counter() - t)
  s = statistics.median(times)
  return {"workload": "mtcnn_detect_faces", "kind": "inference", "batch": n,
          "size": f"{h}x{w}", "dtype": "float32", "compile_s": first, "step_ms": 1e3 * s,
          "images_per_s": n / s, "faces_per_frame": len(faces[0]),
          "peak_memory_gib": _memory()}


def codec_workload(tiny, reps):
  import jax
  from jaxvision import models
  from jaxvision.compression import coding, tables as T
  model = models.create("bmshj2018-hyperprior", **({"quality": 1, "N": 8, "M": 8} if tiny
                                                   else {"quality": 3}))
  h, w = (64, 96) if tiny else (512, 768)
  x = np.random.default_rng(0).random((1, h, w, 3), np.float32)
  x0 = np.zeros((1, 64, 64, 3), np.float32)
  variables = jax.jit(lambda k: model.init({"params": k, "noise": k}, x0))(jax.random.PRNGKey(0))
  tables = T.update(model, variables)
  t = time.perf_counter()
  strings, shapes = coding.compress(model, variables, tables, x)
  coding.decompress(model, variables, tables, strings, shapes, h, w)
  first = time.perf_counter() - t
  enc, dec = [], []
  for _ in range(reps):
    t = time.perf_counter()
    strings, shapes = coding.compress(model, variables, tables, x)
    enc.append(time.perf_counter() - t)
    t = time.perf_counter()
    coding.decompress(model, variables, tables, strings, shapes, h, w)
    dec.append(time.perf_counter() - t)
  return {"workload": "hyperprior_codec", "kind": "inference", "batch": 1, "size": f"{h}x{w}",
          "dtype": "float32", "compile_s": first, "encode_ms": 1e3 * statistics.median(enc),
          "decode_ms": 1e3 * statistics.median(dec),
          "bytes": int(sum(len(s) for s in strings)), "peak_memory_gib": _memory()}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--tiny", action="store_true", help="tiny sizes (CPU, CI)")
  ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10; tiny 2)")
  ap.add_argument("--dtype", default=None, help="compute dtype where a model has one "
                  "(default: bfloat16 on GPU/TPU, float32 on CPU)")
  ap.add_argument("--peak-flops", type=float, default=0.0, help="per-device peak FLOP/s")
  ap.add_argument("--only", default="", help="comma-separated workloads")
  ap.add_argument("--out", default="accelerator.json")
  args = ap.parse_args(argv)
  import jax
  dev = jax.devices()[0]
  dtype = args.dtype or ("float32" if dev.platform == "cpu" else "bfloat16")
  steps = args.steps or (2 if args.tiny else 10)
  only = {s for s in args.only.split(",") if s}
  rows = []
  names = [n for n in TRAIN if not only or n in only]
  for name in names:
    rows.append(train_workload(name, args.tiny, steps, args.peak_flops, dtype))
    print(json.dumps(rows[-1]), flush=True)
  if not only or "mtcnn_detect_faces" in only:
    rows.append(detect_workload(args.tiny, steps))
    print(json.dumps(rows[-1]), flush=True)
  if not only or "hyperprior_codec" in only:
    rows.append(codec_workload(args.tiny, steps))
    print(json.dumps(rows[-1]), flush=True)
  result = {"device": getattr(dev, "device_kind", dev.platform), "platform": dev.platform,
            "devices": jax.device_count(), "jax": jax.__version__, "tiny": args.tiny,
            "dtype": dtype, "rows": rows}
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print(f"\n{result['device']} ({jax.device_count()} device(s)), jax {jax.__version__}")
  print(f"{'workload':24} {'batch':>5} {'size':>9} {'dtype':>8} {'compile s':>9} "
        f"{'step ms':>9} {'img/s':>9} {'MFU':>6} {'mem GiB':>7}")
  for r in rows:
    step = r.get("step_ms") or (r.get("encode_ms", 0) + r.get("decode_ms", 0))
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
    mem = f"{r['peak_memory_gib']:.1f}" if r.get("peak_memory_gib") else "-"
    ips = f"{r['images_per_s']:.1f}" if "images_per_s" in r else "-"
    print(f"{r['workload']:24} {r['batch']:>5} {r['size']:>9} {r['dtype']:>8} "
          f"{r['compile_s']:>9.1f} {step:>9.1f} {ips:>9} {mfu:>6} {mem:>7}")
  print(f"-> {args.out}")


if __name__ == "__main__":
  main()
