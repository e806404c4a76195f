"""Twisted SMC (Pyro) against exact answers: Kalman-filter log Z, RTS smoothing marginals,
optimal twists from the backward information filter, exact posterior paths (FFBS); an
unmodified ``pyro.infer.SMCFilter`` model and guide; and the NumPyro twin on the same problem.

Every tolerance is a Monte Carlo error: 4 standard errors over independent runs, or
``4 sqrt(Var / ESS)`` for one weighted particle system; seeds are fixed.
"""

import functools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the pyro extra is not installed")
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402

from adapters import smc_reference as ref  # noqa: E402
from pyro_ext.infer import TwistedSMC  # noqa: E402
from pyro_ext.infer.twisted_smc import (  # noqa: E402
    QuadraticTwist,
    TabularTwist,
    TokenModel,
    genealogy,
    normalized_weights,
    resample,
    run_filter,
    run_token_filter,
)

T = 50


@pytest.fixture(autouse=True, scope="module")
def float64_one_thread():
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)  # tiny tensors: one thread avoids pool overhead on a busy machine
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


def _t(x):
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


class LinearGaussian:
    """The LGSSM of ``adapters/smc_reference.py`` in Pyro's SMCFilter convention (particles on dim -1)."""

    def __init__(self, model: ref.LGSSM):
        self.A, self.Q, self.C, self.R, self.m0, self.P0 = (
            _t(v) for v in (model.A, model.Q, model.C, model.R, model.m0, model.P0)
        )

    def init(self, state):
        state["x"] = pyro.sample("x0", dist.MultivariateNormal(self.m0, self.P0))

    def step(self, state, y):
        state["x"] = pyro.sample("x", dist.MultivariateNormal(state["x"] @ self.A.T, self.Q))
        pyro.sample("y", dist.MultivariateNormal(state["x"] @ self.C.T, self.R), obs=y)


class TimedLinearGaussian(LinearGaussian):
    def step(self, state, y, t):
        super().step(state, y)


class OptimalProposal:
    """``q(x_t | x_{t-1}) ∝ p(x_t | x_{t-1}) p(y_t | x_t) psi*_t(x_t)``: with the optimal twists,
    every incremental weight is the same constant and ``Z_hat = Z`` exactly."""

    def __init__(self, lgssm: LinearGaussian, info: ref.BackwardInformation):
        self.m = lgssm
        self.J, self.h = _t(info.J), _t(info.h)

    def init(self, state):
        m = self.m
        cov = torch.linalg.inv(torch.linalg.inv(m.P0) + self.J[0])
        mean = cov @ (torch.linalg.solve(m.P0, m.m0) + self.h[0])
        pyro.sample("x0", dist.MultivariateNormal(mean, 0.5 * (cov + cov.T)))

    def step(self, state, y, t):
        m = self.m
        Qi, Ri = torch.linalg.inv(m.Q), torch.linalg.inv(m.R)
        cov = torch.linalg.inv(Qi + m.C.T @ Ri @ m.C + self.J[t])
        mean = (state["x"] @ (Qi @ m.A).T + m.C.T @ Ri @ y + self.h[t]) @ cov.T
        pyro.sample("x", dist.MultivariateNormal(mean, 0.5 * (cov + cov.T)))


def _problem(d, m, seed=0):
    rng = np.random.default_rng(seed)
    model = ref.scalar_lgssm(r=0.5) if d == 1 else ref.random_lgssm(rng, d, m)
    _, ys = model.simulate(rng, T)
    return model, _t(ys), ref.kalman_filter(model, ys), ref.backward_information_filter(model, ys)


def _optimal_twist(d, info):
    return QuadraticTwist("x", d, T).from_information(info.J[:T], info.h[:T], info.c[:T])


def _exact_paths(model, ys, num, seed=1):
    draws = _t(ref.sample_posterior(model, ys.numpy(), np.random.default_rng(seed), num))
    return {"init": {"x0": draws[:, 0]}, "step": {"x": draws[:, 1:]}}


# ---------------------------------------------------------------------------------------
# Resampling
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["multinomial", "systematic", "stratified"])
def test_resampling_is_unbiased(method):
    weights = np.array([0.02, 0.3, 0.05, 0.13, 0.0, 0.25, 0.2, 0.05])
    pyro.set_rng_seed(0)
    log_w = torch.log(_t(weights)).expand(4000, 8)  # 4000 independent batches
    index = resample(log_w, method)
    counts = torch.zeros(4000, 8).scatter_add_(1, index, torch.ones(4000, 8)).numpy()
    expected = 8 * weights
    se = counts.std(axis=0, ddof=1) / math.sqrt(len(counts)) + 1e-12
    assert np.all(np.abs(counts.mean(axis=0) - expected) < 4 * se + 1e-9), (counts.mean(axis=0), expected)
    assert np.all(counts[:, 4] == 0)  # a zero weight is never drawn
    if method == "systematic":  # each count is floor or ceil of N W
        assert np.all((counts >= np.floor(expected)) & (counts <= np.ceil(expected)))


