"""Denoising and deep ISP: DnCNN, Noise2Noise U-Net, HDRNet bilateral grids, SID raw-to-sRGB."""
