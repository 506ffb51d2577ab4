"""A reader of TensorFlow Lite `.tflite` files without TensorFlow.

    model = read_tflite("face_landmark.tflite")
    g = model.graph                      # subgraph 0
    g.tensors[i].name, .shape, .dtype, .data (numpy; float16 weights as float32)
    g.operators[j].opcode ("CONV_2D"), .inputs, .outputs (tensor indices, -1: absent),
                   .options ({"padding": "SAME", "stride_w": 2, ...})
    g.inputs, g.outputs                  # tensor indices of the subgraph's inputs/outputs

A `.tflite` file is a FlatBuffer (schema tensorflow/lite/schema/schema.fbs): a root
table `Model` with operator codes, subgraphs (tensors, operators, input/output indices)
and buffers (the constant data, either inside the FlatBuffer as a byte vector or, in
files over 2 GB, at an absolute `offset` / `size` after it). The generated accessors of
the pure-Python `tflite` package (over `flatbuffers`) do the table lookups; they trust
the bytes. A FlatBuffer has no checksum, so this module checks what makes the accessors
misbehave on a damaged or foreign file, and turns each failure into one FileFormatError
line naming the file:
  - the identifier "TFL3" at bytes 4..8 and a root offset inside the file;
  - every vector length against the file size before iterating over it (a flipped bit in
    a length would otherwise loop for billions of elements or ask numpy for gigabytes;
    `numpy.frombuffer` views the file's bytes, so reading data itself allocates nothing);
  - buffer indices, external buffer offsets and tensor byte sizes (prod(shape) x item
    size must equal the buffer's length);
  - any struct/index/unicode error raised by the accessors on bytes that point outside
    the file.
A bit flip inside weight data cannot be detected (nothing records what the bytes should
be); the converters that use this reader check shapes and structure on top.

Operator options are read generically: every scalar field of the operator's builtin
options table (Conv2DOptions, Pool2DOptions, ...), in snake_case, with `padding` as
"SAME"/"VALID" and `fused_activation_function` as its name ("NONE", "RELU", ...).
Quantised (int8/uint8) tensors keep their raw values; their `quantization` holds the
scales and zero points. It lives in core because several families read this format
(the face mesh of `landmarks`; BlazeFace for `faces`).
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import re
import struct

import numpy as np

from jaxvision.core.errors import FileFormatError

# TensorType enum of schema.fbs -> numpy dtype (the types a model's constants can have)
_DTYPES = {0: ("FLOAT32", np.float32), 1: ("FLOAT16", np.float16), 2: ("INT32", np.int32),
           3: ("UINT8", np.uint8), 4: ("INT64", np.int64), 6: ("BOOL", np.bool_),
           7: ("INT16", np.int16), 9: ("INT8", np.int8), 10: ("FLOAT64", np.float64),
           12: ("UINT64", np.uint64), 15: ("UINT32", np.uint32), 16: ("UINT16", np.uint16)}
_PADDING = {0: "SAME", 1: "VALID"}
_ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH",
                5: "SIGN_BIT"}
IDENTIFIER = b"TFL3"


@dataclasses.dataclass(frozen=True)
class Tensor:
  index: int
  name: str
  shape: tuple[int, ...]
  dtype: str                      # schema name: "FLOAT32", "INT32", ...
  buffer: int                     # index into the model's buffers (0: no data)
  data: np.ndarray | None         # the constant's values (float16 -> float32), or None
  quantization: dict | None = None  # {"scale": (...), "zero_point": (...)} when quantised


@dataclasses.dataclass(frozen=True)
class Operator:
  index: int
  opcode: str                     # builtin operator name ("CONV_2D") or "CUSTOM:<code>"
  inputs: tuple[int, ...]         # tensor indices; -1 marks an omitted optional input
  outputs: tuple[int, ...]
  options: dict


@dataclasses.dataclass(frozen=True)
class Graph:
  name: str
  tensors: list[Tensor]
  operators: list[Operator]
  inputs: tuple[int, ...]
  outputs: tuple[int, ...]

  def constants(self) -> list[Tensor]:
    """The tensors that hold data (weights, biases, paddings, ...)."""
    return [t for t in self.tensors if t.data is not None]

  def consumers(self, tensor: int) -> list[Operator]:
    return [op for op in self.operators if tensor in op.inputs]


@dataclasses.dataclass(frozen=True)
class Model:
  version: int
  description: str
  subgraphs: list[Graph]

  @property
  def graph(self) -> Graph:
    return self.subgraphs[0]


def _snake(name: str) -> str:
  return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


_FIELDS: dict[type, tuple[str, ...]] = {}


def _scalar_fields(cls) -> tuple[str, ...]:
  """The scalar getters of a generated options class (methods taking no argument but
  self, other than the flatbuffer plumbing), cached per class."""
  if cls not in _FIELDS:
    _FIELDS[cls] = tuple(
        attr for attr, fn in inspect.getmembers(cls, inspect.isfunction)
        if not (attr[0].islower() or attr.startswith(("Init", "GetRootAs")) or "Buffer" in attr
                or attr.endswith(("AsNumpy", "Length", "IsNone")))
        and len(inspect.signature(fn).parameters) == 1)
  return _FIELDS[cls]


class _Reader:
  """The accessors of the `tflite` package with the checks described above."""

  def __init__(self, data: bytes, name: str):
    import tflite  # the pure-Python flatbuffer accessors (extra `facemesh`)
    self.tflite, self.data, self.name, self.size = tflite, data, name, len(data)
    self._options_cls = {v: k for k, v in vars(tflite.BuiltinOptions).items()
                         if not k.startswith("_") and isinstance(v, int)}
    self._opnames = {v: k for k, v in vars(tflite.BuiltinOperator).items()
                     if not k.startswith("_") and isinstance(v, int)}

  def fail(self, what: str):
    raise FileFormatError(f"{self.name}: not a valid .tflite file ({what})")

  def count(self, n: int, what: str, min_bytes: int = 4) -> int:
    """A vector length that fits in the file (each element takes >= min_bytes)."""
    if n < 0 or n * min_bytes > self.size:
      self.fail(f"{what}: {n} entries in a {self.size}-byte file")
    return n

  def ints(self, obj, field: str) -> tuple[int, ...]:
    n = self.count(getattr(obj, field + "Length")(), field)
    if n == 0:
      return ()
    v = getattr(obj, field + "AsNumpy")()
    return tuple(int(x) for x in np.asarray(v).reshape(-1))

  def model(self) -> Model:
    if self.size < 8:
      self.fail(f"{self.size} bytes")
    if self.data[4:8] != IDENTIFIER:
      self.fail(f"identifier {self.data[4:8]!r}, expected {IDENTIFIER!r}")
    (root,) = struct.unpack_from("<I", self.data, 0)
    if not 8 <= root < self.size - 4:
      self.fail(f"root table offset {root} outside the file")
    m = self.tflite.Model.GetRootAs(self.data, 0)
    codes = []
    for i in range(self.count(m.OperatorCodesLength(), "operator codes")):
      oc = m.OperatorCodes(i)
      code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
      if code == self.tflite.BuiltinOperator.CUSTOM:
        codes.append("CUSTOM:" + (oc.CustomCode() or b"").decode("utf-8"))
      elif code in self._opnames:
        codes.append(self._opnames[code])
      else:
        self.fail(f"operator code {code} unknown")
    nbuf = self.count(m.BuffersLength(), "buffers")
    buffers = [m.Buffers(i) for i in range(nbuf)]
    subgraphs = [self.subgraph(m.Subgraphs(i), codes, buffers)
                 for i in range(self.count(m.SubgraphsLength(), "subgraphs"))]
    if not subgraphs:
      self.fail("no subgraph")
    desc = (m.Description() or b"").decode("utf-8", "replace")
    return Model(int(m.Version()), desc, subgraphs)

  def buffer_bytes(self, buf) -> np.ndarray | None:
    off, size = int(buf.Offset()), int(buf.Size())
    if off > 1:  # data outside the flatbuffer (files over 2 GB)
      if off + size > self.size:
        self.fail(f"buffer at {off}+{size} past the end of the file")
      return np.frombuffer(self.data, np.uint8, size, off)
    n = self.count(buf.DataLength(), "buffer data", 1)
    return buf.DataAsNumpy() if n else None

  def subgraph(self, g, codes, buffers) -> Graph:
    tensors = []
    nt = self.count(g.TensorsLength(), "tensors")
    for i in range(nt):
      t = g.Tensors(i)
      shape = self.ints(t, "Shape")
      if any(d < 0 for d in shape):
        self.fail(f"tensor {i}: dynamic shape {shape}")
      tname = (t.Name() or b"").decode("utf-8")
      code = t.Type()
      dname, dtype = _DTYPES.get(code, (f"TYPE{code}", None))
      bi = int(t.Buffer())
      if not 0 <= bi < max(len(buffers), 1):
        self.fail(f"tensor {i}: buffer {bi} of {len(buffers)}")
      raw = self.buffer_bytes(buffers[bi]) if buffers else None
      data = None
      if raw is not None and len(raw):
        if dtype is None:
          self.fail(f"tensor {i}: constant of type {dname}")
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if n * np.dtype(dtype).itemsize != len(raw):
          self.fail(f"tensor {i} ({tname}): {len(raw)} bytes for shape {shape} {dname}")
        data = np.frombuffer(raw.tobytes(), dtype).reshape(shape)
        if dtype == np.float16:
          data = data.astype(np.float32)
      quant = None
      q = t.Quantization()
      if q is not None and self.count(q.ScaleLength(), "scales"):
        quant = {"scale": self.ints_f(q, "Scale"), "zero_point": self.ints(q, "ZeroPoint")}
      tensors.append(Tensor(i, tname, shape, dname, bi, data, quant))
    ops = []
    for j in range(self.count(g.OperatorsLength(), "operators")):
      op = g.Operators(j)
      ci = int(op.OpcodeIndex())
      if not 0 <= ci < len(codes):
        self.fail(f"operator {j}: opcode index {ci} of {len(codes)}")
      ins, outs = self.ints(op, "Inputs"), self.ints(op, "Outputs")
      for k in ins + outs:
        if not -1 <= k < nt:
          self.fail(f"operator {j}: tensor index {k} of {nt}")
      ops.append(Operator(j, codes[ci], ins, outs, self.options(op)))
    ins, outs = self.ints(g, "Inputs"), self.ints(g, "Outputs")
    for k in ins + outs:
      if not 0 <= k < nt:
        self.fail(f"subgraph input/output tensor {k} of {nt}")
    name = (g.Name() or b"").decode("utf-8", "replace")
    return Graph(name, tensors, ops, ins, outs)

  def ints_f(self, obj, field: str) -> tuple[float, ...]:
    v = getattr(obj, field + "AsNumpy")()
    return tuple(float(x) for x in np.asarray(v).reshape(-1))

  def options(self, op) -> dict:
    kind = int(op.BuiltinOptionsType())
    table = op.BuiltinOptions()
    if kind == 0 or table is None:
      return {}
    cls_name = self._options_cls.get(kind)
    cls = getattr(self.tflite, cls_name, None) if cls_name else None
    if cls is None:
      self.fail(f"builtin options type {kind} unknown")
    obj = cls()
    obj.Init(table.Bytes, table.Pos)
    out = {}
    for attr in _scalar_fields(cls):
      v = getattr(obj, attr)()
      if isinstance(v, (bool, int, float)):
        key = _snake(attr)
        if key == "padding":
          v = _PADDING.get(v, v)
        elif key == "fused_activation_function":
          v = _ACTIVATIONS.get(v, v)
        out[key] = v
    return out


def read_tflite(source: str | bytes | os.PathLike, name: str | None = None) -> Model:
  """The model of a .tflite file (a path, or its bytes with `name` for messages).

  Raises FileFormatError (one line naming the file) on a file that is not a complete,
  consistent TFLite FlatBuffer; never another exception for bad bytes."""
  if isinstance(source, (bytes, bytearray, memoryview)):
    data, name = bytes(source), name or "<bytes>"
  else:
    name = name or os.fspath(source)
    try:
      with open(source, "rb") as f:
        data = f.read()
    except OSError as e:
      raise FileFormatError(f"{name}: cannot read ({e.strerror or e})") from None
  r = _Reader(data, name)
  try:
    return r.model()
  except FileFormatError:
    raise
  except (struct.error, IndexError, ValueError, TypeError, UnicodeDecodeError,
          AttributeError, OverflowError, MemoryError) as e:
    raise FileFormatError(f"{name}: not a valid .tflite file (damaged: "
                          f"{type(e).__name__}: {str(e)[:80]})") from None