def test_all_zero_weights_resample_uniformly():
    assert torch.allclose(normalized_weights(torch.full((5,), -math.inf)), torch.full((5,), 0.2))


# ---------------------------------------------------------------------------------------
# log Z
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("d, m", [(1, 1), (4, 2)])
def test_bootstrap_Z_hat_is_unbiased(d, m):
    model, ys, kalman, _ = _problem(d, m)
    pyro.set_rng_seed(1)
    log_Z = TwistedSMC(LinearGaussian(model), num_particles=256).log_Z_samples(ys, num_runs=200).numpy()
    ratio = np.exp(log_Z - kalman.log_Z)
    assert abs(ratio.mean() - 1.0) < 4 * ratio.std(ddof=1) / math.sqrt(len(ratio)), (ratio.mean(), ratio.std())
    # Jensen: E log Z_hat is a lower bound
    assert log_Z.mean() < kalman.log_Z + 4 * log_Z.std(ddof=1) / math.sqrt(len(log_Z))


@pytest.mark.parametrize("resampling", ["multinomial", "systematic", "stratified"])
@pytest.mark.parametrize("d, m", [(1, 1), (4, 2)])
def test_optimal_twists_and_proposal_give_exact_log_Z(d, m, resampling):
    model, ys, kalman, info = _problem(d, m)
    lgssm = TimedLinearGaussian(model)
    smc = TwistedSMC(
        lgssm,
        num_particles=32,
        twist=QuadraticTwist("x", d, T),
        twist_params=_optimal_twist(d, info).state_dict(),
        proposal=OptimalProposal(lgssm, info),
        resampling=resampling,
        ess_threshold=1.0,
    )
    pyro.set_rng_seed(2)
    log_Z = smc.log_Z_samples(ys, torch.arange(1, T + 1), num_runs=4)
    np.testing.assert_allclose(log_Z.numpy(), kalman.log_Z, rtol=0, atol=1e-8)


def test_a_plain_function_twist_works_like_the_module():
    """``twist(t, state) -> (N,)`` as a plain function (the exact log p(y_{t+1:T} | x_t)), not a Module."""
    model, ys, kalman, info = _problem(4, 2)
    lgssm = TimedLinearGaussian(model)

    def twist(t, state):
        return _t(info.log_twist(t, state["x"].numpy()))

    smc = TwistedSMC(lgssm, num_particles=16, twist=twist, proposal=OptimalProposal(lgssm, info), ess_threshold=1.0)
    pyro.set_rng_seed(2)
    result = smc.run(ys, torch.arange(1, T + 1))
    assert abs(result.log_Z - kalman.log_Z) < 1e-8 and smc.twist_params is None


def test_final_particles_match_the_kalman_filter():
    model, ys, kalman, _ = _problem(4, 2)
    pyro.set_rng_seed(3)
    result = TwistedSMC(LinearGaussian(model), num_particles=4096).run(ys)
    weights = normalized_weights(result.log_weights).numpy()
    x = result.output.states["x"][-1].numpy()
    ess = 1.0 / np.sum(weights**2)
    mean = weights @ x
    sd = np.sqrt(np.diag(kalman.filter_covs[-1]))
    assert np.all(np.abs(mean - kalman.filter_means[-1]) < 4 * sd / math.sqrt(ess)), (mean, kalman.filter_means[-1])


def test_optimal_twists_make_every_intermediate_target_the_smoother():
    """With psi_t = p(y_{t+1:T} | x_t), pi_t's marginal of x_t is p(x_t | y_{1:T}) at every t."""
    model, ys, _, info = _problem(1, 1)
    means, covs = ref.rts_smoother(model, ys.numpy())
    smc = TwistedSMC(LinearGaussian(model), num_particles=2048, twist=_optimal_twist(1, info))
    pyro.set_rng_seed(4)
    output = smc.run(ys).output
    weights = normalized_weights(output.step_log_weights).numpy()  # (T + 1, N)
    x = output.states["x"][..., 0].numpy()
    ess = 1.0 / np.sum(weights**2, axis=1)
    estimate = np.sum(weights * x, axis=1)
    z = (estimate - means[:, 0]) / np.sqrt(covs[:, 0, 0] / ess)
    assert np.max(np.abs(z)) < 4.5, z  # 51 marginals: 4.5 sd keeps the family-wise rate < 1e-3


