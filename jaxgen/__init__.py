"""jaxgen: training generative models and studying what makes their training stable."""

from jaxgen import backend as _backend

_backend.configure()
