"""Peer venv: facenet-pytorch's detect_face on one image, every stage's arrays -> .npz.

    .venv-peers/bin/python benchmarks/fidelity/facenet_stages.py IMAGE OUT.npz

The same code as facenet_pytorch.models.utils.detect_face (batch of one), with the
intermediate arrays kept: per pyramid level the resampled image (before normalisation),
P-Net's probability and regression maps, the level's candidates (x1 y1 x2 y2 score reg*4)
and the picks of its NMS; the candidates after the cross-level NMS; the R-Net input boxes,
crop regions, crops, scores and regression; the same for O-Net; the final boxes/points.
Investigation tool (benchmarks/fidelity/compare_stages.py reads the file).
"""
import sys

import numpy as np
import torch
from facenet_pytorch import MTCNN
from facenet_pytorch.models.utils.detect_face import (batched_nms, batched_nms_numpy, bbreg,
                                                     generateBoundingBox, imresample, pad,
                                                     rerec)

sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.dirname(
    __import__("os").path.abspath(__file__))) + "/peers")
from facenet_detect import load_rgb  # noqa: E402


def main(path, out_path):
  m = MTCNN(keep_all=True, device="cpu")
  pnet, rnet, onet = m.pnet, m.rnet, m.onet
  img = load_rgb(path)
  d = {"image": img}
  with torch.no_grad():
    imgs = torch.as_tensor(img.copy())[None].permute(0, 3, 1, 2).float()
    h, w = imgs.shape[2:4]
    mm = 12.0 / 20
    minl = min(h, w) * mm
    scales, s = [], mm
    while minl >= 12:
      scales.append(s)
      s *= 0.709
      minl *= 0.709
    d["scales"] = np.array(scales)
    boxes, inds, picks, offset = [], [], [], 0
    for li, scale in enumerate(scales):
      im = imresample(imgs, (int(h * scale + 1), int(w * scale + 1)))
      d[f"L{li}_image"] = im[0].permute(1, 2, 0).numpy()
      reg, probs = pnet((im - 127.5) * 0.0078125)
      d[f"L{li}_prob"] = probs[0, 1].numpy()
      d[f"L{li}_reg"] = reg[0].permute(1, 2, 0).numpy()
      bs, ii = generateBoundingBox(reg, probs[:, 1], scale, 0.6)
      pick = batched_nms(bs[:, :4], bs[:, 4], ii, 0.5)
      d[f"L{li}_cand"] = bs.numpy()
      d[f"L{li}_pick"] = pick.numpy()
      boxes.append(bs)
      inds.append(ii)
      picks.append(pick + offset)
      offset += bs.shape[0]
    boxes, inds = torch.cat(boxes), torch.cat(inds)
    picks = torch.cat(picks)
    d["level_of"] = np.concatenate([np.full(len(d[f"L{i}_cand"]), i) for i in range(len(scales))])[picks.numpy()]
    boxes, inds = boxes[picks], inds[picks]
    d["s1_after_level_nms"] = boxes.numpy()
    pick = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)
    d["s1_cross_pick"] = pick.numpy()
    boxes, inds = boxes[pick], inds[pick]
    d["s1_kept"] = boxes.numpy()
    regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    boxes = torch.stack([boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
                         boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh,
                         boxes[:, 4]]).permute(1, 0)
    boxes = rerec(boxes)
    for stage, net, size, thr in (("s2", rnet, 24, 0.7), ("s3", onet, 48, 0.7)):
      d[f"{stage}_in"] = boxes.numpy().copy()
      y, ey, x, ex = pad(boxes, w, h)
      d[f"{stage}_regions"] = np.stack([y - 1, ey, x - 1, ex], 1)
      crops = []
      for k in range(len(y)):
        if ey[k] > (y[k] - 1) and ex[k] > (x[k] - 1):
          crops.append(imresample(imgs[0:1, :, (y[k] - 1):ey[k], (x[k] - 1):ex[k]], (size, size)))
      crops = torch.cat(crops)
      d[f"{stage}_crops"] = crops.permute(0, 2, 3, 1).numpy()
      out = net((crops - 127.5) * 0.0078125)
      if stage == "s2":
        reg, prob = out
        d["s2_score"], d["s2_reg"] = prob[:, 1].numpy(), reg.numpy()
        ip = prob[:, 1] > thr
        boxes = torch.cat((boxes[ip, :4], prob[ip, 1:2]), 1)
        inds, mv = inds[ip], reg[ip]
        pick = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)
        d["s2_pass"], d["s2_pick"] = np.flatnonzero(ip.numpy()), pick.numpy()
        boxes, inds, mv = boxes[pick], inds[pick], mv[pick]
        boxes = rerec(bbreg(boxes, mv))
      else:
        reg, lm, prob = out
        d["s3_score"], d["s3_reg"], d["s3_lm"] = prob[:, 1].numpy(), reg.numpy(), lm.numpy()
        ip = prob[:, 1] > thr
        pts = lm[ip].T
        boxes = torch.cat((boxes[ip, :4], prob[ip, 1:2]), 1)
        inds, mv = inds[ip], reg[ip]
        wi, hi = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
        px = wi.repeat(5, 1) * pts[:5] + boxes[:, 0].repeat(5, 1) - 1
        py = hi.repeat(5, 1) * pts[5:10] + boxes[:, 1].repeat(5, 1) - 1
        pts = torch.stack((px, py)).permute(2, 1, 0)
        boxes = bbreg(boxes, mv)
        pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], inds, 0.7, "Min")
        d["s3_pass"], d["s3_pick"] = np.flatnonzero(ip.numpy()), pick.numpy()
        d["final_boxes"], d["final_points"] = boxes[pick].numpy(), pts[pick].numpy()
  np.savez(out_path, **d)
  print(f"{path}: {len(scales)} levels, stage-1 candidates {sum(len(d[f'L{i}_cand']) for i in range(len(scales)))}, "
        f"after level NMS {len(d['s1_after_level_nms'])}, R-Net in {len(d['s2_in'])}, "
        f"O-Net in {len(d['s3_in'])}, faces {len(d['final_boxes'])}")


if __name__ == "__main__":
  main(*sys.argv[1:3])