class IndependentChains:
    """``K`` independent scalar LGSSMs in an inner ``pyro.plate`` (dim -1): the particles sit at dim -2."""

    def __init__(self, model: ref.LGSSM, K: int):
        self.a, self.c = float(model.A[0, 0]), float(model.C[0, 0])
        self.q, self.r, self.p0 = (math.sqrt(float(v[0, 0])) for v in (model.Q, model.R, model.P0))
        self.m0, self.K = float(model.m0[0]), K

    def init(self, state):
        with pyro.plate("chains", self.K, dim=-1):
            state["x"] = pyro.sample("x0", dist.Normal(self.m0, self.p0))

    def step(self, state, y):
        with pyro.plate("chains", self.K, dim=-1):
            state["x"] = pyro.sample("x", dist.Normal(self.a * state["x"], self.q))
            pyro.sample("y", dist.Normal(self.c * state["x"], self.r), obs=y)


def test_max_plate_nesting_puts_particles_left_of_the_model_plates():
    model = ref.scalar_lgssm(r=0.5)
    rng = np.random.default_rng(5)
    ys = np.stack([model.simulate(rng, 20)[1][:, 0] for _ in range(3)], axis=1)  # (T, K)
    exact = sum(ref.kalman_filter(model, ys[:, k]).log_Z for k in range(3))
    smc = TwistedSMC(IndependentChains(model, 3), num_particles=256, max_plate_nesting=1)
    pyro.set_rng_seed(5)
    result = smc.run(_t(ys))
    assert result.output.states["x"].shape == (21, 256, 3)
    log_Z = smc.log_Z_samples(_t(ys), num_runs=64).numpy()
    ratio = np.exp(log_Z - exact)
    assert abs(ratio.mean() - 1.0) < 4 * ratio.std(ddof=1) / 8, ratio.mean()


# ---------------------------------------------------------------------------------------
# An unmodified SMCFilter model and guide (Pyro's examples/smcfilter.py)
# ---------------------------------------------------------------------------------------
class SimpleHarmonicModel:
    def __init__(self, process_noise, measurement_noise):
        self.A = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
        self.B = torch.tensor([3.0, 3.0])
        self.sigma_z = torch.tensor(process_noise)
        self.sigma_y = torch.tensor(measurement_noise)

    def init(self, state, initial):
        self.t = 0
        state["z"] = pyro.sample("z_init", dist.Delta(initial, event_dim=1))

    def step(self, state, y=None):
        self.t += 1
        state["z"] = pyro.sample(
            f"z_{self.t}",
            dist.Normal(state["z"].matmul(self.A), self.B * self.sigma_z).to_event(1),
        )
        y = pyro.sample(f"y_{self.t}", dist.Normal(state["z"][..., 0], self.sigma_y), obs=y)
        return state["z"], y


class SimpleHarmonicModel_Guide:
    def __init__(self, model):
        self.model = model

    def init(self, state, initial):
        self.t = 0
        pyro.sample("z_init", dist.Delta(initial, event_dim=1))

    def step(self, state, y=None):
        self.t += 1

        # Proposal distribution
        pyro.sample(
            f"z_{self.t}",
            dist.Normal(state["z"].matmul(self.model.A), torch.tensor([1.0, 1.0])).to_event(1),
        )


def test_unmodified_smcfilter_model_and_guide_match_the_kalman_filter():
    num_steps, initial = 20, np.array([1.0, 0.0])
    # Pyro's example has process noise 1 (transition sd 3) and a guide of sd 1: p/q has infinite variance
    # there.  With process noise 0.3 (sd 0.9) the same guide is a proper, slightly wider proposal.
    # The same model as an LGSSM (column vectors): z_t = A^T z_{t-1} + N(0, 0.81 I), y_t = z_t[0] + N(0, 1).
    A = np.array([[0.0, 1.0], [-1.0, 0.0]])
    lgssm = ref.LGSSM(A=A.T, Q=0.81 * np.eye(2), C=[[1.0, 0.0]], R=[[1.0]], m0=initial, P0=np.zeros((2, 2)))
    _, ys = lgssm.simulate(np.random.default_rng(6), num_steps)
    kalman = ref.kalman_filter(lgssm, ys)
    ys = _t(ys[:, 0])
    model = SimpleHarmonicModel(0.3, 1.0)
    smc = TwistedSMC(model, num_particles=512, proposal=SimpleHarmonicModel_Guide(model), max_plate_nesting=0)
    pyro.set_rng_seed(6)
    result = smc.run(ys, init_args=(_t(initial),))
    assert result.names == {"init": ["z_init"], "step": ["z_1"]}
    assert result.get_samples()["step"]["z_1"].shape == (512, num_steps, 2)
    weights = normalized_weights(result.log_weights).numpy()
    mean = weights @ result.output.states["z"][-1].numpy()
    sd = np.sqrt(np.diag(kalman.filter_covs[-1]))
    assert np.all(np.abs(mean - kalman.filter_means[-1]) < 4 * sd * math.sqrt(np.sum(weights**2)))
    log_Z = smc.log_Z_samples(ys, num_runs=100, init_args=(_t(initial),)).numpy()
    ratio = np.exp(log_Z - kalman.log_Z)
    assert abs(ratio.mean() - 1.0) < 4 * ratio.std(ddof=1) / 10, (ratio.mean(), ratio.std())
    assert log_Z.mean() < kalman.log_Z + 4 * log_Z.std(ddof=1) / 10
    # and the very same objects still run under Pyro's own SMCFilter
    pyro.set_rng_seed(6)
    smc_filter = pyro.infer.SMCFilter(model, SimpleHarmonicModel_Guide(model), num_particles=512, max_plate_nesting=0)
    smc_filter.init(initial=_t(initial))
    for y in ys:
        smc_filter.step(y)
    empirical = smc_filter.get_empirical()["z"]
    assert np.all(np.abs(empirical.mean.numpy() - kalman.filter_means[-1]) < 4 * sd / math.sqrt(50))


