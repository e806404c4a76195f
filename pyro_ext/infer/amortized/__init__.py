"""Amortized variational inference (A-VI) for Pyro (Margossian & Blei, UAI 2024, arXiv:2307.11018).

:class:`AutoAmortizedNormal` (:mod:`.guide`) is an autoguide whose local latents, those inside one plate,
get a Normal predicted by an encoder from each datum (or a window of neighbours); :mod:`.encoders` holds the
default MLP (a ``PyroModule``); :mod:`.local_elbo` the per-datum ELBO terms and the per-datum
importance-weighted (Rényi) bound :class:`LocalRenyiELBO`; :mod:`.gap` the amortization-gap study
:func:`amortization_gap` (F-VI against A-VI on one model).  The twin of :mod:`numpyro_ext.infer.amortized`:
the configuration, the encoder's output layout, the error messages and the gap report are backend-free,
:mod:`adapters.amortized`.
"""

from adapters.amortized import AmortizedConfig, EncoderLayout
from pyro_ext.infer.amortized.encoders import MLPEncoder
from pyro_ext.infer.amortized.gap import PerDatumELBO, amortization_gap, per_datum_elbo
from pyro_ext.infer.amortized.guide import AutoAmortizedNormal
from pyro_ext.infer.amortized.local_elbo import LocalRenyiELBO, PerDatumTerms, per_datum_log_weights

__all__ = [
    "AmortizedConfig",
    "AutoAmortizedNormal",
    "EncoderLayout",
    "LocalRenyiELBO",
    "MLPEncoder",
    "PerDatumELBO",
    "PerDatumTerms",
    "amortization_gap",
    "per_datum_elbo",
    "per_datum_log_weights",
]
