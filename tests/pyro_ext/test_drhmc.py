"""DR-HMC (Pyro backend) against exact answers, and against the NumPyro kernel.

Pyro evaluates a model's potential at ~0.3-0.5 ms per gradient on this CPU, so the runs
are one chain of 1000-1500 draws; tolerances are Monte Carlo errors from ArviZ's ESS.
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import MCMC
from scipy import stats

from adapters import Target
from adapters.inference_data import from_mcmc
from pyro_ext.infer import DRHMC
from pyro_ext.infer.drhmc import build_kernel, delayed_rejection, init
from pyro_ext.models import test_problems
from tests.mc_checks import assert_ks, assert_mean, assert_variance, fraction_moved

RHO = 0.95


def correlated_pair():
    """The 2-D Gaussian with correlation RHO as a chain of two normals: the same density as
    ``test_problems.correlated_gaussian(2)`` without a Cholesky factorisation per gradient."""
    a = pyro.sample("a", dist.Normal(torch.tensor(0.0), 1.0))
    pyro.sample("b", dist.Normal(RHO * a, math.sqrt(1 - RHO**2)))


def pair_draws(mcmc):
    samples = mcmc.get_samples()
    return np.stack([samples["a"].numpy(), samples["b"].numpy()], axis=-1)


def run(kernel, *args, warmup=300, samples=1500, seed=0):
    pyro.set_rng_seed(seed)
    mcmc = MCMC(kernel, warmup_steps=warmup, num_samples=samples, disable_progbar=True)
    mcmc.run(*args)
    return mcmc


@pytest.mark.parametrize("max_proposals, probabilistic", [(2, True), (3, False)])
def test_correlated_gaussian_marginals(max_proposals, probabilistic):
    kernel = DRHMC(correlated_pair, trajectory_length=1.5, max_proposals=max_proposals, probabilistic=probabilistic)
    x = pair_draws(run(kernel))
    for i in range(2):
        assert_mean(x[:, i], 0.0, 1.0, f"x[{i}]")
        assert_variance(x[:, i], 0.0, 1.0, 0.0, f"x[{i}]")
    assert_mean(x[:, 0] * x[:, 1], RHO, math.sqrt(1 + RHO**2), "x0*x1")


@pytest.mark.parametrize("max_proposals, probabilistic", [(2, True)])
def test_funnel_marginals(max_proposals, probabilistic):
    kernel = DRHMC(
        test_problems.funnel, trajectory_length=2.0, max_proposals=max_proposals, probabilistic=probabilistic
    )
    mcmc = run(kernel, 3, samples=1500)
    v = mcmc.get_samples()["v"].numpy()
    assert_mean(v, 0.0, 3.0, "v")
    assert_variance(v, 0.0, 9.0, 0.0, "v")
    assert_ks(v, stats.norm(0.0, 3.0).cdf, "v")
    sampling = ~kernel.get_sample_stats()["warmup"]
    assert (kernel.get_sample_stats()["stage"][sampling] >= 1).any()


@pytest.mark.slow
@pytest.mark.parametrize("max_proposals, probabilistic", [(2, True), (3, True), (2, False), (3, False)])
def test_funnel_marginals_all_settings(max_proposals, probabilistic):
    test_funnel_marginals(max_proposals, probabilistic)


def test_too_large_step_size_is_rescued_by_later_stages():
    def scaled_gaussian():
        pyro.sample("x", dist.Normal(torch.zeros(2), torch.tensor([1.0, 0.1])).to_event(1))

    fixed = dict(step_size=0.5, trajectory_length=1.5, adapt_step_size=False, adapt_mass_matrix=False)
    plain = run(DRHMC(scaled_gaussian, max_proposals=1, **fixed), warmup=0, samples=600)
    assert fraction_moved(plain.get_samples()["x"].numpy()[:, 1]) < 0.05

    dr = run(DRHMC(scaled_gaussian, max_proposals=3, **fixed), warmup=200, samples=1500)
    x = dr.get_samples()["x"].numpy()
    assert fraction_moved(x[:, 1]) > 0.5
    for i, scale in enumerate([1.0, 0.1]):
        assert_mean(x[:, i], 0.0, scale, f"x[{i}]")
        assert_variance(x[:, i], 0.0, scale**2, 0.0, f"x[{i}]")


def _reference_hmc_step(position, logdensity_fn, step_size, num_steps):
    """Textbook HMC with unit mass, consuming torch's generator as documented in the module."""
    momentum = torch.randn(position.shape)
    log_u = math.log(torch.rand(()).item())

    def grad(q):
        q = q.detach().requires_grad_(True)
        return torch.autograd.grad(logdensity_fn(q), q)[0]

    q, p = position, momentum + 0.5 * step_size * grad(position)
    for i in range(num_steps):
        q = q + step_size * p
        p = p + (step_size if i < num_steps - 1 else 0.5 * step_size) * grad(q)
    log_ratio = float(logdensity_fn(q) - 0.5 * p @ p - (logdensity_fn(position) - 0.5 * momentum @ momentum))
    return q if log_u < log_ratio else position


