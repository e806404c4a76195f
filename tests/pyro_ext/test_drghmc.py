"""DR-G-HMC (Pyro backend) against exact answers.

Targets: a Gaussian with scales 0.01 ... 10, Neal's funnel (exact stage probabilities in float64) and
a normal truncated by a NaN region.  Exact detailed balance uses the library's own transition, fed
chosen random numbers (``ScriptedRandom``): with zero refresh noise and uniforms that reject stages
``0..k-1`` and accept stage ``k`` whenever it can, one transition reports ``alpha_k``, so each
stage's probability ``prod_{j<k} (1 - alpha_j)^w alpha_k`` is computed exactly, from a point and
from its proposal.  Statistical tolerances are Monte Carlo errors (``tests/mc_checks.py``).
"""

import math

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import MCMC
from scipy import stats

from adapters.inference_data import from_mcmc
from pyro_ext.infer import DRGHMC
from pyro_ext.infer.drghmc import build_kernel, init, partial_refresh, stage_step
from tests.mc_checks import assert_ks, assert_mean, assert_variance

SCALES = torch.tensor([0.01, 0.1, 1.0, 10.0], dtype=torch.float64)
SAMPLE_STATS = {
    "acceptance_rate",
    "diverging",
    "stage",
    "n_steps",
    "tree_depth",
    "num_grad_evals",
    "energy",
    "lp",
    "step_size",
}


class ScriptedRandom:
    """Stands in for ``torch.randn`` / ``torch.rand`` (``monkeypatch``): hands out given numbers in order.

    ``normals`` is a list of ``(d,)`` arrays (one per ``randn`` call), ``uniforms`` a flat list of floats
    (one per ``rand(())`` call, in the order the core draws them: ``u_0, [v_0], u_1, [v_1], ...``).
    """

    def __init__(self, monkeypatch, normals=(), uniforms=()):
        self.normals, self.uniforms = list(normals), list(uniforms)
        monkeypatch.setattr(torch, "randn", self.randn)
        monkeypatch.setattr(torch, "rand", self.rand)

    def randn(self, shape, generator=None, dtype=None, device=None):
        return torch.tensor(np.array(self.normals.pop(0)), dtype=dtype).reshape(shape)

    def rand(self, shape, generator=None, dtype=None, device=None):
        return torch.tensor(self.uniforms.pop(0), dtype=dtype)


def funnel_logdensity(z):
    v, x = z[0], z[1:]
    return -(v**2) / 18.0 - 0.5 * torch.sum(x**2) * torch.exp(-v) - 0.5 * (z.shape[0] - 1) * v


def run(kernel, warmup=200, samples=2000, seed=0, **mcmc_kwargs):
    pyro.set_rng_seed(seed)
    mcmc = MCMC(kernel, warmup_steps=warmup, num_samples=samples, disable_progbar=True, **mcmc_kwargs)
    mcmc.run()
    return mcmc


def sampling_stats(kernel):
    stats_ = kernel.get_sample_stats()
    keep = ~stats_["warmup"]
    return {k: v[keep] for k, v in stats_.items()}


def assert_gaussian_marginals(x, scales, label):
    """Draws ``(draws, d)`` against independent N(0, scales**2): mean, variance, P(x <= q) at 5/50/95%."""
    for i, scale in enumerate(scales):
        assert_mean(x[:, i], 0.0, scale, f"{label} x[{i}]")
        assert_variance(x[:, i], 0.0, scale**2, 0.0, f"{label} x[{i}]")
        for level in (0.05, 0.5, 0.95):
            indicator = (x[:, i] <= stats.norm.ppf(level) * scale).astype(float)
            assert_mean(indicator, level, math.sqrt(level * (1 - level)), f"{label} x[{i}] P(x <= q{level})")


# ---------------------------------------------------------------------------------------
# Marginals of full runs
# ---------------------------------------------------------------------------------------
def varied_potential(params):
    return 0.5 * torch.sum((params["x"] / SCALES) ** 2)


