"""Helpers shared by the Pyro ports."""

import numpy as np
import pyro.distributions as dist
import torch
from torch.distributions import biject_to


def as_float(x) -> torch.Tensor:
    """Data as a tensor of torch's default dtype."""
    return torch.as_tensor(np.asarray(x), dtype=torch.get_default_dtype())


class Flat(dist.ImproperUniform):
    """A flat (improper) density on ``support``: Stan's bounded parameter with no prior.

    ``log_prob`` is zero as in ``ImproperUniform``; ``sample`` exists only because Pyro's
    initialisation strategies (``init_to_uniform`` and friends) draw a value to learn the
    site's shape.  It returns U(-2, 2) pushed into the support, the same region those
    strategies start from, and is never a draw from the (improper) density.
    """

    def sample(self, sample_shape=()):
        shape = torch.Size(sample_shape) + self.batch_shape + self.event_shape
        return biject_to(self.support)(torch.rand(shape) * 4.0 - 2.0)
