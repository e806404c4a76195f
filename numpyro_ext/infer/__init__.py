"""NumPyro-native inference objects of ``ppl-ext``."""

from numpyro_ext.infer import sweep_runs  # noqa: F401  (registers the sweep algorithms)
from numpyro_ext.infer.drhmc import DRHMC
from numpyro_ext.infer.twisted_smc import TwistedSMC

__all__ = ["DRHMC", "TwistedSMC"]