def test_gaussian_of_varied_scales():
    """Scales 0.01 ... 10 (float64 potential) at the exact metric, no warmup: one-step stages with a kept momentum.

    (The NUTS warmup spends thousands of gradients per iteration before it has adapted a metric for
    scales four orders of magnitude apart: it runs in the slow tests.)  The same run checks the
    statistics and ArviZ's names.
    """
    kernel = DRGHMC(potential_fn=varied_potential, step_size=1.5, inverse_mass_matrix=SCALES**2)
    mcmc = run(kernel, warmup=0, samples=2000, initial_params={"x": SCALES.clone()})
    x = mcmc.get_samples()["x"].numpy()
    assert_gaussian_marginals(x, SCALES.numpy(), "default")

    stats_ = sampling_stats(kernel)
    assert (stats_["num_grad_evals"] >= stats_["num_steps"]).all() and (stats_["num_steps"] >= 1).all()
    assert {0, 1} <= set(np.unique(stats_["stage"])) <= {-1, 0, 1, 2}
    assert np.all(stats_["step_size"] == 1.5)
    idata = from_mcmc(mcmc)
    assert set(idata.sample_stats.data_vars) >= SAMPLE_STATS
    assert idata.sample_stats["stage"].shape == (1, 2000)


@pytest.mark.slow  # ~10-20 s: the reference recipe (NUTS warmup) on the same Gaussian
def test_gaussian_of_varied_scales_after_nuts_warmup():
    kernel = DRGHMC(potential_fn=varied_potential)
    mcmc = run(kernel, warmup=300, samples=5000, initial_params={"x": torch.ones(4, dtype=torch.float64)})
    assert_gaussian_marginals(mcmc.get_samples()["x"].numpy(), SCALES.numpy(), "after NUTS warmup")
    all_stats = kernel.get_sample_stats()
    assert np.isnan(all_stats["accept_prob"][all_stats["warmup"]]).all()
    assert {0, 1} <= set(np.unique(sampling_stats(kernel)["stage"]))


@pytest.mark.slow  # 20-45 s each: a Pyro model through initialize_model and its NUTS warmup, 5000 draws
@pytest.mark.parametrize(
    "settings", [{}, dict(probabilistic=False, max_proposals=2), dict(constant_trajectory=True, damping=0.5)]
)
def test_model_of_varied_scales(settings):
    import pyro.distributions as dist

    def model():
        pyro.sample("x", dist.Normal(0.0, SCALES.float()).to_event(1))

    mcmc = run(DRGHMC(model, **settings), warmup=300, samples=5000, seed=1)
    assert_gaussian_marginals(mcmc.get_samples()["x"].double().numpy(), SCALES.numpy(), str(settings))


# ---------------------------------------------------------------------------------------
# Exact detailed balance of every stage, with the library's own transition
# ---------------------------------------------------------------------------------------
TINY = 1e-300  # a uniform that accepts whenever alpha > 0 (and retries whenever 1 - alpha > 0)
ALMOST_ONE = 1.0 - 1e-16  # a uniform that rejects unless alpha = 1


def stage_probabilities(monkeypatch, settings, point, num_stages, damping, imm, eps, num_steps):
    """``(P(the transition from point accepts stage k), DR proposal y_k)`` for each ``k``, exactly.

    ``point`` is ``(position, momentum)`` after the refresh; zero noise makes the refresh a scaling,
    undone here.  For stage ``k`` a kernel of ``k + 1`` stages (the same ``alpha_j``, ``j <= k``: a
    stage's ghosts run only earlier stages) rejects stages ``< k`` (and retries) and accepts stage
    ``k`` whenever ``alpha_k > 0``; its info reports ``alpha_k``.
    """
    position, momentum = point
    ScriptedRandom(monkeypatch, [torch.zeros(len(position))])  # init's momentum, replaced here
    state = init(position, funnel_logdensity)._replace(momentum=momentum / math.sqrt(1.0 - damping))
    probabilistic = settings["probabilistic"]
    alphas, proposals = [], []
    for k in range(num_stages):
        step = build_kernel(k + 1, damping=damping, **settings)
        retry = [TINY] if probabilistic else []
        uniforms = [u for _ in range(k) for u in [ALMOST_ONE, *retry]] + [TINY]
        ScriptedRandom(monkeypatch, [torch.zeros(len(position))], uniforms)
        new, info = step(state, funnel_logdensity, eps, imm, num_steps)
        if info.stage not in (-1, k):  # an earlier stage is accepted (almost) surely: stage k is not reached
            alphas += [0.0] * (num_stages - k)
            proposals += [None] * (num_stages - k)
            break
        alphas.append(info.acceptance_rate)
        proposals.append((new.position, -new.momentum) if info.stage == k else None)  # undo GHMC's flip
    weight = 2 if probabilistic else 1
    probs = [alphas[k] * math.prod((1 - a) ** weight for a in alphas[:k]) for k in range(num_stages)]
    return np.array(probs), proposals


