"""Amortized variational inference (A-VI) for NumPyro (Margossian & Blei, UAI 2024, arXiv:2307.11018).

:class:`AutoAmortizedNormal` (:mod:`.guide`) is an autoguide whose local latents, those inside one plate,
get a Normal predicted by an encoder from each datum (or a window of neighbours); :mod:`.encoders` holds the
default MLP (a pure init/apply pair) and the adapter over user encoders.  The configuration and its
checks are backend-free, :mod:`adapters.amortized`.
"""

from adapters.amortized import AmortizedConfig, EncoderLayout
from numpyro_ext.infer.amortized.encoders import Encoder, as_encoder, mlp_encoder
from numpyro_ext.infer.amortized.guide import AutoAmortizedNormal

__all__ = ["AmortizedConfig", "AutoAmortizedNormal", "Encoder", "EncoderLayout", "as_encoder", "mlp_encoder"]
