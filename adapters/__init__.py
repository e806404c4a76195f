"""Backend-free layer shared by every algorithm and benchmark of ``ppl-ext``.

``Target`` (a log density on unconstrained R^d from a NumPyro model, a Pyro model or a
plain function), the posteriordb registry, metrics against reference draws, ArviZ
conversion and argument validation.  Importing ``adapters`` imports neither JAX nor torch.
"""

from adapters import inference_data, metrics, posteriordb, validation
from adapters.target import Target

__all__ = ["Target", "posteriordb", "metrics", "inference_data", "validation"]
__version__ = "0.1.0"