def log_joint(point, imm):
    position, momentum = point
    return float(funnel_logdensity(position)) - 0.5 * float(momentum @ (imm * momentum))


@pytest.mark.parametrize("probabilistic", [True, False])
@pytest.mark.parametrize("constant_trajectory", [False, True])
def test_every_stage_satisfies_detailed_balance_exactly(monkeypatch, probabilistic, constant_trajectory):
    """pi(z) P(stage k | z) = pi(y_k) P(stage k | y_k), y_k = F_k(z) and F_k(y_k) = z, in float64.

    On the 3-D funnel at step sizes where the stages disagree; ``P`` from the library's transition
    (ghost proposals, retry probabilities and all).
    """
    num_stages, damping, eps, num_steps = 3, 0.3, 1.3, 2
    imm = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    settings = dict(reduction_factor=3.0, probabilistic=probabilistic, constant_trajectory=constant_trajectory)
    rng = np.random.default_rng(0)
    tested = 0
    for _ in range(25):
        z = np.array([rng.normal(0, 3), *rng.normal(size=2)])
        z[1:] *= np.exp(z[0] / 2)
        point = (torch.tensor(z), torch.tensor(rng.normal(size=3)) / imm.sqrt())
        forward, proposals = stage_probabilities(monkeypatch, settings, point, num_stages, damping, imm, eps, num_steps)
        for k, y in enumerate(proposals):
            if y is None or not log_joint(y, imm) - log_joint(point, imm) > -50:
                continue  # never accepted, or (energy error > 50) a move of probability below e^-50 both ways
            back, returns = stage_probabilities(monkeypatch, settings, y, num_stages, damping, imm, eps, num_steps)
            np.testing.assert_allclose(returns[k][0], point[0], rtol=1e-7, atol=1e-9)  # an involution
            np.testing.assert_allclose(returns[k][1], point[1], rtol=1e-7, atol=1e-9)
            flow_forward = math.exp(log_joint(point, imm)) * forward[k]
            flow_back = math.exp(log_joint(y, imm)) * back[k]
            np.testing.assert_allclose(flow_forward, flow_back, rtol=1e-7, atol=1e-300)
            tested += 1e-12 < forward[k] < 1 - 1e-12 and k > 0
    assert tested >= 8, f"only {tested} later-stage moves with probability strictly in (0, 1)"


def test_refresh_and_flip(monkeypatch):
    """One transition by hand: ``r' = sqrt(1 - d) r + sqrt(d) M^{1/2} xi``, then stage 0 and the flip.

    A rejected transition returns the refreshed momentum negated; an accepted one the leapfrog's end
    momentum (the stage's flip undone).
    """
    imm = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    state = init(torch.tensor([0.5, 0.2, -0.3], dtype=torch.float64), funnel_logdensity)
    state = state._replace(momentum=torch.tensor([0.3, -0.4, 1.0], dtype=torch.float64))
    noise = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    refreshed = math.sqrt(0.75) * state.momentum + 0.5 * noise / imm.sqrt()
    torch.testing.assert_close(partial_refresh(noise, state.momentum, imm, 0.25), refreshed)
    step = build_kernel(max_proposals=1, damping=0.25)
    ScriptedRandom(monkeypatch, [noise], [ALMOST_ONE])
    rejected, info = step(state, funnel_logdensity, 0.4, imm)
    assert info.stage == -1 and 0 < info.acceptance_rate < 1
    torch.testing.assert_close(rejected.momentum, -refreshed)
    torch.testing.assert_close(rejected.position, state.position)
    ScriptedRandom(monkeypatch, [noise], [TINY])
    accepted, info = step(state, funnel_logdensity, 0.4, imm)
    r = refreshed + 0.2 * state.logdensity_grad  # one leapfrog step by hand
    x = state.position + 0.4 * imm * r
    x_ = x.clone().requires_grad_(True)
    r = r + 0.2 * torch.autograd.grad(funnel_logdensity(x_), x_)[0]
    assert info.stage == 0
    torch.testing.assert_close(accepted.position, x)
    torch.testing.assert_close(accepted.momentum, r)


