"""The two backends' DR-HMC and DR-G-HMC with ATLAS's local step size make the same transitions.

``local_step_size=True``: the stages after the first step ``a / c^(k-1)``, ``a`` drawn once per
transition from a log-normal law that reads the curvature stage 0's trajectory met (Modi 2024), its
density entering every later stage's Hastings ratio, ghosts included.  Transition by transition
(float64), the JAX core's step and the torch core's step, started from the same state and fed the same
random numbers (the JAX key's normals and uniforms, handed to torch in the order it draws them:
``tests/pyro_ext/test_drghmc.py``'s ``ScriptedRandom``; the local step's normal comes after stage 0's
uniforms, when stage 1 is tried), move to the same point, accept the same stage with the same
probability and run the same leapfrog steps.  The two cores read the same constants
(``adapters.configs.LOCAL_STEP_*``).  Skipped when a backend is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest

IMM = np.array([1.0, 0.5, 2.0])

# core settings, first-stage step size, leapfrog steps, start's v, seed, transitions: every stage is accepted
# at least once (found by trying a few), at a cost of ~1400 (DR-HMC) and ~500 (DR-G-HMC) gradients in all
CASES = {
    "drhmc": (dict(max_proposals=3, reduction_factor=3.0, probabilistic=True), 1.2, 2, 1.0, 4, 60),
    "drghmc": (dict(max_proposals=3, reduction_factor=3.0, probabilistic=True, damping=0.2), 1.1, 1, -1.0, 7, 100),
}


@pytest.mark.parametrize("sampler", list(CASES))
def test_same_random_numbers_same_transitions(monkeypatch, sampler):
    """60-100 transitions of the 3-D funnel with ``local_step_size=True``, each from the JAX state."""
    pytest.importorskip("jax", reason="the numpyro extra is not installed")
    pytest.importorskip("pyro", reason="the pyro extra is not installed")
    import jax
    import jax.numpy as jnp
    import torch

    from numpyro_ext.infer import drghmc as jax_drghmc
    from numpyro_ext.infer import drhmc as jax_drhmc
    from pyro_ext.infer import drghmc as torch_drghmc
    from pyro_ext.infer import drhmc as torch_drhmc
    from tests.pyro_ext.test_drghmc import ScriptedRandom
    from tests.pyro_ext.test_drghmc import funnel_logdensity as torch_funnel

    settings, eps, num_steps, v, seed, num_transitions = CASES[sampler]
    num_stages = settings["max_proposals"]

    def jax_funnel(z):
        v, x = z[0], z[1:]
        return -(v**2) / 18.0 - 0.5 * jnp.sum(x**2) * jnp.exp(-v) - 0.5 * (z.shape[0] - 1) * v

    start_position = jnp.array([v, 0.3, -0.2])
    if sampler == "drhmc":
        jax_step = jax_drhmc.build_kernel(**settings, local_step_size=True)
        torch_step = torch_drhmc.build_kernel(**settings, local_step_size=True)
        start = jax_drhmc.init(start_position, jax_funnel)
    else:
        jax_step = jax_drghmc.build_kernel(**settings, local_step_size=True)
        torch_step = torch_drghmc.build_kernel(**settings, local_step_size=True)
        start = jax_drghmc.init(start_position, jax_funnel, jax.random.PRNGKey(0))
    keys = jax.random.split(jax.random.PRNGKey(seed), num_transitions)

    @jax.jit
    def jax_chain(state, keys):
        def one(state, key):
            new, info = jax_step(key, state, jax_funnel, eps, jnp.asarray(IMM), num_steps)
            # the numbers the step drew, derived as build_kernel and delayed_rejection derive them
            momentum_key, accept_key = jax.random.split(key)
            accept_keys, retry_keys, aux_key = jax.random.split(accept_key, 3)
            numbers = (
                jax.random.normal(momentum_key, (3,), jnp.float64),
                jax.random.normal(aux_key, (), jnp.float64),
                jax.random.uniform(accept_keys, (num_stages,), jnp.float64),
                jax.random.uniform(retry_keys, (num_stages,), jnp.float64),
            )
            return new, (state, new, info, numbers)

        return jax.lax.scan(one, state, keys)[1]

    starts, ends, infos, (normals, aux_normals, u_accept, u_retry) = jax.tree.map(np.asarray, jax_chain(start, keys))

    def to_torch(array):
        return torch.tensor(np.array(array))

    stages, fewer_grads = [], 0
    for t in range(num_transitions):
        uniforms = [u for k in range(num_stages) for u in (u_accept[t, k], u_retry[t, k])]
        # the local step's normal is drawn after stage 0's numbers, when stage 1 is tried; a spare stays unused
        ScriptedRandom(monkeypatch, [normals[t], aux_normals[t]], uniforms)
        if sampler == "drhmc":
            state = torch_drhmc.DRHMCState(
                to_torch(starts.position[t]), float(starts.logdensity[t]), to_torch(starts.logdensity_grad[t])
            )
        else:
            state = torch_drghmc.DRGHMCState(
                to_torch(starts.position[t]),
                to_torch(starts.momentum[t]),
                float(starts.logdensity[t]),
                to_torch(starts.logdensity_grad[t]),
            )
        new, info = torch_step(state, torch_funnel, eps, to_torch(IMM), num_steps)
        assert info.stage == infos.stage[t], t
        assert info.num_proposals == infos.num_proposals[t], t
        assert info.num_integration_steps == infos.num_integration_steps[t], t
        assert info.num_grad_evals <= infos.num_grad_evals[t], t  # torch skips ghosts that cannot matter
        fewer_grads += info.num_grad_evals < infos.num_grad_evals[t]
        np.testing.assert_allclose(new.position.numpy(), ends.position[t], rtol=1e-9, atol=1e-10)
        if sampler == "drghmc":
            np.testing.assert_allclose(new.momentum.numpy(), ends.momentum[t], rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(info.acceptance_rate, infos.acceptance_rate[t], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(info.first_acceptance_rate, infos.first_acceptance_rate[t], rtol=1e-9, atol=1e-12)
        stages.append(info.stage)
    assert set(stages) == {-1, 0, 1, 2}, np.bincount(np.array(stages) + 1)
    assert fewer_grads <= num_transitions // 10, fewer_grads  # the counts agree but where a ghost is cut short


@pytest.mark.parametrize("sampler", list(CASES))
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_a_non_flag_is_refused_with_the_same_message(sampler, value):
    """Both backends' kernels (through the shared config) and cores name ``local_step_size`` in the same words."""
    from tests.test_parity_drghmc import _numpyro as numpyro_drghmc
    from tests.test_parity_drghmc import _pyro as pyro_drghmc
    from tests.test_parity_drhmc import _error
    from tests.test_parity_drhmc import _numpyro as numpyro_drhmc
    from tests.test_parity_drhmc import _pyro as pyro_drhmc

    name = {"drhmc": "DRHMC", "drghmc": "DRGHMC"}[sampler]
    backends = {"drhmc": (numpyro_drhmc, pyro_drhmc), "drghmc": (numpyro_drghmc, pyro_drghmc)}[sampler]
    kernel = lambda b: b[name](b["model"], local_step_size=value)  # noqa: E731
    core = lambda b: b["build_kernel"](local_step_size=value)  # noqa: E731
    for make in (kernel, core):
        numpyro_error, pyro_error = (_error(lambda backend=backend, make=make: make(backend())) for backend in backends)
        assert type(numpyro_error) is type(pyro_error) is ValueError
        assert str(numpyro_error) == str(pyro_error)
        assert str(pyro_error).startswith(f"local_step_size must be True or False, got {value!r}")
