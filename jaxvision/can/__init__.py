"""The can family (see docs/). Its modules register models, converters, tasks and commands in jaxvision.core.registry when jaxvision.families loads them."""