def test_stage_steps():
    assert stage_step(0.8, 1, 2, 4.0, False) == (0.05, 1)
    assert stage_step(0.8, 2, 2, 4.0, True) == pytest.approx((0.05, 32))


# ---------------------------------------------------------------------------------------
# Gradient counting, NaN and infinite densities, bad input
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("constant_trajectory", [False, True])
def test_every_gradient_is_counted(constant_trajectory):
    """``num_grad_evals`` equals the gradients actually evaluated; ``num_integration_steps`` the chain's."""
    calls = []
    scales = torch.tensor([1.0, 0.05], dtype=torch.float64)

    def logdensity(x):
        calls.append(1)
        return -0.5 * torch.sum((x / scales) ** 2)

    step = build_kernel(max_proposals=3, constant_trajectory=constant_trajectory, damping=0.5)
    generator = torch.Generator().manual_seed(0)
    state = init(torch.tensor([0.5, 0.01], dtype=torch.float64), logdensity, generator)
    stages = []
    for _ in range(60):
        calls.clear()
        state, info = step(state, logdensity, 0.35, torch.ones(2, dtype=torch.float64), 1, generator=generator)
        assert info.num_grad_evals == len(calls)
        assert info.num_integration_steps == sum(
            stage_step(0.35, 1, k, 4.0, constant_trajectory)[1] for k in range(info.num_proposals)
        )
        stages.append(info.stage)
    assert {1, 2} <= set(stages), np.bincount(np.array(stages) + 1)


def test_nan_and_infinite_densities_are_rejected_and_counted():
    """N(0, 1) truncated to (-1.5, 1.5): NaN above, +inf potential (zero density) below.  Marginal within MC
    error of the truncated normal; the walls' rejections are counted as divergences, in Pyro's list too."""

    def potential(params):
        x = params["x"]
        inside = 0.5 * x**2
        value = torch.where(x < 1.5, inside, torch.full_like(x, math.nan))
        return torch.where(x > -1.5, value, torch.full_like(x, math.inf)).sum()

    kernel = DRGHMC(potential_fn=potential, max_proposals=2)
    mcmc = run(kernel, warmup=100, samples=2000, seed=1, initial_params={"x": torch.zeros(1, dtype=torch.float64)})
    x = mcmc.get_samples()["x"].numpy()[:, 0]
    assert -1.5 < x.min() and x.max() < 1.5
    exact = stats.truncnorm(-1.5, 1.5)
    assert_mean(x, exact.mean(), exact.std(), "x")
    assert_variance(x, exact.mean(), exact.var(), exact.stats(moments="k"), "x")
    assert_ks(x, exact.cdf, "x")
    stats_ = sampling_stats(kernel)
    assert stats_["diverging"].sum() > 0
    assert mcmc.diagnostics()["divergences"]["chain 0"] == list(np.flatnonzero(stats_["diverging"]))


