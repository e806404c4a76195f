"""Pyro-native inference objects of ``ppl-ext``."""

from pyro_ext.infer import sweep_runs  # noqa: F401  (registers the sweep algorithms)
from pyro_ext.infer.drhmc import DRHMC
from pyro_ext.infer.twisted_smc import TwistedSMC

__all__ = ["DRHMC", "TwistedSMC"]
