"""Compiled programs kept as executables beside the compilation cache (codecs, MTCNN).

  cache = Executables(*module_names)   one per family: the modules whose source decides
                                       what its programs compute (part of every key)
  cache.call(jitted, static, *args)    jitted(*static, *args) through a compiled executable
                                       that is looked up in memory, then on disk, and only
                                       then traced, lowered and compiled (and written to disk)
  cache.get(jitted, static, args)      that executable (args may be jax.ShapeDtypeStruct);
                                       an argument's single-device sharding says the device
  cache.prepare([(jitted, static, args), ...])
                                       the same ahead of time for many programs: the missing
                                       ones compiled in parallel (a command knows them first)
  check_memory(compiled, what)         refuses (ResourceError, one line) a program whose
                                       buffers would not fit in the memory left, before it
                                       runs: a huge image is a clear line, not an OOM kill

Why: JAX's persistent compilation cache (jaxvision.core.compile) saves the XLA compile, but
it is keyed by the lowered program, so a warm command still traces and lowers each of its
programs: about 0.4 s for a codec program on this project's 2-core CPU, most of it flax
re-checking every parameter's shape, for every bucket of every command (compress,
decompress: a folder of photos in 9 buckets pays it 27 times; MTCNN's five programs of the time on
each of two devices 0.7 s). A loaded executable costs 0.01-0.02 s (MTCNN, the codecs'
decoders) to 0.09 s (a codec's encoder). The executable of a program is stored under the
JAX cache folder (a subfolder JAX's own cache ignores), so it is on exactly when that cache
is on, and switched off with it (JAXVISION_COMPILE_CACHE=0, --no-compile-cache).

The key is a SHA-256 of what the program is (the jitted function's name, the static
arguments' repr, the pytree structure, shapes, dtypes and devices of the others, the
source of the modules that build the family's programs, the flax version) and of where it
runs (jax and jaxlib versions, backend and its platform version, device kind and count, XLA_FLAGS, the
CPU's model and feature flags), so another machine, another XLA flag or another jaxvision
never loads a stale executable: it misses and compiles. A file that cannot be loaded is
compiled again and replaced. Files hold what `jax.experimental.serialize_executable` gives:
its executable record and the two pytree definitions (those in JAX's protobuf form). The
record is a pickle (JAX's own format: XLA's executable bytes inside); it is read with an
unpickler that accepts only the dozen JAX classes such a record names (_ALLOWED), so a
crafted file cannot make loading call arbitrary code; a damaged, foreign or refused file is
compiled again.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import sys
import threading

SUBDIR = "jaxvision-executables"
_MEMORY: dict = {}  # key -> loaded executable, shared by every cache of the process


def _flax_version() -> str:
  """flax's version without importing flax (0.2-0.3 s; the MTCNN programs need no flax),
  from its distribution's metadata whether or not flax is imported, so that every process
  computes the same key."""
  from importlib import metadata
  try:
    return metadata.version("flax")
  except metadata.PackageNotFoundError:
    mod = sys.modules.get("flax")
    return getattr(mod, "__version__", "none")


@functools.cache
def _environment(sources: tuple[str, ...]) -> str:
  import jax
  import jaxlib
  parts = [jax.__version__, jaxlib.__version__, _flax_version(), jax.default_backend(),
           str(len(jax.devices())), jax.devices()[0].device_kind, platform.machine(),
           os.environ.get("XLA_FLAGS", ""), str(jax.config.jax_enable_x64),
           str(jax.config.jax_default_matmul_precision)]
  try:
    import jax.extend as je
    parts.append(je.backend.get_backend().platform_version)
  except Exception:  # noqa: BLE001 - an older jax: the versions above still key it
    pass
  try:  # the executable is compiled for this CPU's features
    with open("/proc/cpuinfo") as f:
      parts += sorted({l for l in f if l.startswith(("model name", "flags"))})
  except OSError:
    parts.append(platform.processor())
  for name in sources + (__name__,):
    mod = sys.modules.get(name)
    path = getattr(mod, "__file__", None)
    if path is None:  # not imported in this process (MTCNN's flax modules): the same key
      import importlib.util
      try:
        spec = importlib.util.find_spec(name)
      except (ImportError, ValueError):
        spec = None
      path = getattr(spec, "origin", None)
    if path and os.path.isfile(path):
      with open(path, "rb") as f:
        parts.append(hashlib.sha256(f.read()).hexdigest())
  return "\n".join(parts)


def _folder() -> str | None:
  import jax
  base = jax.config.jax_compilation_cache_dir
  return os.path.join(base, SUBDIR) if base else None


def _device(args):
  """The one device the arguments' shardings name (jax arrays or ShapeDtypeStructs placed
  on a single device), else None (the default device)."""
  import jax
  for leaf in jax.tree.leaves(args):
    sharding = getattr(leaf, "sharding", None)
    devices = getattr(sharding, "device_set", None)
    if devices and len(devices) == 1:
      return next(iter(devices))
  return None


def _key(jitted, static, args, sources: tuple[str, ...] = ()) -> str:
  import jax
  leaves, tree = jax.tree.flatten(args)
  device = _device(args)
  sig = [getattr(jitted, "__name__", repr(jitted)), repr(static), str(tree),
         f"device {device.id}" if device is not None else "default device"]
  sig += [f"{getattr(l, 'shape', ())}:{getattr(l, 'dtype', type(l).__name__)}" for l in leaves]
  return hashlib.sha256(("\n".join(sig) + "\n" + _environment(sources)).encode()).hexdigest()


# The only globals an executable file may name (what jax 0.10.2's serialize_executable
# writes for these programs); the loader refuses any other, so a crafted file cannot make
# unpickling call arbitrary code. A jax that pickles something else just compiles again.
_ALLOWED = frozenset({
    ("jax", "P"), ("jax._src.core", "ManualAxisType"), ("jax._src.core", "MemorySpace"),
    ("jax._src.core", "ShapedArray"), ("jax._src.interpreters.pxla", "AllArgsInfo"),
    ("jax._src.interpreters.pxla", "UnloadedMeshExecutable"), ("jax._src.layout", "Layout"),
    ("jax._src.linear_util", "DebugInfo"), ("jax._src.mesh", "AbstractMesh"),
    ("jax._src.named_sharding", "_unpickle_named_sharding"),
    ("jax._src.sharding_impls", "_unpickle_single_device_sharding"),
    ("jax._src.stages", "ArgInfo"), ("jaxlib._jax", "DeviceList"), ("numpy", "dtype")})


def _deserialize(exe: bytes, in_tree, out_tree, device=None):
  """`serialize_executable.deserialize_and_load` (jax 0.10.2) with the globals restricted
  to _ALLOWED, on `device` (default: the default device) only (by default the loader would
  spread the executable over every local device, e.g. the CLI's one CPU device per core)."""
  import io
  import pickle
  import jax
  from jax.experimental import serialize_executable

  class Unpickler(serialize_executable._JaxPjrtUnpickler):
    def find_class(self, module, name):
      if (module, name) not in _ALLOWED:
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in an executable file")
      return super().find_class(module, name)

  devices = [device] if device is not None else jax.devices()[:1]
  unloaded, args_info_flat, no_kwargs = Unpickler(io.BytesIO(exe), devices[0].client,
                                                  devices).load()
  return jax.stages.Compiled(unloaded.load(), [], in_tree.unflatten(args_info_flat), out_tree,
                             no_kwargs=no_kwargs)


def _load(path: str, device=None):
  try:
    with open(path, "rb") as f:
      blob = f.read()
    return _deserialize(*_unpack(blob), device=device)
  except Exception:  # noqa: BLE001 - damaged, truncated, foreign or refused: compile again
    return None


_MAGIC = b"JVXEXE1\n"


def _pack(exe: bytes, in_tree, out_tree) -> bytes:
  """The file: a magic line, then three length-prefixed parts: XLA's serialized executable
  and the two pytree definitions in JAX's protobuf form (no pickle: nothing in the file can
  run code when it is read)."""
  parts = [bytes(exe), in_tree.serialize_using_proto(), out_tree.serialize_using_proto()]
  return _MAGIC + b"".join(len(p).to_bytes(8, "little") + p for p in parts)


def _unpack(blob: bytes):
  import jax
  if not blob.startswith(_MAGIC):
    raise ValueError("not a jaxvision executable file")
  parts, at = [], len(_MAGIC)
  for _ in range(3):
    n = int.from_bytes(blob[at:at + 8], "little")
    if n < 0 or at + 8 + n > len(blob):
      raise ValueError("truncated")
    parts.append(blob[at + 8:at + 8 + n])
    at += 8 + n
  tree = lambda b: jax.tree_util.PyTreeDef.deserialize_using_proto(
      jax.tree_util.default_registry, b)
  return parts[0], tree(parts[1]), tree(parts[2])


def _store(path: str, compiled) -> None:
  from jax.experimental import serialize_executable
  from jaxvision.core.io import atomic_write
  try:
    blob = _pack(*serialize_executable.serialize(compiled))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, lambda f: f.write(blob))
  except Exception:  # noqa: BLE001 - the disk copy is an optimisation only
    pass


