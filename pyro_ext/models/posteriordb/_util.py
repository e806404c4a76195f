"""Helpers shared by the Pyro ports."""

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
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


def positive_sites(model, **data) -> list[str]:
    """Names of ``model``'s latent sample sites whose support is positive (lower bound >= 0).

    Positive: ``positive``, ``nonnegative``, ``unit_interval``, any interval or
    ``greater_than`` with a lower bound >= 0, ``positive_ordered_vector`` and ``simplex``
    (also under ``independent``): the same rule as the NumPyro ports' ``positive_sites``.
    """
    from pyro import poutine
    from pyro.infer.autoguide.initialization import InitMessenger, init_to_uniform
    from pyro.poutine.util import site_is_subsample

    with torch.no_grad():
        trace = poutine.trace(InitMessenger(init_to_uniform)(model)).get_trace(**data)
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and not site_is_subsample(site)
        and _is_positive(site["fn"].support)
    ]


def _is_positive(support) -> bool:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    if support is constraints.positive_ordered_vector or support is constraints.simplex:
        return True
    lower = getattr(support, "lower_bound", None)
    return lower is not None and bool(torch.all(torch.as_tensor(lower) >= 0))


def normal_regression(name: str, x, y, N: int, sigma_prior=None) -> None:
    """Stan's ``y ~ normal(x * beta, sigma)`` over ``N`` data, ``x`` of shape ``(N, k)``.

    Sites ``beta`` (flat on R^k: Stan gives it no prior), ``sigma`` (``sigma_prior``; flat on
    ``(0, inf)`` when ``None``) and the observed ``name``; ``x`` and ``y`` are cast by :func:`as_float`.
    """
    x, y = as_float(x), as_float(y)
    beta = pyro.sample("beta", Flat(constraints.real, (), (x.shape[-1],)))
    if sigma_prior is None:
        sigma_prior = Flat(constraints.positive, (), ())
    sigma = pyro.sample("sigma", sigma_prior)
    with pyro.plate("N", N):
        pyro.sample(name, dist.Normal(x @ beta, sigma), obs=y)
