"""Pyro-native inference objects of ``ppl-ext``."""

from pyro_ext.infer.drhmc import DRHMC

__all__ = ["DRHMC"]
