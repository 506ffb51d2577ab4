"""Runs MediaPipe's face mesh in a TFLite interpreter (in the peer venv: ai-edge-litert).

    .venv-peers/bin/python tests/landmarks/facemesh_peer.py MODEL.tflite IN.npy OUT.npz

IN.npy: (N, 192, 192, 3) float32 crops in [0, 1]. Writes OUT.npz with "landmarks" (N,
1404) and "face_flag" (N,), the raw outputs of the two output tensors (picked by size),
one interpreter call per crop (the model's batch is 1). The reference kernels
(BUILTIN_REF) are used, not XNNPACK, so that the reference is TFLite's plain float32
arithmetic.
"""
import sys

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType


def main():
  model, src, out = sys.argv[1:4]
  x = np.load(src)
  it = Interpreter(model_path=model,
                   experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
  it.allocate_tensors()
  inp = it.get_input_details()[0]["index"]
  outs = {int(np.prod(d["shape"])): d["index"] for d in it.get_output_details()}
  mesh, flag = [], []
  for crop in x:
    it.set_tensor(inp, crop[None].astype(np.float32))
    it.invoke()
    mesh.append(it.get_tensor(outs[1404]).reshape(-1).copy())
    flag.append(float(it.get_tensor(outs[1]).reshape(-1)[0]))
  np.savez(out, landmarks=np.stack(mesh), face_flag=np.array(flag, np.float32))


if __name__ == "__main__":
  main()
