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

    import numpyro

    def invalid_model(y):  # half the prior's scales negative
        theta = numpyro.sample("theta", dist.Normal(0.0, jnp.array([1.0, 1.0, -1.0, -1.0])))
        numpyro.sample("y", dist.Normal(theta.sum(), 1.0), obs=y)

    def poisson_model(y):
        lam = numpyro.sample("lam", dist.Gamma(1.0, 1.0))
        with numpyro.plate("n", y.shape[0]):
            numpyro.sample("y", dist.Poisson(lam), obs=y)

    def mi_model(x=None, extra=False, dependent=False):
        z = numpyro.sample("z", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
        x = numpyro.sample("x", dist.Normal(z @ jnp.ones((2, 3)), 1.0).to_event(1), obs=x)
        if extra:
            numpyro.sample("noise", dist.Normal(0.0, 1.0))
        if dependent:
            numpyro.sample("w", dist.Normal(x.sum(), 1.0))

    def run_reverse(sampler, samples, *args):
        return sampler.run_reverse(jax.random.PRNGKey(0), samples, *args)

    return {
        "AIS": AIS,
        "run": run,
        "run_reverse": run_reverse,
        "run_model": lambda sampler, *args: sampler.run(jax.random.PRNGKey(0), *args),
        "invalid_model": invalid_model,
        "poisson_model": poisson_model,
        "mi_model": mi_model,
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

    def invalid_model(y):  # half the prior's scales negative
        theta = pyro.sample("theta", dist.Normal(0.0, torch.tensor([1.0, 1.0, -1.0, -1.0])).to_event(1))
        pyro.sample("y", dist.Normal(theta.sum(), 1.0), obs=y)

    def poisson_model(y):
        lam = pyro.sample("lam", dist.Gamma(1.0, 1.0))
        with pyro.plate("n", y.shape[0]):
            pyro.sample("y", dist.Poisson(lam), obs=y)

    def mi_model(x=None, extra=False, dependent=False):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        x = pyro.sample("x", dist.Normal(z @ torch.ones(2, 3), 1.0).to_event(1), obs=x)
        if extra:
            pyro.sample("noise", dist.Normal(0.0, 1.0))
        if dependent:
            pyro.sample("w", dist.Normal(x.sum(), 1.0))

    def run_reverse(sampler, samples, *args):
        pyro.set_rng_seed(0)
        return sampler.run_reverse(samples, *args)

    def run_model(sampler, *args):
        pyro.set_rng_seed(0)
        return sampler.run(*args)

    return {
        "AIS": AIS,
        "run": run,
        "run_reverse": run_reverse,
        "run_model": run_model,
        "invalid_model": invalid_model,
        "poisson_model": poisson_model,
        "mi_model": mi_model,
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


# ---------------------------------------------------------------------------------------
# Issue 20: a model NUTS refuses, the MI bounds' model route, bad types at the door
# ---------------------------------------------------------------------------------------
def test_a_model_with_invalid_parameters_is_refused_alike():
    """Half the prior's scales negative: the same ValueError (NumPyro's validate_args words)."""
    message = _same_error(lambda b: b["run_model"](b["AIS"](b["invalid_model"], num_steps=2), b["array"](0.5)))
    assert message.startswith("model: site 'theta': Normal distribution got invalid scale parameter (2 of 4 values)")
    message = _same_error(
        lambda b: b["run_model"](b["AIS"](b["poisson_model"], num_steps=2), b["array"](np.array([1.0, -2.0])))
    )
    assert message.startswith("model: site 'y': observed value is outside the support of its Poisson distribution")


MODEL_ROUTE_CASES = [
    ("no functions", lambda b: ((b["mi_model"],), {}), "log_prior, log_likelihood missing"),
    ("both", lambda b: ((b["mi_model"], b["log_prior"]), {"latent": "z", "observed": "x"}), "not both"),
    ("latent only", lambda b: ((b["mi_model"],), {"latent": "z"}), "both latent= and observed="),
    ("model is not callable", lambda b: ((3,), {"latent": "z", "observed": "x"}), "model must be a model"),
    ("site type", lambda b: ((b["mi_model"],), {"latent": 3, "observed": "x"}), "latent must be a site name"),
    ("unknown site", lambda b: ((b["mi_model"],), {"latent": "w", "observed": "x"}), "no sample sites ['w']"),
    ("overlap", lambda b: ((b["mi_model"],), {"latent": "z", "observed": ["x", "z"]}), "share the sites ['z']"),
    (
        "unnamed site",
        lambda b: ((b["mi_model"],), {"latent": "z", "observed": "x", "model_kwargs": {"extra": True}}),
        "the sample sites ['noise'] are neither latent nor observed",
    ),
    (
        "latent depends on x",
        lambda b: ((b["mi_model"],), {"latent": ["z", "w"], "observed": "x", "model_kwargs": {"dependent": True}}),
        "the latent sites ['z', 'w'] depend on the observed sites ['x']",
    ),
    (
        "observed fixed",
        lambda b: ((b["mi_model"],), {"latent": "z", "observed": "x", "model_args": (b["array"](np.zeros(3)),)}),
        "the sites ['x'] are observed (obs=...)",
    ),
    (
        "model_args without a model",
        lambda b: ((b["sample_joint"], b["log_prior"], b["joint_likelihood"]), {"model_args": (1,)}),
        "model_args and model_kwargs are for a model",
    ),
    (
        "log_prior signature",
        lambda b: ((b["sample_joint"], lambda: 0.0, b["joint_likelihood"]), {}),
        "log_prior must be a function log_prior(z), but it cannot be called so",
    ),
    (
        "log_likelihood not callable",
        lambda b: ((b["sample_joint"], b["log_prior"], "gauss"), {}),
        "log_likelihood must be a function log_likelihood(x, z), got 'gauss'",
    ),
    (
        "inverse mass matrix string",
        lambda b: ((b["sample_joint"], b["log_prior"], b["joint_likelihood"]), {"inverse_mass_matrix": "unit"}),
        "inverse_mass_matrix must be an array of shape (dz,) or (dz, dz), got 'unit'",
    ),
    (
        "inverse mass matrix shape",
        lambda b: ((b["sample_joint"], b["log_prior"], b["joint_likelihood"]), {"inverse_mass_matrix": np.ones(3)}),
        "inverse_mass_matrix must have shape (2,) or (2, 2), got (3,)",
    ),
    (
        "schedule of strings",
        lambda b: ((b["sample_joint"], b["log_prior"], b["joint_likelihood"]), {"schedule": ["0", "1"]}),
        "schedule must be 'linear', 'sigmoid' or an array of inverse temperatures",
    ),
]


@pytest.mark.parametrize(("name", "call", "fragment"), MODEL_ROUTE_CASES, ids=[c[0] for c in MODEL_ROUTE_CASES])
def test_ais_mi_model_route_and_bad_types_are_refused_alike(name, call, fragment):
    """The same error type and message in both backends, naming the argument (no tracer error)."""

    def case(b):
        args, kwargs = call(b)
        if "inverse_mass_matrix" in kwargs and not isinstance(kwargs["inverse_mass_matrix"], str):
            kwargs = {**kwargs, "inverse_mass_matrix": b["array"](kwargs["inverse_mass_matrix"])}
        return b["mi"](b["bounds"]["ais_mi_lower"], *args, num_samples=4, num_chains=2, num_steps=2, **kwargs)

    assert fragment in _same_error(case)


def test_ais_mi_counts_given_as_strings_are_refused_alike():
    def case(b):
        return b["mi"](b["bounds"]["ais_mi_upper"], b["mi_model"], latent="z", observed="x", num_samples="8")

    assert _same_error(case) == "num_samples must be a positive integer, got '8'"


def test_ais_bad_types_are_refused_alike():
    def ais(b, **kwargs):
        return b["AIS"](log_likelihood_fn=b["log_likelihood"], proposal=b["prior"], num_steps=2, **kwargs)

    assert "inverse_mass_matrix must be an array" in _same_error(lambda b: ais(b, inverse_mass_matrix="diag"))
    assert "schedule must be 'linear', 'sigmoid'" in _same_error(lambda b: ais(b, schedule=[0, "1"]))
    message = _same_error(lambda b: b["run_reverse"](ais(b), "draws"))
    assert (
        message == "posterior_samples must be an array of shape (num_chains, d) or a dict of latent sites, got 'draws'"
    )
    message = _same_error(lambda b: b["run_reverse"](ais(b), {"lam": np.array(["1"])}))
    assert message.startswith("posterior_samples['lam'] must be an array of draws")


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("infonce", ("abc",), "scores must be a tensor or an array of numbers, got str"),
        ("infonce", ([["a", "b"], ["c", "d"]],), "scores must be a tensor or an array of numbers, got list"),
        ("barber_agakov", ("x",), "log_q must be a tensor or an array of numbers, got str"),
        ("giwae", (np.zeros(3), np.zeros(3), "abc"), "scores must be a tensor or an array of numbers, got str"),
    ],
)
def test_critic_bounds_refuse_strings_alike(name, args, message):
    assert _same_error(lambda b: getattr(b["mi_bounds"], name)(*args)) == message
