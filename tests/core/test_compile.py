"""The persistent compilation cache: where it goes, how it is switched off, and that a
second process running the same program compiles nothing."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from jaxvision import cli
from jaxvision.core import compile as jv_compile
from tests.conftest import ROOT

HOME = os.path.expanduser("~")


@pytest.mark.parametrize("value", ["0", "off", "OFF", "false", "No", "none", " 0 "])
def test_off_values_switch_the_cache_off(value):
  assert jv_compile.cache_switched_off(value)
  assert jv_compile.compile_cache_dir({"JAXVISION_COMPILE_CACHE": value}) is None


@pytest.mark.parametrize("value", [None, "", "1", "/tmp/x", "on"])
def test_other_values_do_not(value):
  assert not jv_compile.cache_switched_off(value)


def test_cache_dir_resolution(tmp_path):
  d = jv_compile.compile_cache_dir
  assert d({"JAXVISION_COMPILE_CACHE": str(tmp_path / "c")}) == str(tmp_path / "c")
  assert d({"JAXVISION_COMPILE_CACHE": "~/xla"}) == os.path.join(HOME, "xla")
  assert d({"JAXVISION_COMPILE_CACHE": "rel"}) == os.path.abspath("rel")
  assert d({"XDG_CACHE_HOME": str(tmp_path)}) == str(tmp_path / "jaxvision" / "xla")
  default = os.path.join(HOME, ".cache", "jaxvision", "xla")
  assert d({}) == default
  assert d({"XDG_CACHE_HOME": "", "JAXVISION_COMPILE_CACHE": ""}) == default
  # the jaxvision variable wins over XDG
  assert d({"XDG_CACHE_HOME": str(tmp_path), "JAXVISION_COMPILE_CACHE": "/a"}) == "/a"


def test_every_subcommand_takes_no_compile_cache():
  parser = cli.build_parser()
  sub = next(a for a in parser._actions if a.dest == "command")
  assert {"enhance", "compress", "upscale", "detect-faces", "models"} <= set(sub.choices)
  for name, p in sub.choices.items():
    assert any("--no-compile-cache" in a.option_strings for a in p._actions), name


def test_cli_main_enables_and_the_flag_disables(capsys):
  session_dir = os.environ["JAXVISION_COMPILE_CACHE"]  # conftest's
  try:
    assert cli.main(["models", "--no-compile-cache"]) == 0
    assert jax.config.jax_compilation_cache_dir is None
    assert cli.main(["models"]) == 0
    assert jax.config.jax_compilation_cache_dir == session_dir
  finally:
    jv_compile.enable_compile_cache()
  assert jax.config.jax_compilation_cache_dir == session_dir
  capsys.readouterr()


def test_unusable_folder_leaves_the_cache_off_with_a_note(tmp_path, capsys):
  blocker = tmp_path / "file"
  blocker.write_text("")
  try:
    assert jv_compile.enable_compile_cache(
        environ={"JAXVISION_COMPILE_CACHE": str(blocker / "sub")}) is None
    assert "compilation cache off" in capsys.readouterr().err
    assert jax.config.jax_compilation_cache_dir is None
  finally:
    jv_compile.enable_compile_cache()


def test_users_own_jax_cache_dir_is_kept_unless_ours_is_named(tmp_path):
  user, ours = str(tmp_path / "mine"), str(tmp_path / "jv")
  try:
    jax.config.update("jax_compilation_cache_dir", user)  # as JAX_COMPILATION_CACHE_DIR does
    assert jv_compile.enable_compile_cache(environ={}) == user
    assert jax.config.jax_compilation_cache_dir == user
    assert jv_compile.enable_compile_cache(environ={"JAXVISION_COMPILE_CACHE": ours}) == ours
    assert jax.config.jax_compilation_cache_dir == ours
  finally:
    jv_compile.enable_compile_cache()
  assert jax.config.jax_compilation_cache_dir == os.environ["JAXVISION_COMPILE_CACHE"]


def test_count_compiles_in_process():
  f = jax.jit(lambda x: jnp.cos(x) * 3.25 + 0.5)
  x = jnp.ones((17, 5))
  with jv_compile.count_compiles() as c:
    f(x).block_until_ready()
  assert c.requests == 1 and c.compiles + c.cache_hits == 1
  with jv_compile.count_compiles() as c:
    f(x).block_until_ready()  # JAX's in-memory cache: not even a request
  assert (c.requests, c.compiles) == (0, 0)


CHILD = """
import json, jax, jax.numpy as jnp
from jaxvision.core import compile as jv_compile
path = jv_compile.enable_compile_cache()
with jv_compile.count_compiles() as c:
  y = jax.jit(lambda x: jnp.tanh(x @ x.T) * 2.0 - 1.0)(jnp.ones((6, 4)))
  y.block_until_ready()
print(json.dumps({"dir": path, "compiles": c.compiles, "hits": c.cache_hits}))
"""


def _child(cache):
  env = {**os.environ, "JAXVISION_COMPILE_CACHE": cache, "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": ROOT}
  p = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  return json.loads(p.stdout.strip().splitlines()[-1])


def test_second_process_compiles_nothing_and_off_switches_it_off(tmp_path):
  cache = str(tmp_path / "xla")  # a fresh folder: the session's cache cannot fool the counts
  first = _child(cache)
  assert first["dir"] == cache and first["compiles"] >= 1 and first["hits"] == 0
  entries = sorted(os.listdir(cache))
  assert entries
  second = _child(cache)
  assert second["compiles"] == 0 and second["hits"] == first["compiles"]
  off = _child("0")
  assert off["dir"] is None and off["compiles"] == first["compiles"] and off["hits"] == 0
  assert sorted(os.listdir(cache)) == entries  # nothing written while off


def test_trainer_has_the_absl_flag():
  p = subprocess.run([sys.executable, "-m", "train", "--helpshort"], cwd=ROOT,
                     capture_output=True, text=True, timeout=300,
                     env={**os.environ, "PYTHONPATH": ROOT})
  assert "--[no]no_compile_cache" in p.stdout + p.stderr


def test_use_cpu_cores_sets_a_device_per_core_unless_the_user_did():
  env = {}
  assert jv_compile.use_cpu_cores(env, cores=4) is None  # JAX is running in this process
  import unittest.mock as mock
  with mock.patch("jax._src.xla_bridge.backends_are_initialized", return_value=False):
    env = {"XLA_FLAGS": "--xla_cpu_use_onednn=true"}
    assert jv_compile.use_cpu_cores(env, cores=4) == 4
    assert env["XLA_FLAGS"] == ("--xla_cpu_use_onednn=true "
                                "--xla_force_host_platform_device_count=4")
    mine = {"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}
    assert jv_compile.use_cpu_cores(mine, cores=4) is None and mine["XLA_FLAGS"].endswith("=3")
    assert jv_compile.use_cpu_cores({}, cores=1) is None
    capped = {}
    assert jv_compile.use_cpu_cores(capped, cores=64) == 8
