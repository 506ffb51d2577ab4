from .boxes import batched_nms, box_iou, nms  # noqa: F401