def test_failing_potential_is_a_rejection_not_a_crash():
    """A Cholesky failure (Pyro's HMC counts it as NaN) beyond |x| >= 1: rejected, counted; no warmup."""

    def potential(params):
        x = params["x"].sum()
        matrix = torch.stack([torch.stack([torch.ones_like(x), x]), torch.stack([x, torch.ones_like(x)])])
        torch.linalg.cholesky(matrix)  # not positive-definite for |x| >= 1
        return 0.5 * x**2

    kernel = DRGHMC(potential_fn=potential, step_size=0.5)
    x = run(kernel, warmup=0, samples=300, initial_params={"x": torch.zeros(1)}).get_samples()["x"].numpy()
    assert np.abs(x).max() < 1.0
    stats_ = kernel.get_sample_stats()
    assert stats_["diverging"].any() and not stats_["warmup"].any()


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(damping=0.0), "damping"),
        (dict(damping=1.5), "damping"),
        (dict(step_size_factor=0.0), "step_size_factor"),
        (dict(num_steps=0), "num_steps"),
        (dict(constant_trajectory=1), "constant_trajectory"),
        (dict(jit_compile="no"), "jit_compile"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        DRGHMC(potential_fn=varied_potential, **kwargs)


def test_bad_inverse_mass_matrix_shape_and_missing_start():
    with pytest.raises(TypeError, match="inverse_mass_matrix must be an array of shape"):
        DRGHMC(potential_fn=varied_potential, inverse_mass_matrix="ones")
    kernel = DRGHMC(potential_fn=varied_potential, inverse_mass_matrix=torch.ones(3))
    with pytest.raises(ValueError, match=r"DRGHMC: inverse_mass_matrix must have shape \(4,\) or \(4, 4\)"):
        run(kernel, warmup=0, samples=1, initial_params={"x": torch.zeros(4)})
    with pytest.raises(ValueError, match="DRGHMC: with `potential_fn`, pass `initial_params`"):
        run(DRGHMC(potential_fn=varied_potential), warmup=0, samples=1)


def test_same_seed_same_draws():
    def draws():
        kernel = DRGHMC(potential_fn=varied_potential)
        return run(kernel, warmup=20, samples=50, seed=3, initial_params={"x": torch.ones(4)}).get_samples()["x"]

    torch.testing.assert_close(draws(), draws(), rtol=0, atol=0)


def test_step_size_is_the_factor_times_the_warmup_step_size():
    """The recipe: the first stage steps ``step_size_factor`` x the step size NUTS's warmup ends with.

    Warmup does not depend on the factor, so at the same seed two factors give step sizes in their ratio.
    """

    def potential(params):
        return 0.5 * torch.sum((params["x"] / torch.tensor([0.5, 2.0])) ** 2)

    def sampling_step_size(factor):
        kernel = DRGHMC(potential_fn=potential, step_size_factor=factor)
        run(kernel, warmup=40, samples=3, seed=2, initial_params={"x": torch.ones(2)})
        return sampling_stats(kernel)["step_size"]

    two, three = sampling_step_size(2.0), sampling_step_size(3.0)
    assert np.all(two == two[0]) and three[0] / two[0] == pytest.approx(1.5, rel=1e-12)


def test_targets_pickling_and_the_model_route():
    """A Pyro Target runs natively (named sites, Pyro's transforms); a Target of another backend through
    ``as_torch`` (site ``"x"``, named again by ``constrain_samples``); an un-set-up kernel pickles."""
    import pickle

    import pyro.distributions as dist

    from adapters import Target

    def model():
        pyro.sample("s", dist.LogNormal(0.0, 0.5))

    from pyro_ext.models import test_problems

    funnel_kernel = DRGHMC(test_problems.funnel, damping=0.3)
    assert pickle.loads(pickle.dumps(funnel_kernel)).damping == 0.3

    kernel = DRGHMC(Target.from_pyro(model))
    s = run(kernel, warmup=30, samples=30).get_samples()["s"]
    assert s.shape == (30,) and (s > 0).all()  # constrained by Pyro's transform

    function_target = Target.from_logdensity(lambda x: -0.5 * float(x @ x), dim=2, grad=lambda x: -x)
    kernel = DRGHMC(function_target, step_size=0.8, max_proposals=2)
    samples = run(kernel, warmup=0, samples=30).get_samples()
    assert samples["x"].shape == (30, 2)
    named = kernel.constrain_samples(samples)
    assert set(named) == {"x[1]", "x[2]"}
    np.testing.assert_allclose(named["x[2]"], samples["x"].numpy()[:, 1])