# ---------------------------------------------------------------------------------------
# Conditional SMC and the bounds
# ---------------------------------------------------------------------------------------
def test_conditional_smc_keeps_the_clamped_path():
    model, ys, _, _ = _problem(1, 1)
    exact = _exact_paths(model, ys, 1)
    clamp = ((exact["init"]["x0"][0],), (exact["step"]["x"][0],))
    pyro.set_rng_seed(5)
    output = run_filter(LinearGaussian(model), (ys,), 8, clamp=clamp, ess_threshold=1.0)
    # particle 0 is the clamped path at every step, and it is its own ancestor
    torch.testing.assert_close(output.step_latents[0][:, 0], exact["step"]["x"][0], rtol=0, atol=0)
    torch.testing.assert_close(output.init_latents[0][0], exact["init"]["x0"][0], rtol=0, atol=0)
    assert torch.all(output.ancestors[:, 0] == 0)
    assert bool(output.resampled.any())


def test_bounds_sandwich_the_exact_log_Z():
    model, ys, kalman, _ = _problem(1, 1)
    smc = TwistedSMC(LinearGaussian(model), num_particles=4)
    pyro.set_rng_seed(6)
    bounds = smc.log_Z_bounds(ys, exact_samples=_exact_paths(model, ys, 64), num_runs=64)
    exact = kalman.log_Z
    # with 4 particles every bound is loose: strictly on its side, beyond Monte Carlo error
    assert bounds.smc_lower + 4 * bounds.smc_lower_se < exact
    assert bounds.sis_lower + 4 * bounds.sis_lower_se < exact
    assert bounds.csmc_upper - 4 * bounds.csmc_upper_se > exact
    assert bounds.iwae_upper - 4 * bounds.iwae_upper_se > exact
    # resampling tightens both sides
    assert bounds.smc_lower > bounds.sis_lower and bounds.csmc_upper < bounds.iwae_upper
    low, high = bounds.kl_q_sigma
    assert 0 < low <= high
    low, high = bounds.kl_sigma_q
    assert 0 < low <= high


def test_bounds_tighten_with_particles():
    model, ys, _, _ = _problem(1, 1)
    exact_paths = _exact_paths(model, ys, 32)
    gaps = []
    for n in (4, 64):
        pyro.set_rng_seed(7)
        b = TwistedSMC(LinearGaussian(model), num_particles=n).log_Z_bounds(ys, exact_samples=exact_paths, num_runs=32)
        gaps.append(b.csmc_upper - b.smc_lower)
    assert gaps[1] < 0.5 * gaps[0], gaps


# ---------------------------------------------------------------------------------------
# Twist learning
# ---------------------------------------------------------------------------------------
def test_ctl_keeps_the_optimal_twist_fixed():
    """At the optimal twist E_sigma[grad log psi_t] = E_pi_t[grad log psi_t]: CTL does not move it."""
    model, ys, _, info = _problem(1, 1)
    twist = _optimal_twist(1, info)
    smc = TwistedSMC(LinearGaussian(model), num_particles=512, twist=twist)
    pyro.set_rng_seed(8)
    module, losses = smc.fit_twists(
        ys,
        num_steps=50,
        optimizer=torch.optim.SGD(twist.parameters(), lr=1e-3),
        exact_samples=_exact_paths(model, ys, 512),
    )
    assert module is twist and losses.shape == (50,)
    assert np.max(np.abs(twist.h.detach().numpy() - info.h[:T])) < 0.05
    J = torch.tril(twist.L.detach())[:, 0, 0].numpy() ** 2
    assert np.max(np.abs(J - info.J[:T, 0, 0])) < 0.05


