"""Dev-only stand-in for the few torchvision pieces facenet-pytorch imports (pure torch).

facenet_pytorch/models/utils/detect_face.py imports
  from torchvision.ops.boxes import batched_nms      (the detector uses it)
  from torchvision.transforms import functional as F (F.to_tensor, in extract_face only)
This package provides exactly those, written to give torchvision's results: `nms` is
torchvision's CPU kernel (csrc/ops/cpu/nms_kernel.cpp) step for step — order by a stable
descending sort of the scores, areas (x2 - x1) * (y2 - y1) without '+1', a box suppressed
when its IoU with a kept box is > the threshold, float32 arithmetic in the same order —
and `batched_nms` chooses between the coordinate trick and the per-class loop as
torchvision.ops.boxes.batched_nms does. It is installed into .venv-peers only
(benchmarks/peers/setup.sh); it is never a dependency of jaxvision.
"""
__version__ = "0.0.0+standin"

from . import ops, transforms  # noqa: E402,F401