_LOCK = threading.Lock()

MAX_MEMORY_ENV = "JAXVISION_MAX_MEMORY"  # GB a program may use; 0 / none: no check


def memory_needed(compiled) -> int | None:
  """Bytes a compiled program's buffers take (arguments, outputs, temporaries), from XLA's
  memory analysis; None when the backend does not say."""
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)
  except Exception:  # noqa: BLE001 - no analysis on this backend: nothing to check
    return None


def memory_available(device=None) -> int | None:
  """Bytes a program may use: JAXVISION_MAX_MEMORY (GB) when set, else what the device
  has free (an accelerator's own memory; on the CPU the host's MemAvailable)."""
  from jaxvision.core.errors import ConfigError
  v = os.environ.get(MAX_MEMORY_ENV, "").strip().lower()
  if v:
    if v in ("0", "none", "off"):
      return None
    try:
      gb = float(v)
    except ValueError:
      gb = float("nan")
    if not gb > 0 or gb == float("inf"):
      raise ConfigError(f"{MAX_MEMORY_ENV}={v!r}: must be a positive number of GB "
                        "(0 or none: no check)")
    return int(gb * 1e9)
  import jax
  device = device or jax.devices()[0]
  if device.platform != "cpu":
    try:
      stats = device.memory_stats() or {}
      return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    except Exception:  # noqa: BLE001
      return None
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    return None


