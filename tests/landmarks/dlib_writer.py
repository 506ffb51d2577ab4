"""A tiny writer of dlib's serialisation (dlib/serialize.h), for tests only: integers as a
control byte (length in the low 4 bits, 0x80 for negative) and the magnitude's
little-endian bytes without leading zeros; floats as dlib's float_details (frexp
mantissa with 24 (float) or 53 (double) bits, low zero bytes shifted off, int16
exponent); matrices as -rows, -cols and the elements; shape predictors in dlib's order.
"""
from __future__ import annotations

import math

import numpy as np


def int_(v: int) -> bytes:
  v = int(v)
  mag = -v if v < 0 else v
  body = mag.to_bytes((mag.bit_length() + 7) // 8, "little") if mag else b""
  return bytes([len(body) | (0x80 if v < 0 else 0)]) + body


def float_(x: float, digits: int = 24) -> bytes:
  x = float(np.float32(x)) if digits == 24 else float(x)
  if math.isinf(x):
    return int_(0) + int_(32000 if x > 0 else 32001)
  if math.isnan(x):
    return int_(0) + int_(32002)
  m, e = math.frexp(x)
  mant = int(m * (1 << digits))
  exp = e - digits
  for _ in range(8):
    if mant & 0xFF:
      break
    mant >>= 8
    exp += 8
  return int_(mant) + int_(exp)


def matrix(a) -> bytes:
  a = np.asarray(a, np.float64)
  a = a.reshape(a.shape[0], -1)
  return int_(-a.shape[0]) + int_(-a.shape[1]) + b"".join(float_(x) for x in a.reshape(-1))


def shape_predictor(initial, idx, thresh, leaves, anchor, deltas) -> bytes:
  """initial (P, 2); idx (C, T, S, 2); thresh (C, T, S); leaves (C, T, S+1, P, 2);
  anchor (C, F); deltas (C, F, 2) -> the bytes dlib's serialize(shape_predictor) writes."""
  out = [int_(1), matrix(np.asarray(initial).reshape(-1, 1))]
  c, t, s, _ = np.shape(idx)
  out.append(int_(c))
  for i in range(c):
    out.append(int_(t))
    for j in range(t):
      out.append(int_(s))
      for k in range(s):
        out += [int_(idx[i][j][k][0]), int_(idx[i][j][k][1]), float_(thresh[i][j][k])]
      out.append(int_(len(leaves[i][j])))
      for leaf in leaves[i][j]:
        out.append(matrix(np.asarray(leaf).reshape(-1, 1)))
  out.append(int_(c))
  for i in range(c):
    out.append(int_(len(anchor[i])) + b"".join(int_(a) for a in anchor[i]))
  out.append(int_(c))
  for i in range(c):
    out.append(int_(len(deltas[i])))
    for dx, dy in deltas[i]:
      out += [float_(dx), float_(dy)]
  return b"".join(out)
