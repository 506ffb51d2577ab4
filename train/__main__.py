"""python -m train --config configs/<file>.py[:arg] --workdir DIR [--config.key=value ...]"""
from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and outputs go.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-host launches). "
    "On TPU pods, SLURM and other auto-detected clusters no other flag is needed.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (manual multi-host launches).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in all.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_NO_COMPILE_CACHE = flags.DEFINE_bool(
    "no_compile_cache", False, "Do not read or write the persistent compilation cache "
    "(~/.cache/jaxvision/xla or $JAXVISION_COMPILE_CACHE; JAXVISION_COMPILE_CACHE=0 also "
    "switches it off).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from absl import logging
  if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  from jaxvision.core import compile as jv_compile
  # Before anything compiles: a restarted or repeated run loads its programs from disk.
  jv_compile.enable_compile_cache(not _NO_COMPILE_CACHE.value)
  from train import trainer  # heavy imports after flag parsing (fast --help)
  from jaxvision.core.errors import UserError

  if _DISTRIBUTED.value or _COORDINATOR.value:
    trainer.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                   _PROCESS_ID.value)
  try:
    config = _CONFIG.value
    if hasattr(config, "_ReportError"):  # ml_collections' stand-in for a failed load
      config._ReportError()
  except OSError as e:  # ml_collections defers a config file it could not load to here
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    print(f"error: --config: {lines[-1] if lines else e}", file=sys.stderr, flush=True)
    sys.exit(1)
  try:
    trainer.train_and_evaluate(config, _WORKDIR.value)
  except (UserError, ValueError) as e:
    # Config and data mistakes are one line; a genuine bug still gets a traceback
    # with -v 1 (--verbosity=1).
    if flags.FLAGS["verbosity"].present:
      raise
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  except KeyboardInterrupt:
    print(f"\ninterrupted; checkpoints written so far are in {_WORKDIR.value}/checkpoints: "
          "run the same command to resume", file=sys.stderr, flush=True)
    sys.exit(130)


def _parse_flags(argv):
  """absl's flag parsing, with its errors as one line and exit 1. A config file that
  refuses its argument (configs/denoise.py:model=vgg) reaches absl as a flag error that
  holds the config's whole traceback; the user gets the flag and the config's own message."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    head = lines[0] if lines else type(e).__name__
    if any(l.startswith("Traceback") for l in lines):
      msg = lines[-1].split(": ", 1)[-1]  # "ValueError: unknown ..." -> "unknown ..."
      flag = head.split(": Error whilst parsing config file", 1)[0].removeprefix("flag ")
      head = f"{flag}: {msg}"
    print(f"error: {head} (python -m train --helpshort: the flags)", file=sys.stderr,
          flush=True)
    sys.exit(1)
  except OSError as e:  # --config.KEY=... over a config file that could not be loaded
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    print(f"error: --config: {lines[-1] if lines else e}", file=sys.stderr, flush=True)
    sys.exit(1)
  except (AttributeError, KeyError) as e:  # --config.KEY=... naming no key of the config
    given = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
    key = str(e).strip("\"' ")
    flag = next((g for g in given if g.split(".")[-1] == key), "--config.KEY")
    print(f"error: {flag}: the config has no key {key!r}", file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