def check_memory(compiled, what: str, device=None) -> None:
  """Raises ResourceError when `compiled` needs more memory than `memory_available`."""
  from jaxvision.core.errors import ResourceError
  need, have = memory_needed(compiled), memory_available(device)
  if need is not None and have is not None and need > have:
    raise ResourceError(f"{what}: needs about {need / 1e9:.1f} GB of memory, "
                        f"{have / 1e9:.1f} GB available (a smaller image, or set "
                        f"{MAX_MEMORY_ENV} in GB to change the limit)")


def _lookup(key: str, device=None):
  compiled = _MEMORY.get(key)
  if compiled is None:
    folder = _folder()
    path = os.path.join(folder, key) if folder else None
    if path and os.path.exists(path):
      compiled = _load(path, device)
      if compiled is not None:
        _MEMORY[key] = compiled
  return compiled


_BYPASS = {"depth": 0, "saved": None}
_BYPASS_LOCK = threading.Lock()


class _without_jax_cache:
  """Compiles inside it skip JAX's persistent cache (neither read nor written).

  Why: an executable that JAX's cache handed back (deserialized) serializes without some
  of its functions on XLA:CPU (jax 0.10.2): our file of it then loads, and its run fails
  with "NOT_FOUND: Function wrapped_tanh not found". So the programs this module stores
  are always compiled afresh; JAX's cache would only have been a second copy of them."""

  def __enter__(self):
    cc = self._module()
    with _BYPASS_LOCK:
      if _BYPASS["depth"] == 0 and cc is not None:
        _BYPASS["saved"] = cc.is_cache_used
        cc.is_cache_used = lambda backend: False
      _BYPASS["depth"] += 1

  def __exit__(self, *exc):
    cc = self._module()
    with _BYPASS_LOCK:
      _BYPASS["depth"] -= 1
      if _BYPASS["depth"] == 0 and cc is not None and _BYPASS["saved"] is not None:
        cc.is_cache_used, _BYPASS["saved"] = _BYPASS["saved"], None

  @staticmethod
  def _module():
    """jax's compilation_cache module (jax 0.10.2's private hook), or None in a jax without
    it (then compiles go through JAX's cache as before: the test in tests/core says so)."""
    try:
      from jax._src import compilation_cache as cc
    except ImportError:
      return None
    return cc if callable(getattr(cc, "is_cache_used", None)) else None


