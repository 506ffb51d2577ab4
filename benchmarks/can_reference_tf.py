"""Reference timing: the released CAN24 (CQFIO/FastImageProcessing, CAN24_AN/demo.py)
re-expressed in tf.keras with the same layers, run on the same machine as
benchmarks/can.py. Development only: TensorFlow is never a jaxvision dependency.

  python -m venv TF_VENV && TF_VENV/bin/pip install tensorflow-cpu
  TF_VENV/bin/python benchmarks/can_reference_tf.py [--batch 4 --crop 256]

The demo's graph: 8 x (3x3 conv, dilation 1,2,...,64,1, no bias) -> w0*x + w1*BN(x)
-> LeakyReLU(0.2), then a 1x1 conv to 3 channels; MSE loss, Adam. Timed as a
tf.function graph (the TF1 Session equivalent), and with XLA (jit_compile=True).
"""
import argparse
import json
import statistics
import time

import numpy as np
import tensorflow as tf


class AdaptiveNorm(tf.keras.layers.Layer):
  def build(self, shape):
    self.w0 = self.add_weight(name="w0", shape=(), initializer="ones")
    self.w1 = self.add_weight(name="w1", shape=(), initializer="zeros")
    self.bn = tf.keras.layers.BatchNormalization(scale=False, epsilon=1e-3, momentum=0.99)

  def call(self, x, training=False):
    return self.w0 * x + self.w1 * self.bn(x, training=training)


def can24():
  x = inp = tf.keras.Input((None, None, 3))
  for rate in [1, 2, 4, 8, 16, 32, 64, 1]:
    x = tf.keras.layers.Conv2D(24, 3, dilation_rate=rate, padding="same", use_bias=False)(x)
    x = AdaptiveNorm()(x)
    x = tf.keras.layers.LeakyReLU(0.2)(x)
  return tf.keras.Model(inp, tf.keras.layers.Conv2D(3, 1)(x))


def timed(fn, *args, reps):
  fn(*args)
  ts = []
  for _ in range(reps):
    t = time.perf_counter()
    r = fn(*args)
    _ = r.numpy() if hasattr(r, "numpy") else r
    ts.append(time.perf_counter() - t)
  return statistics.median(ts)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--crop", type=int, default=256)
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--sizes", default="512x512,1920x1080")
  a = ap.parse_args()
  model = can24()
  opt = tf.keras.optimizers.Adam(1e-4)
  x = tf.random.uniform((a.batch, a.crop, a.crop, 3))
  for xla in (False, True):
    @tf.function(jit_compile=xla)
    def step(x, t):
      with tf.GradientTape() as tape:
        loss = tf.reduce_mean((model(x, training=True) - t) ** 2)
      opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                              model.trainable_variables))
      return loss

    def run_steps(x):
      for _ in range(a.steps):
        loss = step(x, x * 0.5)
      return loss

    t = timed(run_steps, x, reps=max(1, a.reps // 2)) / a.steps
    info = {"impl": "tf.keras CAN24", "tf": tf.__version__, "xla": xla}
    print(json.dumps({**info, "what": "train", "batch": a.batch, "crop": a.crop,
                      "step_ms": round(1e3 * t, 2), "images_per_s": round(a.batch / t, 2),
                      "megapixels_per_s": round(a.batch / t * a.crop ** 2 / 1e6, 3)}), flush=True)
    infer = tf.function(lambda x: model(x, training=False), jit_compile=xla)
    for size in a.sizes.split(","):
      w, h = (int(s) for s in size.split("x"))
      img = tf.random.uniform((1, h, w, 3))
      t = timed(infer, img, reps=a.reps)
      print(json.dumps({**info, "what": "inference", "size": size,
                        "latency_ms": round(1e3 * t, 1),
                        "ms_per_megapixel": round(1e3 * t / (h * w / 1e6), 1)}), flush=True)


if __name__ == "__main__":
  main()