def test_fit_twists_without_exact_samples_uses_the_weighted_paths():
    model, ys, _, _ = _problem(1, 1)
    twist = QuadraticTwist("x", 1, T)
    smc = TwistedSMC(LinearGaussian(model), num_particles=64, twist=twist)
    pyro.set_rng_seed(12)
    _, losses = smc.fit_twists(ys, method="sixo", num_steps=5, optimizer=functools.partial(torch.optim.SGD, lr=1e-2))
    assert np.all(np.isfinite(losses)) and float(twist.h.detach().abs().max()) > 0
    assert set(smc.twist_params) == {"L", "h", "c"}


# slow (12 s): the NumPyro token-twist tests learn by CTL and SIXO by default
@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) for m in ("ctl", "sixo")])
def test_learned_twists_lower_the_variance_of_log_Z(method):
    model, ys, _, _ = _problem(4, 2)
    boot = TwistedSMC(LinearGaussian(model), num_particles=128)
    twist = QuadraticTwist("x", 4, T)
    smc = TwistedSMC(LinearGaussian(model), num_particles=128, twist=twist)
    pyro.set_rng_seed(9)
    _, losses = smc.fit_twists(
        ys,
        method=method,
        num_steps=150,
        optimizer=pyro.optim.Adam({"lr": 5e-2}),
        exact_samples=_exact_paths(model, ys, 256),
    )
    assert np.all(np.isfinite(losses))
    pyro.set_rng_seed(10)
    var_boot = float(torch.var(boot.log_Z_samples(ys, num_runs=256)))
    var_learned = float(torch.var(smc.log_Z_samples(ys, num_runs=256)))
    assert var_learned < 0.75 * var_boot, (var_learned, var_boot)


# ---------------------------------------------------------------------------------------
# The NumPyro twin
# ---------------------------------------------------------------------------------------
def _log_var_se(x):
    """Standard error of ``log Var(x)`` from ``R`` draws: ``sqrt((kurtosis - 1) / R)``."""
    x = np.asarray(x) - np.mean(x)
    kurtosis = np.mean(x**4) / np.mean(x**2) ** 2
    return math.sqrt((kurtosis - 1.0) / len(x))


def test_numpyro_and_pyro_agree():
    jax = pytest.importorskip("jax", reason="the numpyro extra is not installed")
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as ndist

    from numpyro_ext.infer import TwistedSMC as NumPyroTwistedSMC

    class NumPyroLinearGaussian:
        def __init__(self, model):
            self.A, self.Q, self.C, self.R, self.m0, self.P0 = (
                jnp.asarray(v) for v in (model.A, model.Q, model.C, model.R, model.m0, model.P0)
            )

        def init(self, state):
            state["x"] = numpyro.sample("x0", ndist.MultivariateNormal(self.m0, self.P0))

        def step(self, state, y):
            state["x"] = numpyro.sample("x", ndist.MultivariateNormal(self.A @ state["x"], self.Q))
            numpyro.sample("y", ndist.MultivariateNormal(self.C @ state["x"], self.R), obs=y)

    model, ys, kalman, _ = _problem(1, 1)
    runs, n = 200, 32
    x64 = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        smc = NumPyroTwistedSMC(NumPyroLinearGaussian(model), num_particles=n)
        jax_log_Z = np.asarray(smc.log_Z_samples(jax.random.PRNGKey(11), jnp.asarray(ys.numpy()), num_runs=runs))
    finally:
        jax.config.update("jax_enable_x64", x64)
    pyro.set_rng_seed(11)
    torch_log_Z = TwistedSMC(LinearGaussian(model), num_particles=n).log_Z_samples(ys, num_runs=runs).numpy()
    se = math.sqrt(jax_log_Z.var(ddof=1) / runs + torch_log_Z.var(ddof=1) / runs)
    assert abs(jax_log_Z.mean() - torch_log_Z.mean()) < 4 * se, (jax_log_Z.mean(), torch_log_Z.mean(), se)
    log_ratio = math.log(jax_log_Z.var(ddof=1) / torch_log_Z.var(ddof=1))
    assert abs(log_ratio) < 4 * math.hypot(_log_var_se(jax_log_Z), _log_var_se(torch_log_Z)), log_ratio
    # both are below log Z (Jensen), and not absurdly so
    assert max(jax_log_Z.mean(), torch_log_Z.mean()) < kalman.log_Z


