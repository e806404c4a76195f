"""The AIS, AIS-MI and MI-bound twins refuse the same bad inputs with the same error type and message.

Each case calls ``numpyro_ext.infer`` and ``pyro_ext.infer`` (``AIS``, ``AISResult.get_samples``,
``ais_mi_lower``/``ais_mi_upper``/``iwae_mi_lower``/``iwae_mi_upper`` and the MI bounds on given
scores) with the same arguments: the settings go through ``adapters.mi.AISConfig``, the result
through ``adapters.mi.AISResultBase`` and the counts through ``adapters.validation``.  A case is
skipped when a backend is not installed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest


def _numpyro():
    pytest.importorskip("jax", reason="the numpyro extra is not installed")
    import jax
    import jax.numpy as jnp
    import numpyro.distributions as dist

    from numpyro_ext.infer import AIS, ais_mi_lower, ais_mi_upper, iwae_mi_lower, iwae_mi_upper, mi_bounds

    def sample_joint(key, n):
        z = jax.random.normal(key, (n, 2))
        return z @ jnp.ones((2, 3)), z

    def run(sampler):
        return sampler.run(jax.random.PRNGKey(0))

    def mi(bound, *args, **kwargs):
        return bound(jax.random.PRNGKey(0), *args, **kwargs)

    return {
        "AIS": AIS,
        "run": run,
        "resample": lambda result: result.get_samples(jax.random.PRNGKey(1)),
        "prior": dist.Normal(jnp.zeros(2), 1.0).to_event(1),
        "zero_likelihood": lambda x: -jnp.inf * jnp.sum(x**2),
        "log_likelihood": lambda x: -0.5 * jnp.sum(x**2),
        "sample_joint": sample_joint,
        "log_prior": lambda z: -0.5 * jnp.sum(z**2),
        "joint_likelihood": lambda x, z: -0.5 * jnp.sum((x - jnp.sum(z)) ** 2),
        "mi": mi,
        "bounds": {"ais_mi_lower": ais_mi_lower, "ais_mi_upper": ais_mi_upper},
        "iwae": {"iwae_mi_lower": iwae_mi_lower, "iwae_mi_upper": iwae_mi_upper},
        "mi_bounds": mi_bounds,
        "array": jnp.asarray,
    }


def _pyro():
    pytest.importorskip("pyro", reason="the pyro extra is not installed")
    import pyro
    import pyro.distributions as dist
    import torch

    from pyro_ext.infer import AIS, ais_mi_lower, ais_mi_upper, iwae_mi_lower, iwae_mi_upper, mi_bounds

    def sample_joint(n):
        z = torch.randn(n, 2)
        return z @ torch.ones(2, 3), z

    def run(sampler):
        pyro.set_rng_seed(0)
        return sampler.run()

    def mi(bound, *args, **kwargs):
        pyro.set_rng_seed(0)
        return bound(*args, **kwargs)

    return {
        "AIS": AIS,
        "run": run,
        "resample": lambda result: result.get_samples(seed=1),
        "prior": dist.Normal(torch.zeros(2), 1.0).to_event(1),
        "zero_likelihood": lambda x: -math.inf * torch.sum(x**2),
        "log_likelihood": lambda x: -0.5 * torch.sum(x**2),
        "sample_joint": sample_joint,
        "log_prior": lambda z: -0.5 * torch.sum(z**2),
        "joint_likelihood": lambda x, z: -0.5 * torch.sum((x - torch.sum(z)) ** 2),
        "mi": mi,
        "bounds": {"ais_mi_lower": ais_mi_lower, "ais_mi_upper": ais_mi_upper},
        "iwae": {"iwae_mi_lower": iwae_mi_lower, "iwae_mi_upper": iwae_mi_upper},
        "mi_bounds": mi_bounds,
        "array": lambda value: torch.as_tensor(np.asarray(value)),
    }


def _error(make) -> BaseException:
    with pytest.raises(Exception) as info:
        make()
    return info.value


def _same_error(case) -> str:
    """Run ``case(backend)`` in both backends; assert the same exception type and message; return it."""
    numpyro_error, pyro_error = (_error(lambda backend=backend: case(backend())) for backend in (_numpyro, _pyro))
    assert type(numpyro_error) is type(pyro_error), (numpyro_error, pyro_error)
    assert str(numpyro_error) == str(pyro_error)
    return str(pyro_error)


# ---------------------------------------------------------------------------------------
# AIS: settings, sources, results
# ---------------------------------------------------------------------------------------
AIS_SETTINGS = [
    ({"num_steps": 0}, "num_steps"),
    ({"num_steps": -3}, "num_steps"),
    ({"num_chains": -1}, "num_chains"),
    ({"schedule": "cubic"}, "schedule"),
    ({"schedule": [0.0, 0.6, 0.4, 1.0]}, "schedule"),
    ({"schedule": [0.1, 0.5, 1.0]}, "schedule"),
    ({"schedule": [0.0, 0.5]}, "schedule"),
    ({"transition": 5}, "transition"),
    ({"transition": "nuts"}, "transition"),
    ({"step_size": -0.1}, "step_size"),
    ({"num_leapfrog": 0}, "num_leapfrog"),
    ({"adapt_step_size": "yes"}, "adapt_step_size"),
    ({"target_accept_prob": 1.5}, "target_accept_prob"),
    ({"adaptation_rate": 0.0}, "adaptation_rate"),
    ({"max_delta_energy": -1.0}, "max_delta_energy"),
]


@pytest.mark.parametrize(("kwargs", "name"), AIS_SETTINGS, ids=[str(k) for k, _ in AIS_SETTINGS])
def test_ais_settings_are_refused_alike(kwargs, name):
    def case(b):
        return b["AIS"](log_likelihood_fn=b["log_likelihood"], proposal=b["prior"], **kwargs)

    assert name in _same_error(case)


def test_ais_sources_are_refused_alike():
    assert "exactly one" in _same_error(lambda b: b["AIS"]())
    assert "exactly one" in _same_error(lambda b: b["AIS"](b["log_likelihood"], log_likelihood_fn=b["log_likelihood"]))
    assert "proposal" in _same_error(lambda b: b["AIS"](log_likelihood_fn=b["log_likelihood"]))
    assert "model" in _same_error(lambda b: b["AIS"](5))
    assert "log_likelihood_fn" in _same_error(lambda b: b["AIS"](log_likelihood_fn=5, proposal=b["prior"]))


def test_all_zero_importance_weights_raise_alike_on_resampling():
    """A likelihood that is zero everywhere: every log weight is -inf; get_samples raises in both."""

    def case(b):
        sampler = b["AIS"](
            log_likelihood_fn=b["zero_likelihood"],
            proposal=b["prior"],
            num_steps=2,
            num_chains=4,
            adapt_step_size=False,
        )
        result = b["run"](sampler)
        assert np.all(np.isneginf(np.asarray(result.log_weights)))
        return b["resample"](result)

    message = _same_error(case)
    assert "every chain has zero weight" in message and "importance" in message


# ---------------------------------------------------------------------------------------
# Multi-sample AIS and IWAE bounds on mutual information
# ---------------------------------------------------------------------------------------
MI_SETTINGS = [
    ({"num_samples": 0}, "num_samples"),
    ({"num_samples": -4}, "num_samples"),
    ({"num_chains": 0}, "num_chains"),
    ({"num_steps": -1}, "num_steps"),
    ({"schedule": [0.0, 1.0, 0.5]}, "schedule"),
    ({"schedule": "geometric"}, "schedule"),
    ({"transition": 3.0}, "transition"),
    ({"step_size": 0.0}, "step_size"),
    ({"target_accept_prob": 0.0}, "target_accept_prob"),
]


@pytest.mark.parametrize("bound", ["ais_mi_lower", "ais_mi_upper"])
@pytest.mark.parametrize(("kwargs", "name"), MI_SETTINGS, ids=[str(k) for k, _ in MI_SETTINGS])
def test_ais_mi_settings_are_refused_alike(bound, kwargs, name):
    def case(b):
        args = (b["sample_joint"], b["log_prior"], b["joint_likelihood"])
        return b["mi"](b["bounds"][bound], *args, **{"num_samples": 4, "num_chains": 2, "num_steps": 3, **kwargs})

    assert name in _same_error(case)


@pytest.mark.parametrize("bound", ["iwae_mi_lower", "iwae_mi_upper"])
@pytest.mark.parametrize(
    ("kwargs", "name"), [({"num_samples": 0}, "num_samples"), ({"num_importance": -2}, "num_importance")]
)
def test_iwae_mi_counts_are_refused_alike(bound, kwargs, name):
    def case(b):
        return b["mi"](b["iwae"][bound], b["sample_joint"], b["log_prior"], b["joint_likelihood"], **kwargs)

    assert name in _same_error(case)


# ---------------------------------------------------------------------------------------
# Critic bounds on given scores
# ---------------------------------------------------------------------------------------
SCORE_CASES = [
    ("infonce", (np.zeros((3, 4)),), "scores"),
    ("infonce", (np.zeros((2, 3, 4, 4)),), "scores"),
    ("infonce", (np.array([[0.0, np.inf], [0.0, 0.0]]),), "finite"),
    ("nwj", (np.zeros((1, 1)),), "K >= 2"),
    ("mine_dv", (np.zeros((1, 1)),), "K >= 2"),
    ("barber_agakov", (np.zeros(3),), "exactly one"),
    ("barber_agakov", (np.zeros((3, 2)), np.zeros((3, 2))), "log_q"),
    ("barber_agakov", (np.zeros(3), np.zeros(4)), "log_prior"),
    ("giwae", (np.zeros(3), np.zeros(3), np.zeros((2, 4))), "scores"),
    ("giwae", (np.zeros(3), np.zeros(2), np.zeros((2, 3))), "log_prior"),
    ("giwae", (np.zeros(3), np.zeros(3), np.full((2, 3), np.nan)), "finite"),
]


@pytest.mark.parametrize(
    ("name", "args", "fragment"), SCORE_CASES, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(SCORE_CASES)]
)
def test_critic_bounds_refuse_bad_scores_alike(name, args, fragment):
    def case(b):
        return getattr(b["mi_bounds"], name)(*(b["array"](a) for a in args))

    assert fragment in _same_error(case)
