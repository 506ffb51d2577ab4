"""Style transfer and texture synthesis with perceptual (VGG) losses.

  generators.py  feed-forward networks: Johnson et al. 2016, Ulyanov et al. texture nets
  gatys.py       the Gatys et al. 2016 optimisation baseline; style-image loading
  task.py        the `style_transfer` and `texture` trainer tasks
  commands.py    `jaxvision stylize`
"""
