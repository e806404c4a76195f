"""optax ``GradientTransformation``s of ``ppl-ext``, usable directly in NumPyro's ``SVI``.

Each method lives in its own module; this package re-exports its public constructors.
"""
from .rootfree import rootfree_adam, rootfree_adamw, rootfree_rmsprop  # noqa: F401
from .rootfree import scale_by_rootfree_adam, scale_by_rootfree_rmsprop  # noqa: F401
from .ifshampoo import ifshampoo, scale_by_ifshampoo  # noqa: F401
from .sinkgd import scale_by_sinkgd, sinkgd  # noqa: F401
from .swan import scale_by_swan, swan  # noqa: F401
