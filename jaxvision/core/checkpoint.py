"""Orbax checkpoints of a training workdir: restore with fall-back, load for inference.

Layout of a workdir written by `python -m train`:
  config.json            the experiment's config (ml_collections, as JSON)
  checkpoints/<step>/    orbax CheckpointManager steps, items `state` (params,
                         optimizer state, step, RNG, model state) and `data` (the
                         grain iterator position, one JSON file per process)
  tensorboard/           event files;  samples/  before/after PNGs;  metrics.json
"""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Callable

import jax
import numpy as np
import ml_collections

if TYPE_CHECKING:
  import orbax.checkpoint as ocp


def _ocp():
  """orbax.checkpoint, imported when a checkpoint is first touched: it costs 0.2-0.4 s of
  start-up that the commands on pretrained weights (detect-faces, ...) do not need."""
  import orbax.checkpoint
  return orbax.checkpoint

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"


from jaxvision.core.errors import CheckpointError  # noqa: E402  (re-exported)
from jaxvision.core.io import atomic_write_text  # noqa: E402


def manager(workdir: str, *, keep: int = 3, async_save: bool = True,
            with_data: bool = True) -> ocp.CheckpointManager:
  """CheckpointManager over `workdir/checkpoints` (keep the newest `keep` steps)."""
  import grain  # local: inference does not need the data stack

  handlers = {"state": _ocp().StandardCheckpointHandler()}
  if with_data:
    handlers["data"] = grain.checkpoint.CheckpointHandler()
  options = _ocp().CheckpointManagerOptions(
      max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
  return _ocp().CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
                               options=options, item_handlers=handlers)


def all_finite(tree) -> bool:
  leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
  return all(np.isfinite(x).all() for x in leaves if np.issubdtype(x.dtype, np.inexact))


def restore_with_fallback(mngr: ocp.CheckpointManager,
                          make_args: Callable[[int], ocp.args.Composite],
                          ) -> tuple[int | None, Any]:
  """Restores the newest readable step; a damaged one is skipped with a warning.

  `make_args(step)` builds fresh restore args for each attempt (a failed attempt may
  have partly restored an iterator). Returns (step, restored) or (None, None).
  """
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      restored = mngr.restore(step, args=make_args(step))
    except Exception as e:  # orbax raises many types for damaged files
      msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
      print(f"warning: checkpoint step {step} is damaged ({type(e).__name__}: {msg}); "
            "trying the previous one", flush=True)
      continue
    if not all_finite(restored["state"]):
      print(f"warning: checkpoint step {step} holds non-finite values; "
            "trying the previous one", flush=True)
      continue
    return step, restored
  return None, None


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  atomic_write_text(os.path.join(workdir, CONFIG_FILE), text)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise CheckpointError(f"{workdir}: not a jaxvision workdir (no {CONFIG_FILE})")
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError, TypeError) as e:
    raise CheckpointError(f"{path}: not a readable config ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None


# ---------------------------------------------------------------- the variables cache
# A command on a workdir (compress, decompress, enhance, ...) spent 0.4-0.6 s of its start-up
# in orbax: importing it (0.2-0.4 s) and restoring the step. The restored variables are kept
# as a plain .npz beside the compilation cache (so on exactly when that cache is on, and off
# with JAXVISION_COMPILE_CACHE=0 / --no-compile-cache), keyed by the checkpoint folder's
# real path and by the path, size and modification time of every file in it: a new step,
# a rewritten or a deleted file is a miss, and the checkpoint is read again. The file is
# read with numpy without pickle; a damaged or foreign one is a miss and is replaced.
VARIABLES_SUBDIR = "jaxvision-variables"
_SEP = "|"  # joins the keys of nested dicts into one .npz name


def _cache_base() -> str | None:
  """The compilation cache folder in use (None: the cache is off)."""
  return jax.config.jax_compilation_cache_dir or None


def _variables_cache_file(ckdir: str) -> str | None:
  import hashlib
  base = _cache_base()
  if not base:
    return None
  h = hashlib.sha256(os.path.realpath(ckdir).encode())
  for root, dirs, files in os.walk(ckdir):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      try:
        st = os.stat(path)
      except OSError:
        return None
      h.update(f"\0{os.path.relpath(path, ckdir)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
  return os.path.join(base, VARIABLES_SUBDIR, h.hexdigest() + ".npz")


def _flat(tree, prefix="") -> dict | None:
  """{"a|b|c": array} of nested dicts of arrays; None for anything else (not cached)."""
  out = {}
  for k, v in tree.items():
    if not isinstance(k, str) or _SEP in k:
      return None
    key = prefix + k
    if isinstance(v, dict):
      sub = _flat(v, key + _SEP)
      if sub is None or not sub:
        return None
      out.update(sub)
    else:
      a = np.asarray(v)
      if a.dtype.kind not in "fiucb":  # objects, or bfloat16 (numpy would load it as void)
        return None
      out[key] = a
  return out


def _read_cached_variables(path: str):
  try:
    with np.load(path, allow_pickle=False) as z:
      flat = {k: z[k] for k in z.files}
  except Exception:  # noqa: BLE001 - damaged, foreign or half-written: a miss
    return None
  step = flat.pop("__step__", None)
  if step is None or not flat:
    return None
  tree: dict = {}
  for key, a in flat.items():
    *parents, leaf = key.split(_SEP)
    d = tree
    for p in parents:
      d = d.setdefault(p, {})
    d[leaf] = a
  return tree, int(step)


def _write_cached_variables(path: str, variables: dict, step: int) -> None:
  import tempfile
  flat = _flat(variables)
  if flat is None or "__step__" in flat:
    return
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
      np.savez(f, __step__=np.int64(step), **flat)
    os.replace(tmp, path)
  except OSError:  # the cache is an optimisation: a read-only or full disk is no error
    try:
      os.unlink(tmp)
    except (OSError, UnboundLocalError):
      pass


def load_variables(workdir: str) -> tuple[ml_collections.ConfigDict, dict, int]:
  """(config, flax variables {'params', ...model state}, step) of the newest good step."""
  config = load_config(workdir)
  ckdir = os.path.join(workdir, CHECKPOINT_DIR)
  if not os.path.isdir(ckdir):
    raise CheckpointError(f"{workdir}: no checkpoints/ folder")
  cached = _variables_cache_file(ckdir)
  hit = _read_cached_variables(cached) if cached and os.path.exists(cached) else None
  if hit is not None:
    return config, hit[0], hit[1]
  config, variables, step = _restore_variables(workdir, config, ckdir)
  steps = [int(d) for d in os.listdir(ckdir) if d.isdigit()]
  if cached and step == max(steps, default=None):  # not a fall-back past a damaged step:
    _write_cached_variables(cached, variables, step)  # its warning must come every time
  return config, variables, step


def _restore_variables(workdir: str, config, ckdir: str):
  mngr = _ocp().CheckpointManager(
      os.path.abspath(ckdir),
      options=_ocp().CheckpointManagerOptions(read_only=True),
      item_handlers={"state": _ocp().PyTreeCheckpointHandler()})

  def as_numpy(step):
    # Restore as host numpy arrays, whatever device topology wrote the checkpoint
    # (8 TPU cores, one GPU, ...): inference must not depend on it.
    meta = mngr.item_metadata(step)["state"]
    meta = getattr(meta, "tree", meta)
    restore_args = jax.tree.map(lambda _: _ocp().RestoreArgs(restore_type=np.ndarray), meta)
    return _ocp().args.Composite(state=_ocp().args.PyTreeRestore(restore_args=restore_args))

  try:
    step, restored = restore_with_fallback(mngr, as_numpy)
  finally:
    mngr.close()
  if step is None:
    raise CheckpointError(f"{workdir}: no readable checkpoint in {ckdir}")
  state = restored["state"]
  variables = {"params": state["params"], **(state.get("model_state") or {})}
  return config, variables, step


_LOADED: list = []  # (workdir, model name, model, variables) that load_model handed out


def _param_shapes(model) -> dict | None:
  """{param path: shape} of a model's fresh init (traced only, nothing computed), trying
  the input sizes the registered models take; None when none works."""
  for side in (64, 48, 24, 12, 32):
    try:
      shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                 np.zeros((1, side, side, 3), np.float32)))
    except Exception:  # noqa: BLE001 - another input size, or not an image model
      continue
    return {jax.tree_util.keystr(p): tuple(l.shape)
            for p, l in jax.tree_util.tree_leaves_with_path(shapes.get("params", {}))}
  return None


