"""Face recognition: embedding networks (dlib ResNet, FaceNet, OpenFace, DeepFace, DeepID), alignment, triplet training, verification."""
