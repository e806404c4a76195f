"""The two ``DRGHMC`` twins: the same transitions given the same random numbers, the same errors.

* Transition by transition (float64): the JAX core's step and the torch core's step, started from the
  same state and fed the same normals and uniforms (the JAX key's numbers, handed to torch in the
  order it draws them: ``tests/pyro_ext/test_drghmc.py``'s ``ScriptedRandom``), move to the same
  position and momentum, accept the same stage and run the same leapfrog steps.
* Bad input: each case builds ``numpyro_ext.infer.DRGHMC`` and ``pyro_ext.infer.DRGHMC`` (or the cores)
  with the same arguments; both raise the same exception type with the same message.

A case is skipped when a backend is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_parity_drhmc import _error

IMM = np.array([1.0, 0.5, 2.0])


def _numpyro():
    pytest.importorskip("jax", reason="the numpyro extra is not installed")
    import jax.numpy as jnp

    from numpyro_ext.infer import DRGHMC
    from numpyro_ext.infer.drghmc import build_kernel
    from numpyro_ext.models import test_problems

    return {
        "model": test_problems.funnel,
        "potential_fn": lambda z: jnp.sum(z**2),
        "DRGHMC": DRGHMC,
        "build_kernel": build_kernel,
    }


def _pyro():
    pytest.importorskip("pyro", reason="the pyro extra is not installed")
    from pyro_ext.infer import DRGHMC
    from pyro_ext.infer.drghmc import build_kernel
    from pyro_ext.models import test_problems

    return {
        "model": test_problems.funnel,
        "potential_fn": lambda params: sum((v**2).sum() for v in params.values()),
        "DRGHMC": DRGHMC,
        "build_kernel": build_kernel,
    }


# ---------------------------------------------------------------------------------------
# Transition by transition
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "settings",
    [
        dict(max_proposals=3, probabilistic=True, num_steps=1),
        pytest.param(
            dict(max_proposals=3, probabilistic=False, constant_trajectory=True, num_steps=2),
            marks=pytest.mark.slow,  # ~3 s: one more compilation of the JAX step (the default set keeps its budget)
        ),
    ],
    ids=["probabilistic", "constant-trajectory"],
)
def test_same_random_numbers_same_transitions(monkeypatch, settings):
    """100 transitions of the 3-D funnel at a step size where every stage is used, each from the JAX state."""
    _numpyro(), _pyro()
    import jax
    import jax.numpy as jnp
    import torch

    from numpyro_ext.infer.drghmc import build_kernel as jax_build_kernel
    from numpyro_ext.infer.drghmc import init as jax_init
    from pyro_ext.infer.drghmc import DRGHMCState
    from pyro_ext.infer.drghmc import build_kernel as torch_build_kernel
    from tests.pyro_ext.test_drghmc import ScriptedRandom
    from tests.pyro_ext.test_drghmc import funnel_logdensity as torch_funnel

    settings = dict(settings)
    num_steps, num_stages, probabilistic = (
        settings.pop("num_steps"),
        settings["max_proposals"],
        settings["probabilistic"],
    )
    kw = dict(reduction_factor=3.0, damping=0.2, **settings)
    eps, num_transitions = 0.9, 100

    def jax_funnel(z):
        v, x = z[0], z[1:]
        return -(v**2) / 18.0 - 0.5 * jnp.sum(x**2) * jnp.exp(-v) - 0.5 * (z.shape[0] - 1) * v

    jax_step = jax_build_kernel(**kw)
    start = jax_init(jnp.array([-1.0, 0.3, -0.2]), jax_funnel, jax.random.PRNGKey(0))
    keys = jax.random.split(jax.random.PRNGKey(7), num_transitions)

    @jax.jit
    def jax_chain(state, keys):
        def one(state, key):
            new, info = jax_step(key, state, jax_funnel, eps, jnp.asarray(IMM), num_steps)
            # the numbers the step drew, derived as build_kernel and delayed_rejection derive them
            refresh_key, accept_key = jax.random.split(key)
            accept_keys, retry_keys = jax.random.split(accept_key)
            numbers = (
                jax.random.normal(refresh_key, (3,), jnp.float64),
                jax.random.uniform(accept_keys, (num_stages,), jnp.float64),
                jax.random.uniform(retry_keys, (num_stages,), jnp.float64),
            )
            return new, (state, new, info, numbers)

        return jax.lax.scan(one, state, keys)[1]

    starts, ends, infos, (normals, u_accept, u_retry) = jax.tree.map(np.asarray, jax_chain(start, keys))
    torch_step = torch_build_kernel(**kw)

    def to_torch(array):
        return torch.tensor(np.array(array))

    stages = []
    for t in range(num_transitions):
        uniforms = [u for k in range(num_stages) for u in (u_accept[t, k], u_retry[t, k])[: 2 if probabilistic else 1]]
        ScriptedRandom(monkeypatch, [normals[t]], uniforms)
        state = DRGHMCState(
            to_torch(starts.position[t]),
            to_torch(starts.momentum[t]),
            float(starts.logdensity[t]),
            to_torch(starts.logdensity_grad[t]),
        )
        new, info = torch_step(state, torch_funnel, eps, to_torch(IMM), num_steps)
        assert info.stage == infos.stage[t], t
        assert info.num_integration_steps == infos.num_integration_steps[t], t
        assert info.num_grad_evals <= infos.num_grad_evals[t], t  # torch skips ghosts that cannot matter
        np.testing.assert_allclose(new.position.numpy(), ends.position[t], rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(new.momentum.numpy(), ends.momentum[t], rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(info.acceptance_rate, infos.acceptance_rate[t], rtol=1e-9, atol=1e-12)
        stages.append(info.stage)
    assert set(stages) == {-1, 0, 1, 2}, np.bincount(np.array(stages) + 1)


# ---------------------------------------------------------------------------------------
# The same errors
# ---------------------------------------------------------------------------------------
def _same_error(case) -> str:
    """Run ``case(backend)`` in both backends; assert the same exception type and message; return it."""
    numpyro_error, pyro_error = (_error(lambda backend=backend: case(backend())) for backend in (_numpyro, _pyro))
    assert type(numpyro_error) is type(pyro_error), (numpyro_error, pyro_error)
    assert str(numpyro_error) == str(pyro_error)
    return str(pyro_error)


BAD_ARGUMENTS = [
    (dict(step_size=0.0), "step_size"),
    (dict(step_size="0.1"), "step_size"),
    (dict(step_size_factor=-1.0), "step_size_factor"),
    (dict(num_steps=0), "num_steps"),
    (dict(num_steps=1.5), "num_steps"),
    (dict(max_proposals=0), "max_proposals"),
    (dict(max_proposals=True), "max_proposals"),
    (dict(reduction_factor=1.0), "reduction_factor"),
    (dict(reduction_factor=float("nan")), "reduction_factor"),
    (dict(damping=0.0), "damping"),
    (dict(damping=1.5), "damping"),
    (dict(probabilistic=None), "probabilistic"),
    (dict(constant_trajectory=1), "constant_trajectory"),
    (dict(adapt_step_size="yes"), "adapt_step_size"),
    (dict(dense_mass=[("v", "x")]), "dense_mass"),
    (dict(target_accept_prob=1.2), "target_accept_prob"),
    (dict(inverse_mass_matrix="ones"), "inverse_mass_matrix"),
    (dict(max_delta_energy=-1.0), "max_delta_energy"),
    (dict(max_tree_depth=0), "max_tree_depth"),
]


@pytest.mark.parametrize("kwargs, argument", BAD_ARGUMENTS, ids=[str(kw) for kw, _ in BAD_ARGUMENTS])
def test_bad_constructor_arguments(kwargs, argument):
    message = _same_error(lambda b: b["DRGHMC"](b["model"], **kwargs))
    assert argument in message


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda b: b["DRGHMC"]("funnel"), "model"),
        (lambda b: b["DRGHMC"](potential_fn="potential"), "potential_fn"),
        (lambda b: b["DRGHMC"](b["model"], init_strategy="uniform"), "init_strategy"),
    ],
    ids=["model", "potential_fn", "init_strategy"],
)
def test_functions_are_checked_when_the_kernel_is_built(make, argument):
    assert _same_error(make).startswith(f"DRGHMC: {argument} must be")


def test_model_or_potential_exactly_one():
    neither = _same_error(lambda b: b["DRGHMC"]())
    both = _same_error(lambda b: b["DRGHMC"](b["model"], potential_fn=b["potential_fn"]))
    assert neither == both and "exactly one" in neither


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(max_proposals=0), "max_proposals"),
        (dict(reduction_factor=1.0), "reduction_factor"),
        (dict(damping=0.0), "damping"),
        (dict(probabilistic="yes"), "probabilistic"),
        (dict(constant_trajectory=None), "constant_trajectory"),
        (dict(max_delta_energy=-1.0), "max_delta_energy"),
    ],
)
def test_core_checks_its_arguments(kwargs, argument):
    assert _same_error(lambda b: b["build_kernel"](**kwargs)).startswith(argument)


def test_wrong_inverse_mass_matrix_shape_and_discrete_latent():
    """Both name a misshapen inverse mass matrix and a discrete latent site, with the same words, at set-up."""

    def numpyro_case(**kwargs):
        import jax
        import numpyro
        import numpyro.distributions as dist
        from numpyro.infer import MCMC

        def model():
            numpyro.sample("x", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
            if kwargs.get("discrete"):
                numpyro.sample("k", dist.Poisson(3.0))

        kernel = _numpyro()["DRGHMC"](model, inverse_mass_matrix=kwargs.get("imm"))
        MCMC(kernel, num_warmup=2, num_samples=2, progress_bar=False).run(jax.random.PRNGKey(0))

    def pyro_case(**kwargs):
        import pyro
        import pyro.distributions as dist
        from pyro.infer import MCMC

        def model():
            pyro.sample("x", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
            if kwargs.get("discrete"):
                pyro.sample("k", dist.Poisson(3.0))

        kernel = _pyro()["DRGHMC"](model, inverse_mass_matrix=kwargs.get("imm"))
        MCMC(kernel, warmup_steps=2, num_samples=2, disable_progbar=True).run()

    for kwargs in (dict(imm=np.ones(3)), dict(discrete=True)):
        numpyro_error = _error(lambda kwargs=kwargs: numpyro_case(**kwargs))
        pyro_error = _error(lambda kwargs=kwargs: pyro_case(**kwargs))
        assert type(numpyro_error) is type(pyro_error) is ValueError
        assert str(numpyro_error).split(";")[0] == str(pyro_error).split(";")[0], (numpyro_error, pyro_error)
