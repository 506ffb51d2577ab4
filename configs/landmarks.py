r"""Facial landmarks: PFLD (Guo et al. 2019) and CFAN (Zhang et al. 2014) trained by the
generic trainer.

  python -m train --config configs/landmarks.py --workdir runs/pfld
  python -m train --config configs/landmarks.py:model=pfld,width=0.25,data=folder:/data/300w \
      --workdir runs/pfld025
  python -m train --config configs/landmarks.py:loss=wing --workdir runs/pfld_wing

  python -m train --config configs/landmarks.py:model=cfan --workdir runs/cfan
  python -m train --config configs/landmarks.py:model=cfan,stages=3,stage_steps=300/200/200/200 \
      --workdir runs/cfan_long

Arguments (key=value): `model` (pfld | cfan), `width` (1.0 = PFLD 1X, 0.25 = 0.25X), `size` (input
crop side, 112), `loss` (pfld | wing | l2), `data` (`embedded`, `folder:/path` of images
with iBUG .pts files, `tfds:300w` or `tfds:wflw`), `flip` (probability of a horizontal
mirror per training face; default 0 in the cpu preset, 0.5 in the paper preset), `preset`
(cpu | paper).

TFDS sets (docs/landmarks.md, "Data"): prepared once from a manual dir the user fills
(default $TFDS_DATA_DIR/downloads/manual/300w or .../wflw; config data.manual_dir names
another); `num_points` follows the data (68 for 300-W, 98 for WFLW). Evaluation split:
data.eval_split (300-W: common | challenging | full, default common; WFLW: test). WFLW's
attribute flags weight PFLD's loss (attribute_weights, on by default for tfds:wflw;
--config.attribute_weights=False turns it off; data without attributes refuses it).

Data: `embedded` is 81 training faces (scikit-image's astronaut and LFW crops) whose
68-point labels are dlib's shape predictor's output (a teacher: this trains a student to
imitate dlib, not to match human annotations); 20 LFW crops are the test split.

CFAN (`model=cfan`, docs/landmarks.md "CFAN"): `stages` (local SANs after the global one, 3),
`stage_steps` (supervised steps per stage, '/'-separated, global first; default 150 each in
the cpu preset), `pretrain_steps` (denoising auto-encoder steps per hidden layer at the
start of each stage, greedily layer by layer: tied weights, masking noise 0.25; default 0,
none); the stages train one after another in one run, total_steps = the sum over stages of
pretrain_steps x hidden layers + stage_steps (set again if you change the hidden layers by
--config.model.kwargs). Each finished stage is frozen exactly: the task chains the
optimiser with a mask that zeroes the updates of every stage not training at the step
(cfan.freeze_untrained), so Adam keeps its momentum. Loss l2 (or wing). cpu preset: SANs of
256-128 hidden units, 600 steps of batch 16; test NME against the teacher after each stage
in docs/landmarks.md. paper preset: 1600-900-400 units, batch 64, Adam 1e-4, 3000 + 3 x
2000 steps (a guess at a recipe, not the paper's schedule).

Presets
  cpu   (default) 300 Adam steps of batch 16 at width 0.25 (minutes on 2 CPU cores).
        Measured on the embedded faces (seed 0): test NME (inter-ocular, against the
        teacher's points on the 20 held-out LFW crops) 0.165 at step 100, 0.143 at 200,
        0.139 at 300; the training batches' NME 0.085 at 300 (81 faces: a smoke test of
        the recipe, not a landmark model to use).
  paper PFLD's recipe for 300-W / WFLW on a GPU as recalled (check the paper before
        relying on it): width 1.0, batch 256, Adam lr 1e-4, weight decay 1e-6 (as adamw),
        ~12k steps (about 64 epochs of 300-W's 3,148 training faces with 16 augmented
        copies each). Paper (300-W, inter-ocular NME %, common /
        full set; recalled, not checked here): 1X 3.32 / 3.76, 0.25X 3.38 / 4.02.
"""
import ml_collections

