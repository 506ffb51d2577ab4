"""torchvision.transforms.functional.to_tensor (facenet-pytorch's extract_face uses it)."""
from __future__ import annotations

import numpy as np
import torch


def to_tensor(pic) -> torch.Tensor:
  """PIL image or (H, W[, C]) array -> (C, H, W) float tensor; uint8 scaled to [0, 1]."""
  if isinstance(pic, torch.Tensor):
    return pic
  if not isinstance(pic, np.ndarray):  # PIL
    mode = pic.mode
    pic = np.array(pic, copy=True)
    if mode == "1":
      pic = pic.astype(np.uint8) * 255
  if pic.ndim == 2:
    pic = pic[:, :, None]
  img = torch.from_numpy(np.ascontiguousarray(pic.transpose((2, 0, 1))))
  if img.dtype == torch.uint8:
    return img.to(torch.get_default_dtype()).div(255)
  return img
