"""Metric-learning losses over a batch of embeddings with identity labels (pure jnp).

  pairwise_distances(e, squared)      (n, n) L2 distances (squared: FaceNet's convention)
  semihard_negatives(d, labels)       per (anchor, positive) the negative FaceNet trains on
  triplet_semihard(e, labels, margin) FaceNet's triplet loss with online semi-hard negatives
  batch_hard(e, labels, margin)       Hermans et al. 2017: hardest positive and negative
  softmax_center(logits, e, labels, centres, weight)   Wen et al. 2016 (as davidsandberg)
  ohem(losses, fraction, valid)       the mean of the hardest `fraction` of the losses
  collapse_reason(e, ...)             host-side: why a batch of embeddings has collapsed

Semi-hard negatives (Schroff et al. 2015, sec. 3.2), as tf-addons' triplet_semihard_loss:
for each anchor-positive pair (a, p) of one identity, the negative n of smallest d(a, n)
among those with d(a, n) > d(a, p). Such an n gives a non-zero loss exactly when it also
has d(a, n) < d(a, p) + margin: "negatives farther than the positive but inside the
margin", which is what keeps FaceNet from collapsing onto the hardest (often mislabelled)
negatives early on. When an anchor has no negative farther than its positive, the farthest
of its negatives is used (the least hard of the hard ones). The loss is the mean over all
(a, p) pairs of max(d(a, p) - d(a, n) + margin, 0); FaceNet uses squared distances of
L2-normalised embeddings and margin 0.2.

Batch-hard (Hermans, Beyer, Leibe 2017): per anchor the farthest positive and the nearest
negative, max(margin + d_ap - d_an, 0) (or the soft margin log(1 + exp(d_ap - d_an))), on
plain (not squared) distances, averaged over the anchors that have a positive.

Every function takes fixed-size arrays and masks (jit-friendly); labels are int32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

BIG = 1e9


def l2_normalize(e, eps: float = 1e-10):
  return e * jax.lax.rsqrt(jnp.maximum(jnp.sum(e * e, -1, keepdims=True), eps))


def pairwise_distances(e, squared: bool = False):
  """(n, n) distances; the diagonal is exactly 0; the sqrt has a finite gradient at 0."""
  sq = jnp.sum(e * e, -1)
  d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * e @ e.T, 0.0)
  d2 = d2 * (1.0 - jnp.eye(e.shape[0], dtype=e.dtype))
  if squared:
    return d2
  zero = d2 == 0.0
  return jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, d2)))


def _masks(labels):
  same = labels[:, None] == labels[None, :]
  eye = jnp.eye(labels.shape[0], dtype=bool)
  return same & ~eye, ~same  # positives (not self), negatives


def semihard_negatives(d, labels):
  """(neg index (n, n), pair mask (n, n)): for anchor a and positive p (pair mask true), the
  index of the negative that `triplet_semihard` uses (see the module docstring)."""
  pos, neg = _masks(labels)
  d_ap = d[:, :, None]                       # (a, p, 1)
  d_an = d[:, None, :]                       # (a, 1, n)
  outside = neg[:, None, :] & (d_an > d_ap)  # semi-hard candidates for (a, p)
  has_out = outside.any(-1)
  nearest_out = jnp.argmin(jnp.where(outside, d_an, BIG), -1)
  farthest = jnp.argmax(jnp.where(neg, d, -BIG), -1)  # (a,)
  idx = jnp.where(has_out, nearest_out, farthest[:, None])
  return idx, pos & neg.any(-1)[:, None]


def triplet_semihard(e, labels, margin: float = 0.2, squared: bool = True, valid=None):
  """(loss, per-pair losses (n, n), pair mask (n, n)): FaceNet's triplet loss, online
  semi-hard negatives within the batch. `valid` (n,) masks padded rows out."""
  d = pairwise_distances(e, squared)
  lab = labels if valid is None else jnp.where(valid, labels, -1 - jnp.arange(labels.shape[0]))
  idx, pairs = semihard_negatives(d, lab)
  if valid is not None:
    pairs = pairs & valid[:, None] & valid[None, :]
  d_an = jnp.take_along_axis(d, idx.reshape(d.shape[0], -1), 1).reshape(d.shape)
  per = jnp.maximum(d - d_an + margin, 0.0)
  per = jnp.where(pairs, per, 0.0)
  loss = jnp.sum(per) / jnp.maximum(jnp.sum(pairs), 1)
  return loss, per, pairs


def batch_hard(e, labels, margin: float = 0.2, soft: bool = False, squared: bool = False):
  """(loss, per-anchor losses (n,), anchor mask (n,)): Hermans et al.'s batch-hard loss."""
  d = pairwise_distances(e, squared)
  pos, neg = _masks(labels)
  hardest_pos = jnp.max(jnp.where(pos, d, -BIG), 1)
  hardest_neg = jnp.min(jnp.where(neg, d, BIG), 1)
  ok = pos.any(1) & neg.any(1)
  gap = hardest_pos - hardest_neg
  per = jax.nn.softplus(gap) if soft else jnp.maximum(gap + margin, 0.0)
  per = jnp.where(ok, per, 0.0)
  return jnp.sum(per) / jnp.maximum(jnp.sum(ok), 1), per, ok


def ohem(per, fraction: float, valid=None):
  """Mean of the ceil(fraction * n) largest of the n valid losses `per` (any shape)."""
  per = per.reshape(-1)
  valid = jnp.ones(per.shape, bool) if valid is None else valid.reshape(-1)
  n = jnp.sum(valid)
  k = jnp.maximum(jnp.ceil(n * fraction - 1e-4).astype(jnp.int32), jnp.minimum(n, 1))
  order = jnp.argsort(-jnp.where(valid, per, -jnp.inf), stable=True)
  rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0]))
  keep = valid & (rank < k)
  return jnp.sum(jnp.where(keep, per, 0.0)) / jnp.maximum(jnp.sum(keep), 1)


def softmax_center(logits, e, labels, centres, center_weight: float = 0.01):
  """(loss, cross-entropy (n,), centre term): softmax cross-entropy plus Wen et al.'s centre
  loss 0.5 * ||e - c_y||^2. davidsandberg/facenet moves the centres by a running average
  (alpha 0.95) outside the gradient; here they are parameters and get the gradient of the
  same term, (c_y - e), which moves each centre towards its class mean the same way."""
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1)[:, 0]
  centre = 0.5 * jnp.mean(jnp.sum((e - centres[labels]) ** 2, -1))
  return jnp.mean(ce) + center_weight * centre, ce, centre


def collapse_reason(embeddings: np.ndarray, rel_spread: float = 1e-3) -> str | None:
  """Why a batch of embeddings (n, D) has collapsed, or None: every embedding (nearly) the
  same point — spread across the batch below `rel_spread` of their norm — or not finite.
  With collapsed embeddings every triplet's loss sits at the margin and no gradient can
  separate identities again, so training should stop and say so."""
  e = np.asarray(embeddings, np.float64)
  if not np.isfinite(e).all():
    return "embeddings are not finite"
  if len(e) < 2:
    return None
  spread = float(np.sqrt(((e - e.mean(0)) ** 2).sum(1).mean()))
  scale = float(np.sqrt((e ** 2).sum(1).mean())) + 1e-12
  if spread < rel_spread * scale:
    return (f"embeddings collapsed to one point (spread {spread:.2e} vs norm {scale:.2e}): "
            "the triplet loss sits at the margin; lower the learning rate, use semi-hard "
            "mining (loss=semihard) or more identities per batch")
  return None
