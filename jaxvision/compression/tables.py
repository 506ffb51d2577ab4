"""Integer CDF tables of a codec: built from its parameters, fingerprinted, saved.

`update` builds them from the parameters (float64 host arithmetic, deterministic:
calling it twice, or on another machine, gives the same integers); `checkpoint_tables`
saves them beside a checkpoint step (workdir/cdf_tables/<step>.npz) and reuses them,
and a .jvc file stores their CRC32 (`tables_crc`), so a file decodes with exactly the
tables that encoded it or fails with a clear message.

Tables file (`save_tables` / `load_tables`): an uncompressed .npz of int32 arrays
"<latent>/cdfs", "<latent>/cdf_lengths", "<latent>/offsets" per latent ("y", and "z"
for hyperpriors) plus "params_crc" (int64, `params_crc` of the parameters they were
built from). Old workdirs hold such files: the layout must not change.
"""
from __future__ import annotations

import io
import os
import zlib

import jax
import numpy as np

from jaxvision.compression.layers import (
    ACT_FRAC, LEAKY_NUM, WEIGHT_FRAC, CdfTables, EntropyBottleneck, GaussianConditional)
from jaxvision.compression.models import is_hyperprior
from jaxvision.core.errors import FileFormatError
from jaxvision.core.io import atomic_write


def update(model, variables, precision: int = 16) -> dict[str, CdfTables]:
  """Integer CDF tables per latent ("y", and "z" for hyperpriors). Deterministic, so
  calling it twice gives identical tables."""
  eb = EntropyBottleneck(model.M if not is_hyperprior(model) else model.N)
  eb_tables = eb.update(variables["params"]["entropy_bottleneck"], precision)
  if not is_hyperprior(model):
    return {"y": eb_tables}
  return {"z": eb_tables, "y": GaussianConditional().update(precision)}


# What the coder's CDF choice depends on besides the tables (hyperpriors): the
# fixed-point format of h_s / the context step. Part of the tables fingerprint, so a
# file coded with another index arithmetic (e.g. the float indexes of jaxvision before
# the integer networks) is refused instead of decoding garbage.
FIXED_POINT_FORMAT = (f"fx1:act={ACT_FRAC},weight={WEIGHT_FRAC},leaky={LEAKY_NUM}/65536,"
                      "round=half-up,midpoint=ceil")


def tables_crc(tables: dict[str, CdfTables]) -> int:
  """CRC32 of the tables' int32 contents (little-endian, latents in sorted order),
  preceded for hyperpriors (a "z" table) by FIXED_POINT_FORMAT in ASCII: stored in
  each .jvc file so a decoder can tell that it holds the same tables and index
  arithmetic."""
  crc = zlib.crc32(FIXED_POINT_FORMAT.encode()) if "z" in tables else 0
  for k in sorted(tables):
    crc = zlib.crc32(k.encode(), crc)
    for a in tables[k]:
      a = np.ascontiguousarray(a, "<i4")
      crc = zlib.crc32(np.asarray(a.shape, "<i8").tobytes(), crc)
      crc = zlib.crc32(a.tobytes(), crc)
  return crc


def params_crc(variables) -> int:
  """CRC32 of the float32 parameters (sorted paths): ties saved tables to their params."""
  crc = 0
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(variables["params"])[0],
                           key=lambda kv: jax.tree_util.keystr(kv[0])):
    crc = zlib.crc32(jax.tree_util.keystr(path).encode(), crc)
    crc = zlib.crc32(np.ascontiguousarray(np.asarray(leaf), "<f4").tobytes(), crc)
  return crc


TABLES_DIR = "cdf_tables"


def save_tables(path: str, tables: dict[str, CdfTables], params_fingerprint: int) -> None:
  """Writes the tables as an .npz of int32 arrays (keys "<latent>/<field>"), atomically
  (the parent folder is created)."""
  arrays = {f"{k}/{f}": np.asarray(v, np.int32)
            for k, t in tables.items() for f, v in zip(CdfTables._fields, t)}
  arrays["params_crc"] = np.asarray(params_fingerprint, np.int64)
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  atomic_write(path, lambda f: f.write(buf.getvalue()))


def load_tables(path: str) -> tuple[dict[str, CdfTables], int]:
  """(tables, params CRC) saved by `save_tables`; FileFormatError (a ValueError) for a
  damaged file."""
  try:
    with np.load(path, allow_pickle=False) as z:
      latents = sorted({k.split("/")[0] for k in z.files if "/" in k})
      tables = {k: CdfTables(*(np.asarray(z[f"{k}/{f}"], np.int32) for f in CdfTables._fields))
                for k in latents}
      fp = int(z["params_crc"])
  except (OSError, KeyError, ValueError, zlib.error, EOFError) as e:
    raise FileFormatError(f"{path}: unreadable CDF tables ({e})") from None
  for k, t in tables.items():  # the coder validates the rows; shapes here
    if t.cdfs.ndim != 2 or t.cdf_lengths.shape != (len(t.cdfs),) or t.offsets.shape != (
        len(t.cdfs),):
      raise FileFormatError(f"{path}: CDF tables of {k!r} have inconsistent shapes")
  return tables, fp


def checkpoint_tables(workdir: str, step: int, model, variables) -> dict[str, CdfTables]:
  """The CDF tables of checkpoint `step` of `workdir`, built once and saved as
  workdir/cdf_tables/<step>.npz; later calls (compress, decompress, other machines
  with a copy of the workdir) read that file, so every file coded with this step
  uses the very same integers. A saved file whose parameter CRC does not match the
  checkpoint (a workdir trained afresh) is rebuilt."""
  path = os.path.join(workdir, TABLES_DIR, f"{int(step)}.npz")
  want = params_crc(variables)
  if os.path.exists(path):
    tables, fp = load_tables(path)
    expected = {"y", "z"} if is_hyperprior(model) else {"y"}
    if fp == want and set(tables) == expected:
      return tables
  tables = update(model, variables)
  try:
    save_tables(path, tables, want)
  except OSError:  # a read-only workdir: `update` is deterministic, so rebuilding the
    pass           # tables next time gives the same integers
  return tables