def test_single_stage_is_plain_hmc():
    scales = torch.tensor([1.0, 4.0, 0.25])

    def logdensity(x):
        return -0.5 * torch.sum(x**2 / scales)

    step = build_kernel(max_proposals=1)
    state = init(torch.tensor([0.3, -1.0, 0.2]), logdensity)
    position = state.position
    for i in range(30):
        torch.manual_seed(i)
        state, info = step(state, logdensity, 0.4, torch.ones(3), 6)
        torch.manual_seed(i)
        position = _reference_hmc_step(position, logdensity, 0.4, 6)
        torch.testing.assert_close(state.position, position, rtol=1e-10, atol=1e-12)
        assert info.num_grad_evals == 6


def test_random_walk_delayed_rejection_is_exact():
    """The meta-algorithm with the random-walk involutions (x, v) -> (x + s_k v, -v)."""
    scales = (4.0, 1.0, 0.25)
    torch.manual_seed(3)

    def log_joint(point):  # 0.5 N(-2, 0.3^2) + 0.5 N(2, 1), times N(v; 0, 1)
        x, v = point
        a = stats.norm.logpdf(x, -2.0, 0.3)
        b = stats.norm.logpdf(x, 2.0, 1.0)
        return float(np.logaddexp(a, b) - math.log(2.0) - 0.5 * v * v)

    proposals = [lambda p, s=s: ((p[0] + s * p[1], -p[1]), 1) for s in scales]
    draws = np.empty((2, 15000))
    for chain in range(2):
        x = 0.0
        for i in range(draws.shape[1]):
            (x, _), _ = delayed_rejection((x, torch.randn(()).item()), log_joint, proposals, True)
            draws[chain, i] = x
    second = 0.5 * (4 + 0.09) + 0.5 * (4 + 1)
    m4 = 0.5 * (16 + 6 * 4 * 0.09 + 3 * 0.09**2) + 0.5 * (16 + 6 * 4 + 3)
    assert_mean(draws, 0.0, math.sqrt(second), "x")
    assert_variance(draws, 0.0, second, m4 / second**2 - 3, "x")


def test_nan_region_is_rejected_and_counted():
    def potential(params):  # N(0, 1) restricted to x < 1.5, NaN beyond
        x = params["x"]
        return torch.where(x < 1.5, 0.5 * x**2, torch.full_like(x, float("nan"))).sum()

    kernel = DRHMC(potential_fn=potential, trajectory_length=1.0, max_proposals=2)
    pyro.set_rng_seed(1)
    mcmc = MCMC(kernel, warmup_steps=300, num_samples=2500, initial_params={"x": torch.zeros(1)}, disable_progbar=True)
    mcmc.run()
    x = mcmc.get_samples()["x"].numpy()[:, 0]
    assert x.max() < 1.5
    exact = stats.truncnorm(-np.inf, 1.5)
    assert_mean(x, exact.mean(), exact.std(), "x")
    assert_ks(x, exact.cdf, "x")
    assert kernel.get_sample_stats()["diverging"].sum() > 0


def test_same_seed_same_draws_diagnostics_and_arviz():
    import arviz as az

    first = run(DRHMC(test_problems.funnel, trajectory_length=2.0), 3, warmup=50, samples=50, seed=4)
    second = run(DRHMC(test_problems.funnel, trajectory_length=2.0), 3, warmup=50, samples=50, seed=4)
    torch.testing.assert_close(first.get_samples()["v"], second.get_samples()["v"], rtol=0, atol=0)
    diagnostics = first.diagnostics()
    assert "divergences" in diagnostics and "acceptance rate" in diagnostics
    idata = az.from_pyro(first, log_likelihood=False)
    assert idata.posterior["v"].shape == (1, 50)
    idata = from_mcmc(first, log_likelihood=False)
    for name in ("acceptance_rate", "diverging", "stage", "n_steps", "n_grad_evals", "energy", "step_size"):
        assert idata.sample_stats[name].shape == (1, 50), name
    stats_ = first.kernel.get_sample_stats()
    assert len(stats_["stage"]) == 100 and (stats_["num_grad_evals"] >= stats_["num_steps"]).all()


