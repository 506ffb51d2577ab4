"""Single-image super-resolution: ESPCN, EDSR, WDSR-A/B, RCAN, Johnson et al.

  models.py    the networks and their registration (`espcn`, `edsr_baseline`, `edsr`,
               `wdsr_a`, `wdsr_b`, `rcan`, `johnson_sr`)
  resize.py    MATLAB-style bicubic imresize, quantize, modcrop, downscale
  data.py      (bicubic LR, HR) pairs made in the grain workers; the task's make_data
  eval.py      Y-channel PSNR / SSIM, tiled upscale, dataset evaluation
  convert.py   EDSR-PyTorch weight import
  task.py      the `super_resolution` trainer task
  commands.py  `jaxvision upscale` and `jaxvision sr-eval`
"""
