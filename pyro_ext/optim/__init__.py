"""torch optimizers of ``ppl-ext`` (``torch.optim.Optimizer`` subclasses) and their ``PyroOptim`` wrappers.

Each method lives in its own module; this package re-exports the optimizer class
(e.g. ``SWANOptimizer``) and the Pyro-style factory (e.g. ``SWAN({"lr": 1e-3})``).
"""

from .singd import SINGD, SINGDOptimizer  # noqa: F401
from .rootfree import RootFreeAdamW, RootFreeAdamWOptimizer, RootFreeRMSProp, RootFreeRMSPropOptimizer  # noqa: F401
from .ifshampoo import IFShampoo, IFShampooOptimizer  # noqa: F401
from .sinkgd import SinkGD, SinkGDOptimizer  # noqa: F401
from .swan import SWAN, SWANOptimizer  # noqa: F401
