"""facenet-pytorch's InceptionResnetV1 on given images, run in the peer venv.

    .venv-peers/bin/python tests/recognition/facenet_peer.py IN.npz OUT_DIR R1 R2 R3

Builds `InceptionResnetV1(pretrained=None, classify=False)` (random weights: the released
ones download) with torch.manual_seed(0), keeps the first R1 / R2 / R3 blocks of
repeat_1 / repeat_2 / repeat_3 (its own block classes, so the test compiles a shorter
network), gives every batch norm a random scale, shift and running statistics (at
initialisation they are 1, 0, 0, 1 and would hide a wrong mapping), and in eval mode
writes OUT_DIR/facenet.pt (torch.save of the state_dict) and OUT_DIR/emb.npy: the
embeddings of IN.npz's `images` (N, 160, 160, 3) pixels in [0, 255], standardised as
facenet-pytorch's fixed_image_standardization, (x - 127.5) / 128.
"""
import os
import sys

import numpy as np
import torch
from facenet_pytorch import InceptionResnetV1


def main():
  inp, out = sys.argv[1], sys.argv[2]
  reps = [int(v) for v in sys.argv[3:6]]
  torch.manual_seed(0)
  net = InceptionResnetV1(pretrained=None, classify=False)
  for name, r in zip(("repeat_1", "repeat_2", "repeat_3"), reps):
    setattr(net, name, torch.nn.Sequential(*list(getattr(net, name))[:r]))
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
        c = m.num_features
        m.weight.copy_(torch.empty(c).uniform_(0.5, 1.5, generator=g)
                       * torch.sign(torch.rand(c, generator=g) - 0.1))
        m.bias.copy_(torch.randn(c, generator=g) * 0.1)
        m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
        m.running_var.copy_(torch.empty(c).uniform_(0.5, 2.0, generator=g))
  net.eval()
  os.makedirs(out, exist_ok=True)
  torch.save(net.state_dict(), os.path.join(out, "facenet.pt"))
  x = torch.from_numpy(np.load(inp)["images"].astype(np.float32)).permute(0, 3, 1, 2)
  with torch.no_grad():
    emb = net((x - 127.5) / 128.0).numpy()
  np.save(os.path.join(out, "emb.npy"), emb)


if __name__ == "__main__":
  main()
