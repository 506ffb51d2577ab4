r"""Johnson et al. 2016 feed-forward style transfer: one style image, a content dataset.

  python -m train --config configs/johnson.py --workdir runs/johnson
  python -m train --config configs/johnson.py:style=my_painting.jpg,descriptor_weights=vgg16-397923af.pth,preset=paper --workdir runs/johnson_paper
  jaxvision stylize --checkpoint runs/johnson photo.jpg stylised.png

Arguments (comma-separated key=value):
  style               style image: a file, or an embedded photo's name (default
                      immunohistochemistry: a stained-tissue micrograph, strongly coloured)
  descriptor_weights  VGG-16 weights: torchvision vgg16-397923af.pth, Keras
                      vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5, or a workdir of
                      `jaxvision convert --model vgg16`. Empty (default): a RANDOM descriptor,
                      said plainly in the output (random VGG features still carry texture
                      statistics, but the results are not the paper's).
  preset              cpu (default) | paper

Presets
  cpu   Johnson net at half width (16-32-64 channels, 5 residual blocks) on 64x64 crops of
        the embedded photos, batch 2, 300 Adam steps (1e-3), VGG-16 descriptor, style image
        at 128 px: about 2-3 minutes on a 2-core CPU. The train loss (logged every 20 steps)
        falls steadily; the held-out photos' style loss drops the most.
  paper the paper's recipe (fast-neural-style defaults): full net, 256x256 crops, batch 4,
        40k iterations of Adam 1e-3, content relu2_2, style relu1_2/2_2/3_3/4_3, style image
        at 512 px; COCO in the paper: set data.dataset=coco/2017 (array_record TFDS) or
        folder:/path/to/images.

Loss weights are set for torchvision-preprocessed features (inputs scaled by 1/std of
ImageNet); with Keras (Caffe-preprocessed, 0-255) weights the features are ~58x larger:
divide style_weight by ~3400 to keep the balance. Every key can be overridden:
--config.style.style_weight=3e4 --config.data.dataset=folder:/my/photos
"""
import ml_collections

from configs.common import check_preset, parse_arg, set_steps

ARGS = ("style", "descriptor_weights", "preset", "arch")


def parse(arg: str, defaults: dict) -> dict:
  """The shared parser; a bare cpu/paper sets the preset (kept: texture_net.py uses it)."""
  return parse_arg(arg, bare={"cpu": "preset", "paper": "preset"} if "preset" in defaults
                   else None, **defaults)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  opts = parse(arg, dict(style="immunohistochemistry", descriptor_weights="", preset="cpu",
                         arch="vgg16"))
  check_preset(opts["preset"])
  c = ml_collections.ConfigDict()
  c.task = "style_transfer"
  # padding="valid": the paper's (40-px reflection-padded input, unpadded residual convs);
  # workdirs trained before hold the model's default, "same" (every conv reflection-padded).
  c.model = ml_collections.ConfigDict({"name": "johnson",
                                       "kwargs": {"width": 16, "num_residual": 5,
                                                  "padding": "valid"}})
  c.descriptor = ml_collections.ConfigDict(dict(
      arch=opts["arch"], weights=opts["descriptor_weights"], width=1.0))
  c.style = ml_collections.ConfigDict(dict(
      image=opts["style"], size=128,
      loss="gram",                     # gram | histogram | both (Wilmot et al. 2017)
      content_layer="relu2_2",
      style_layers=["relu1_2", "relu2_2", "relu3_3", "relu4_3"],
      content_weight=1.0, style_weight=1e5, tv_weight=1.0, histogram_weight=1.0))
  c.data = ml_collections.ConfigDict(dict(
      dataset="photos",          # "photos" | "folder:/path" | an array_record TFDS name (coco/2017)
      data_dir="", train_split="train", eval_split="test", operator="",
      crop_size=64, eval_crop=128, eval_max_images=3, worker_count=2))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=1e-3, schedule="constant", warmup_steps=0))
  set_steps(c, total_steps=300, batch_size=2, log_every=20,
            eval_every=150, checkpoint_every=100, keep_checkpoints=2, seed=0)

  if opts["preset"] == "paper":
    c.model.kwargs.width = 32
    c.style.size = 512
    c.data.crop_size = 256
    c.data.eval_crop = 512
    c.batch_size = 4
    c.total_steps = 40_000
    c.log_every = 100
    c.eval_every = 2_000
    c.checkpoint_every = 2_000
  return c
