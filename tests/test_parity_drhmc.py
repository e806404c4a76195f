"""The two ``DRHMC`` twins refuse the same bad inputs with the same error type and message.

Each case builds ``numpyro_ext.infer.DRHMC`` and ``pyro_ext.infer.DRHMC`` (on Neal's funnel, or
on a potential) with the same arguments; both validate through ``adapters.configs.DRHMCConfig``
and ``adapters.configs.check_model_or_potential``, and their cores through the same
``adapters.validation`` checks.  A case is skipped when a backend is not installed.
"""

from __future__ import annotations

import re

import pytest


def _numpyro():
    pytest.importorskip("jax", reason="the numpyro extra is not installed")
    import jax.numpy as jnp

    from numpyro_ext.infer import DRHMC
    from numpyro_ext.infer.drhmc import build_kernel
    from numpyro_ext.models import test_problems

    return {
        "model": test_problems.funnel,
        "potential_fn": lambda z: jnp.sum(z**2),
        "DRHMC": DRHMC,
        "build_kernel": build_kernel,
    }


def _pyro():
    pytest.importorskip("pyro", reason="the pyro extra is not installed")
    from pyro_ext.infer import DRHMC
    from pyro_ext.infer.drhmc import build_kernel
    from pyro_ext.models import test_problems

    return {
        "model": test_problems.funnel,
        "potential_fn": lambda params: sum((v**2).sum() for v in params.values()),
        "DRHMC": DRHMC,
        "build_kernel": build_kernel,
    }


def _error(make) -> BaseException:
    with pytest.raises(Exception) as info:
        make()
    return info.value


def _same_error(case) -> str:
    """Run ``case(backend)`` in both backends; assert the same exception type and message; return it."""
    errors = [_error(lambda backend=backend: case(backend())) for backend in (_numpyro, _pyro)]
    numpyro_error, pyro_error = errors
    assert type(numpyro_error) is type(pyro_error), (numpyro_error, pyro_error)
    assert str(numpyro_error) == str(pyro_error)
    return str(pyro_error)


BAD_ARGUMENTS = [
    (dict(max_proposals=0), "max_proposals"),
    (dict(max_proposals=1.5), "max_proposals"),
    (dict(max_proposals=True), "max_proposals"),
    (dict(reduction_factor=1), "reduction_factor"),
    (dict(reduction_factor=0.5), "reduction_factor"),
    (dict(reduction_factor=float("nan")), "reduction_factor"),
    (dict(trajectory_scale=0.0), "trajectory_scale"),
    (dict(trajectory_scale=-0.5), "trajectory_scale"),
    (dict(trajectory_scale=0.5, trajectory_length=2.0), "trajectory_scale"),
    (dict(trajectory_scale=0.5, num_steps=10), "trajectory_scale"),
    (dict(jitter_trajectory=1), "jitter_trajectory"),
    (dict(jitter_trajectory="yes"), "jitter_trajectory"),
    (dict(probabilistic=None), "probabilistic"),
    (dict(adapt_step_size=1), "adapt_step_size"),
    (dict(adapt_mass_matrix="no"), "adapt_mass_matrix"),
    (dict(dense_mass=[("v", "x")]), "dense_mass"),
    (dict(step_size=0.0), "step_size"),
    (dict(step_size=-0.1), "step_size"),
    (dict(step_size=float("inf")), "step_size"),
    (dict(step_size="0.1"), "step_size"),
    (dict(trajectory_length=0.0), "trajectory_length"),
    (dict(trajectory_length=-1.0), "trajectory_length"),
    (dict(num_steps=0), "num_steps"),
    (dict(num_steps=2.5), "num_steps"),
    (dict(target_accept_prob=1.2), "target_accept_prob"),
    (dict(target_accept_prob=0.0), "target_accept_prob"),
    (dict(max_delta_energy=-1.0), "max_delta_energy"),
    (dict(max_tree_depth=0), "max_tree_depth"),
]


