"""optax ``GradientTransformation``s of ``ppl-ext``, usable directly in NumPyro's ``SVI``.

Each method lives in its own module; this package re-exports its public constructors: the
full optimizer (``swan(learning_rate, ...)``: the method on matrix leaves, AdamW on the
rest) and, in optax's naming, the matrix-only transform (``scale_by_swan``).
"""

from numpyro_ext.optim.alice import alice, scale_by_alice
from numpyro_ext.optim.ifshampoo import ifshampoo, scale_by_ifshampoo
from numpyro_ext.optim.racs import racs, scale_by_racs
from numpyro_ext.optim.rootfree import (
    rootfree_adam,
    rootfree_adamw,
    rootfree_rmsprop,
    scale_by_rootfree_adam,
    scale_by_rootfree_rmsprop,
)
from numpyro_ext.optim.sinkgd import scale_by_sinkgd, sinkgd
from numpyro_ext.optim.swan import scale_by_swan, swan

__all__ = [
    "alice",
    "ifshampoo",
    "racs",
    "rootfree_adam",
    "rootfree_adamw",
    "rootfree_rmsprop",
    "scale_by_alice",
    "scale_by_ifshampoo",
    "scale_by_racs",
    "scale_by_rootfree_adam",
    "scale_by_rootfree_rmsprop",
    "scale_by_sinkgd",
    "scale_by_swan",
    "sinkgd",
    "swan",
]