def forget_loaded() -> None:
  """Starts a new command's record of loaded workdirs (in-process callers run several)."""
  _LOADED.clear()


def loaded_mismatch() -> str | None:
  """A one-line reason when a workdir that `load_model` loaded holds parameters that do
  not fit the model its config.json names (another model's checkpoint beside this
  config), else None. Called by the entry points when a command fails with an error
  that is not a UserError: only then is the model's init traced (a second or so for the
  largest), so the common path pays nothing."""
  for workdir, name, model, variables in _LOADED:
    want = _param_shapes(model)
    if want is None:
      continue
    have = {jax.tree_util.keystr(p): tuple(np.shape(l))
            for p, l in jax.tree_util.tree_leaves_with_path(variables.get("params", {}))}
    if want == have:
      continue
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    shape = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    first = (f"no parameter {missing[0]}" if missing else f"an unknown parameter {extra[0]}"
             if extra else f"{shape[0]} is {have[shape[0]]}, the model wants {want[shape[0]]}")
    return (f"{workdir}: its checkpoint does not fit the {name!r} model that config.json "
            f"names ({first}): config and weights of different models?")
  return None


def load_model(workdir: str, task: str | tuple[str, ...] | None = None, what: str = "model"):
  """(config, model, variables, step) of a workdir: the one loader every command uses.

  `task`: the trainer task (or tasks) the workdir must hold; another is a one-line
  `CheckpointError` ("a 'compression' model, not an image operator"), as is a config
  whose model the registry does not know or whose parameters do not fit it."""
  from jaxvision.core import registry
  config, variables, step = load_variables(workdir)
  tasks = (task,) if isinstance(task, str) else task
  if tasks and config.get("task") not in tasks:
    raise CheckpointError(f"{workdir}: a {config.get('task')!r} model, not {what}")
  try:
    name = config.model.name
    model = registry.create_model(name, **dict(config.model.get("kwargs", None) or {}))
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    raise CheckpointError(f"{workdir}: config.json names no usable model "
                          f"({str(e).splitlines()[0][:160] if str(e) else type(e).__name__})"
                          ) from None
  _LOADED.append((workdir, name, model, variables))
  return config, model, variables, step
