"""The two ``HABC`` twins agree where they can be made deterministic, and refuse bad input alike.

* ``sghmc_step``: with a deterministic gradient (a Gaussian log density), one step's position, log
  density and gradient involve no randomness, and its momentum is ``a r_L + sqrt(1 - a^2) xi`` with
  ``xi ~ N(0, M)`` drawn by the backend; ``xi`` is recovered from each backend's own random numbers
  (JAX: the step's key split as the core splits it; torch: a copy of the generator's state), and the
  noise-free part ``a r_L`` must agree between the backends and with the leapfrog written out by hand.
* ``spsa_grad`` in one dimension is the central difference whatever the directions: both backends give it.
* ``HABC`` refuses the same bad arguments with the same error type and message (the problem's type
  error names its own package; the autodiff refusal its own simulator check after the common prefix).

Both run in float32 (JAX's default; the library never flips JAX's x64 switch), compared to 1e-5.
A case is skipped when a backend is not installed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

A = np.array([[1.5, 0.4], [0.4, 0.8]])  # the Gaussian target's precision
B = np.array([0.3, -0.2])
POSITION, MOMENTUM = np.array([0.5, -1.0]), np.array([0.3, 0.7])
STEP_SIZE, FRICTION = 0.1, 0.7
MASSES = {"diagonal": np.array([0.5, 2.0]), "dense": np.array([[1.0, 0.3], [0.3, 0.5]])}


def _log_density(x: np.ndarray) -> tuple[float, np.ndarray]:
    return float(-0.5 * x @ A @ x + B @ x), -A @ x + B


def _numpyro_step(inverse_mass_matrix: np.ndarray, blow_up: bool) -> dict[str, np.ndarray]:
    pytest.importorskip("jax", reason="the numpyro extra is not installed")
    import jax
    import jax.numpy as jnp

    from numpyro_ext.infer.abc.habc import SGHMCState, sghmc_step
    from numpyro_ext.infer.hmc_util import momentum_from_noise

    a, b = jnp.asarray(A, jnp.float32), jnp.asarray(B, jnp.float32)

    def grad_fn(x, key):
        grad = -a @ x + b
        grad = jnp.full_like(x, jnp.inf) if blow_up else grad
        return -0.5 * x @ a @ x + b @ x, grad, jnp.zeros((), jnp.int32), jnp.zeros((), bool)

    x = jnp.asarray(POSITION, jnp.float32)
    value, grad = _log_density(POSITION)
    state = SGHMCState(x, jnp.asarray(MOMENTUM, jnp.float32), jnp.float32(value), jnp.asarray(grad, jnp.float32))
    imm = jnp.asarray(inverse_mass_matrix, jnp.float32)
    key = jax.random.PRNGKey(0)
    new, info = sghmc_step(key, state, grad_fn, imm, STEP_SIZE, FRICTION)
    _, noise_key = jax.random.split(key)
    noise = momentum_from_noise(jax.random.normal(noise_key, (2,), jnp.float32), imm)
    decay = math.exp(-FRICTION * STEP_SIZE)
    out = {name: np.asarray(getattr(new, name)) for name in new._fields}
    scale = 1.0 if bool(info.diverging) else math.sqrt(1.0 - decay**2)  # a diverging step's momentum is xi
    out["momentum"] = out["momentum"] - scale * np.asarray(noise)
    out["diverging"] = bool(info.diverging)
    return out


def _pyro_step(inverse_mass_matrix: np.ndarray, blow_up: bool) -> dict[str, np.ndarray]:
    pytest.importorskip("pyro", reason="the pyro extra is not installed")
    import torch

    from pyro_ext.infer.abc.habc import SGHMCState, sghmc_step
    from pyro_ext.infer.hmc_util import sample_momentum

    f32 = torch.float32
    a, b = torch.tensor(A, dtype=f32), torch.tensor(B, dtype=f32)

    def grad_fn(x, generator):
        grad = torch.full_like(x, math.inf) if blow_up else -a @ x + b
        return -0.5 * x @ a @ x + b @ x, grad, torch.tensor(0), torch.tensor(False)

    value, grad = _log_density(POSITION)
    state = SGHMCState(
        torch.tensor(POSITION, dtype=f32),
        torch.tensor(MOMENTUM, dtype=f32),
        torch.tensor(value, dtype=f32),
        torch.tensor(grad, dtype=f32),
    )
    imm = torch.tensor(inverse_mass_matrix, dtype=f32)
    generator = torch.Generator().manual_seed(0)
    copy = torch.Generator()
    copy.set_state(generator.get_state())
    new, info = sghmc_step(generator, state, grad_fn, imm, STEP_SIZE, FRICTION)
    noise = sample_momentum(copy, imm, state.momentum)  # grad_fn draws nothing: the step's only draw
    decay = math.exp(-FRICTION * STEP_SIZE)
    out = {name: getattr(new, name).numpy() for name in new._fields}
    scale = 1.0 if bool(info.diverging) else math.sqrt(1.0 - decay**2)
    out["momentum"] = out["momentum"] - scale * noise.numpy()
    out["diverging"] = bool(info.diverging)
    return out


@pytest.mark.parametrize("mass", sorted(MASSES))
def test_sghmc_step_agrees_between_backends_and_with_the_leapfrog(mass):
    imm = MASSES[mass]
    jax_out, torch_out = _numpyro_step(imm, False), _pyro_step(imm, False)
    # the leapfrog by hand (float64), then the friction's decay a = exp(-C eps) of the momentum
    velocity = (lambda r: imm * r) if imm.ndim == 1 else (lambda r: imm @ r)
    _, g0 = _log_density(POSITION)
    half = MOMENTUM + 0.5 * STEP_SIZE * g0
    x1 = POSITION + STEP_SIZE * velocity(half)
    value1, g1 = _log_density(x1)
    expected = {
        "position": x1,
        "momentum": math.exp(-FRICTION * STEP_SIZE) * (half + 0.5 * STEP_SIZE * g1),
        "logdensity": value1,
        "logdensity_grad": g1,
    }
    assert not jax_out["diverging"] and not torch_out["diverging"]
    for name, value in expected.items():
        assert np.allclose(jax_out[name], torch_out[name], rtol=1e-5, atol=1e-6), (name, jax_out, torch_out)
        assert np.allclose(torch_out[name], value, rtol=1e-5, atol=1e-6), (name, torch_out, value)


def test_sghmc_step_undoes_a_diverging_step_in_both_backends():
    jax_out, torch_out = _numpyro_step(MASSES["diagonal"], True), _pyro_step(MASSES["diagonal"], True)
    value, grad = _log_density(POSITION)
    for out in (jax_out, torch_out):
        assert out["diverging"]
        assert np.allclose(out["position"], POSITION) and np.allclose(out["logdensity_grad"], grad)
        assert np.isclose(out["logdensity"], value, rtol=1e-6)
        assert np.allclose(out["momentum"], 0.0, atol=1e-6)  # the momentum is the fresh draw itself


def test_spsa_in_one_dimension_is_the_same_central_difference_in_both_backends():
    pytest.importorskip("jax", reason="the numpyro extra is not installed")
    pytest.importorskip("pyro", reason="the pyro extra is not installed")
    import jax
    import jax.numpy as jnp
    import torch

    from numpyro_ext.infer.abc.spsa import spsa_grad as jax_spsa
    from pyro_ext.infer.abc.spsa import spsa_grad as torch_spsa

    jax_estimate = jax_spsa(
        lambda t, k: jnp.sum(jnp.sin(3.0 * t) * k),
        jnp.array([0.4]),
        jnp.array([1.0, 2.0]),
        jax.random.PRNGKey(0),
        3,
        1e-2,
    )
    torch_estimate = torch_spsa(
        lambda t, k: (torch.sin(3.0 * t) * k).sum(-1),
        torch.tensor([0.4]),
        torch.tensor([1.0, 2.0]),
        torch.Generator().manual_seed(0),
        3,
        1e-2,
    )
    central = 3.0 * (math.sin(3.0 * 0.41) - math.sin(3.0 * 0.39)) / 2e-2  # sum of the keys (3) times the slope
    for estimate in (jax_estimate, torch_estimate):
        assert np.allclose(np.asarray(estimate.grad), central, rtol=1e-4)
        assert np.isclose(float(estimate.value), 1.5 * (math.sin(1.23) + math.sin(1.17)), rtol=1e-5)
        assert int(estimate.num_finite_pairs) == 3


BAD_ARGUMENTS = [
    {"step_size": 0.0},
    {"step_size": float("nan")},
    {"num_steps": 0},
    {"num_steps": 2.5},
    {"friction": -1.0},
    {"num_simulations": 2},
    {"num_spsa_repeats": 0},
    {"spsa_scale": 0.0},
    {"seed_refresh": 1.5},
    {"gradient": "finite"},
    {"epsilon": -0.1},
    {"epsilon": "0.1"},
    {"inverse_mass_matrix": [1.0, 2.0, 3.0]},
    {"inverse_mass_matrix": [1.0, -2.0]},
    {"inverse_mass_matrix": [[1.0, 2.0], [2.0, 1.0]]},
    {"inverse_mass_matrix": "identity"},
    {"num_pilot_draws": -1},
]


def _problems(rounding: bool = False):
    pytest.importorskip("jax", reason="the numpyro extra is not installed")
    pytest.importorskip("pyro", reason="the pyro extra is not installed")
    import jax
    import jax.numpy as jnp
    import numpyro.distributions as dist
    import pyro.distributions as pdist
    import torch

    from numpyro_ext.infer.abc import HABC as JaxHABC
    from numpyro_ext.infer.abc import LikelihoodFreeProblem as JaxProblem
    from pyro_ext.infer.abc import HABC as TorchHABC
    from pyro_ext.infer.abc import LikelihoodFreeProblem as TorchProblem

    def jax_simulator(theta, key):
        x = theta + jax.random.normal(key, (2,))
        return jnp.round(x) if rounding else x

    def torch_simulator(theta, generator):
        x = theta + torch.randn(theta.shape, generator=generator)
        return torch.round(x) if rounding else x

    y = [0.8, -1.1]
    jax_problem = JaxProblem(dist.Normal(jnp.zeros(2), 1.0).to_event(1), jax_simulator, y)
    torch_problem = TorchProblem(pdist.Normal(torch.zeros(2), 1.0).to_event(1), torch_simulator, torch.tensor(y))
    return (JaxHABC, jax_problem), (TorchHABC, torch_problem)


def _error(habc, problem, **kwargs) -> tuple[type, str]:
    with pytest.raises(Exception) as info:  # noqa: PT011 -- the type itself is compared
        habc(problem, **kwargs)
    return info.type, str(info.value)


@pytest.mark.parametrize("kwargs", BAD_ARGUMENTS, ids=lambda kwargs: "-".join(f"{k}={v!r}" for k, v in kwargs.items()))
def test_bad_arguments_give_the_same_error_in_both_backends(kwargs):
    (jax_habc, jax_problem), (torch_habc, torch_problem) = _problems()
    assert _error(jax_habc, jax_problem, **kwargs) == _error(torch_habc, torch_problem, **kwargs)


def test_a_bad_problem_and_a_rounding_simulator_are_refused_alike():
    (jax_habc, _), (torch_habc, _) = _problems()
    jax_type, jax_message = _error(jax_habc, "problem")
    torch_type, torch_message = _error(torch_habc, "problem")
    assert jax_type is torch_type is TypeError
    assert jax_message.replace("numpyro_ext", "pyro_ext") == torch_message
    (jax_habc, jax_problem), (torch_habc, torch_problem) = _problems(rounding=True)
    jax_type, jax_message = _error(jax_habc, jax_problem, gradient="autodiff")
    torch_type, torch_message = _error(torch_habc, torch_problem, gradient="autodiff")
    prefix = "gradient: 'autodiff' cannot be used with this simulator ("
    assert jax_type is torch_type is ValueError
    assert jax_message.startswith(prefix) and torch_message.startswith(prefix)


# ---- warmup adaptation of the metric --------------------------------------------------------
ADAPT_DRAWS = np.random.default_rng(5).normal(size=(60, 3)) * np.array([0.05, 1.0, 4.0]) + np.array([1.0, 0.0, -2.0])


def _numpyro_adapted(dense: bool) -> np.ndarray:
    """NumPyro's ``sghmc_warmup_adapter`` fed ``ADAPT_DRAWS`` as 60 warmup draws: ``M^-1`` after each ``(60, ...)``."""
    pytest.importorskip("jax", reason="the numpyro extra is not installed")
    import jax
    import jax.numpy as jnp
    from numpyro.infer.hmc_util import IntegratorState

    from numpyro_ext.infer.abc.habc import sghmc_warmup_adapter

    init, update = sghmc_warmup_adapter(len(ADAPT_DRAWS), True, dense)
    dtype = jnp.result_type(float)  # Welford's arithmetic is in JAX's default float (x64 under this test suite)
    zero = jnp.zeros(3, dtype)
    start = jnp.eye(3, dtype=dtype) if dense else jnp.ones(3, dtype)
    state = init(IntegratorState(zero, None, 0.0, zero), jax.random.PRNGKey(0), 0.1, start, mass_matrix_size=3)

    def feed(state, tz):  # one compiled pass over the draws
        t, z = tz
        state = update(t, 1.0, IntegratorState(z, None, 0.0, zero), state)
        return state, state.inverse_mass_matrix

    draws = jnp.asarray(ADAPT_DRAWS, dtype)
    _, out = jax.jit(lambda s: jax.lax.scan(feed, s, (jnp.arange(len(draws)), draws)))(state)
    return np.asarray(out)


