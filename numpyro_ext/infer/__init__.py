"""NumPyro-native inference objects of ``ppl-ext``."""

from numpyro_ext.infer.drhmc import DRHMC

__all__ = ["DRHMC"]
