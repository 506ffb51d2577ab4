"""A safe reader of dlib's DNN files (`net_type` serialised with `dlib::serialize`).

dlib writes a network as the nesting of its C++ types (`dlib/dnn/core.h`):

    add_loss_layer   version 1, the loss details ("loss_metric_2", margin, threshold),
                     then its subnetwork
    add_layer        version 2, its subnetwork FIRST, then the layer's details (a string tag
                     such as "con_4" and the layer's fields), then three bools and three
                     tensors (x_grad, cached_output, params_grad: empty in released files)
    add_layer over   version 3, the input layer ("input_rgb_image_sized", the channel means,
      the input      rows, cols), the details, three bools, three tensors and the sample
                     expansion factor
    add_tag_layer /  version 1, then the subnetwork; nothing after it (which tag or skip id
      add_skip_layer is a template argument, not in the file)

So a file is: the loss; a run of version integers from the outermost layer inwards (2 for a
layer, 1 for a tag or skip, 3 for the layer on the input); the input layer; and then the
layers' records from the input upwards. `read_dnn` returns that as a list of `Layer`s from
the input up, with each tag/skip wrapper as a `Layer("tag")` at its place, so that a
converter can check the exact structure of the network it expects.

Booleans are one byte, ASCII '0' or '1' (dlib's serialize(bool)), not an integer.
Every length is checked against what is left of the file before anything is allocated
(`jaxvision.core.dlib_format.DlibReader`), so a damaged or foreign file is a
`FileFormatError` naming the file and the byte offset.

Layer versions read here are the ones dlib 19.x-20.x write or still read: con_4/5/6,
fc_2/3, affine_/affine_2 (and bn_con2/bn_fc2, which dlib converts to affine when it loads
them into an affine layer), relu_/relu_2, max_pool_2, avg_pool_2, add_prev_.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxvision.core.dlib_format import DlibReader, read_file
from jaxvision.core.errors import FileFormatError

# More layers than any released dlib network has; a longer run of versions is not a model.
MAX_LAYERS = 10_000


@dataclasses.dataclass
class Layer:
  """One layer of a dlib network: `kind` ("con", "affine", "relu", "max_pool", "avg_pool",
  "add_prev", "fc", "tag", "input"), its hyper-parameters in `attrs` and its arrays in
  `arrays` (float32, dlib's layouts: con filters (O, I, kh, kw), fc weights (in, out))."""
  kind: str
  attrs: dict[str, Any] = dataclasses.field(default_factory=dict)
  arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  stored: int = 0  # how many parameter floats the file holds for this layer

  def signature(self) -> tuple:
    """What the structure check compares: the kind and the hyper-parameters."""
    keep = {k: v for k, v in self.attrs.items() if k not in ("version",)}
    return (self.kind, tuple(sorted(keep.items())))


@dataclasses.dataclass
class DlibNet:
  loss: dict[str, Any]
  layers: list[Layer]          # from the input up; layers[0].kind == "input"
  file_param_count: int        # the floats of every layer's parameter tensors in the file


def _bool(r: DlibReader, what: str) -> bool:
  r.need(1, what)
  c = r.data[r.pos]
  if c not in (ord("0"), ord("1")):
    raise r.error(f"{what}: byte {c:#04x} is not a bool ('0' or '1')")
  r.pos += 1
  return c == ord("1")


def _alias(r: DlibReader, what: str) -> tuple[int, ...]:
  """An alias_tensor: version 1 and four dimensions (a view into a layer's params)."""
  v = r.int(what + " version")
  if v != 1:
    raise r.error(f"{what}: alias tensor version {v}, expected 1")
  return tuple(r.int(what + " dimension") for _ in range(4))


def _split(r: DlibReader, params: np.ndarray, shapes: list[tuple[int, ...]], what: str):
  """Cuts a layer's flat params tensor into the views its alias tensors describe."""
  flat = params.reshape(-1)
  sizes = [int(np.prod(s)) if all(d >= 0 for d in s) else -1 for s in shapes]
  if any(s < 0 for s in sizes) or sum(sizes) != flat.size:
    raise r.error(f"{what}: parameter views {shapes} do not fill its {flat.size} parameters")
  out, i = [], 0
  for s, n in zip(shapes, sizes):
    out.append(flat[i:i + n].reshape(s))
    i += n
  return out


def _con(r: DlibReader, version: str) -> Layer:
  params = r.tensor("con params")
  nf = r.int("con num_filters")
  nr, nc, sy, sx, py, px = (r.int("con " + n) for n in ("nr", "nc", "stride_y", "stride_x",
                                                         "padding_y", "padding_x"))
  fshape = _alias(r, "con filters")
  bshape = _alias(r, "con biases")
  for n in ("lr", "wd", "bias lr", "bias wd"):
    r.float("con " + n + " multiplier")
  use_bias = True
  if version in ("con_5", "con_6"):
    use_bias = _bool(r, "con use_bias")
  if version == "con_6":
    if _bool(r, "con use_relu"):
      raise r.error("con: a convolution with a fused relu (use_relu) is not read here")
  if fshape != (nf, fshape[1], nr, nc) or bshape != (1, nf, 1, 1):
    raise r.error(f"con: filters {fshape} / biases {bshape} do not fit {nf} {nr}x{nc} filters")
  filters, bias = _split(r, params, [fshape, bshape], "con")
  arrays = {"filters": filters, "bias": bias.reshape(nf)}
  if not use_bias:
    arrays["bias"] = np.zeros(nf, np.float32)
  return Layer("con", {"filters": nf, "in": fshape[1], "size": (nr, nc), "stride": (sy, sx),
                       "padding": (py, px)}, arrays, params.size)


def _fc(r: DlibReader, version: str) -> Layer:
  n_out, n_in = r.uint("fc num_outputs"), r.uint("fc num_inputs")
  params = r.tensor("fc params")
  wshape = _alias(r, "fc weights")
  bshape = _alias(r, "fc biases")
  mode = r.int("fc bias mode")
  for n in ("lr", "wd", "bias lr", "bias wd"):
    r.float("fc " + n + " multiplier")
  if version == "fc_3":
    _bool(r, "fc use_bias")
  if mode not in (0, 1):
    raise r.error(f"fc: bias mode {mode}")
  has_bias = mode == 0  # FC_HAS_BIAS = 0, FC_NO_BIAS = 1
  shapes = [wshape] + ([bshape] if has_bias else [])
  if wshape[:2] != (n_in, n_out):
    raise r.error(f"fc: weights {wshape}, expected ({n_in}, {n_out}, ...)")
  parts = _split(r, params, shapes, "fc")
  arrays = {"weights": parts[0].reshape(n_in, n_out)}
  if has_bias:
    arrays["bias"] = parts[1].reshape(n_out)
  return Layer("fc", {"outputs": n_out, "inputs": n_in, "bias": has_bias}, arrays, params.size)


def _affine(r: DlibReader, version: str) -> Layer:
  if version in ("bn_con2", "bn_fc2"):
    # dlib turns a batch-norm layer into affine when it loads it into an affine layer:
    # gamma' = gamma / sqrt(running_var + eps), beta' = beta - gamma' * running_mean.
    params = r.tensor("bn params")
    g_shape, b_shape = _alias(r, "bn gamma"), _alias(r, "bn beta")
    for n in ("means", "invstds"):
      r.tensor("bn " + n)
    mean, var = r.tensor("bn running means"), r.tensor("bn running variances")
    r.uint("bn num_updates")
    r.uint("bn running_stats_window_size")
    for n in ("lr", "wd", "bias lr", "bias wd"):
      r.float("bn " + n + " multiplier")
    eps = r.float("bn eps")
    gamma, beta = _split(r, params, [g_shape, b_shape], "bn")
    if mean.size != gamma.size or var.size != gamma.size:
      raise r.error("bn: running statistics do not fit its channels")
    g = gamma.reshape(-1) / np.sqrt(var.reshape(-1) + eps)
    b = beta.reshape(-1) - g * mean.reshape(-1)
    mode = 0 if version == "bn_con2" else 1
    return Layer("affine", {"mode": mode}, {"gamma": g.astype(np.float32),
                                            "beta": b.astype(np.float32)}, params.size)
  params = r.tensor("affine params")  # gamma and beta, the two views that follow
  g_shape, b_shape = _alias(r, "affine gamma"), _alias(r, "affine beta")
  mode = r.int("affine mode")
  if version == "affine_2" and _bool(r, "affine disabled"):
    raise r.error("affine: a disabled affine layer is not read here")
  if g_shape != b_shape:
    raise r.error(f"affine: gamma {g_shape} and beta {b_shape} differ")
  gamma, beta = _split(r, params, [g_shape, b_shape], "affine")
  if mode != 0:
    raise r.error(f"affine: mode {mode} (only the convolutional mode, 0, is read here)")
  return Layer("affine", {"mode": mode}, {"gamma": gamma.reshape(-1), "beta": beta.reshape(-1)},
               params.size)


def _pool(r: DlibReader, kind: str) -> Layer:
  vals = [r.int(f"{kind} {n}") for n in ("nr", "nc", "stride_y", "stride_x", "padding_y",
                                          "padding_x")]
  return Layer(kind, {"size": tuple(vals[0:2]), "stride": tuple(vals[2:4]),
                      "padding": tuple(vals[4:6])})


def _details(r: DlibReader) -> Layer:
  start = r.pos
  tag = r.string("layer tag", limit=64)
  if tag in ("con_4", "con_5", "con_6"):
    return _con(r, tag)
  if tag in ("fc_2", "fc_3"):
    return _fc(r, tag)
  if tag in ("affine_", "affine_2", "bn_con2", "bn_fc2"):
    return _affine(r, tag)
  if tag in ("relu_", "relu_2"):
    if tag == "relu_2" and _bool(r, "relu disabled"):
      raise r.error("relu: a disabled relu layer is not read here")
    return Layer("relu")
  if tag == "max_pool_2":
    return _pool(r, "max_pool")
  if tag == "avg_pool_2":
    return _pool(r, "avg_pool")
  if tag == "add_prev_":
    return Layer("add_prev")
  r.pos = start
  raise r.error(f"layer tag {tag[:40]!r} (not a layer this reader knows)")


def _trailer(r: DlibReader, input_layer: bool) -> None:
  for n in ("setup called", "gradient stale", "gradient disabled"):
    _bool(r, "layer " + n)
  for n in ("x_grad", "cached_output", "params_grad"):
    r.tensor("layer " + n)
  if input_layer:
    r.uint("sample expansion factor")


def read_dnn(r: DlibReader) -> DlibNet:
  """The network in `r` (a loss_metric network over input_rgb_image_sized); see the module
  docstring for the layout. Raises FileFormatError on anything else."""
  if r.int("loss layer version") != 1:
    raise r.error("loss layer version (not a dlib DNN file)")
  loss_tag = r.string("loss tag", limit=64)
  if loss_tag != "loss_metric_2":
    raise r.error(f"loss {loss_tag[:40]!r} (a metric network, loss_metric_2, is read here)")
  loss = {"kind": "metric", "margin": r.float("loss margin"),
          "distance_threshold": r.float("loss distance threshold")}
  wrappers: list[int] = []
  while True:
    v = r.int("layer version")
    if v not in (1, 2, 3):
      raise r.error(f"layer version {v}")
    if v == 3:
      break
    wrappers.append(v)
    if len(wrappers) > MAX_LAYERS:
      raise r.error("more layers than any dlib network")
  tag = r.string("input tag", limit=64)
  if tag != "input_rgb_image_sized":
    raise r.error(f"input layer {tag[:40]!r} (input_rgb_image_sized is read here)")
  mean = tuple(r.float("input mean") for _ in range(3))
  rows, cols = r.uint("input rows"), r.uint("input cols")
  layers = [Layer("input", {"mean": tuple(round(m, 3) for m in mean), "size": (rows, cols)},
                  {"mean": np.asarray(mean, np.float32)})]
  layers.append(_details(r))
  _trailer(r, input_layer=True)
  for v in reversed(wrappers):  # innermost first: the order the records follow in
    if v == 1:
      layers.append(Layer("tag"))
    else:
      layers.append(_details(r))
      _trailer(r, input_layer=False)
  r.expect_end()
  return DlibNet(loss, layers, int(sum(l.stored for l in layers)))


def load_dnn(path: str) -> DlibNet:
  """The dlib DNN file at `path` (FileFormatError naming it when damaged or foreign)."""
  return read_dnn(read_file(path, limit=1 << 28))


def parse_dnn_bytes(data: bytes, name: str = "dlib file") -> DlibNet:
  return read_dnn(DlibReader(data, name))


__all__ = ["DlibNet", "Layer", "FileFormatError", "load_dnn", "parse_dnn_bytes", "read_dnn"]
