"""Image classification: ResNet, SE-ResNet / SE-ResNeXt and SPP-net.

  models.py    the networks and their registration (`resnet18..152`, `se_resnet18..152`,
               `se_resnext50_32x4d`, `se_resnext101_32x4d`, `spp_resnet18`, `spp_net`)
  convert.py   timm/torchvision weight import (`load`, the registered converters)
  data.py      embedded digits/lfw and TFDS sources, transforms, the task's make_data
  task.py      the `classification` trainer task
  commands.py  `jaxvision classify`
"""
