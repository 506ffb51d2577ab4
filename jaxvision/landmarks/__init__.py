"""Face landmarks: dlib ERT shape predictors, PFLD, CFAN, MediaPipe face mesh; NME evaluation."""
