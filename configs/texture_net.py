r"""Ulyanov et al. 2016 texture networks: texture synthesis or stylisation with a multi-scale
generator (noise + downsampled image at each scale, join blocks).

  python -m train --config configs/texture_net.py --workdir runs/texture             # synthesis
  python -m train --config configs/texture_net.py:mode=stylize,style=my.jpg --workdir runs/tn_style
  jaxvision stylize --checkpoint runs/texture any_image.png texture.png   # IN sets only the size
  jaxvision stylize --checkpoint runs/tn_style photo.jpg stylised.png --seed 3

Arguments (comma-separated key=value):
  mode                texture (default: the generator sees only noise; style loss only) |
                      stylize (it also sees the content image; content + style losses)
  style               texture / style image: a file or an embedded photo's name (default
                      immunohistochemistry)
  descriptor_weights  VGG weights (torchvision .pth, Keras .h5, converted workdir); empty:
                      RANDOM descriptor, said plainly
  loss                gram (default) | histogram | both (Wilmot et al. 2017 histogram loss)
  preset              cpu (default) | paper

Presets
  cpu   5 scales of 8 channels per block, 64x64 outputs, batch 2, 300 Adam steps, style image
        at 128 px: about 2-3 minutes on a 2-core CPU; the style loss falls steadily.
  paper Ulyanov et al.: 6 scales (K=5 plus the finest), 8 channels per block, 256x256,
        batch 16 (the paper's 16 noise samples), Adam 0.1 decayed, 2,000 iterations for
        textures (~2 hours on a K40 in the paper); relu1_1..relu5_1 style layers of VGG-19.

Every key can be overridden: --config.style.style_weight=1e4 --config.model.kwargs.scales=6
"""
from configs import johnson as _johnson
from configs.common import check_preset


def get_config(arg: str = ""):
  opts = _johnson.parse(arg, dict(mode="texture", style="immunohistochemistry",
                                  descriptor_weights="", loss="gram", preset="cpu"))
  check_preset(opts["preset"])
  if opts["mode"] not in ("texture", "stylize"):
    raise ValueError(f"mode {opts['mode']!r}: choose from texture, stylize")
  c = _johnson.get_config(f"style={opts['style']},descriptor_weights={opts['descriptor_weights']}")
  texture = opts["mode"] == "texture"
  c.task = "texture" if texture else "style_transfer"
  c.model.name = "texture_net"
  c.model.kwargs = {"scales": 5, "width": 8, "noise_channels": 3, "image_input": not texture}
  c.style.loss = opts["loss"]
  if texture:
    c.style.content_weight = 0.0
  c.optimizer.learning_rate = 1e-2

  if opts["preset"] == "paper":
    c.model.kwargs.scales = 6
    c.descriptor.arch = "vgg19"
    c.style.style_layers = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    c.style.size = 256
    c.data.crop_size = 256
    c.data.eval_crop = 256
    c.batch_size = 16
    c.optimizer.learning_rate = 0.1
    c.optimizer.schedule = "step"
    c.optimizer.boundaries = [0.5, 0.75]
    c.optimizer.decay_factor = 0.1
    c.total_steps = 2_000
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 500
  return c
