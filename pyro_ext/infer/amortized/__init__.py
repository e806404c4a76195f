"""Amortized variational inference (A-VI) for Pyro (Margossian & Blei, UAI 2024, arXiv:2307.11018).

:class:`AutoAmortizedNormal` (:mod:`.guide`) is an autoguide whose local latents, those inside one plate,
get a Normal predicted by an encoder from each datum (or a window of neighbours); :mod:`.encoders` holds the
default MLP (a ``PyroModule``).  The twin of :mod:`numpyro_ext.infer.amortized`: the configuration, the
encoder's output layout and the error messages are backend-free, :mod:`adapters.amortized`.
"""

from adapters.amortized import AmortizedConfig, EncoderLayout
from pyro_ext.infer.amortized.encoders import MLPEncoder
from pyro_ext.infer.amortized.guide import AutoAmortizedNormal

__all__ = ["AmortizedConfig", "AutoAmortizedNormal", "EncoderLayout", "MLPEncoder"]
