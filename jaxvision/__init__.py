"""jaxvision: classic vision models as pure-function JAX/Flax modules."""

__version__ = "0.1.0"