def _compiled(key, lowered):
  with _without_jax_cache():
    compiled = lowered.compile()
  folder = _folder()
  if folder:
    _store(os.path.join(folder, key), compiled)
  return compiled


class Executables:
  """The executables of one family's programs; `sources`: the modules (names) whose source
  decides what they compute, hashed into every key (this module's own is always added)."""

  def __init__(self, *sources: str, load_threads: int = 1):
    """load_threads: files loaded at once by `prepare` (XLA:CPU's loading of large
    programs' object code runs in parallel: the codec's nine encoders load 0.6 s faster
    two at a time; MTCNN's small programs load while the photos decode, and one at a
    time is faster there)."""
    self.sources = tuple(sources)
    self.load_threads = max(1, int(load_threads))

  def get(self, jitted, static: tuple, args: tuple):
    """The compiled `jitted(*static, *args)`: from memory, from disk, or compiled (and
    stored). args may be jax.ShapeDtypeStruct; a single-device sharding places it."""
    key = _key(jitted, static, args, self.sources)
    compiled = _MEMORY.get(key)
    if compiled is None:
      with _LOCK:
        compiled = _lookup(key, _device(args))
        if compiled is None:
          compiled = _MEMORY[key] = _compiled(key, jitted.lower(*static, *args))
    return compiled

  def call(self, jitted, static: tuple, *args, what: str | None = None):
    """`jitted(*static, *args)` (static: its static_argnums, first) via a cached executable;
    with `what` (the input it works on), refused first when its memory would not fit."""
    compiled = self.get(jitted, static, args)
    if what is not None:
      check_memory(compiled, what, _device(args))
    return compiled(*args)

  def prepare(self, requests) -> int:
    """Makes the executables of [(jitted, static, args)] ready before they are called (args
    may be jax.ShapeDtypeStruct): loads those on disk and compiles the others, as many at
    a time as there are CPUs (lowering, which traces Python, one at a time). A folder of
    photos in several buckets then compiles in parallel instead of one program after the
    other. Returns how many were compiled. Failures are left to `call`, which raises."""
    from concurrent.futures import ThreadPoolExecutor
    todo, seen = [], set()
    with _LOCK:
      keyed = [(_key(j, st, a, self.sources), j, st, a) for j, st, a in requests]
      if self.load_threads > 1:  # the files on disk first, several at once (see __init__)
        on_disk = {k: _device(a) for k, _, _, a in keyed if k not in _MEMORY}
        with ThreadPoolExecutor(min(self.load_threads, max(1, len(on_disk)))) as pool:
          list(pool.map(lambda kd: _lookup(*kd), on_disk.items()))
      for key, jitted, static, args in keyed:
        if key in seen or _lookup(key, _device(args)) is not None:
          continue
        seen.add(key)
        try:
          todo.append((key, jitted.lower(*static, *args)))
        except Exception:  # noqa: BLE001 - `call` will raise it where it belongs
          pass
      if not todo:
        return 0
      with ThreadPoolExecutor(max(1, min(len(todo), os.cpu_count() or 1))) as pool:
        futures = [(key, pool.submit(_compiled, key, lowered)) for key, lowered in todo]
        for key, f in futures:
          try:
            _MEMORY[key] = f.result()
          except Exception:  # noqa: BLE001
            pass
    return len(todo)