@pytest.mark.parametrize("kwargs, argument", BAD_ARGUMENTS, ids=[str(kw) for kw, _ in BAD_ARGUMENTS])
def test_bad_constructor_arguments(kwargs, argument):
    message = _same_error(lambda b: b["DRHMC"](b["model"], **kwargs))
    assert argument in message


@pytest.mark.parametrize("kwargs, argument", BAD_ARGUMENTS[:3], ids=[str(kw) for kw, _ in BAD_ARGUMENTS[:3]])
def test_bad_arguments_with_a_potential(kwargs, argument):
    message = _same_error(lambda b: b["DRHMC"](potential_fn=b["potential_fn"], **kwargs))
    assert argument in message


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda b: b["DRHMC"]("funnel"), "model"),
        (lambda b: b["DRHMC"](potential_fn="potential"), "potential_fn"),
        (lambda b: b["DRHMC"](b["model"], init_strategy="uniform"), "init_strategy"),
    ],
    ids=["model", "potential_fn", "init_strategy"],
)
def test_functions_are_checked_when_the_kernel_is_built(make, argument):
    """A string where a function belongs is named at construction, not called in the first transition."""
    message = _same_error(make)
    assert message.startswith(f"DRHMC: {argument} must be")


def test_integer_initial_values_are_named():
    """An integer start (no gradient exists) is named by both kernels before any transition."""

    def numpyro_case():
        import jax
        import jax.numpy as jnp
        from numpyro.infer import MCMC

        kernel = _numpyro()["DRHMC"](potential_fn=lambda x: jnp.sum(x**2), trajectory_length=1.0)
        MCMC(kernel, num_warmup=2, num_samples=2, progress_bar=False).run(
            jax.random.PRNGKey(0), init_params=jnp.array([1, 2])
        )

    def pyro_case():
        import torch

        _pyro()["DRHMC"](potential_fn=lambda p: (p["x"] ** 2).sum()).initial_params = {"x": torch.tensor([1, 2])}

    numpyro_error, pyro_error = _error(numpyro_case), _error(pyro_case)
    assert type(numpyro_error) is type(pyro_error) is TypeError
    expected = "must be a floating-point array (the unconstrained start of each chain), got dtype"
    assert str(numpyro_error).startswith(f"init_params {expected}")
    assert str(pyro_error).startswith(f"initial_params['x'] {expected}")


def test_model_or_potential_exactly_one():
    neither = _same_error(lambda b: b["DRHMC"]())
    both = _same_error(lambda b: b["DRHMC"](b["model"], potential_fn=b["potential_fn"]))
    assert neither == both and "exactly one" in neither and "potential_fn" in neither


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(max_proposals=0), "max_proposals"),
        (dict(reduction_factor=1.0), "reduction_factor"),
        (dict(probabilistic="yes"), "probabilistic"),
        (dict(max_delta_energy=-1.0), "max_delta_energy"),
    ],
)
def test_core_checks_its_arguments(kwargs, argument):
    message = _same_error(lambda b: b["build_kernel"](**kwargs))
    assert re.match(argument, message)


def test_discrete_latent_is_refused_in_both():
    """Both refuse a discrete latent site at set-up, naming it, with the same opening words."""

    def numpyro_case():
        import jax
        import numpyro
        import numpyro.distributions as dist
        from numpyro.infer import MCMC

        def model():
            numpyro.sample("k", dist.Poisson(3.0))

        MCMC(_numpyro()["DRHMC"](model), num_warmup=2, num_samples=2, progress_bar=False).run(jax.random.PRNGKey(0))

    def pyro_case():
        import pyro
        import pyro.distributions as dist
        from pyro.infer import MCMC

        def model():
            pyro.sample("k", dist.Poisson(3.0))

        MCMC(_pyro()["DRHMC"](model), warmup_steps=2, num_samples=2, disable_progbar=True).run()

    numpyro_error, pyro_error = _error(numpyro_case), _error(pyro_case)
    assert type(numpyro_error) is type(pyro_error) is ValueError
    opening = "model: DRHMC needs continuous latent sites, but ['k'] are discrete; marginalise them out"
    assert str(numpyro_error).startswith(opening) and str(pyro_error).startswith(opening)
