"""Pyro-native inference objects of ``ppl-ext``."""

from pyro_ext.infer import sweep_runs  # noqa: F401  (registers the sweep algorithms)
from pyro_ext.infer.drhmc import DRHMC

__all__ = ["DRHMC"]
