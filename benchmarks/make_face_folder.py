"""Writes the mixed-size face benchmark folder: python benchmarks/make_face_folder.py OUT_DIR

The images are built by tests/faces/face_folder.py (shared with tests/faces/test_small_faces.py):
24 photos of 21 sizes from scikit-image's photos with LFW faces pasted at 20-236 px."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.faces.face_folder import main  # noqa: E402

if __name__ == "__main__":
  sys.exit(main())