# ---------------------------------------------------------------------------------------
# Results and bad input
# ---------------------------------------------------------------------------------------
def test_samples_and_arviz():
    model, ys, _, _ = _problem(4, 2)
    pyro.set_rng_seed(11)
    result = TwistedSMC(LinearGaussian(model), num_particles=64).run(ys)
    samples = result.get_samples()
    assert samples["init"]["x0"].shape == (64, 4) and samples["step"]["x"].shape == (64, T, 4)
    drawn = result.get_samples(seed=0, num_samples=10)
    assert drawn["step"]["x"].shape == (10, T, 4)
    torch.testing.assert_close(drawn["step"]["x"], result.get_samples(seed=0, num_samples=10)["step"]["x"])
    assert result.ess.shape == (T + 1,) and bool(torch.all(result.ess <= 64 + 1e-9))
    idata = result.to_arviz()
    assert idata.posterior["x"].shape == (1, 64, T, 4) and idata.attrs["log_Z"] == result.log_Z


class NoLatent:
    def init(self, state):
        state["x"] = pyro.sample("x0", dist.Normal(0.0, 1.0))

    def step(self, state, y):
        pyro.sample("y", dist.Normal(state["x"], 1.0), obs=y)


class Impossible(NoLatent):
    def step(self, state, y):
        state["x"] = pyro.sample("x", dist.Normal(state["x"], 1.0))
        pyro.sample("y", dist.Uniform(10.0, 11.0), obs=y)


