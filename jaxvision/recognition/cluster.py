"""Chinese whispers (Biemann 2006) over face embeddings, as dlib's chinese_whispers_clustering.

dlib (tools/python/src/face_recognition.cpp, dlib/clustering/chinese_whispers.h) joins every
pair of faces, each face with itself included, whose descriptor distance is below the
threshold (0.6 for its ResNet) by an edge of weight 1. Every node starts in a cluster of its
own; then, 100 times the number of nodes, a random node takes the label with the largest
summed edge weight among its neighbours (ties: the smallest label, as dlib's std::map
order). Labels are renumbered 0, 1, ... in the order of first appearance. The random
sequence is numpy's (seeded), not dlib's, so on ambiguous graphs the partition may differ
from dlib's; on graphs whose components are cliques (well-separated identities) both give
exactly the components.
"""
from __future__ import annotations

import numpy as np


def distance_matrix(embeddings: np.ndarray) -> np.ndarray:
  e = np.asarray(embeddings, np.float64)
  sq = (e ** 2).sum(1)
  return np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * e @ e.T, 0.0))


def chinese_whispers(embeddings: np.ndarray, threshold: float, iterations: int = 100,
                     seed: int = 0) -> np.ndarray:
  """Cluster labels (n,) of `embeddings` (n, D): edges where the L2 distance < threshold."""
  n = len(embeddings)
  if n == 0:
    return np.zeros(0, np.int64)
  adj = distance_matrix(embeddings) < threshold
  np.fill_diagonal(adj, True)
  neighbours = [np.flatnonzero(adj[i]) for i in range(n)]
  labels = np.arange(n)
  rng = np.random.default_rng(seed)
  for idx in rng.integers(0, n, n * iterations):
    counts = np.bincount(labels[neighbours[idx]], minlength=0)
    labels[idx] = int(np.argmax(counts))  # argmax: the smallest label among the ties
  _, first = np.unique(labels, return_index=True)
  order = {lab: k for k, lab in enumerate(labels[np.sort(first)])}
  return np.array([order[l] for l in labels], np.int64)
