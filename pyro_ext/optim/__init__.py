"""torch optimizers of ``ppl-ext`` (``torch.optim.Optimizer`` subclasses) and their ``PyroOptim`` wrappers.

Each method lives in its own module; this package re-exports the optimizer class
(e.g. ``SWANOptimizer``) and the Pyro-style factory (e.g. ``SWAN({"lr": 1e-3})``).
``SINGD`` differs: it needs whole layers, so its Pyro wrapper takes the module
(``SINGD(net, {"lr": ...})``, see ``docs/optim/singd.rst``).
"""

from pyro_ext.optim.alice import Alice, AliceOptimizer
from pyro_ext.optim.ifshampoo import IFShampoo, IFShampooOptimizer
from pyro_ext.optim.racs import RACS, RACSOptimizer
from pyro_ext.optim.rootfree import RootFreeAdamW, RootFreeAdamWOptimizer, RootFreeRMSProp, RootFreeRMSPropOptimizer
from pyro_ext.optim.singd import SINGD, SINGDOptimizer
from pyro_ext.optim.sinkgd import SinkGD, SinkGDOptimizer
from pyro_ext.optim.swan import SWAN, SWANOptimizer

__all__ = [
    "RACS",
    "SINGD",
    "SWAN",
    "Alice",
    "AliceOptimizer",
    "IFShampoo",
    "IFShampooOptimizer",
    "RACSOptimizer",
    "RootFreeAdamW",
    "RootFreeAdamWOptimizer",
    "RootFreeRMSProp",
    "RootFreeRMSPropOptimizer",
    "SINGDOptimizer",
    "SWANOptimizer",
    "SinkGD",
    "SinkGDOptimizer",
]
