"""Compilation: JAX's persistent compilation cache, switched on for every command and run.

  enable_compile_cache()       turn the cache on (or leave it off); call it before the first
                               compilation, as `jaxvision` and `python -m train` do
  compile_cache_dir()          where it goes: None when switched off
  count_compiles()             context manager counting real XLA compilations (tests)
  use_cpu_cores()              one XLA CPU device per core for the `jaxvision` commands

Why: on a user's photos most of the wall time of a command is XLA compiling programs that
the previous run already compiled (the same model on the same image size). JAX can keep
the compiled executables on disk (`jax_compilation_cache_dir`), but by default it only
writes programs that took more than a second to compile; the many sub-second programs of a
command (initialisers, the tiler's pieces, small convolutions on CPU) add up to seconds
too, so every program is kept (`jax_persistent_cache_min_compile_time_secs=0`,
`jax_persistent_cache_min_entry_size_bytes=-1`). A second run of a command on the same
sizes then compiles nothing.

Where:
  $JAXVISION_COMPILE_CACHE           a path, or 0 / off / false / no / none: switched off
  $XDG_CACHE_HOME/jaxvision/xla      otherwise
  ~/.cache/jaxvision/xla             without XDG_CACHE_HOME
A `jax_compilation_cache_dir` the user already set (JAX_COMPILATION_CACHE_DIR) is kept
when JAXVISION_COMPILE_CACHE is not set: the user's own JAX setting wins over our default.

The folder may be deleted at any time (it only costs the next run its compiles). It grows
by one entry per program and shape; JAX bounds its size only with the `filelock` package
installed (jax_compilation_cache_max_size), which jaxvision does not need, so it is left
unbounded. Entries are keyed by the program, the jax/jaxlib version, the devices and the
XLA flags, so an upgrade or another machine never loads a stale executable (it misses).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from typing import Iterator

ENV = "JAXVISION_COMPILE_CACHE"
OFF_VALUES = frozenset({"0", "off", "false", "no", "none"})

# jax.monitoring event names (checked against jax 0.10.2, jax/_src/dispatch.py and
# compiler.py): the backend-compile duration is recorded around
# `compiler.compile_or_get_cached`, that is for a persistent-cache hit too; a hit also
# records the cache_hits event, so real compilations = durations - hits.
_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT = "/jax/compilation_cache/cache_hits"

# The directory this module last handed to jax (None: not set by us).
_enabled_dir: str | None = None


def cache_switched_off(value: str | None) -> bool:
  """Whether a JAXVISION_COMPILE_CACHE value means "no cache" (0, off, false, no, none)."""
  return value is not None and value.strip().lower() in OFF_VALUES


def compile_cache_dir(environ=None) -> str | None:
  """The cache folder the environment asks for, or None when it switches the cache off.

  `environ` defaults to os.environ (a mapping, for tests). An empty JAXVISION_COMPILE_CACHE
  counts as unset, as an empty XDG_CACHE_HOME does (the XDG spec says to ignore it)."""
  env = os.environ if environ is None else environ
  value = (env.get(ENV) or "").strip()
  if cache_switched_off(value):
    return None
  if value:
    return os.path.abspath(os.path.expanduser(value))
  base = (env.get("XDG_CACHE_HOME") or "").strip() or os.path.join(
      os.path.expanduser("~"), ".cache")
  return os.path.abspath(os.path.join(os.path.expanduser(base), "jaxvision", "xla"))


def enable_compile_cache(enabled: bool = True, environ=None) -> str | None:
  """Turns JAX's persistent compilation cache on for this process; returns its folder.

  `enabled=False` (the commands' --no-compile-cache) or JAXVISION_COMPILE_CACHE=0 turns it
  off, also a cache turned on earlier in the process (in-process callers such as tests get
  what they ask for) or by JAX_COMPILATION_CACHE_DIR (the more specific switch wins).
  Call it before the first compilation: programs compiled before are neither read from
  nor written to the folder.

  A folder that cannot be created is no error (the cache is an optimisation): the cache
  stays off and None is returned, with a note on stderr when JAXVISION_COMPILE_CACHE named
  it (a read-only default ~/.cache says nothing).
  """
  global _enabled_dir
  import jax
  from jax.experimental.compilation_cache import compilation_cache as jax_cc

  env = os.environ if environ is None else environ
  path = compile_cache_dir(env) if enabled else None
  current = jax.config.jax_compilation_cache_dir
  if path is not None and not (env.get(ENV) or "").strip() and current and (
      current != _enabled_dir):
    path = current  # the user's own JAX_COMPILATION_CACHE_DIR
  if path is not None:
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as e:
      if (env.get(ENV) or "").strip():  # the user's own choice: say why it is not used
        print(f"jaxvision: compilation cache off: cannot create {path} "
              f"({e.strerror or e})", file=sys.stderr)
      path = None
  if path is None:
    if current:  # ours from an earlier call, or the user's JAX_COMPILATION_CACHE_DIR
      jax.config.update("jax_compilation_cache_dir", None)
      jax_cc.reset_cache()
    _enabled_dir = None
    return None
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  if current != path or _enabled_dir != path:
    jax.config.update("jax_compilation_cache_dir", path)
    # JAX opens its cache once, at the first compilation after a folder is set; another
    # folder set later in the same process would be ignored without this reset.
    jax_cc.reset_cache()
  _enabled_dir = path
  return path


CPU_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def use_cpu_cores(environ=None, cores: int | None = None) -> int | None:
  """Asks XLA for one CPU device per core (at most 8) -> the count set, or None.

  XLA:CPU runs the programs of one device one after another, most of them on one core, so
  a command that works on several images at once (MTCNN's `detect-faces`) keeps the other
  cores idle; with a device per core it runs one image per device. Programs that are not
  spread over devices still run on the first, as before. Nothing is changed when XLA_FLAGS
  already sets a device count (the user's choice), on a machine with one core, or once the
  backend has started (the flag is read then: call this before anything runs on JAX)."""
  env = os.environ if environ is None else environ
  flags = env.get("XLA_FLAGS", "")
  n = min(8, cores if cores is not None else (os.cpu_count() or 1))
  if CPU_DEVICES_FLAG in flags or n <= 1:
    return None
  if "jax" in sys.modules:
    try:
      from jax._src import xla_bridge
      if xla_bridge.backends_are_initialized():
        return None
    except (ImportError, AttributeError):  # a jax without that helper: leave it
      return None
  env["XLA_FLAGS"] = f"{flags} {CPU_DEVICES_FLAG}={n}".strip()
  return n


@dataclasses.dataclass
class CompileCount:
  """What `count_compiles` saw: backend compilations requested and persistent-cache hits."""
  requests: int = 0
  cache_hits: int = 0

  @property
  def compiles(self) -> int:
    """Programs XLA really compiled (requests the persistent cache did not answer)."""
    return self.requests - self.cache_hits


@contextlib.contextmanager
def count_compiles() -> Iterator[CompileCount]:
  """Counts XLA backend compilations in the block (all threads), for tests and benchmarks.

  A program found in JAX's in-memory cache is no request at all; one found in the
  persistent cache is a request and a hit, not a compile. The count is of `jax.monitoring`
  events, so it needs no private JAX API.
  """
  from jax import monitoring

  count = CompileCount()

  def on_duration(event, _secs, **_kw):
    if event == _BACKEND_COMPILE:
      count.requests += 1

  def on_event(event, **_kw):
    if event == _CACHE_HIT:
      count.cache_hits += 1

  monitoring.register_event_duration_secs_listener(on_duration)
  monitoring.register_event_listener(on_event)
  try:
    yield count
  finally:
    monitoring.unregister_event_duration_listener(on_duration)
    monitoring.unregister_event_listener(on_event)