def _pyro_adapted(dense: bool) -> np.ndarray:
    pytest.importorskip("pyro", reason="the pyro extra is not installed")
    import torch

    from pyro_ext.infer.abc.habc import METRIC_BLOCK, sghmc_warmup_adapter

    start = torch.eye(3, dtype=torch.float64) if dense else torch.ones(3, dtype=torch.float64)
    adapter = sghmc_warmup_adapter(len(ADAPT_DRAWS), 0.1, start, True)
    out = []
    for t, z in enumerate(torch.tensor(ADAPT_DRAWS, dtype=torch.float64)):
        adapter.step(t, {"u": z}, torch.ones(()))
        out.append(adapter.mass_matrix_adapter.inverse_mass_matrix[METRIC_BLOCK].numpy().copy())
    return np.stack(out)


@pytest.mark.parametrize("dense", [False, True])
def test_warmup_adaptation_of_the_metric_is_the_same_arithmetic_in_both_backends(dense):
    # 60 warmup draws: Stan's schedule is a start buffer of int(0.15 * 60) = 9, one window of 45, an end buffer
    # of int(0.1 * 60) = 6; M^-1 is the start until draw 53, then the window's regularised (co)variance
    # n / (n + 5) S + 1e-3 * 5 / (n + 5) (n = 45, S with ddof 1), in both backends
    jax_out, torch_out = _numpyro_adapted(dense), _pyro_adapted(dense)
    window = ADAPT_DRAWS[9:54]
    n = len(window)
    covariance = np.cov(window, rowvar=False) if dense else window.var(0, ddof=1)
    shrink = 1e-3 * 5 / (n + 5) * (np.eye(3) if dense else np.ones(3))
    expected = n / (n + 5) * covariance + shrink
    start = np.eye(3) if dense else np.ones(3)
    for out in (jax_out, torch_out):
        assert np.allclose(out[:53], start)
        assert np.allclose(out[53:], expected, rtol=1e-5, atol=1e-7), (out[-1], expected)
    assert np.allclose(jax_out, torch_out, rtol=1e-5, atol=1e-7)
    assert not np.allclose(expected, start, rtol=0.1)  # the window moved it (variances 0.0025 to 16)
