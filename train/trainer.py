"""The generic, config-driven training loop.

One loop for every family: the task (a family's task.py, found in the registry by
config.task) supplies data, loss and
evaluation as pure functions; the model comes from the registry; the optimizer and
its schedule from the config. The train step is a pure function of (state, batch),
compiled once with `jax.jit` over a 1-D `Mesh` of every device in every process:
the batch is sharded along its leading axis, parameters and optimizer state are
replicated. Under jit the program has global semantics, so batch statistics, the
mean loss and the gradients are those of the global batch whatever the device count.
"""
from __future__ import annotations

import collections
import functools
import json
import os
import sys
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxvision import families
from jaxvision.core import checkpoint as jv_ckpt
from jaxvision.core import data as jv_data
from jaxvision.core import flops as jv_flops
from jaxvision.core import io as jv_io
from jaxvision.core import registry
from jaxvision.core.errors import TrainingError

families.load("models", "task")

REQUIRED_KEYS = ("total_steps", "batch_size", "log_every", "eval_every",
                 "checkpoint_every", "seed")


@flax.struct.dataclass
class TrainState:
  step: jax.Array            # number of updates applied
  params: Any
  model_state: Any           # e.g. {"batch_stats": ...}; {} when the model has none
  opt_state: Any
  rng: jax.Array             # raw uint32[2] key, folded with the step each update
  bad_step: jax.Array        # first step whose loss or gradient was non-finite, else -1


# ---------------------------------------------------------------- optimizer
def make_schedule(opt: ml_collections.ConfigDict, total_steps: int):
  lr = opt.learning_rate
  kind = opt.get("schedule", "constant")
  warmup = opt.get("warmup_steps", 0)
  if kind == "constant":
    main = optax.constant_schedule(lr)
  elif kind == "cosine":
    main = optax.cosine_decay_schedule(lr, max(1, total_steps - warmup),
                                       alpha=opt.get("final_fraction", 0.0))
  elif kind == "step":  # multiply by `decay_factor` at each of `boundaries` (fractions ok)
    b = [int(x * total_steps) if x < 1 else int(x) for x in opt.get("boundaries", [])]
    main = optax.piecewise_constant_schedule(
        lr, {max(1, s - warmup): opt.get("decay_factor", 0.1) for s in b})
  else:
    raise ValueError(f"unknown schedule {kind!r}; choose from: constant, cosine, step")
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
  return main


def make_optimizer(config) -> tuple[optax.GradientTransformation, Any]:
  opt = config.optimizer
  sched = make_schedule(opt, config.total_steps)
  name = opt.get("name", "adam")
  if name == "adam":
    tx = optax.adam(sched, b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.999))
  elif name == "adamw":
    tx = optax.adamw(sched, b1=opt.get("b1", 0.9), b2=opt.get("b2", 0.999),
                     weight_decay=opt.get("weight_decay", 1e-4))
  elif name == "sgd":
    tx = optax.sgd(sched, momentum=opt.get("momentum", 0.9) or None,
                   nesterov=opt.get("nesterov", False))
    if opt.get("weight_decay", 0.0):
      tx = optax.chain(optax.add_decayed_weights(opt.weight_decay), tx)
  else:
    raise ValueError(f"unknown optimizer {name!r}; choose from: adam, adamw, sgd")
  if opt.get("grad_clip_norm"):
    tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
  return tx, sched


