"""JAX/NumPyro backend of ``ppl-ext``: pure-function cores and NumPyro-native shells.

Never imports torch.  Run ``python -m numpyro_ext`` for the quick-start demo.
"""

__version__ = "0.1.0"
