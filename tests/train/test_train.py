"""The trainer end to end: README command, multi-device parity, kill/resume,
damaged checkpoints, non-finite losses, TensorBoard and outputs, `enhance`."""
import glob
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxvision.core import checkpoint as jv_ckpt
from tests.conftest import ROOT, TINY, readme_command, run, train_cmd

pytestmark = pytest.mark.slow


def params_of(workdir):
  _, variables, step = jv_ckpt.load_variables(str(workdir))
  return variables, step


def test_readme_main_job_runs(tmp_path, tfds_dir):
  """The README's main-job command, as written, with a tiny step count."""
  cmd = shlex.split(readme_command("main-job"))
  assert cmd[0].endswith("python") and cmd[1:3] == ["-m", "train"]
  workdir = tmp_path / "run"
  cmd = [sys.executable] + cmd[1:]
  cmd[cmd.index("--workdir") + 1] = str(workdir)
  cmd += [f"--config.{k}={v}" for k, v in {**TINY, "data.worker_count": 2}.items()]
  p = run(cmd, tfds_dir)
  out = p.stdout + p.stderr
  assert "parameters" in out and "done: step 6" in out
  # Checkpoints, TensorBoard event files, before/after PNGs, metrics.
  assert sorted(int(os.path.basename(d)) for d in glob.glob(f"{workdir}/checkpoints/*")
                if os.path.basename(d).isdigit()) == [2, 4, 6]
  events = glob.glob(f"{workdir}/tensorboard/events.out.tfevents.*")
  assert events and os.path.getsize(events[0]) > 1000
  pngs = {os.path.basename(p) for p in glob.glob(f"{workdir}/samples/*.png")}
  assert {"final_00_input.png", "final_00_output.png", "final_00_target.png",
          "final_00_input_output_target.png"} <= pngs
  m = json.load(open(workdir / "metrics.json"))
  assert m["step"] == 6 and np.isfinite(m["eval"]["psnr"]) and 0 < m["eval"]["ssim"] <= 1
  cfg = json.load(open(workdir / "config.json"))
  assert cfg["data"]["operator"] == cmd[cmd.index("--config") + 1].split(":")[1]
  tags = read_event_tags(events[0])
  assert {"train/loss", "train/steps_per_sec", "eval/psnr", "eval/ssim"} <= tags["scalar"]
  assert "eval/input_output_target/0" in tags["image"]


@pytest.mark.longrun
def test_readme_main_job_learns_the_operator(tmp_path, tfds_dir):
  """The README's main job, shortened to 100 of its 300 steps (everything else as written):
  the held-out PSNR beats the identity's (input vs target, 20.15 dB on the 3 eval photos)
  by at least 2 dB; BENCHMARKS.md states 23.62 dB at 100 steps."""
  cmd = shlex.split(readme_command("main-job"))
  workdir = tmp_path / "run"
  cmd = [sys.executable] + cmd[1:]
  cmd[cmd.index("--workdir") + 1] = str(workdir)
  cmd += ["--config.total_steps=100", "--config.eval_every=100",
          "--config.checkpoint_every=100"]
  run(cmd, tfds_dir)
  m = json.load(open(workdir / "metrics.json"))
  assert m["step"] == 100 and m["eval"]["psnr"] >= 20.15 + 2.0, m["eval"]


def read_event_tags(path):
  """Parses a TensorBoard event file (TFRecord framing + Event protos)."""
  import struct
  from tensorboardX.proto import event_pb2
  tags = {"scalar": set(), "image": set()}
  with open(path, "rb") as f:
    while header := f.read(12):
      (n,) = struct.unpack("<Q", header[:8])
      ev = event_pb2.Event.FromString(f.read(n))
      f.read(4)
      for v in ev.summary.value:
        tags["image" if v.HasField("image") else "scalar"].add(v.tag)
  return tags


@pytest.mark.longrun
def test_eight_devices_match_one(tmp_path, tfds_dir):
  """8 fake CPU devices (batch sharded 1 per device) = 1 device, after 4 steps.

  SGD, so that the comparison measures the sharded computation itself: the only
  difference is the order of floating-point reductions (batch statistics, mean
  loss, gradient sums), which bounds parameter differences to ~1e-6; we allow 2e-5.
  """
  over = dict(total_steps=4, checkpoint_every=4, eval_every=4,
              **{"optimizer.name": "sgd", "optimizer.learning_rate": 0.5,
                 "optimizer.warmup_steps": 0})
  one, eight = tmp_path / "one", tmp_path / "eight"
  run(train_cmd(one, **over), tfds_dir, devices=1)
  p8 = run(train_cmd(eight, **over), tfds_dir, devices=8)
  assert "8 device(s)" in p8.stdout
  v1, s1 = params_of(one)
  v8, s8 = params_of(eight)
  assert s1 == s8 == 4
  moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(), v1, v8)
  assert max(jax.tree.leaves(moved)) < 2e-5, moved
  # ... while training moved them far more than that from the initialisation.
  from jaxvision import models
  init = models.create("can", width=8, depth=4).init(
      jax.random.PRNGKey(0), np.zeros((1, 8, 8, 3), np.float32))["params"]
  step = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(),
                      v1["params"], init)
  assert max(jax.tree.leaves(step)) > 1e-2, step
  l1 = json.load(open(one / "metrics.json"))["train"]["loss"]
  l8 = json.load(open(eight / "metrics.json"))["train"]["loss"]
  assert abs(l1 - l8) <= 1e-5 * max(1.0, abs(l1))