def test_trajectory_length_from_nuts_warmup():
    kernel = DRHMC(correlated_pair)
    x = pair_draws(run(kernel, warmup=300, samples=800))
    assert 0.2 < kernel.trajectory_length < 20
    assert_mean(x[:, 0], 0.0, 1.0, "x[0]")


def test_targets_of_other_backends():
    pyro_target = Target.from_pyro(test_problems.funnel, 3)
    samples = run(DRHMC(pyro_target, trajectory_length=2.0), warmup=100, samples=100).get_samples()
    assert set(samples) == {"v", "x"}

    function_target = Target.from_logdensity(lambda x: -0.5 * float(x @ x) / 4.0, dim=2, grad=lambda x: -x / 4.0)
    kernel = DRHMC(function_target, trajectory_length=3.0)
    x = run(kernel, warmup=200, samples=1000).get_samples()["x"].numpy()
    assert x.shape == (1000, 2)
    assert_mean(x[:, 0], 0.0, 2.0, "x[0]")


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(step_size=0.0), "step_size"),
        (dict(reduction_factor=1), "reduction_factor"),
        (dict(max_proposals=0), "max_proposals"),
        (dict(trajectory_length=-1.0), "trajectory_length"),
        (dict(num_steps=0), "num_steps"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        DRHMC(test_problems.funnel, **kwargs)


def test_discrete_latent_is_refused():
    def discrete():
        pyro.sample("k", dist.Poisson(3.0))

    with pytest.raises(ValueError, match="'k'"):
        run(DRHMC(discrete), warmup=5, samples=5)


def test_matches_the_numpyro_kernel():
    """Same fixed settings, same transition: stage frequencies and moments agree statistically."""
    jax = pytest.importorskip("jax", reason="the numpyro extra is not installed")
    import arviz as az
    import numpyro
    import numpyro.distributions as ndist
    from numpyro.infer import MCMC as NumPyroMCMC

    from numpyro_ext.infer import DRHMC as NumPyroDRHMC

    scales = [1.0, 0.1]
    fixed = dict(step_size=0.5, num_steps=1, adapt_step_size=False, adapt_mass_matrix=False, max_proposals=3)

    def numpyro_model():
        numpyro.sample("x", ndist.Normal(0.0, jax.numpy.array(scales)).to_event(1))

    def pyro_model():
        pyro.sample("x", dist.Normal(torch.zeros(2), torch.tensor(scales)).to_event(1))

    jax_mcmc = NumPyroMCMC(
        NumPyroDRHMC(numpyro_model, **fixed),
        num_warmup=200,
        num_samples=4000,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=False,
    )
    jax_mcmc.run(jax.random.PRNGKey(0))
    jax_stage = np.asarray(jax_mcmc.get_extra_fields(group_by_chain=True)["stage"])
    jax_x = np.asarray(jax_mcmc.get_samples(group_by_chain=True)["x"])

    kernel = DRHMC(pyro_model, **fixed)
    torch_x = run(kernel, warmup=200, samples=1500).get_samples()["x"].numpy()[None]
    torch_stage = kernel.get_sample_stats()["stage"][~kernel.get_sample_stats()["warmup"]][None]

    def share_and_error(indicator):
        indicator = indicator.astype(float)
        p = indicator.mean()
        return p, math.sqrt(max(p * (1 - p), 1e-12) / float(az.ess(indicator)))

    for stage in (-1, 0, 1, 2):
        (p_jax, e_jax), (p_torch, e_torch) = share_and_error(jax_stage == stage), share_and_error(torch_stage == stage)
        z = (p_jax - p_torch) / math.sqrt(e_jax**2 + e_torch**2)
        assert abs(z) < 4, f"stage {stage}: NumPyro {p_jax:.3f} vs Pyro {p_torch:.3f} (z = {z:.2f})"
    assert (torch_stage == 2).any() and (jax_stage == 2).any()
    for i, scale in enumerate(scales):
        assert_variance(torch_x[..., i], 0.0, scale**2, 0.0, f"Pyro x[{i}]")
        assert_variance(jax_x[..., i], 0.0, scale**2, 0.0, f"NumPyro x[{i}]")
