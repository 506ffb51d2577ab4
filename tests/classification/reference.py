"""timm/torchvision ResNet state-dict layouts from their naming rules (shared by the tests)."""
from __future__ import annotations


def _make_divisible(v, divisor=8):  # timm's, with round_limit=0 as its SEModule uses
  return max(divisor, int(v + divisor / 2) // divisor * divisor)


def reference_shapes(layers, bottleneck, groups=1, base_width=64, se=False, width=64,
                     num_classes=1000) -> dict[str, tuple]:
  """timm/torchvision ResNet state-dict keys and shapes, from their naming rules."""
  sd = {}

  def conv(k, o, i, ks):
    sd[k + ".weight"] = (o, i, ks, ks)

  def bn(k, c):
    for s in ("weight", "bias", "running_mean", "running_var"):
      sd[f"{k}.{s}"] = (c,)
    sd[k + ".num_batches_tracked"] = ()

  conv("conv1", width, 3, 7)
  bn("bn1", width)
  inp = width
  for i, n in enumerate(layers):
    planes = width * 2 ** i
    for j in range(n):
      p = f"layer{i + 1}.{j}"
      if bottleneck:
        w, out = int(planes * base_width / 64) * groups, planes * 4
        conv(p + ".conv1", w, inp, 1), bn(p + ".bn1", w)
        conv(p + ".conv2", w, w // groups, 3), bn(p + ".bn2", w)
        conv(p + ".conv3", out, w, 1), bn(p + ".bn3", out)
      else:
        out = planes
        conv(p + ".conv1", out, inp, 3), bn(p + ".bn1", out)
        conv(p + ".conv2", out, out, 3), bn(p + ".bn2", out)
      if se:
        r = _make_divisible(out / 16)
        sd.update({p + ".se.fc1.weight": (r, out, 1, 1), p + ".se.fc1.bias": (r,),
                   p + ".se.fc2.weight": (out, r, 1, 1), p + ".se.fc2.bias": (out,)})
      if j == 0 and (i > 0 or inp != out):
        conv(p + ".downsample.0", out, inp, 1), bn(p + ".downsample.1", out)
      inp = out
  sd["fc.weight"], sd["fc.bias"] = (num_classes, inp), (num_classes,)
  return sd