# ---------------------------------------------------------------- steps
def make_train_step(model, task, tx, config):
  loss_fn = functools.partial(task.loss, config=config)

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)

    def objective(params):
      return loss_fn(model, {"params": params, **state.model_state}, batch, rng, True)

    (loss, (aux, new_model_state)), grads = jax.value_and_grad(
        objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # A non-finite step is not applied, so the state (and any checkpoint) stays
    # finite; the step is recorded and the host stops the run at its next check.
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    new_state = state.replace(
        step=state.step + 1,
        params=keep(params, state.params),
        model_state=keep(dict(new_model_state) or state.model_state, state.model_state),
        opt_state=keep(opt_state, state.opt_state),
        bad_step=jnp.where(ok | (state.bad_step >= 0), state.bad_step, state.step + 1))
    return new_state, {"loss": loss, "grad_norm": grad_norm, **aux}

  return train_step


# ---------------------------------------------------------------- helpers
def initialize_distributed(coordinator_address=None, num_processes=None,
                           process_id=None) -> None:
  """jax.distributed.initialize(); arguments None are auto-detected (TPU, SLURM...)."""
  # CPU processes need a collectives backend to talk across hosts (no effect on
  # GPU/TPU computations). Must be set before any backend is initialised.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def check_config(config) -> None:
  missing = [k for k in REQUIRED_KEYS if k not in config]
  if missing:
    raise TrainingError(f"config is missing required keys: {', '.join(missing)}")
  for k in REQUIRED_KEYS[:5]:
    if int(config[k]) <= 0:
      raise TrainingError(f"config.{k} must be positive, got {config[k]}")
  n = jax.device_count()
  if config.batch_size % n:
    raise TrainingError(f"config.batch_size={config.batch_size} is not divisible by "
                        f"the {n} devices; use a multiple of {n}")


class TensorBoard:
  """Event files via tensorboardX (no TensorFlow); a no-op on non-zero processes."""

  def __init__(self, logdir: str, enabled: bool):
    self.w = None
    if enabled:
      from tensorboardX import SummaryWriter
      self.w = SummaryWriter(logdir)

  def scalars(self, step: int, values: dict[str, float], prefix: str = "") -> None:
    if self.w:
      for k, v in values.items():
        self.w.add_scalar(prefix + k, float(v), step)

  def images(self, step: int, images: dict[str, list], prefix: str = "",
             max_images: int = 4) -> None:
    if self.w:
      for k, ims in images.items():
        for i, im in enumerate(ims[:max_images]):
          self.w.add_image(f"{prefix}{k}/{i}", im, step, dataformats="HWC")

  def flush(self):
    if self.w:
      self.w.flush()

  def close(self):
    if self.w:
      self.w.close()


def write_json_atomic(path: str, obj) -> None:
  jv_io.atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def write_pngs(folder: str, tag: str, images: dict[str, np.ndarray]) -> list[str]:
  os.makedirs(folder, exist_ok=True)
  written = []
  for name, batch in images.items():
    safe = name.replace("|", "_")
    for i, im in enumerate(batch):
      path = os.path.join(folder, f"{tag}_{i:02d}_{safe}.png")
      jv_io.write_png(path, im.squeeze(-1) if im.shape[-1] == 1 else im)
      written.append(path)
  return written


def log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


def model_kwargs(config) -> dict:
  """The model's kwargs from the config, with `config.dtype` (the compute dtype) when set.

  Parameters and optimizer state stay float32 whatever the compute dtype (flax's
  `param_dtype` default): bf16 compute with f32 master weights, the mixed-precision recipe
  of Micikevicius et al. 2018 without loss scaling (bf16 has float32's exponent range)."""
  kw = dict(config.model.get("kwargs", {}))
  dtype = config.get("dtype", "") or ""
  if config.get("param_dtype", "float32") not in ("float32", ""):
    raise TrainingError(f"config.param_dtype={config.param_dtype!r}: parameters and "
                        "optimizer state are kept in float32; use config.dtype for compute")
  if dtype:
    if dtype not in ("float32", "bfloat16", "float16"):
      raise TrainingError(f"config.dtype={dtype!r}: choose float32, bfloat16 or float16")
    cls = registry.create_model(config.model.name, **kw)
    if "dtype" not in getattr(type(cls), "__dataclass_fields__", {}):
      raise TrainingError(f"model {config.model.name} has no compute dtype option; "
                          "leave config.dtype empty")
    kw["dtype"] = dtype
  return kw


class DevicePrefetch:
  """The train iterator with `depth` batches already on the devices.

  The next batch is read and transferred while the current step runs (the step is
  dispatched asynchronously). The batches and their order are the plain iterator's, so
  training is bit-identical with or without it. For checkpoints it gives the data position
  of the last batch handed to the step, not of the batches read ahead, so a resumed run
  starts exactly after the last step taken (`get_state`, read by grain's handler)."""

  def __init__(self, iterator, put, depth: int):
    self.iterator, self.put, self.depth = iterator, put, max(0, int(depth))
    self.queue: collections.deque = collections.deque()
    self.state = self._position()

  def _position(self) -> bytes:
    s = self.iterator.get_state()
    return s if isinstance(s, bytes) else json.dumps(s, indent=4).encode()

  def _read(self):
    batch = self.put(next(self.iterator))
    self.queue.append((batch, self._position()))

  def fill(self) -> None:
    """Reads and transfers batches until `depth` are waiting (call after a dispatch)."""
    while len(self.queue) < self.depth:
      self._read()

  def __next__(self):
    if not self.queue:
      self._read()
    batch, self.state = self.queue.popleft()
    return batch

  def get_state(self) -> bytes:
    return self.state


def profile_window(spec) -> tuple[int, int] | None:
  """`config.profile_steps` "START:STOP" (or "N": that step alone) -> (start, stop)."""
  spec = str(spec or "").strip()
  if not spec:
    return None
  try:
    a, _, b = spec.partition(":")
    start, stop = int(a), int(b or a)
  except ValueError:
    raise TrainingError(f"config.profile_steps={spec!r}: give START:STOP, e.g. 10:15") from None
  if start < 1 or stop < start:
    raise TrainingError(f"config.profile_steps={spec!r}: need 1 <= START <= STOP")
  return start, stop


# ---------------------------------------------------------------- the loop
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains per `config` in `workdir`, resuming from its newest good checkpoint."""
  check_config(config)
  workdir = os.path.abspath(workdir)
  lead = jax.process_index() == 0
  if lead:
    jv_ckpt.save_config(workdir, config)

  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))

  task = registry.get_task(config.task)
  model = registry.create_model(config.model.name, **model_kwargs(config))
  tx, schedule = make_optimizer(config)
  if getattr(task, "optimizer", None) is not None:  # e.g. CFAN freezing its finished stages
    tx = task.optimizer(tx, config, model)

  t0 = time.time()
  train_loader, eval_batches = task.make_data(config)
  log(f"data ready in {time.time() - t0:.1f}s: {len(eval_batches)} eval batches; "
      f"{jax.device_count()} device(s) ({jax.devices()[0].platform}), "
      f"{jax.process_count()} process(es), global batch {config.batch_size}")

  if not eval_batches:
    raise TrainingError("the eval split gave no batches; check config.data.eval_split")
  # Shapes for init come from an eval batch already in memory, so the train
  # iterator (and its worker processes) starts once.
  local_example = jax.tree.map(lambda x: np.asarray(x)[:1], eval_batches[0])

  @functools.partial(jax.jit, out_shardings=replicated)
  def init(seed):
    rng = jax.random.PRNGKey(seed)
    init_rng, train_rng = jax.random.split(rng)
    variables = model.init(init_rng, local_example["input"], train=False)
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      model_state=model_state, opt_state=tx.init(params),
                      rng=train_rng, bad_step=jnp.full((), -1, jnp.int32))

  state = init(config.seed)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  log(f"model {config.model.name}: {n_params:,} parameters")

  mngr = jv_ckpt.manager(workdir, keep=config.get("keep_checkpoints", 3))
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  start_step, restored = jv_ckpt.restore_with_fallback(
      mngr, lambda step: ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
  train_iter = iter(train_loader)
  if start_step is None:
    start_step = 0
    if mngr.all_steps():
      raise TrainingError(f"{workdir}: no checkpoint could be read; move the "
                          "checkpoints/ folder away to start afresh")
  else:
    state = restored["state"]
    try:  # the data position separately: a changed pipeline must not lose the params
      mngr.restore(start_step, args=ocp.args.Composite(
          data=jv_data.checkpoint_restore_arg(train_iter)))
    except Exception as e:  # grain refuses states of another worker/host count
      train_iter = iter(train_loader)
      reason = (str(e).splitlines() or [type(e).__name__])[0][:160]
      log(f"warning: the data position saved at step {start_step} does not fit this "
          f"pipeline ({reason}); did data.worker_count, the dataset or the number of "
          "hosts change? Continuing with the data order from its start.")
    log(f"resuming from checkpoint step {start_step} in {workdir}/checkpoints")
  total = int(config.total_steps)
  if start_step >= total:
    log(f"checkpoint step {start_step} >= total_steps {total}: nothing to train")

  train_step = jax.jit(make_train_step(model, task, tx, config),
                       in_shardings=(replicated, batch_sharding),
                       out_shardings=(replicated, replicated), donate_argnums=0)
  window = profile_window(config.get("profile_steps", ""))
  eval_step = jax.jit(functools.partial(task.evaluate, model, config=config),
                      out_shardings=replicated)

  def to_global(batch):
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(batch_sharding, x), batch)

  def evaluate(state) -> tuple[dict, dict]:
    variables = {"params": state.params, **state.model_state}
    per_image: dict[str, list] = {}
    samples: dict[str, list] = {}
    for batch in eval_batches:
      b = jax.device_put(batch, replicated)
      out = jax.device_get(eval_step(variables, b))
      for k, v in out.items():
        if np.ndim(v) == 1:
          per_image.setdefault(k, []).extend(np.asarray(v).tolist())
      for k, v in task.samples(batch, out, config).items():
        samples.setdefault(k, []).extend(list(v))  # per image: sizes may differ
    means = {k: float(np.mean(v)) for k, v in per_image.items()}
    return means, samples

  def check_finite(state, step):
    bad = int(jax.device_get(state.bad_step))
    if bad >= 0:
      good = mngr.latest_step()
      where = f"; the last checkpoint (step {good}) is finite" if good else ""
      raise TrainingError(f"non-finite loss or gradient at step {bad}: stopping{where}. "
                          "Lower the learning rate or check the data.")

  tb = TensorBoard(os.path.join(workdir, "tensorboard"), lead)
  if start_step == 0:  # every process: eval_step is one SPMD program over all hosts
    _, first_samples = evaluate(state)
    tb.images(0, first_samples, "eval/")
  from tqdm.auto import tqdm
  bar = tqdm(total=total, initial=start_step, disable=not lead, dynamic_ncols=True,
             desc="train", unit="step", mininterval=1.0, file=sys.stdout)
  history: list[dict] = []
  pending: list[dict] = []
  eval_metrics: dict = {}
  t_last, step_last = time.time(), start_step
  images_per_step = config.batch_size
  feed = DevicePrefetch(train_iter, to_global, config.get("prefetch", 2))
  step_flops = None  # model FLOPs of one global step (jaxvision.core.flops), once traced
  peak = float(config.get("peak_flops", 0.0) or 0.0) or jv_flops.peak_flops(
      dtype=config.get("dtype", "") or "float32")
  profiling = False
  try:
    with mesh:
      for step in range(start_step + 1, total + 1):
        batch = next(feed)
        if step_flops is None:
          # traced once for both: the FLOPs counted on its jaxpr, the program compiled
          traced = train_step.trace(state, batch)
          step_flops = jv_flops.jaxpr_flops(traced.jaxpr)
          train_step = traced.lower().compile()
          log(f"train step: {step_flops / 1e9:.3g} GFLOP per step (matmuls and convolutions)"
              + (f"; device peak {peak / 1e12:.0f} TFLOP/s" if peak else ""))
        if window and step == window[0]:
          jax.profiler.start_trace(os.path.join(workdir, "profile"))
          profiling = True
        state, m = train_step(state, batch)
        feed.fill()  # the next batch travels while this step runs
        if profiling and step == window[1]:
          jax.block_until_ready(state)
          jax.profiler.stop_trace()
          profiling = False
          log(f"profile of steps {window[0]}-{window[1]} in {workdir}/profile (TensorBoard's "
              "profile plugin)")
        pending.append(m)
        bar.update(1)
        if step % config.log_every == 0 or step == total:
          check_finite(state, step)
          fetched = jax.device_get(pending)  # one transfer per log, not per value
          means = {k: float(np.mean([x[k] for x in fetched])) for k in fetched[0]}
          pending = []
          now = time.time()
          rate = (step - step_last) / max(now - t_last, 1e-9)
          t_last, step_last = now, step
          means.update(steps_per_sec=rate, images_per_sec=rate * images_per_step,
                       learning_rate=float(schedule(step)))
          if step_flops:
            achieved = step_flops * rate / jax.device_count()  # per device
            means["tflops_per_sec_per_device"] = achieved / 1e12
            if peak:
              means["mfu"] = achieved / peak
          bar.set_postfix(loss=f"{means['loss']:.4g}")
          tb.scalars(step, means, "train/")
          history.append({"step": step, **means})
        if step % config.eval_every == 0 or step == total:
          eval_metrics, samples = evaluate(state)
          tb.scalars(step, eval_metrics, "eval/")
          tb.images(step, samples, "eval/")
          tb.flush()
          if lead:
            bar.write(f"step {step}: " + ", ".join(
                f"{k} {v:.4f}" for k, v in eval_metrics.items()))
        if step % config.checkpoint_every == 0 or step == total:
          check_finite(state, step)
          mngr.save(step, args=ocp.args.Composite(
              state=ocp.args.StandardSave(state),
              data=jv_data.checkpoint_save_arg(feed)))
  finally:
    if profiling:
      jax.profiler.stop_trace()
    bar.close()
    mngr.wait_until_finished()
    mngr.close()
    tb.close()

  if not eval_metrics:  # nothing left to train: evaluate the restored state
    eval_metrics, samples = evaluate(state)
  result = {"step": int(jax.device_get(state.step)), "eval": eval_metrics,
            "train": history[-1] if history else {}, "wall_seconds": time.time() - t0,
            "step_flops": step_flops}
  if lead:
    write_pngs(os.path.join(workdir, "samples"), "final", samples)
    write_json_atomic(os.path.join(workdir, "metrics.json"), result)
    log(f"done: step {result['step']}, " + ", ".join(
        f"{k} {v:.4f}" for k, v in eval_metrics.items()) + f"; outputs in {workdir}")
  return result
