"""Face detection: MTCNN (Zhang et al. 2016) and Cascade CNN (Li et al. 2015).

  models.py    the networks and their registration (`mtcnn-pnet`, `mtcnn-rnet`, `mtcnn-onet`,
               `cascade-{12,24,48}net`, `cascade-{12,24,48}cal`) and their input convention
  boxes.py     the cascade's geometry, shared by detection (jnp) and mining (numpy): pyramid,
               windows, crops, overlap, NMS, regression, squaring, calibration patterns
  detector.py  the cascades (`FaceDetector`: MTCNN nets compiled, geometry on the host), drawing
  convert.py   the original MTCNN weights (`mtcnn` / facenet-pytorch packages or a path), the
               `mtcnn` converter
  data.py      face-box sources: the embedded faces, wider_face-layout TFDS, folder + WIDER
               FACE-style annotation file
  mining.py    training samples (IoU labels, through the previous stages), mixed batches
  eval.py      WIDER FACE-style AP and FDDB-style ROC
  task.py      the `face_cascade` and `face_calibration` trainer tasks
  commands.py  `jaxvision detect-faces`
"""
