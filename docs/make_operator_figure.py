"""Renders docs/operators.jpg: every registered operator applied to one embedded photo.

  python docs/make_operator_figure.py
"""
import os
import time

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import skimage.data
from PIL import Image

from jaxvision.can import operators


def main():
  img = Image.fromarray(skimage.data.astronaut()).resize((256, 256), Image.LANCZOS)
  x = np.asarray(img, np.float32) / 255.0
  names = operators.list_operators()
  fig, axes = plt.subplots(2, (len(names) + 2) // 2, figsize=(3 * ((len(names) + 2) // 2), 6.4))
  axes = axes.ravel()
  axes[0].imshow(x)
  axes[0].set_title("input (astronaut)")
  for ax, name in zip(axes[1:], names):
    t = time.perf_counter()
    y = operators.get(name)(x)
    ax.imshow(y)
    ax.set_title(f"{name} ({time.perf_counter() - t:.2f} s)")
  for ax in axes:
    ax.axis("off")
  fig.tight_layout()
  out = os.path.join(os.path.dirname(__file__), "operators.jpg")
  fig.savefig(out, dpi=80, pil_kwargs={"quality": 85})
  print(out)


if __name__ == "__main__":
  main()