@pytest.mark.longrun
def test_sigkill_and_resume_equals_uninterrupted(tmp_path, tfds_dir):
  """kill -9 mid-run, restart: same final parameters as a run never interrupted."""
  over = dict(total_steps=40, checkpoint_every=5, eval_every=1000, log_every=5,
              **{"data.worker_count": 2})
  ref = tmp_path / "ref"
  run(train_cmd(ref, **over), tfds_dir)
  work = tmp_path / "killed"
  env = {**os.environ, "TFDS_DATA_DIR": tfds_dir, "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": ROOT, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  proc = subprocess.Popen(train_cmd(work, **over), cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
  deadline = time.time() + 300
  while not os.path.isdir(work / "checkpoints" / "10") and time.time() < deadline:
    assert proc.poll() is None, "the run ended before it could be killed"
    time.sleep(0.01)
  os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its grain workers
  proc.wait()
  assert not (work / "metrics.json").exists(), "killed too late: the run had finished"
  p = run(train_cmd(work, **over), tfds_dir)
  assert "resuming from checkpoint step" in p.stdout
  va, sa = params_of(ref)
  vb, sb = params_of(work)
  assert sa == sb == 40
  diff = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(), va, vb)
  assert max(jax.tree.leaves(diff)) <= 1e-6, diff


def test_damaged_latest_checkpoint_falls_back(tmp_path, tfds_dir):
  work = tmp_path / "run"
  run(train_cmd(work), tfds_dir)  # checkpoints 2, 4, 6
  damaged = 0
  for f in glob.glob(f"{work}/checkpoints/6/state/**/*", recursive=True):
    if os.path.isfile(f):
      with open(f, "r+b") as fh:
        fh.write(b"\x00garbage" * 8)
      damaged += 1
  assert damaged
  p = run(train_cmd(work, total_steps=8), tfds_dir)
  assert "checkpoint step 6 is damaged" in p.stdout
  assert "resuming from checkpoint step 4" in p.stdout
  assert json.load(open(work / "metrics.json"))["step"] == 8
  # A pipeline change that grain cannot map (another worker count) keeps the
  # parameters and says so, instead of calling every checkpoint damaged.
  p = run(train_cmd(work, total_steps=10, **{"data.worker_count": 1}), tfds_dir)
  assert "does not fit this pipeline" in p.stdout
  assert "resuming from checkpoint step 8" in p.stdout
  assert json.load(open(work / "metrics.json"))["step"] == 10


def test_nonfinite_loss_stops_with_clear_error(tmp_path, tfds_dir):
  work = tmp_path / "run"
  p = run(train_cmd(work, total_steps=20, checkpoint_every=1, log_every=1,
                    **{"optimizer.name": "sgd", "optimizer.learning_rate": 1e12,
                       "optimizer.grad_clip_norm": 0}),
          tfds_dir, check=False)
  assert p.returncode == 1, p.stdout + p.stderr
  last = p.stderr.strip().splitlines()[-1]
  assert last.startswith("error: non-finite loss or gradient at step "), last
  bad = int(last.split("at step ")[1].split(":")[0])
  assert 1 <= bad <= 20
  steps = [int(os.path.basename(d)) for d in glob.glob(f"{work}/checkpoints/*")
           if os.path.basename(d).isdigit()]
  assert all(s < bad for s in steps)
  if steps:  # every checkpoint written is finite
    _, variables, _ = jv_ckpt.load_variables(str(work))
    assert jv_ckpt.all_finite(variables)


def test_bad_config_is_one_line_error(tmp_path, tfds_dir):
  p = run(train_cmd(tmp_path / "a", batch_size=7), tfds_dir, devices=2, check=False)
  assert p.returncode == 1
  assert p.stderr.strip().splitlines()[-1].startswith(
      "error: config.batch_size=7 is not divisible by the 2 devices")
  # a config file that refuses its argument, a key the config lacks, a missing file: one
  # line each (absl used to print the config's traceback inside its flag error)
  for cmd, want in [
      (train_cmd(tmp_path / "b", config="configs/can.py:no_such_op"),
       "unknown operator 'no_such_op'"),
      (train_cmd(tmp_path / "c", config="configs/denoise.py:model=vgg"),
       "error: --config=configs/denoise.py:model=vgg: unknown denoising model 'vgg'"),
      (train_cmd(tmp_path / "d") + ["--config.no_such_key=1"],
       "error: --config.no_such_key: the config has no key 'no_such_key'"),
      (train_cmd(tmp_path / "e", config="configs/no_such_file.py"), "error: --config: ")]:
    p = run(cmd, tfds_dir, check=False)
    last = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert last.startswith("error: ") and want in last, p.stderr[-2000:]


@pytest.mark.longrun
def test_two_processes_train_and_resume(tmp_path, tfds_dir):
  """Multi-host on one machine: 2 processes (gloo), each loading its own data shard;
  each saves its own iterator state, and both resume from it."""
  import socket
  work = tmp_path / "mh"

  def launch(total):
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    env = {**os.environ, "TFDS_DATA_DIR": tfds_dir, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": ROOT, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    procs = [subprocess.Popen(
        train_cmd(work, total_steps=total, checkpoint_every=2, eval_every=total)
        + [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
           f"--process_id={i}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
    return outs

  outs = launch(4)
  assert "2 device(s) (cpu), 2 process(es), global batch 8" in outs[0]
  assert "done: step 4" in outs[0] and "done:" not in outs[1]  # process 0 reports
  assert sorted(os.listdir(work / "checkpoints" / "4" / "data")) == [
      "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
  outs = launch(6)
  assert "resuming from checkpoint step 4" in outs[0]
  assert json.load(open(work / "metrics.json"))["step"] == 6
