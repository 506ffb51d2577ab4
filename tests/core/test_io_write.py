"""core.io's atomic writer: complete files or none, created with the user's umask."""
import os
import stat

import pytest

from jaxvision.core import io


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_get_the_users_umask(tmp_path, umask):
  old = os.umask(umask)
  try:
    p = tmp_path / "out.bin"
    io.atomic_write(str(p), lambda f: f.write(b"abc"))
    ref = tmp_path / "ref.bin"
    ref.write_bytes(b"abc")  # what open() does under the same umask
  finally:
    os.umask(old)
  assert stat.S_IMODE(p.stat().st_mode) == stat.S_IMODE(ref.stat().st_mode) == 0o666 & ~umask
  assert p.read_bytes() == b"abc"


def test_a_failed_write_leaves_nothing(tmp_path):
  p = tmp_path / "out.bin"

  def boom(f):
    f.write(b"half")
    raise RuntimeError("disk full")

  with pytest.raises(RuntimeError):
    io.atomic_write(str(p), boom)
  assert os.listdir(tmp_path) == []
