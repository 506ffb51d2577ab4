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


def test_unwritable_outputs_are_one_clear_error(tmp_path):
  from jaxvision.core.errors import OutputError, UserError
  folder = tmp_path / "out.png"
  folder.mkdir()
  with pytest.raises(OutputError, match="out.png: is a folder"):
    io.atomic_write(str(folder), lambda f: f.write(b"x"))
  locked = tmp_path / "locked"
  locked.mkdir()
  locked.chmod(0o500)
  try:
    if os.access(str(locked), os.W_OK):  # root ignores the mode: use a path under a file
      target = str(tmp_path / "afile" / "x.bin")
      (tmp_path / "afile").write_bytes(b"")
    else:
      target = str(locked / "x.bin")
    with pytest.raises(OutputError, match="cannot write") as e:
      io.atomic_write(target, lambda f: f.write(b"x"))
    assert isinstance(e.value, UserError) and isinstance(e.value, OSError)
  finally:
    locked.chmod(0o700)
  assert sorted(os.listdir(tmp_path)) in (["afile", "locked", "out.png"], ["locked", "out.png"])


def test_pixel_limit_is_checked_from_the_header(tmp_path, monkeypatch):
  """A header declaring more pixels than JAXVISION_MAX_PIXELS is refused before decoding
  (a 100000 x 100000 'bomb' of a few bytes), naming the file and the limit."""
  import struct
  import zlib

  from PIL import Image

  from jaxvision.core.errors import DataError

  def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
  bomb = tmp_path / "bomb.png"
  bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000,
                                                                      8, 2, 0, 0, 0))
                   + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
  with pytest.raises(DataError, match=r"bomb.png: 100000x100000 is 10000 megapixels, more "
                     r"than the limit of 100 \(set JAXVISION_MAX_PIXELS"):
    io.load_image_file(bomb)
  small = tmp_path / "small.png"
  Image.new("RGB", (40, 30)).save(small)
  assert io.load_image_file(small).shape == (30, 40, 3)
  monkeypatch.setenv("JAXVISION_MAX_PIXELS", "1000")
  with pytest.raises(DataError, match="40x30 is 0.0012 megapixels, more than the limit of 0.001 "):
    io.load_image_file(small)
  monkeypatch.setenv("JAXVISION_MAX_PIXELS", "1200")
  assert io.load_image_file(small).shape == (30, 40, 3)
  monkeypatch.setenv("JAXVISION_MAX_PIXELS", "lots")
  with pytest.raises(DataError, match="JAXVISION_MAX_PIXELS='lots'"):
    io.load_image_file(small)
