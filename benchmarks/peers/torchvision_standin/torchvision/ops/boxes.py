"""torchvision.ops.boxes.nms / batched_nms / box_iou in pure torch (see the package doc)."""
from __future__ import annotations

import torch


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
  """Indices of the kept boxes (int64), by decreasing score: torchvision's CPU kernel.

  boxes (N, 4) x1, y1, x2, y2; a box is suppressed when its IoU with a higher-scoring kept
  box exceeds `iou_threshold`; ties in score keep their input order (stable sort).
  """
  if boxes.numel() == 0:
    return torch.empty((0,), dtype=torch.int64, device=boxes.device)
  x1, y1, x2, y2 = (boxes[:, i].contiguous() for i in range(4))
  areas = (x2 - x1) * (y2 - y1)
  order = torch.sort(scores, stable=True, dim=0, descending=True).indices
  # Work in score order; the kernel's inner loop visits only later, unsuppressed boxes.
  ox1, oy1, ox2, oy2, oa = x1[order], y1[order], x2[order], y2[order], areas[order]
  n = order.numel()
  suppressed = torch.zeros(n, dtype=torch.bool)
  keep = []
  thr = torch.tensor(iou_threshold, dtype=torch.float64)
  for i in range(n):
    if suppressed[i]:
      continue
    keep.append(i)
    if i + 1 == n:
      break
    s = slice(i + 1, n)
    xx1 = torch.maximum(ox1[i], ox1[s])
    yy1 = torch.maximum(oy1[i], oy1[s])
    xx2 = torch.minimum(ox2[i], ox2[s])
    yy2 = torch.minimum(oy2[i], oy2[s])
    w = torch.clamp(xx2 - xx1, min=0)
    h = torch.clamp(yy2 - yy1, min=0)
    inter = w * h
    ovr = inter / (oa[i] + oa[s] - inter)
    # the kernel compares a scalar_t ovr with a double threshold: promote, as C++ does
    suppressed[s] |= ovr.to(torch.float64) > thr
  return order[torch.as_tensor(keep, dtype=torch.int64)]


def _batched_nms_coordinate_trick(boxes, scores, idxs, iou_threshold):
  if boxes.numel() == 0:
    return torch.empty((0,), dtype=torch.int64, device=boxes.device)
  max_coordinate = boxes.max()
  offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
  boxes_for_nms = boxes + offsets[:, None]
  return nms(boxes_for_nms, scores, iou_threshold)


def _batched_nms_vanilla(boxes, scores, idxs, iou_threshold):
  keep_mask = torch.zeros_like(scores, dtype=torch.bool)
  for class_id in torch.unique(idxs):
    curr_indices = torch.where(idxs == class_id)[0]
    curr_keep_indices = nms(boxes[curr_indices], scores[curr_indices], iou_threshold)
    keep_mask[curr_indices[curr_keep_indices]] = True
  keep_indices = torch.where(keep_mask)[0]
  return keep_indices[scores[keep_indices].sort(descending=True)[1]]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
  """NMS independently per value of `idxs`, as torchvision.ops.boxes.batched_nms."""
  if boxes.numel() > (4000 if boxes.device.type == "cpu" else 20000):
    return _batched_nms_vanilla(boxes, scores, idxs, iou_threshold)
  return _batched_nms_coordinate_trick(boxes, scores, idxs, iou_threshold)


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
  area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
  area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
  lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])
  rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
  wh = (rb - lt).clamp(min=0)
  inter = wh[:, :, 0] * wh[:, :, 1]
  return inter / (area1[:, None] + area2 - inter)
