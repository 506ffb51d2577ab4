"""Model FLOPs of a traced program, and the accelerators' peak FLOP/s, for MFU.

XLA's own cost analysis (`compiled.cost_analysis()["flops"]`) counts the body of a loop
once: a model whose blocks are scanned (jaxvision.core.scan) would report a fraction of its
FLOPs (EDSR with 4 scanned blocks: 51 of 92 MFLOP measured). `jaxpr_flops` walks the jaxpr
instead and multiplies a scan's body by its length.

What is counted is the convention of model-FLOPs utilisation (Chowdhery et al. 2022, PaLM,
appendix B): 2 FLOPs per multiply-add of every matrix product (`dot_general`) and
convolution (`conv_general_dilated`), forward and backward as the traced program has them;
elementwise work, reductions and data movement are not counted. A `while` loop of unknown
trip count is counted once, a `cond` by its most expensive branch. Under `remat` the
recomputed forward pass is in the program and is counted (hardware FLOPs, not model FLOPs).
"""
from __future__ import annotations

import math
from typing import Any

import jax

# Dense peak FLOP/s per device (no sparsity), from the vendors' data sheets:
# (substring of jax's device_kind, bf16/fp16 tensor-core peak, fp32 peak without TF32).
PEAK_FLOPS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989e12, 67e12),
    ("H100 PCIe", 756e12, 51e12),
    ("H100", 989e12, 67e12),          # SXM
    ("GH200", 989e12, 67e12),
    ("B200", 2250e12, 80e12),
    ("A100", 312e12, 19.5e12),
    ("A10G", 125e12, 31.2e12),
    ("L40S", 362e12, 91.6e12),
    ("L4", 121e12, 30.3e12),
    ("V100", 125e12, 15.7e12),
    ("T4", 65e12, 8.1e12),
    ("TPU v6", 918e12, 918e12 / 4),   # Trillium (v6e)
    ("TPU v5p", 459e12, 459e12 / 4),
    ("TPU v5 lite", 197e12, 197e12 / 4),  # v5e
    ("TPU v5e", 197e12, 197e12 / 4),
    ("TPU v4", 275e12, 275e12 / 4),
    ("TPU v3", 123e12, 123e12 / 4),
)


def peak_flops(device=None, dtype: Any = "bfloat16") -> float | None:
  """Peak FLOP/s of one `device` (default: the first) for `dtype` compute, or None when
  the device is not in the table (CPUs: give `config.peak_flops` for an MFU there)."""
  device = device or jax.devices()[0]
  kind = getattr(device, "device_kind", "") or ""
  low = str(jax.numpy.dtype(dtype) if dtype is not None else "float32") in ("bfloat16", "float16")
  for key, half, full in PEAK_FLOPS:
    if key.lower() in kind.lower():
      return half if low else full
  return None


def _sub_jaxprs(value):
  """The jaxprs inside an equation's parameter (a jaxpr, a closed jaxpr, or tuples of them)."""
  if isinstance(value, jax.extend.core.ClosedJaxpr):
    yield value.jaxpr
  elif isinstance(value, jax.extend.core.Jaxpr):
    yield value
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _sub_jaxprs(v)


def _eqn_flops(eqn) -> float:
  name = eqn.primitive.name
  if name == "dot_general":
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    k = math.prod(lhs[d] for d in lhs_contract)
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * k
  if name == "conv_general_dilated":
    # out[n, o, ...] = sum over the rhs window (in-features per group x kernel taps)
    rhs = eqn.invars[1].aval.shape
    spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, spatial...)
    terms = rhs[spec[1]] * math.prod(rhs[d] for d in spec[2:])
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * terms
  subs = [j for v in eqn.params.values() for j in _sub_jaxprs(v)]
  if not subs:
    return 0.0
  if name == "cond":
    return max(jaxpr_flops(j) for j in subs)
  total = sum(jaxpr_flops(j) for j in subs)
  if name == "scan":
    total *= eqn.params["length"]
  return total


def jaxpr_flops(jaxpr) -> float:
  """Matrix-product and convolution FLOPs of a (closed) jaxpr, scans multiplied out.

  Equations whose results nothing uses are left out, as XLA removes them (a custom-VJP
  layer's primal call sits beside its forward pass in a gradient's jaxpr)."""
  if isinstance(jaxpr, jax.extend.core.ClosedJaxpr):
    jaxpr = jaxpr.jaxpr
  live = {v for v in jaxpr.outvars if isinstance(v, jax.extend.core.Var)}
  total = 0.0
  for eqn in reversed(jaxpr.eqns):
    if not (eqn.effects or any(v in live for v in eqn.outvars)):
      continue
    live.update(v for v in eqn.invars if isinstance(v, jax.extend.core.Var))
    total += _eqn_flops(eqn)
  return float(total)


def count_flops(fn, *args, **kwargs) -> float:
  """FLOPs of one call `fn(*args, **kwargs)` (traced, not run)."""
  return jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs))
