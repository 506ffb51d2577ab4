"""Repeated identical blocks, compiled once: `jax.lax.scan` over the blocks' parameters.

A stack of identical blocks (EDSR's residual blocks, RCAN's groups and channel-attention
blocks, a ResNet stage after its first block, Johnson's residual blocks) written as a Python
loop is traced and compiled once per block: the compile time grows with depth (RCAN's 200
blocks did not finish compiling its train step in 8 minutes on XLA:CPU). Scanned, the block
is traced once and XLA compiles one loop body, whatever the depth.

The parameters keep the per-block layout that the loop gave them, one subtree per block
under the block's own name (`body_0`, `body_1`, ...): `repeat` stacks them along a new
leading axis inside the forward pass and scans over the stack, and autodiff unstacks the
gradients. So checkpoints written before blocks were scanned, and weights converted from
the per-block PyTorch layouts (EDSR-PyTorch, timm), load into a scanned model unchanged,
and a model can switch between `scan=True` and `scan=False` with the same variables. The
stacking is a copy of the blocks' parameters per step (small next to the activations).

Collections other than `params` (batch norm's `batch_stats`) are carried the same way:
stacked for the scan, and written back per block when the collection is mutable (training).

    class EDSR(nn.Module):
      scan: bool = True
      remat: bool = False
      @nn.compact
      def __call__(self, x):
        ...
        res = scan.repeat(self, ResBlock, dict(features=64), [f"body_{i}" for i in range(16)],
                          res, scan=self.scan, remat=self.remat)

`remat=True` recomputes each block's activations in the backward pass (`jax.checkpoint`)
instead of storing them: less memory for deep models at about a third more compute.

A block must be deterministic (no dropout rng) and map x to an x of the same shape and
dtype; its call may take extra arguments that are the same for every block.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Names = Sequence[str | Mapping[str, str]]


def _mapping(name) -> dict[str, str] | None:
  """None when the block's whole variable tree sits under one parent name; else
  {block's top-level key: parent's name} for blocks whose layers sit flat in the parent
  (WDSR's `body_{i}_0`, `body_{i}_2`)."""
  return None if isinstance(name, str) else dict(name)


def _gather(tree: Mapping, name) -> Any:
  m = _mapping(name)
  if m is None:
    return tree[name]
  return {k: tree[v] for k, v in m.items()}


def _present(tree: Mapping, name) -> bool:
  m = _mapping(name)
  return (name in tree) if m is None else all(v in tree for v in m.values())


def _stack(trees):
  return jax.tree.map(lambda *a: jnp.stack(a), *trees)


def _index(tree, i: int):
  return jax.tree.map(lambda a: a[i], tree)


def repeat(parent: nn.Module, cls, kwargs: Mapping[str, Any], names: Names, x, *args,
           scan: bool = True, remat: bool = False, **call_kwargs):
  """Applies `len(names)` blocks `cls(**kwargs)` in sequence to x, the i-th with the
  variables under `names[i]` in `parent` (a string, or a {block key: parent name} map).

  Call it from `parent`'s compact `__call__`. `scan=False` is the plain loop of submodules
  (what the models did before), kept as the reference that the scanned form is tested
  against: same variables, same outputs."""
  names = list(names)
  if not names:
    return x
  if not scan:
    for name in names:
      m = _mapping(name)
      if m is not None:
        raise ValueError("scan=False needs one name per block (a flat layout scans only)")
      x = cls(**kwargs, name=name)(x, *args, **call_kwargs)
    return x

  block = cls(**kwargs, parent=None)

  if parent.is_initializing():
    # Every block's variables in one traced init (vmap over the keys), so that initializing
    # a deep model does not trace its blocks one by one either.
    keys = jax.random.split(parent.make_rng("params"), len(names))
    stacked = jax.lax.map(lambda k: block.init(k, x, *args, **call_kwargs), keys)
    for col, tree in stacked.items():
      for i, name in enumerate(names):
        mine = _index(tree, i)
        m = _mapping(name) or {None: name}
        for key, target in m.items():
          value = mine if key is None else mine[key]
          if col == "params":
            parent.param(target, lambda _, v=value: v)
          else:
            parent.variable(col, target, lambda v=value: v)

  variables = {col: [_gather(tree, n) for n in names]
               for col, tree in parent.variables.items() if _present(tree, names[0])}
  if "params" not in variables:
    raise ValueError(f"{type(parent).__name__}: no parameters under {names[0]!r} to scan over")
  mutable = [c for c in variables if c != "params" and parent.is_mutable_collection(c)]

  def body(h, v):
    if mutable:
      y, new = block.apply(v, h, *args, mutable=mutable, **call_kwargs)
      return y.astype(h.dtype), new
    return block.apply(v, h, *args, **call_kwargs).astype(h.dtype), None

  if remat:
    body = jax.checkpoint(body)
  x, new = jax.lax.scan(body, x, {c: _stack(v) for c, v in variables.items()})
  for col in mutable:
    for i, name in enumerate(names):
      mine = _index(new[col], i)
      m = _mapping(name) or {None: name}
      for key, target in m.items():
        parent.put_variable(col, target, mine if key is None else mine[key])
  return x
