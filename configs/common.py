"""What every experiment config shares: the argument parser of `--config FILE.py:ARG`.

    opts = parse_arg(arg, first="operator", operator="dehaze", preset="cpu")

ARG is comma-separated `key=value`; keys must be among the defaults. A bare first word
sets the key named by `first` (the operator, model, stage, ...); a bare word listed in
`bare` sets the key it maps to (e.g. `bare={"cpu": "preset", "paper": "preset"}`).
Values stay strings: each config converts and checks its own.
"""
from __future__ import annotations


def parse_arg(arg: str | None, *, first: str | None = None, bare: dict | None = None,
              **defaults) -> dict:
  opts = dict(defaults)
  for i, part in enumerate(p for p in (arg or "").split(",") if p.strip()):
    part = part.strip()
    if "=" in part:
      k, v = (s.strip() for s in part.split("=", 1))
      if k not in defaults:
        raise ValueError(f"unknown config argument {k!r}; choose from: {', '.join(defaults)}")
      opts[k] = v
    elif bare and part in bare:
      opts[bare[part]] = part
    elif i == 0 and first:
      opts[first] = part
    else:
      raise ValueError(f"config argument {part!r}: expected key=value")
  return opts


PRESETS = ("cpu", "paper")


def check_preset(preset: str) -> str:
  """`cpu` (a run of minutes on 2 cores, the default) or `paper` (the paper's recipe)."""
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; choose from: {', '.join(PRESETS)}")
  return preset


def set_steps(c, *, total_steps: int, batch_size: int, log_every: int, eval_every: int,
              checkpoint_every: int, keep_checkpoints: int = 3, seed: int = 0):
  """The step/logging block every config has (docs/training.md): the trainer requires
  total_steps, batch_size (global), log_every, eval_every, checkpoint_every and seed."""
  c.total_steps = total_steps
  c.batch_size = batch_size
  c.log_every = log_every
  c.eval_every = eval_every
  c.checkpoint_every = checkpoint_every
  c.keep_checkpoints = keep_checkpoints
  c.seed = seed
  # The accelerator block (docs/training.md, "On a GPU or TPU"); older workdirs without
  # these keys train as before.
  c.dtype = ""            # compute dtype: "" the model's default, "bfloat16" on GPU/TPU
  c.param_dtype = "float32"  # parameters and optimizer state (float32 only)
  c.prefetch = 2          # batches put on the devices ahead of the step (0: none)
  c.peak_flops = 0.0      # per-device peak FLOP/s for MFU; 0: from the device table
  c.profile_steps = ""    # "START:STOP": a jax.profiler trace of those steps in WORKDIR/profile
  return c
