"""torch/Pyro backend of ``ppl-ext``: batched torch cores and Pyro-native shells.

Never imports JAX.  Run ``python -m pyro_ext`` for the quick-start demo.
"""

__version__ = "0.1.0"
