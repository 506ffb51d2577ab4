"""jaxvision's core: what every family uses and nothing family-specific.

registry (models, converters, tasks, commands), errors, io, checkpoint, weights, data,
layers, losses, metrics, tiling, perceptual (VGG descriptors), tasks (the Task
interface and shared helpers), compile (the persistent compilation cache), inputs
(folders as command inputs). A family imports these and nothing else of
jaxvision; nothing here imports a family.
"""
