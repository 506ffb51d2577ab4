"""Face detection with cascades (MTCNN, Cascade CNN).

    >>> from jaxvision.faces import detector
    >>> det = detector.mtcnn_detector()           # the original weights, from `mtcnn`
    >>> det.detect(batch_uint8)                   # (B, H, W, 3) or a list of any sizes
    [[{"box": [x1, y1, x2, y2], "score": 0.99, "landmarks": [[x, y] * 5]}], ...]
    >>> for faces in det.detect_each(photos): ...  # one list per photo, in order

MTCNN: the three nets run compiled on fixed batches (four programs, whatever the image
sizes); the pyramid, the windows, every NMS and the box arithmetic run on the host in
numpy, with every candidate kept (section "MTCNN: nets on the device, geometry on the
host" below). Cascade CNN: the whole cascade (pyramid, 12-net, calibrations, NMS, 24-net,
48-net) is one jitted function of a batch of same-size images, compiled once per (batch,
height, width), with candidates in fixed-size buffers (`DetectorConfig`).

Numerics follow facenet-pytorch's `detect_face` (davidsandberg's port of the MATLAB
original) so the original weights give its detections: 'area' resampling (adaptive
average pooling) for the pyramid and the crops, computed exactly from an integer
integral image; P-Net windows floor((2*i + 1) / scale) .. floor((2*i + 12) / scale);
regression and squaring as there; crops of the box clipped to the image (1-based
MATLAB convention); IoU NMS without '+1' in stages 1-2 and 'Min' NMS with '+1' after
O-Net; landmarks relative to the O-Net input box. Boxes are returned in those same
pixel coordinates. That geometry is `jaxvision.faces.boxes`, which sample mining uses too.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import os
import queue
import threading
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.core.errors import CheckpointError, DataError
from jaxvision.core.executables import Executables
from jaxvision.faces.boxes import (apply_calibration, area_crops, bbreg, cell_windows,
                                   crop_regions, integral_image, nms, out_cells, overlap,
                                   pack_levels, pyramid_scales, rerec)
from jaxvision.faces.convert import load_mtcnn_weights
from jaxvision.faces import programs
from jaxvision.faces.programs import Released, normalize
# flax (faces.models) and orbax (core.checkpoint) are imported only where a trained or
# converted workdir's modules are used: the released weights run without them.

NEG = -1e9  # score of an empty buffer slot


# ---------------------------------------------------------------- configuration
@dataclasses.dataclass(frozen=True)
class DetectorConfig:
  """Detection settings (paper defaults) and the fixed buffer sizes.

  nms: (within a scale, across scales, after stage 2, after stage 3). For MTCNN the last
  uses the 'Min' overlap (intersection over the smaller box); Cascade CNN uses IoU.
  """
  kind: str = "mtcnn"                       # "mtcnn" | "cascade-cnn"
  # The buffers below are Cascade CNN's; MTCNN keeps every candidate (no buffer) and uses
  # stage3 only as the least width of raw()'s arrays.
  min_face: float = 20.0
  factor: float = 0.709
  thresholds: tuple = (0.6, 0.7, 0.7)
  nms: tuple = (0.5, 0.7, 0.7, 0.7)
  calibration_threshold: float = 0.1        # Cascade CNN: patterns averaged above this
  # facenet-pytorch keeps every candidate: a busy 1280x720 photo has ~2300 P-Net candidates
  # (986 at the first level), ~1300 after the per-level NMS, and R-Net sees all of them.
  # Buffers below that drop candidates whose R-Net/O-Net boxes would have won (a 182 px face
  # at IoU 0.86, a 27 px one lost, with proposals 512 and stage2 256).
  per_scale: int = 256                      # stage-1 candidates kept per scale (before NMS)
  proposals: int = 2048                     # stage-1 candidates across scales (before NMS)
  stage2: int = 2048                        # crops given to R-Net / 24-net
  stage3: int = 64                          # crops given to O-Net / 48-net (= max faces)


# ---------------------------------------------------------------- buffers
def _top(scores, valid, k: int):
  """Indices of the k best valid entries (descending), and their validity."""
  n = scores.shape[0]
  s = jnp.where(valid, scores, NEG)
  if n < k:
    s = jnp.pad(s, (0, k - n), constant_values=NEG)
  v, idx = jax.lax.top_k(s, k)
  return jnp.minimum(idx, max(n - 1, 0)), v > NEG / 2


def _prob(logits):
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., 1]


def _stage1(apply, sat, h, w, cfg: DetectorConfig, window: int = 12):
  """Cascade CNN's 12-net over the pyramid -> candidate windows (P, 4), scores, pyramid
  level of each, valid: the `per_scale` best cells of each level above the threshold, then
  the `proposals` best across levels. No NMS here: the paper calibrates first (12-cal).

  All levels are area-resampled into one canvas and the net runs once on it (one
  compiled convolution instead of one per scale); `pool_mask` keeps each level's max
  pooling exactly as if it ran alone. apply(x, pool_mask) -> (prob map, box map or None).
  """
  levels = pyramid_scales(h, w, cfg.min_face, cfg.factor)
  if not levels:
    return None
  offsets, (hc, wc) = pack_levels([(hs, ws) for _, hs, ws in levels])
  canvas = jnp.zeros((hc, wc, 3), jnp.float32)
  rows = jnp.arange(hc - 2)
  cols = jnp.arange(wc - 2)
  mask = jnp.zeros((hc - 2, wc - 2), bool)
  for (_, hs, ws), (oy, ox) in zip(levels, offsets):
    x = area_crops(sat, jnp.array([[0, h, 0, w]], jnp.int32), (hs, ws))[0]
    canvas = jax.lax.dynamic_update_slice(canvas, normalize(x), (oy, ox, 0))
    mask = mask | (((rows >= oy) & (rows < oy + hs - 2))[:, None]
                   & ((cols >= ox) & (cols < ox + ws - 2))[None, :])
  prob = apply(canvas[None], mask[None])
  kind = cfg.kind
  n_max = max(out_cells(hs, kind) * out_cells(ws, kind) for _, hs, ws in levels)
  k1 = min(cfg.per_scale, n_max)
  per_level = []
  for (scale, hs, ws), (oy, ox) in zip(levels, offsets):
    hh, ww = out_cells(hs, kind), out_cells(ws, kind)
    p = jax.lax.dynamic_slice(prob, (oy // 2, ox // 2), (hh, ww)).reshape(-1)
    idx, ok = _top(p, p >= cfg.thresholds[0], k1)
    boxes = cell_windows(idx, ww, scale, window, rows=hh)
    per_level.append((boxes, p[idx], jnp.full((k1,), len(per_level), jnp.int32), ok))
  boxes, sc, lev, ok = (jnp.concatenate(t) for t in zip(*per_level))
  idx, ok = _top(sc, ok, min(cfg.proposals, sc.shape[0]))
  return boxes[idx], sc[idx], lev[idx], ok


def _compact(k, scores, valid, *arrays):
  idx, ok = _top(scores, valid, k)
  return (ok, scores[idx]) + tuple(a[idx] for a in arrays)



# ---------------------------------------------------------------- MTCNN: nets on the device, geometry on the host
# What runs where, and what each compiled program's shape depends on:
#   host    each image's pyramid, area-resampled from its integral image (numpy, the same
#           float32 operations as facenet-pytorch's 'area' interpolation), its levels cut
#           into pieces of at most a tile and packed into fixed PNET_TILE x PNET_TILE
#           tiles (`_tile_plan`); the first stage's
#           windows, every NMS, box regression and squaring, and the crops of stages 2-3
#           (numpy: the greedy NMS and the box arithmetic in float32 as the reference does
#           them, with no candidate buffer: every candidate is kept, as the reference keeps
#           them, so no face is dropped for lack of room)
#   device  only the three nets, each on a fixed batch: P-Net on TILE_BATCHES tiles,
#           R-Net / O-Net on CROP_BATCHES crops. Four programs, whatever the image sizes
#           and the number of candidates; compiled once (in parallel, at the first
#           detection) and kept by the persistent compilation cache (jaxvision.core.compile).
# Images go through in parallel threads (XLA:CPU runs each convolution on one core; two
# images at once use two), each image alone: no image waits for another's candidates.
PNET_TILE = 256                  # tile side, pixels
PNET_STRIDE = PNET_TILE - 10     # a level's pieces overlap by P-Net's 12-pixel window less its stride 2
# Calls' batch sizes, measured per item on a 2-core Xeon (XLA:CPU): one 256x256 tile is
# 140 ns per canvas pixel, four at once 250 (a tile's activations stay in cache); R-Net is
# 110-130 us per crop from 16 to 128 crops, O-Net 0.62-0.70 ms at 4 and 8, 0.76-0.82 at
# 16 and 32 (session 10): O-Net on 4 a call, so that a photo's few O-Net crops (8 is
# typical) spread over both devices, and one program fewer per device to load.
TILE_BATCHES = (1,)              # tiles per P-Net call
CROP_BATCHES = {"rnet": (64, 16), "onet": (4,)}  # crops per call: as many of the larger
                                                    # as fill, then the smaller, last padded
CROP_SIZES = {"rnet": 24, "onet": 48}


def _devices() -> list:
  """The devices MTCNN spreads images over: every local CPU device when the default backend
  is the CPU (one per core under `jaxvision`, see core.compile.use_cpu_cores), else the
  first accelerator (one device keeps a GPU busy)."""
  if jax.default_backend() == "cpu":
    return jax.local_devices(backend="cpu")
  return jax.local_devices()[:1]


def _threads() -> int:
  """Images detected at once: one per core (XLA:CPU runs a convolution on one), at most 8."""
  return max(1, min(8, os.cpu_count() or 1))


def _even(n: int) -> int:
  return n + (n & 1)


def _chunks(n: int, sizes) -> list[tuple[int, int, int]]:
  """(start, count, program batch) covering n items: the largest batch while it fills, then
  the smallest, the last call padded."""
  out, at = [], 0
  for b in sizes[:-1]:
    while n - at >= b:
      out.append((at, b, b))
      at += b
  b = sizes[-1]
  while at < n:
    out.append((at, min(b, n - at), b))
    at += b
  return out


NMS_MATRIX_MAX = 2048  # candidates up to which NMS builds the whole overlap matrix at once


def nms_numpy(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union",
              plus_one: bool = False) -> np.ndarray:
  """Greedy NMS on the host -> indices kept, best first (ties: lower index first).

  The same rule as `boxes.nms` (and torchvision's / facenet-pytorch's): take the best box
  left, drop every remaining box whose overlap with it exceeds `threshold`; overlaps in
  float32 by `boxes.overlap`.

  Up to NMS_MATRIX_MAX candidates, every pairwise overlap is computed in one vectorised
  call and the greedy pass walks Python integers holding each row's "drops" as bits: the
  same float32 numbers elementwise as one `overlap(best, rest)` per kept box (the textbook
  loop, kept beyond that size, where the matrix would not fit in cache), so the same boxes
  are kept, 5-10x faster on the few hundred candidates of a P-Net level."""
  order = np.argsort(-scores, kind="stable")
  n = order.size
  if n <= 1:
    return order.astype(np.int64)
  if n > NMS_MATRIX_MAX:
    keep = []
    while order.size:
      i = order[0]
      keep.append(i)
      rest = order[1:]
      if not rest.size:
        break
      order = rest[overlap(boxes[i], boxes[rest], mode, plus_one) <= threshold]
    return np.asarray(keep, np.int64)
  b = boxes[order]
  drops = np.packbits(overlap(b[:, None], b[None], mode, plus_one) > threshold, axis=1,
                      bitorder="little")
  gone, keep = 0, []
  for i in range(n):
    if not (gone >> i) & 1:
      keep.append(i)
      gone |= int.from_bytes(drops[i].tobytes(), "little")
  return order[np.asarray(keep, np.int64)]


@dataclasses.dataclass
class _Pyramid:
  """One image's first-stage input: its integral image, the P-Net tiles that hold its
  pyramid levels and where each piece of each level lies in them."""
  h: int
  w: int
  sat: np.ndarray                           # (h+1, w+1, 3) integral image
  tiles: np.ndarray | None = None           # (T, PNET_TILE, PNET_TILE, 3) float32, normalised
  masks: np.ndarray | None = None           # (T, PNET_TILE-2, PNET_TILE-2) bool: conv1 cells
  levels: list = dataclasses.field(default_factory=list)  # [(scale, hs, ws)]
  pieces: list = dataclasses.field(default_factory=list)  # [_Piece]
  pending: Any = None  # the future of levels still being resampled on another thread
  ready: list | None = None  # then, per tile, an Event set once all its pieces are in

  def wait_tiles(self, at: int, count: int):
    """(tiles, masks) [at, at + count), once their pieces are resampled (P-Net's first
    tiles start while the other thread still resamples the smaller levels)."""
    if self.ready is not None:
      for k in range(at, at + count):
        while not self.ready[k].wait(0.05):
          if self.pending.done():
            break
        if self.pending.done() and self.pending.exception() is not None:
          raise self.pending.exception()
    return self.tiles[at:at + count], self.masks[at:at + count]

  def finish(self) -> None:
    """Waits for the resampling thread (and raises what it raised)."""
    if self.pending is not None:
      self.pending.result()


class _Piece(NamedTuple):
  """Rows [y, y + h) and columns [x, x + w) of pyramid level `level`, placed at (ty, tx) of
  tile `tile` (all offsets even: P-Net's stride is 2, so the piece keeps its level's grid
  of output cells)."""
  level: int
  y: int
  x: int
  h: int
  w: int
  tile: int
  ty: int
  tx: int


def _cuts(n: int) -> list[tuple[int, int]]:
  """[(start, length)] cutting n level pixels into pieces of at most PNET_TILE, starting
  PNET_STRIDE apart: consecutive pieces overlap by P-Net's 12-pixel window less its
  stride, so that every output cell of the level is computed by exactly one piece (the
  PNET_STRIDE / 2 first cells of each, all the cells of the last)."""
  out, y = [], 0
  while True:
    out.append((y, min(PNET_TILE, n - y)))
    if y + PNET_TILE >= n:
      return out
    y += PNET_STRIDE


@functools.lru_cache(maxsize=256)
def _tile_plan(sizes: tuple[tuple[int, int], ...]) -> tuple[int, tuple[_Piece, ...]]:
  """Pyramid level sizes -> (tile count, pieces): levels larger than a tile are cut
  (`_cuts`), and every piece is packed into PNET_TILE x PNET_TILE tiles, tallest first, at
  the lowest free place of the first tile that has room (a skyline in 2-pixel columns).
  Pieces sit 2-pixel aligned, each owning an even-sized rectangle, so that no ceil-mode
  pooling cell of one piece reaches another's conv1 cells (the pool masks leave them
  out). Packing the pieces instead of cutting one canvas of whole levels into tiles
  needs 17-31% fewer tiles (P-Net calls) for photos from 451x300 to 1920x1080.
  Depends only on the image size: cached."""
  raw = [(i, y, x, ph, pw) for i, (hs, ws) in enumerate(sizes)
         for y, ph in _cuts(hs) for x, pw in _cuts(ws)]
  order = sorted(range(len(raw)), key=lambda j: (-_even(raw[j][3]), -_even(raw[j][4]), j))
  cols = PNET_TILE // 2
  count = 0
  skylines: dict[int, np.ndarray] = {}  # the tiles with room left: tile -> skyline
  placed: list[_Piece | None] = [None] * len(raw)
  for j in order:
    i, y, x, ph, pw = raw[j]
    eh, cw = _even(ph), _even(pw) // 2
    spot = None
    if eh < PNET_TILE or cw < cols:  # (a whole tile's piece takes a new tile: no search)
      for k, sky in skylines.items():
        if sky.min() + eh > PNET_TILE:
          continue
        tops = np.lib.stride_tricks.sliding_window_view(sky, cw).max(axis=1)
        c = int(np.argmin(tops))  # the lowest place (the leftmost of equals)
        if tops[c] + eh <= PNET_TILE:
          spot = (k, int(tops[c]), c)
          break
    if spot is None:
      skylines[count] = np.zeros(cols, np.int64)
      spot, count = (count, 0, 0), count + 1
    k, ty, c = spot
    sky = skylines[k]
    sky[c:c + cw] = ty + eh
    if sky.min() > PNET_TILE - 12:  # no piece (12 px at least) fits any more
      del skylines[k]
    placed[j] = _Piece(i, y, x, ph, pw, k, ty, 2 * c)
  # Tiles numbered in the order they can be complete: a photo alone resamples level 0 on
  # one thread and the others in order on a second (`_pyramid`), and P-Net takes the tiles
  # in number order as they fill (`_Pyramid.wait_tiles`): a tile waits for the last of its
  # levels after the first.
  last = [0] * count
  for pc in placed:
    last[pc.tile] = max(last[pc.tile], pc.level)
  renumber = {k: n for n, k in enumerate(sorted(range(count), key=lambda k: (last[k], k)))}
  return count, tuple(pc._replace(tile=renumber[pc.tile]) for pc in placed)


_PYRAMID_POOL: concurrent.futures.ThreadPoolExecutor | None = None


def _pyramid(image: np.ndarray, cfg: DetectorConfig, threads: int = 1) -> _Pyramid:
  """The image's pyramid in P-Net tiles (`_tile_plan`), its levels resampled by `threads`
  threads at once (one photo alone: numpy's resampling releases the GIL, and the second
  core has nothing else to do before P-Net starts; several photos at once keep one thread
  each)."""
  global _PYRAMID_POOL
  h, w = image.shape[:2]
  sat = integral_image(image)
  levels = pyramid_scales(h, w, cfg.min_face, cfg.factor)
  if not levels:
    return _Pyramid(h, w, sat)
  count, pieces = _tile_plan(tuple((hs, ws) for _, hs, ws in levels))
  t = PNET_TILE
  tiles = np.zeros((count, t, t, 3), np.float32)
  masks = np.zeros((count, t - 2, t - 2), bool)
  whole = np.array([[0, h, 0, w]], np.int32)
  by_level: dict[int, list[_Piece]] = collections.defaultdict(list)
  for pc in pieces:
    by_level[pc.level].append(pc)

  left = collections.Counter(pc.tile for pc in pieces)  # pieces not yet in, per tile
  ready = [threading.Event() for _ in range(count)]
  lock = threading.Lock()

  def resample(i):  # its pieces are disjoint parts of the tiles: safe from several threads
    _, hs, ws = levels[i]
    lv = normalize(area_crops(sat, whole, (hs, ws))[0])
    for pc in by_level[i]:
      tiles[pc.tile, pc.ty:pc.ty + pc.h, pc.tx:pc.tx + pc.w] = lv[pc.y:pc.y + pc.h,
                                                                  pc.x:pc.x + pc.w]
      masks[pc.tile, pc.ty:pc.ty + pc.h - 2, pc.tx:pc.tx + pc.w - 2] = True
      with lock:
        left[pc.tile] -= 1
        if not left[pc.tile]:
          ready[pc.tile].set()

  pyr = _Pyramid(h, w, sat, tiles, masks, list(levels), list(pieces))
  if threads > 1 and len(levels) > 1:
    if _PYRAMID_POOL is None:
      _PYRAMID_POOL = concurrent.futures.ThreadPoolExecutor(2)
    # The first level holds about half the pixels: it alone on this thread, the rest on
    # another, which goes on while P-Net runs the tiles that are complete (`wait_tiles`).
    pyr.pending = _PYRAMID_POOL.submit(lambda: [resample(i) for i in range(1, len(levels))])
    pyr.ready = ready
    resample(0)
  else:
    for i in range(len(levels)):
      resample(i)
  return pyr


def _level_maps(pyr: _Pyramid, out: dict[str, np.ndarray], kind: str):
  """P-Net's outputs on the tiles -> [(prob (rows, cols), box regression (rows, cols, 4))]
  per pyramid level, each piece's output cells put back where they lie in its level."""
  maps = [(np.zeros((out_cells(hs, kind), out_cells(ws, kind)), np.float32),
           np.zeros((out_cells(hs, kind), out_cells(ws, kind), 4), np.float32))
          for _, hs, ws in pyr.levels]
  for pc in pyr.pieces:
    nr, nc = out_cells(pc.h, kind), out_cells(pc.w, kind)
    if nr <= 0 or nc <= 0:
      continue
    prob, reg = maps[pc.level]
    src = (pc.tile, slice(pc.ty // 2, pc.ty // 2 + nr), slice(pc.tx // 2, pc.tx // 2 + nc))
    dst = (slice(pc.y // 2, pc.y // 2 + nr), slice(pc.x // 2, pc.x // 2 + nc))
    prob[dst] = out["prob"][src]
    reg[dst] = out["box"][src]
  return maps


def _first_stage(pyr: _Pyramid, maps, cfg: DetectorConfig):
  """P-Net's maps of each level -> squared candidate boxes (N, 4) and scores, best first:
  per level the cells above the threshold, NMS within the level, NMS across levels,
  regression (the reference's first-stage widths, without '+1') and squaring."""
  boxes, scores, regs = [], [], []
  for (scale, _, _), (prob, reg) in zip(pyr.levels, maps):
    rows, cols = prob.shape
    if rows <= 0 or cols <= 0:
      continue
    p = prob.reshape(-1)
    idx = np.flatnonzero(p >= cfg.thresholds[0])
    if not idx.size:
      continue
    idx = idx[np.argsort(-p[idx], kind="stable")]
    b = cell_windows(idx, cols, scale)
    r = reg.reshape(-1, 4)[idx]
    keep = nms_numpy(b, p[idx], cfg.nms[0])
    boxes.append(b[keep])
    scores.append(p[idx][keep])
    regs.append(r[keep])
  if not boxes:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
  boxes, scores, regs = np.concatenate(boxes), np.concatenate(scores), np.concatenate(regs)
  keep = nms_numpy(boxes, scores, cfg.nms[1])
  return rerec(bbreg(boxes[keep], regs[keep], plus_one=False)), scores[keep]


def _later_stage(stage: str, pyr: _Pyramid, boxes, scores, out, cfg: DetectorConfig):
  """R-Net (stage 'rnet') or O-Net ('onet') outputs on `boxes`' crops -> the survivors'
  boxes, scores and landmarks, best first."""
  prob, reg = out["prob"], out["box"]
  _, cok = crop_regions(boxes, pyr.h, pyr.w)
  if stage == "rnet":
    ok = np.flatnonzero(cok & (prob > cfg.thresholds[1]))
    keep = ok[nms_numpy(boxes[ok], prob[ok], cfg.nms[2])]
    b = rerec(bbreg(boxes[keep], reg[keep]))
    return b, prob[keep], np.zeros((len(keep), 5, 2), np.float32)
  ok = np.flatnonzero(cok & (prob > cfg.thresholds[2]))
  b, p = boxes[ok], out["landmarks"][ok]
  bw = b[:, 2] - b[:, 0] + 1
  bh = b[:, 3] - b[:, 1] + 1
  lm = np.stack([bw[:, None] * p[:, :5] + b[:, 0:1] - 1,
                 bh[:, None] * p[:, 5:] + b[:, 1:2] - 1], axis=-1)
  b = bbreg(b, reg[ok])
  keep = nms_numpy(b, prob[ok], cfg.nms[3], mode="min", plus_one=True)
  return b[keep], prob[ok][keep], lm[keep]


def _released_form(stage: str, module):
  """The fast inference form of `module` (jaxvision.faces.programs) when it is the released
  architecture of its stage (a `Released` stand-in, or a full-width float32 module), else
  None (the module itself runs)."""
  if isinstance(module, Released):
    return programs.NETS[module.stage]
  from jaxvision.faces.models import ONet, PNet, RNet  # a module: flax is imported already
  kinds = {"pnet": PNet, "rnet": RNet, "onet": ONet}
  if (type(module) is kinds[stage] and module.width == 1.0
      and getattr(module, "dtype", None) in (None, jnp.float32)):
    return programs.NETS[stage]
  return None


def _mtcnn_net(stage: str, module, v, *inputs) -> dict:
  """One MTCNN net alone (softmax in): P-Net on (tiles, pool masks), R-Net and O-Net on
  crops -> dict of float32 arrays. The released nets run in their fast forms
  (jaxvision.faces.programs: the same function, 2x faster on XLA:CPU)."""
  fast = _released_form(stage, module)
  if stage == "pnet":
    tiles, mask = inputs
    o = (fast(v, tiles, mask) if fast else module.apply(v, tiles, pool_mask=mask))
    return {"prob": _prob(o["logits"]), "box": o["box"]}
  o = fast(v, normalize(inputs[0])) if fast else module.apply(v, normalize(inputs[0]))
  d = {"prob": _prob(o["logits"]), "box": o["box"]}
  if "landmarks" in o:
    d["landmarks"] = o["landmarks"]
  return d


_mtcnn_program = jax.jit(_mtcnn_net, static_argnums=(0, 1))
# Executables of the MTCNN programs, kept on disk beside the compile cache: a warm run
# loads them without tracing flax (0.13 s a program; core.executables).
_EXECUTABLES = Executables("jaxvision.faces.detector", "jaxvision.faces.models",
                           "jaxvision.faces.programs", "jaxvision.faces.boxes")


# ---------------------------------------------------------------- Cascade CNN pipeline
def _cascade_one(nets, sat, h: int, w: int, cfg: DetectorConfig):
  """12-net -> 12-cal -> NMS -> 24-net -> 24-cal -> NMS -> 48-net -> global NMS -> 48-cal."""
  k_out = cfg.stage3
  net12, v12 = nets["12net"]

  def apply_12(x, pool_mask):
    return _prob(net12.apply(v12, x, pool_mask=pool_mask)["logits"])[0]

  s1 = _stage1(apply_12, sat, h, w, cfg)
  if s1 is None:
    return (jnp.zeros((k_out, 4)), jnp.zeros((k_out,)), jnp.zeros((k_out, 5, 2)),
            jnp.zeros((k_out,), bool))
  boxes, sc, lev, ok = s1

  def calibrate(name, size, boxes, ok):
    if name not in nets:
      return boxes
    net, v = nets[name]
    reg, cok = crop_regions(boxes, h, w)
    probs = jax.nn.softmax(net.apply(v, normalize(area_crops(sat, reg, size)))["logits"], -1)
    return jnp.where((ok & cok)[:, None],
                     apply_calibration(boxes, probs, cfg.calibration_threshold), boxes)

  boxes = calibrate("12cal", 12, boxes, ok)
  # then NMS: within each pyramid level, then across levels (the paper: 12-cal, then NMS)
  ok = nms(boxes, sc, ok, cfg.nms[0], groups=lev)
  ok = nms(boxes, sc, ok, cfg.nms[1])
  ok, sc, boxes = _compact(cfg.stage2 if "24net" in nets else k_out, sc, ok, boxes)
  if "24net" in nets:
    net, v = nets["24net"]
    reg, cok = crop_regions(boxes, h, w)
    sc = _prob(net.apply(v, normalize(area_crops(sat, reg, 24)))["logits"])
    ok = ok & cok & (sc > cfg.thresholds[1])
    boxes = calibrate("24cal", 24, boxes, ok)
    ok = nms(boxes, sc, ok, cfg.nms[2])
    ok, sc, boxes = _compact(k_out, sc, ok, boxes)
  if "48net" in nets:
    net, v = nets["48net"]
    reg, cok = crop_regions(boxes, h, w)
    sc = _prob(net.apply(v, normalize(area_crops(sat, reg, 48)))["logits"])
    ok = ok & cok & (sc > cfg.thresholds[2])
    ok = nms(boxes, sc, ok, cfg.nms[3])  # global NMS, then the last calibration
    boxes = calibrate("48cal", 48, boxes, ok)
    ok, sc, boxes = _compact(k_out, sc, ok, boxes)
  return boxes, sc, jnp.zeros((boxes.shape[0], 5, 2)), ok


# ---------------------------------------------------------------- the detector
MTCNN_STAGES = ("pnet", "rnet", "onet")
CASCADE_STAGES = ("12net", "12cal", "24net", "24cal", "48net", "48cal")
STAGE_MODELS = {"mtcnn-pnet": "pnet", "mtcnn-rnet": "rnet", "mtcnn-onet": "onet",
                **{f"cascade-{s}": s for s in CASCADE_STAGES}}


class FaceDetector:
  """A compiled face-detection cascade.

  nets: {stage: (linen module, variables)} with stages from MTCNN_STAGES or
  CASCADE_STAGES; the first stage is required, later ones may be missing (the cascade
  then stops early, e.g. to inspect a partly trained cascade).
  """

  def __init__(self, nets: dict[str, tuple[Any, dict]], config: DetectorConfig = DetectorConfig()):
    first = "pnet" if config.kind == "mtcnn" else "12net"
    if first not in nets:
      raise ValueError(f"a {config.kind} detector needs its first stage {first!r}; "
                       f"got {', '.join(nets) or 'none'}")
    self.config = config
    self._modules = {k: m for k, (m, _) in nets.items()}
    self.variables = {k: jax.tree.map(jnp.asarray, v) for k, (_, v) in nets.items()}
    self._fn = jax.jit(self._run)
    if config.kind == "mtcnn":
      self._programs = [k for k in MTCNN_STAGES if k in self._modules]
      self._compiled: dict[tuple[str, int, int], Any] = {}
      self._placed: dict[int, dict] = {}  # device index -> the variables on that device
      self._compile_lock = threading.Lock()

  def _run(self, variables, images):
    """Cascade CNN: images (B, H, W, 3) uint8 -> boxes (B, K, 4), scores, landmarks, valid."""
    _, h, w, _ = images.shape
    nets = {k: (self._modules[k], v) for k, v in variables.items()}
    sats = jax.vmap(integral_image)(images)
    return jax.vmap(lambda s: _cascade_one(nets, s, h, w, self.config))(sats)

  # ------------------------------------------------------------ MTCNN (section comment above)
  def _program_inputs(self, name: str, batch: int, device):
    """Shapes of one call of program `name` on `batch` items, on `device`."""
    f32 = jnp.float32
    at = jax.sharding.SingleDeviceSharding(device)
    if name == "pnet":
      t = PNET_TILE
      return (jax.ShapeDtypeStruct((batch, t, t, 3), f32, sharding=at),
              jax.ShapeDtypeStruct((batch, t - 2, t - 2), jnp.bool_, sharding=at))
    size = CROP_SIZES[name]
    return (jax.ShapeDtypeStruct((batch, size, size, 3), f32, sharding=at),)

  def _on(self, k: int) -> dict:
    """The variables on device k (placed once)."""
    if k not in self._placed:
      self._placed[k] = jax.device_put(self.variables, _devices()[k])
    return self._placed[k]

  def compile(self, devices: int = 1) -> None:
    """Compiles (or loads from the persistent cache) the six MTCNN programs for the first
    `devices` devices, as many at a time as there are cores.

    Called by the first detection; call it earlier to take compilation out of a timing."""
    with self._compile_lock:
      todo = [(name, b, k) for k in range(min(devices, len(_devices())))
              for name in self._programs
              for b in (TILE_BATCHES if name == "pnet" else CROP_BATCHES[name])
              if (name, b, k) not in self._compiled]
      if not todo:
        return

      def request(key):
        name, b, k = key
        return (_mtcnn_program, (name, self._modules[name]),
                (self._on(k)[name], *self._program_inputs(name, b, _devices()[k])))

      requests = [request(key) for key in todo]
      _EXECUTABLES.prepare(requests)  # loads what is on disk, compiles the rest in parallel
      for key, (jitted, static, args) in zip(todo, requests):
        self._compiled[key] = _EXECUTABLES.get(jitted, static, args)

  def _net(self, name: str, arrays, jit: bool, ks: tuple = (0,),
           n: int | None = None) -> dict[str, np.ndarray]:
    """Program `name` over n items, in fixed-size calls spread over the devices `ks` (each
    call to the least loaded), all dispatched before any result is read, so that the
    devices run at once and the host prepares the next call meanwhile.

    `arrays`: a tuple of arrays with leading dim n, or a function (start, count) -> such a
    tuple for items [start, start + count) (then `n` is given): the host makes each call's
    inputs (R-Net's and O-Net's crops) while the devices run the calls before it, instead
    of making them all before the first call."""
    if n is None:
      n = len(arrays[0])
    make = arrays if callable(arrays) else (lambda at, count: tuple(a[at:at + count]
                                                                  for a in arrays))
    load = dict.fromkeys(ks, 0)
    pending = []
    for at, count, b in _chunks(n, TILE_BATCHES if name == "pnet" else CROP_BATCHES[name]):
      batch = []
      for x in make(at, count):
        if count < b:
          x = np.concatenate([x, np.zeros((b - count,) + x.shape[1:], x.dtype)])
        batch.append(x)
      if jit:
        k = min(load, key=load.get)
        load[k] += b
        dev = _devices()[k]
        out = self._compiled[(name, b, k)](self._on(k)[name],
                                           *(jax.device_put(x, dev) for x in batch))
      else:
        out = _mtcnn_net(name, self._modules[name], self.variables[name], *batch)
      pending.append((count, out))
    parts = [{key: np.asarray(v)[:count] for key, v in out.items()} for count, out in pending]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

  def _mtcnn_one(self, image: np.ndarray, jit: bool, ks: tuple = (0,)):
    """One image through the cascade -> boxes (N, 4), scores (N,), landmarks (N, 5, 2),
    best first; every face the cascade keeps (no buffer caps the count). The nets' calls
    are spread over the devices `ks`."""
    cfg = self.config
    boxes, scores = np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    lms = np.zeros((0, 5, 2), np.float32)
    pyr = _pyramid(image, cfg, threads=2 if len(ks) > 1 else 1)
    if pyr.tiles is None:
      return boxes, scores, lms
    out = self._net("pnet", pyr.wait_tiles, jit, ks, n=len(pyr.tiles))
    pyr.finish()
    boxes, scores = _first_stage(pyr, _level_maps(pyr, out, cfg.kind), cfg)
    lms = np.zeros((len(boxes), 5, 2), np.float32)
    for stage in ("rnet", "onet"):
      if stage not in self.variables or not len(boxes):
        break
      regions, _ = crop_regions(boxes, pyr.h, pyr.w)
      size = CROP_SIZES[stage]
      out = self._net(stage, lambda at, count: (area_crops(pyr.sat, regions[at:at + count],
                                                           size),),
                      jit, ks, n=len(regions))
      boxes, scores, lms = _later_stage(stage, pyr, boxes, scores, out, cfg)
    return boxes, scores, lms

  def _plan(self, count: int, threads: int | None = None) -> tuple[int, int]:
    """(images detected at once, devices used) for `count` images: one image alone has
    its calls spread over every device, several have a device each."""
    n = min(count, threads or _threads())
    return n, (len(_devices()) if n <= 1 else n)

  def prepare(self, count: int, threads: int | None = None) -> None:
    """Compiles (or loads) the programs that detecting `count` images with `detect_each`
    will use, so that a caller can do it while it reads the images (thread-safe)."""
    if self.config.kind == "mtcnn":
      self.compile(self._plan(count, threads)[1])

  def _mtcnn_map(self, images, jit: bool, threads: int | None = None,
                 count: int | None = None):
    """Yields `_mtcnn_one` of each image, in order, several images at once: each worker
    thread holds a device of its own while it runs an image (XLA runs the programs of one
    device one after the other; on a CPU, `jaxvision` makes one device per core).

    `images` may be any iterable (a generator that decodes files as they are asked for):
    it is read only one image ahead of the workers, so a folder is never all in memory;
    `count` (default len(images)) is an upper bound on how many come, for the plan."""
    if count is None:
      images = list(images)
      count = len(images)
    n, devices = self._plan(count, threads)
    if jit:
      self.compile(devices)
    if not jit or n <= 1:  # one image at a time, its calls spread over every device
      every = tuple(range(devices)) if jit else (0,)
      yield from (self._mtcnn_one(as_rgb_batch(im)[0], jit, every) for im in images)
      return
    free: queue.SimpleQueue = queue.SimpleQueue()
    for k in range(n):
      free.put(k % len(_devices()))

    def run(im):
      k = free.get()
      try:
        return self._mtcnn_one(as_rgb_batch(im)[0], jit, (k,))
      finally:
        free.put(k)

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
      pending: collections.deque = collections.deque()
      for im in images:  # n running and one waiting: the next starts as one finishes
        pending.append(pool.submit(run, im))
        if len(pending) > n:
          yield pending.popleft().result()
      while pending:
        yield pending.popleft().result()

  def _mtcnn_raw(self, images: list[np.ndarray], jit: bool) -> dict[str, np.ndarray]:
    """Every image through `_mtcnn_one` -> fixed-size arrays of max(stage3, most faces in
    an image) entries per image."""
    found = list(self._mtcnn_map(images, jit))
    n, k = len(images), max([self.config.stage3] + [len(f[0]) for f in found])
    boxes = np.zeros((n, k, 4), np.float32)
    scores = np.zeros((n, k), np.float32)
    lms = np.zeros((n, k, 5, 2), np.float32)
    valid = np.zeros((n, k), bool)
    for i, (b, s, lm) in enumerate(found):
      m = len(b)
      boxes[i, :m], scores[i, :m], lms[i, :m], valid[i, :m] = b, s, lm, True
    return {"boxes": boxes, "scores": scores, "landmarks": lms, "valid": valid}

  def raw(self, images, jit: bool = True) -> dict[str, np.ndarray]:
    """Fixed-size outputs of the cascade for a (B, H, W, 3) uint8 batch (or, for MTCNN, a
    list of images of any sizes): per image the valid entries first, best score first."""
    if self.config.kind == "mtcnn":
      ims = (list(images) if isinstance(images, (list, tuple)) else list(as_rgb_batch(images)))
      return self._mtcnn_raw(ims, jit)
    images = as_rgb_batch(images)
    fn = self._fn if jit else self._run
    b, s, lm, ok = fn(self.variables, jnp.asarray(images))
    return {"boxes": np.asarray(b), "scores": np.asarray(s), "landmarks": np.asarray(lm),
            "valid": np.asarray(ok)}

  def _faces(self, boxes, scores, landmarks, valid) -> list[dict]:
    with_landmarks = self.config.kind == "mtcnn" and "onet" in self.variables
    return [{"box": [float(v) for v in boxes[i]], "score": float(scores[i]),
             "landmarks": ([[float(x), float(y)] for x, y in landmarks[i]]
                           if with_landmarks else [])}
            for i in np.flatnonzero(valid)]

  def detect(self, images, jit: bool = True) -> list[list[dict]]:
    """Per image, faces sorted by score: {"box", "score", "landmarks"} (input pixels).
    `images`: one image, a (B, H, W, C) batch, or (MTCNN) a list of images of any sizes."""
    r = self.raw(images, jit=jit)
    return [self._faces(*t) for t in zip(r["boxes"], r["scores"], r["landmarks"], r["valid"])]

  def detect_each(self, images, threads: int | None = None, count: int | None = None):
    """Yields the faces of each image of a list or any iterable (any sizes), in order, as
    `detect` gives them; MTCNN works on `threads` images at once (default: one per core,
    at most 8), reading an iterable only one image ahead (`count`: at most how many it
    gives, when it has no len)."""
    if self.config.kind != "mtcnn":
      for im in images:
        yield self.detect(im)[0]
      return
    if count is None and hasattr(images, "__len__"):
      count = len(images)
    for b, s, lm in self._mtcnn_map(images, True, threads, count):
      yield self._faces(b, s, lm, np.ones(len(b), bool))


def as_rgb_batch(images) -> np.ndarray:
  """uint8 (B, H, W, 3) from one image or a batch; grey (H, W[, 1]) and RGBA accepted
  (alpha dropped; `jaxvision.core.io.load_image_file` composites it on white instead)."""
  x = np.asarray(images)
  if x.dtype != np.uint8:
    if np.issubdtype(x.dtype, np.floating) and x.size and x.max() <= 1.0:
      raise DataError("images must be uint8 0..255 (got floats in [0, 1]; multiply by 255)")
    x = np.clip(np.round(x), 0, 255).astype(np.uint8)
  if x.ndim == 2:  # one grey image
    x = x[None, ..., None]
  elif x.ndim == 3:  # (H, W, C) single image, or (B, H, W) grey batch
    x = x[None] if x.shape[-1] in (1, 3, 4) else x[..., None]
  if x.ndim != 4:
    raise DataError(f"images must be (H, W[, C]) or (B, H, W, C), got shape {np.shape(images)}")
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  elif x.shape[-1] == 4:
    x = x[..., :3]
  elif x.shape[-1] != 3:
    raise DataError(f"images need 1, 3 or 4 channels, got {x.shape[-1]}")
  return np.ascontiguousarray(x)


def mtcnn_detector(source: str = "auto", **config) -> FaceDetector:
  """MTCNN with the original weights (see convert.load_mtcnn_weights)."""
  v = load_mtcnn_weights(source)
  nets = {s: (Released(s), v[s]) for s in MTCNN_STAGES}
  return FaceDetector(nets, DetectorConfig(kind="mtcnn", **config))


class CascadeWorkdirError(CheckpointError, ValueError):
  """A workdir that holds no usable face cascade (a ValueError too, as it always was)."""


CONVERTED_MTCNN = "mtcnn"  # model name of `jaxvision convert --model mtcnn` workdirs


def _workdir_stages(workdir: str, seen=None) -> dict[str, tuple[Any, dict]]:
  """{stage: (module, variables)} from a trained workdir and its data.previous_stages,
  or the three nets of a converted MTCNN workdir."""
  from jaxvision.core import checkpoint as jv_ckpt
  seen = set() if seen is None else seen
  key = os.path.realpath(workdir)
  if key in seen:
    return {}
  seen.add(key)
  if not os.path.isfile(os.path.join(workdir, jv_ckpt.CONFIG_FILE)):
    raise CascadeWorkdirError(f"{workdir}: not a workdir (no {jv_ckpt.CONFIG_FILE})")
  name = jv_ckpt.load_config(workdir).model.name
  if name == CONVERTED_MTCNN:
    _, variables, _ = jv_ckpt.load_variables(workdir)
    params = variables["params"]
    missing = [n for n in MTCNN_STAGES if n not in params]
    if missing:
      raise CascadeWorkdirError(f"{workdir}: a converted MTCNN workdir without "
                                f"{', '.join(missing)}")
    return {n: (Released(n), {"params": params[n]}) for n in MTCNN_STAGES}
  if name not in STAGE_MODELS:
    raise CascadeWorkdirError(f"{workdir}: holds {name!r}, not a face-detection stage "
                              f"({', '.join(STAGE_MODELS)})")
  config, model, variables, _ = jv_ckpt.load_model(workdir)
  out = {}
  data = config.get("data") or {}
  for prev in (data.get("previous_stages") or []):
    if not os.path.isabs(prev) and not os.path.isdir(prev):  # relative to the workdir's folder
      prev = os.path.join(os.path.dirname(os.path.abspath(workdir)), prev)
    out.update(_workdir_stages(prev, seen))
  out[STAGE_MODELS[name]] = (model, variables)
  return out


def detector_from_workdir(workdir: str, **config) -> FaceDetector:
  """The cascade of a trained workdir (and the earlier stages it lists), or of a
  converted MTCNN workdir (`jaxvision convert --model mtcnn`)."""
  nets = _workdir_stages(workdir)
  kind = "mtcnn" if any(s in nets for s in MTCNN_STAGES) else "cascade-cnn"
  if kind == "mtcnn" and any(s in nets for s in CASCADE_STAGES):
    raise CascadeWorkdirError(f"{workdir}: mixes MTCNN and Cascade CNN stages")
  return FaceDetector(nets, DetectorConfig(kind=kind, **config))


# ---------------------------------------------------------------- drawing
def draw_faces(image: np.ndarray, faces: list[dict]) -> np.ndarray:
  """RGB uint8 copy with boxes (green), scores and landmarks (red) drawn."""
  from PIL import Image, ImageDraw
  im = Image.fromarray(as_rgb_batch(image)[0])
  d = ImageDraw.Draw(im)
  lw = max(1, round(max(im.size) / 400))
  for f in faces:
    x1, y1, x2, y2 = f["box"]
    d.rectangle([x1, y1, x2, y2], outline=(0, 255, 0), width=lw)
    d.text((x1 + 2, y1 + 2), f"{f['score']:.2f}", fill=(0, 255, 0))
    r = 1.5 * lw
    for x, y in f.get("landmarks") or []:
      d.ellipse([x - r, y - r, x + r, y + r], fill=(255, 0, 0))
  return np.asarray(im)
