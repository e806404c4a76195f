"""Pyro-native inference objects of ``ppl-ext``."""

from pyro_ext.infer.drghmc import DRGHMC
from pyro_ext.infer.drhmc import DRHMC
from pyro_ext.infer.twisted_smc import TwistedSMC

__all__ = ["DRGHMC", "DRHMC", "TwistedSMC"]

from pyro_ext.infer.ais import AIS, AISResult  # noqa: E402
from pyro_ext.infer.ais_mi import ais_mi_lower, ais_mi_upper, iwae_mi_lower, iwae_mi_upper  # noqa: E402

__all__ += ["AIS", "AISResult", "ais_mi_lower", "ais_mi_upper", "iwae_mi_lower", "iwae_mi_upper"]

from pyro_ext.infer.mi_bounds import (  # noqa: E402
    GIWAE,
    MINEAIS,
    MINEDV,
    NWJ,
    BarberAgakov,
    InfoNCE,
    fit_critic,
    mine_ais,
)

__all__ += ["BarberAgakov", "GIWAE", "InfoNCE", "MINEAIS", "MINEDV", "NWJ", "fit_critic", "mine_ais"]
