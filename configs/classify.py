r"""Image classification: ResNet / SE-ResNet / SE-ResNeXt / SPP-net on a named dataset.

  python -m train --config configs/classify.py:model=se_resnet18,data=digits --workdir runs/digits
  python -m train --config configs/classify.py:model=se_resnet50,data=imagenet2012,preset=paper \
      --workdir runs/se_resnet50
  jaxvision classify --checkpoint runs/digits some_digit.png

Arguments (comma-separated key=value; a bare first word is the model):
  model   any registered classifier (`jaxvision models`): resnet18..152, se_resnet18..152,
          se_resnext50_32x4d, se_resnext101_32x4d, spp_resnet18, spp_net
  data    digits (embedded, 1797 real 8x8 digits upsampled to 32x32) | lfw (embedded,
          faces vs non-faces, 25x25 -> 32x32) | cifar10 | imagenet2012 (TFDS, prepared
          as array_record in data.data_dir; never downloaded)
  preset  cpu (default): a 1/4-width model (width=16: 1/16 of the FLOPs), SGD-momentum
          0.1, cosine, label smoothing 0.1, batch 64, 200 steps: about a minute on 2 quiet
          cores; measured on digits with resnet18: top-1 0.97 after 100 steps, 0.99 after
          300, on the 359 held-out images.
          paper: the SENet recipe (Hu et al.): full width, SGD momentum 0.9, batch 256
          (lr 0.15 = their 0.6 per 1024 scaled linearly), /10 at 30/60/90 of 100 epochs,
          weight decay 1e-4, no label smoothing, bf16 compute; 224 crops, evaluation on
          the 224 centre crop of the 256 resize. Expected (SENet Table 2): top-1 error
          24.80 (ResNet-50) vs 23.29 (SE-ResNet-50).
  opt     sgd (default) | adamw;  schedule  cosine | step

Every key can be overridden: --config.optimizer.learning_rate=0.05 --config.total_steps=1000
--config.model.kwargs.dtype=bfloat16 --config.label_smoothing=0
"""
import ml_collections

from configs.common import check_preset, parse_arg

DATA = {
    "digits": dict(num_classes=10, image_size=32, augment="pad_crop", pad=2, flips=False,
                   train_split="train", eval_split="test", crop_fraction=1.0,
                   train_images=1438, class_names=[str(i) for i in range(10)]),
    "lfw": dict(num_classes=2, image_size=32, augment="pad_crop", pad=2, flips=True,
                train_split="train", eval_split="test", crop_fraction=1.0,
                train_images=160, class_names=["non-face", "face"]),
    "cifar10": dict(num_classes=10, image_size=32, augment="pad_crop", pad=4, flips=True,
                    train_split="train", eval_split="test", crop_fraction=1.0,
                    train_images=50_000,
                    class_names=["airplane", "automobile", "bird", "cat", "deer", "dog",
                                 "frog", "horse", "ship", "truck"]),
    "imagenet2012": dict(num_classes=1000, image_size=224, augment="inception", pad=0,
                         flips=True, train_split="train", eval_split="validation",
                         crop_fraction=0.875, train_images=1_281_167, class_names=[]),
}


def get_config(arg: str = "model=resnet18,data=digits") -> ml_collections.ConfigDict:
  o = parse_arg(arg, first="model", model="resnet18", data="digits", preset="cpu", opt="sgd",
                schedule="")
  if o["data"] not in DATA:
    raise ValueError(f"data {o['data']!r}: choose from {', '.join(DATA)}")
  check_preset(o["preset"])
  d = DATA[o["data"]]
  cpu = o["preset"] == "cpu"
  name = o["model"]

  kwargs = {"num_classes": d["num_classes"], "dtype": "float32" if cpu else "bfloat16"}
  if name == "spp_net":
    if cpu:
      kwargs.update(widths=(32, 64, 96, 96, 64), fc_dim=256)
  else:  # the ResNet family
    if cpu:
      kwargs["width"] = 16
    if d["image_size"] <= 32 and o["data"] == "cifar10":
      kwargs["stem"] = "cifar"  # keep 32x32 at stage 1 (digits/lfw hold 8x8/25x25 anyway)

  c = ml_collections.ConfigDict()
  c.task = "classification"
  c.model = ml_collections.ConfigDict({"name": name, "kwargs": kwargs})
  c.label_smoothing = 0.1 if cpu else 0.0
  c.data = ml_collections.ConfigDict(dict(
      dataset=o["data"], data_dir="", train_split=d["train_split"], eval_split=d["eval_split"],
      image_size=d["image_size"], augment=d["augment"], pad=d["pad"], flips=d["flips"],
      crop_fraction=d["crop_fraction"], class_names=d["class_names"],
      eval_batch_size=400 if cpu else 250, eval_max_images=0, worker_count=0 if cpu else 8))
  c.batch_size = 64 if cpu else 256
  if cpu:
    c.total_steps = 200
  else:
    c.total_steps = (100 * d["train_images"]) // c.batch_size   # 100 epochs
  schedule = o["schedule"] or ("cosine" if cpu else "step")
  if o["opt"] == "sgd":
    opt = dict(name="sgd", learning_rate=0.1 if cpu else 0.6 * c.batch_size / 1024,
               momentum=0.9, nesterov=False, weight_decay=5e-4 if cpu else 1e-4)
  elif o["opt"] == "adamw":
    opt = dict(name="adamw", learning_rate=2e-3 if cpu else 1e-3, weight_decay=0.05)
  else:
    raise ValueError(f"opt {o['opt']!r}: choose sgd or adamw")
  opt.update(schedule=schedule, warmup_steps=20 if cpu else 5 * d["train_images"] // c.batch_size // 10,
             boundaries=[0.3, 0.6, 0.9], decay_factor=0.1)
  if schedule not in ("cosine", "step"):
    raise ValueError(f"schedule {schedule!r}: choose cosine or step")
  c.optimizer = ml_collections.ConfigDict(opt)
  c.log_every = 20 if cpu else 100
  c.eval_every = 100 if cpu else 5_000
  c.checkpoint_every = 100 if cpu else 5_000
  c.keep_checkpoints = 3
  c.seed = 0
  return c