from configs.common import check_preset, parse_arg, set_steps


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  opts = parse_arg(arg, first="model", model="pfld", width="", size="112", loss="pfld",
                   data="embedded", flip="", preset="cpu", stages="3", stage_steps="",
                   pretrain_steps="0")
  preset = check_preset(opts["preset"])
  if opts["model"] == "cfan":
    return _cfan_config(opts, preset)
  if opts["model"] != "pfld":
    raise ValueError(f"configs/landmarks.py trains pfld or cfan; got model={opts['model']}")
  if opts["loss"] not in ("pfld", "wing", "l2"):
    raise ValueError(f"loss={opts['loss']}: choose pfld, wing or l2")
  width = float(opts["width"] or (1.0 if preset == "paper" else 0.25))
  c = ml_collections.ConfigDict()
  c.task = "landmarks"
  c.model = ml_collections.ConfigDict({"name": "pfld", "kwargs": {
      "num_points": 98 if opts["data"] == "tfds:wflw" else 68, "width": width,
      "input_size": int(opts["size"])}})
  c.loss = opts["loss"]
  c.loss_floor = 1.0   # PFLD's weight is a * (floor + sum(1 - cos)); the paper's floor is 0
  c.attribute_weights = opts["data"] == "tfds:wflw"   # a: PFLD's attribute weight (task.py)
  c.wing_w, c.wing_eps = 10.0, 2.0
  c.data = ml_collections.ConfigDict(dict(
      dataset=opts["data"], data_dir="", eval_folder="", crop_scale=1.25, eval_batch_size=20,
      manual_dir="", eval_split="",
      flip=float(opts["flip"] or (0.5 if preset == "paper" else 0.0))))
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=1e-3, schedule="cosine", warmup_steps=20, grad_clip_norm=5.0))
  set_steps(c, total_steps=300, batch_size=16, log_every=20, eval_every=100,
            checkpoint_every=100, keep_checkpoints=2, seed=0)
  if preset == "paper":
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=1e-4, weight_decay=1e-6, schedule="cosine",
        warmup_steps=0))
    c.batch_size = 256
    c.total_steps = 12_000
    c.log_every, c.eval_every, c.checkpoint_every = 100, 1000, 1000
  return c


def _cfan_config(opts: dict, preset: str) -> ml_collections.ConfigDict:
  """CFAN, its stages trained one after another in one run (jaxvision/landmarks/cfan.py):
  `stages` local SANs after the global one, `stage_steps` the steps of each stage,
  '/'-separated (global first), e.g. stage_steps=200/100/100/100; `pretrain_steps`
  auto-encoder steps per hidden layer at the start of each stage (0: none)."""
  if opts["loss"] not in ("pfld", "wing", "l2"):
    raise ValueError(f"loss={opts['loss']}: choose l2 or wing for cfan")
  k = int(opts["stages"])
  if k < 0:
    raise ValueError(f"stages={k}: the number of local stages, 0 or more")
  if opts["stage_steps"]:
    steps = [int(v) for v in opts["stage_steps"].split("/")]
    if len(steps) != k + 1 or min(steps) < 1:
      raise ValueError(f"stage_steps={opts['stage_steps']}: {k + 1} positive counts "
                       "(global, then each local stage)")
  else:
    steps = [3000] + [2000] * k if preset == "paper" else [150] * (k + 1)
  paper = preset == "paper"
  hidden = (1600, 900, 400) if paper else (256, 128)
  pre = int(opts["pretrain_steps"])
  if pre < 0:
    raise ValueError(f"pretrain_steps={pre}: auto-encoder steps per hidden layer, 0 or more")
  c = ml_collections.ConfigDict()
  c.task = "landmarks"
  c.model = ml_collections.ConfigDict({"name": "cfan", "kwargs": {
      "num_points": 98 if opts["data"] == "tfds:wflw" else 68,
      "input_size": int(opts["size"]), "global_size": 50, "num_stages": k,
      "global_hidden": hidden, "local_hidden": hidden, "stage_steps": tuple(steps),
      "shape_noise": 0.02, "pretrain_steps": pre, "pretrain_mask": 0.25}})
  c.loss = "l2" if opts["loss"] == "pfld" else opts["loss"]   # CFAN has no angle head
  c.loss_floor = 1.0
  c.attribute_weights = False
  c.wing_w, c.wing_eps = 10.0, 2.0
  c.data = ml_collections.ConfigDict(dict(
      dataset=opts["data"], data_dir="", eval_folder="", crop_scale=1.25, eval_batch_size=20,
      manual_dir="", eval_split="",
      flip=float(opts["flip"] or (0.5 if paper else 0.0))))
  # constant rate: a later stage must not inherit the decay of the earlier ones; b2 0.99
  # because a stage's Adam moments start at zero in the middle of the run, where the bias
  # correction (over the global step) is ~1 and a slow second moment would overshoot
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam", learning_rate=1e-4 if paper else 1e-3, b2=0.99, schedule="constant",
      warmup_steps=0, grad_clip_norm=5.0))
  layers = [len(hidden)] * (k + 1)
  phases = [pre * n + t for n, t in zip(layers, steps)]
  total = sum(phases)
  set_steps(c, total_steps=total, batch_size=64 if paper else 16, log_every=25,
            eval_every=phases[0], checkpoint_every=total, keep_checkpoints=1, seed=0)
  return c
