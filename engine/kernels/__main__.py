"""``python -m engine.kernels``: compile the kernels into the cache ahead of the first model load
(the Dockerfile does, with a compiler the image then drops)."""

import logging

from engine import kernels

logging.basicConfig(level=logging.INFO)
print(kernels.build(), kernels.isa() or "(this CPU runs XLA's dot instead)")
