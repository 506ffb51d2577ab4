"""core.executables: a stored executable must load and run in a new process, also when
JAX's own persistent cache already held the same program (issue 12).

XLA:CPU (jax 0.10.2) serializes an executable that JAX's cache handed back without some of
its functions; a file made from one loads, and then its run fails with "NOT_FOUND: Function
exponential_add_fusion not found". The store therefore compiles its programs without JAX's
cache; this test makes JAX's cache hold the program first (a plain jit call in an earlier
process), then stores ours, then runs ours from the file in a third process (it fails
without the bypass)."""
import os
import subprocess
import sys
import textwrap

PROGRAM = textwrap.dedent('''
    import sys
    import numpy as np
    from jaxvision.core.compile import enable_compile_cache
    enable_compile_cache()
    import jax, jax.numpy as jnp
    from jaxvision.core.executables import Executables

    @jax.jit
    def f(x):
      return jnp.tanh(x) * 2.0 + jnp.exp(-x * x)

    x = np.linspace(-2, 2, 64, dtype=np.float32).reshape(8, 8)
    out = f(x) if sys.argv[1] == "plain" else Executables("test").call(f, (), x)
    np.testing.assert_allclose(np.asarray(out), np.tanh(x) * 2 + np.exp(-x * x),
                               rtol=1e-5, atol=1e-6)
    print("ok", sys.argv[1], len(os.listdir(os.path.join(sys.argv[2], "jaxvision-executables")))
          if os.path.isdir(os.path.join(sys.argv[2], "jaxvision-executables")) else 0)
''').replace("import sys\n", "import os, sys\n", 1)


def test_stored_executable_runs_in_a_new_process_after_a_jax_cache_hit(tmp_path):
  script = tmp_path / "prog.py"
  script.write_text(PROGRAM)
  cache = str(tmp_path / "cache")
  env = dict(os.environ, JAXVISION_COMPILE_CACHE=cache)
  env.pop("XLA_FLAGS", None)
  outs = []
  for mode in ("plain", "ours", "ours"):  # JAX's cache gets it; ours stored; ours loaded
    p = subprocess.run([sys.executable, str(script), mode, cache], capture_output=True,
                       text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    outs.append(p.stdout.split())
  assert outs[0] == ["ok", "plain", "0"] and outs[1] == outs[2] == ["ok", "ours", "1"]