class WritingGuide:
    def init(self, state):
        pyro.sample("x0", dist.Normal(0.0, 1.0))

    def step(self, state, y):
        state["x"] = pyro.sample("x", dist.Normal(0.0, 1.0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_particles": 0}, "num_particles"),
        ({"ess_threshold": 0.0}, r"ess_threshold: expected a number in \(0, 1\]"),
        ({"ess_threshold": 1.5}, "ess_threshold"),
        ({"resampling": "residual"}, "resampling"),
        ({"max_plate_nesting": -1}, "max_plate_nesting"),
        ({"twist": lambda t, s: 0.0, "twist_params": {"h": 0.0}}, "twist_params"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TwistedSMC(NoLatent(), **kwargs)


def test_bad_twist_params_name_the_parameter():
    with pytest.raises(ValueError, match=r"twist_params: \['J'\] are not parameters"):
        TwistedSMC(Impossible(), twist=QuadraticTwist("x", 1, 3), twist_params={"J": torch.zeros(3, 1, 1)})
    with pytest.raises(ValueError, match="twist_params: 'h' has shape"):
        TwistedSMC(Impossible(), twist=QuadraticTwist("x", 1, 3), twist_params={"h": torch.zeros(2, 1)})


def test_model_without_the_convention_is_refused():
    with pytest.raises(TypeError, match=r"model: expected an object with init\(state, \*args\) and step"):
        TwistedSMC(lambda: None)


def test_step_without_latent_site_is_refused():
    with pytest.raises(ValueError, match="samples no latent site"):
        TwistedSMC(NoLatent(), num_particles=4).run(torch.zeros(3))


def test_guide_writing_state_is_refused():
    with pytest.raises(RuntimeError, match="proposal: a guide may only read `state`"):
        TwistedSMC(Impossible(), num_particles=4, proposal=WritingGuide()).run(torch.zeros(3))


def test_fit_twists_needs_a_learnable_twist():
    with pytest.raises(TypeError, match="twist: fit_twists needs a learnable twist"):
        TwistedSMC(Impossible(), num_particles=4).fit_twists(torch.zeros(3), num_steps=1)
    smc = TwistedSMC(Impossible(), num_particles=4, twist=QuadraticTwist("x", 1, 3))
    with pytest.raises(ValueError, match="method"):
        smc.fit_twists(torch.zeros(3), method="dpo")
    with pytest.raises(ValueError, match="optimizer: it does not hold"):
        smc.fit_twists(torch.zeros(3), optimizer=torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))


def test_impossible_observations_give_minus_inf_and_a_warning():
    pyro.set_rng_seed(0)
    with pytest.warns(RuntimeWarning, match="every particle has zero weight"):
        result = TwistedSMC(Impossible(), num_particles=8).run(torch.zeros(3))
    assert result.log_Z == -math.inf
    assert not torch.any(torch.isnan(result.log_weights))
    log_Z = TwistedSMC(Impossible(), num_particles=8).log_Z_samples(torch.zeros(3), num_runs=3)
    assert torch.all(log_Z == -math.inf)


# ---------------------------------------------------------------------------------------
# Token models: a Markov "toy language model" with an additive potential (exact answers)
# ---------------------------------------------------------------------------------------
V, LENGTH = 4, 6


def _toy_hmm():
    """The NumPyro tests' toy LM: a random Markov chain over ``V`` tokens and ``g`` ``(LENGTH, V)``."""
    rng = np.random.default_rng(0)
    hmm = ref.random_token_hmm(rng, V)
    g = 1.5 * rng.normal(size=(LENGTH, V))
    return hmm, g, rng


@pytest.fixture(scope="module")
def toy_lm():
    hmm, g, rng = _toy_hmm()
    log_pi, log_M, G = _t(hmm.log_pi), _t(hmm.log_M), _t(g)

    def next_token_log_probs(tokens, position):  # (N, T) -> (N, V)
        return log_pi.expand(tokens.shape[0], V) if position == 0 else log_M[tokens[:, position - 1]]

    def log_potential(tokens):  # (N, T) -> (N,)
        return G[torch.arange(LENGTH), tokens].sum(-1)

    exact = ref.sample_exact_additive(hmm, g, rng, 512)
    return {
        "model": TokenModel(next_token_log_probs, log_potential, V, LENGTH),
        "log_Z": ref.exact_log_Z_additive(hmm, g),
        "optimal": {"u": G, "w": _t(ref.optimal_log_twists_additive(hmm, g))},
        "exact": {"init": {}, "step": {"token": torch.as_tensor(exact)}},
        "target": ref.enumerate_target(hmm, ref.additive_log_phi(g), LENGTH),
    }


@pytest.mark.parametrize("proposal", [None, "prior"])
def test_token_Z_hat_is_unbiased(toy_lm, proposal):
    pyro.set_rng_seed(0)
    smc = TwistedSMC(toy_lm["model"], num_particles=64, proposal=proposal)
    ratio = np.exp(smc.log_Z_samples(num_runs=400).numpy() - toy_lm["log_Z"])
    assert abs(ratio.mean() - 1.0) < 4 * ratio.std(ddof=1) / math.sqrt(len(ratio)), ratio.mean()


@pytest.mark.parametrize("resampling", ["multinomial", "stratified"])
def test_optimal_token_twists_give_exact_log_Z_and_exact_samples(toy_lm, resampling):
    smc = TwistedSMC(
        toy_lm["model"],
        num_particles=4000,
        twist=TabularTwist(V, LENGTH),
        twist_params=toy_lm["optimal"],
        resampling=resampling,
    )
    pyro.set_rng_seed(1)
    np.testing.assert_allclose(smc.log_Z_samples(num_runs=4).numpy(), toy_lm["log_Z"], atol=1e-10, rtol=0)
    pyro.set_rng_seed(2)
    result = smc.run()
    assert np.ptp(result.log_weights.numpy()) < 1e-9  # every particle an exact, equally weighted draw
    tokens = result.get_samples()["step"]["token"].numpy()
    sequences, probs = toy_lm["target"]
    for position in range(LENGTH):
        exact = np.array([probs[sequences[:, position] == v].sum() for v in range(V)])
        freq = np.bincount(tokens[:, position], minlength=V) / len(tokens)
        se = np.sqrt(exact * (1 - exact) / len(tokens)) + 1e-12
        assert np.all(np.abs(freq - exact) < 4 * se), (position, freq, exact)


def test_conditional_token_smc_keeps_the_clamped_path(toy_lm):
    pyro.set_rng_seed(3)
    path = toy_lm["exact"]["step"]["token"][0]
    output = run_token_filter(toy_lm["model"], 16, ess_threshold=1.0, clamp=((), (path,)))
    assert torch.equal(output.states["tokens"][-1, 0], path)
    assert torch.all(genealogy(output)[:, 0] == 0)
    assert output.extras["pair_log_weights"].shape == (LENGTH, 16, V)
    assert output.extras["prefixes"].shape == (LENGTH, 16, LENGTH)


def test_token_bounds_sandwich_the_exact_log_Z(toy_lm):
    # 256 runs: the gaps are about 0.43 and one run's SE about 0.8, so each bound is ~8 SEs from log Z
    # (with the NumPyro test's 64 runs the expected margin, ~4 SEs, would pass only about half the seeds)
    pyro.set_rng_seed(3)
    bounds = TwistedSMC(toy_lm["model"], num_particles=4).log_Z_bounds(exact_samples=toy_lm["exact"], num_runs=256)
    assert bounds.smc_lower + 4 * bounds.smc_lower_se < toy_lm["log_Z"]
    assert bounds.csmc_upper - 4 * bounds.csmc_upper_se > toy_lm["log_Z"]
    assert bounds.iwae_upper - 4 * bounds.iwae_upper_se > toy_lm["log_Z"]


def _token_variances(toy_lm, smc):
    plain = TwistedSMC(toy_lm["model"], num_particles=64)
    pyro.set_rng_seed(5)
    var_plain = float(plain.log_Z_samples(num_runs=200).var())
    pyro.set_rng_seed(5)
    var_learned = float(smc.log_Z_samples(num_runs=200).var())
    return var_learned, var_plain


@pytest.mark.parametrize("method", ["ctl", "sixo"])
def test_learned_token_twists_cut_the_variance_tenfold(toy_lm, method):
    twist = TabularTwist(V, LENGTH)
    smc = TwistedSMC(toy_lm["model"], num_particles=64, twist=twist)
    pyro.set_rng_seed(4)
    smc.fit_twists(
        method=method,
        num_steps=400,
        optimizer=torch.optim.Adam(twist.parameters(), lr=5e-2),
        exact_samples=toy_lm["exact"],
    )
    var_learned, var_plain = _token_variances(toy_lm, smc)
    assert var_learned < 0.1 * var_plain, (var_learned, var_plain)


def test_ctl_without_exact_samples_learns_from_its_own_particles(toy_lm):
    twist = TabularTwist(V, LENGTH)
    smc = TwistedSMC(toy_lm["model"], num_particles=64, twist=twist)
    pyro.set_rng_seed(6)
    smc.fit_twists(num_steps=400, optimizer=torch.optim.Adam(twist.parameters(), lr=5e-2))
    var_learned, var_plain = _token_variances(toy_lm, smc)
    assert var_learned < 0.25 * var_plain, (var_learned, var_plain)


def test_token_model_arguments_are_checked(toy_lm):
    with pytest.raises(ValueError, match="proposal: for a TokenModel expected None"):
        TwistedSMC(toy_lm["model"], proposal="guide")
    with pytest.raises(ValueError, match="vocab_size"):
        TokenModel(lambda t, p: t, lambda t: t, 0, 3)
    smc = TwistedSMC(toy_lm["model"], num_particles=4)
    with pytest.raises(ValueError, match="step_args: a TokenModel takes no step"):
        smc.run(torch.zeros(3))
    with pytest.raises(ValueError, match=r"exact_samples: token paths must have shape \(M, 6\)"):
        short = torch.zeros(2, LENGTH - 1, dtype=torch.long)
        smc.log_Z_samples(num_runs=2, exact_samples={"init": {}, "step": {"token": short}})
    with pytest.raises(ValueError, match=r"twist: expected shape \(4,\) per particle, got \(\) per particle"):
        TwistedSMC(toy_lm["model"], num_particles=4, twist=lambda tokens, position: torch.zeros(4)).run()


def test_numpyro_and_pyro_agree_on_the_token_model():
    jax = pytest.importorskip("jax", reason="the numpyro extra is not installed")
    import jax.numpy as jnp

    from numpyro_ext.infer import TwistedSMC as NumPyroTwistedSMC
    from numpyro_ext.infer.twisted_smc import TokenModel as NumPyroTokenModel

    hmm, g, _ = _toy_hmm()
    runs, n = 400, 8
    x64 = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        log_pi, log_M, G = jnp.asarray(hmm.log_pi), jnp.asarray(hmm.log_M), jnp.asarray(g)

        def next_token_log_probs(tokens, position):  # one particle: (T,) -> (V,)
            return jnp.where(position == 0, log_pi, log_M[tokens[jnp.maximum(position - 1, 0)]])

        def log_potential(tokens):
            return jnp.sum(G[jnp.arange(LENGTH), tokens])

        smc = NumPyroTwistedSMC(NumPyroTokenModel(next_token_log_probs, log_potential, V, LENGTH), num_particles=n)
        jax_log_Z = np.asarray(smc.log_Z_samples(jax.random.PRNGKey(12), num_runs=runs))
    finally:
        jax.config.update("jax_enable_x64", x64)
    t_log_pi, t_log_M, t_G = _t(hmm.log_pi), _t(hmm.log_M), _t(g)
    model = TokenModel(
        lambda tokens, position: t_log_pi.expand(len(tokens), V) if position == 0 else t_log_M[tokens[:, position - 1]],
        lambda tokens: t_G[torch.arange(LENGTH), tokens].sum(-1),
        V,
        LENGTH,
    )
    pyro.set_rng_seed(12)
    torch_log_Z = TwistedSMC(model, num_particles=n).log_Z_samples(num_runs=runs).numpy()
    se = math.sqrt(jax_log_Z.var(ddof=1) / runs + torch_log_Z.var(ddof=1) / runs)
    assert abs(jax_log_Z.mean() - torch_log_Z.mean()) < 4 * se, (jax_log_Z.mean(), torch_log_Z.mean(), se)
    log_ratio = math.log(jax_log_Z.var(ddof=1) / torch_log_Z.var(ddof=1))
    assert abs(log_ratio) < 4 * math.hypot(_log_var_se(jax_log_Z), _log_var_se(torch_log_Z)), log_ratio
    exact = ref.exact_log_Z_additive(hmm, g)
    assert max(jax_log_Z.mean(), torch_log_Z.mean()) < exact  # both below log Z (Jensen)
