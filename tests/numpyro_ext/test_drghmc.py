"""DR-G-HMC (NumPyro backend) against exact answers.

Targets: a Gaussian with scales 0.01 ... 10, Neal's funnel (v ~ N(0, 3), x_i | v ~ N(0, e^{v/2})),
whose exact draws are cheap, and a truncated normal written as a log density that is NaN outside its
support.  A float64 NumPy twin of the reference code's recursion (bayes-kit ``DrGhmcDiag.accept``)
checks detailed balance of every stage exactly and, fed the sampler's own random numbers, the
sampler's transitions draw by draw (there is no Pyro DR-G-HMC yet to compare with).
"""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC
from scipy import stats

from adapters.inference_data import from_mcmc
from numpyro_ext.infer.drghmc import DRGHMC, DRGHMCState, build_kernel, init, partial_refresh, stage_step
from numpyro_ext.models import test_problems
from tests.mc_checks import assert_ks, assert_mean, assert_variance

SCALES = np.array([0.01, 0.1, 1.0, 10.0])
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


def varied_gaussian():
    numpyro.sample("x", dist.Normal(0.0, jnp.asarray(SCALES)).to_event(1))


def run(kernel, num_warmup=500, num_samples=2000, num_chains=4, seed=0, **run_kwargs):
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(seed), **run_kwargs)
    return mcmc


def assert_quantile(draws, quantile, level, label):
    """P(x <= exact level-quantile) = level, within MC error of the indicator (its own ESS)."""
    indicator = (np.asarray(draws) <= quantile).astype(float)
    assert_mean(indicator, level, np.sqrt(level * (1 - level)), f"{label} P(x <= q{level})")


def assert_gaussian_marginals(x, scales, label):
    """Draws ``(chains, draws, d)`` against independent N(0, scales**2): mean, variance, 5/50/95% quantiles."""
    for i, scale in enumerate(scales):
        assert_mean(x[..., i], 0.0, scale, f"{label} x[{i}]")
        assert_variance(x[..., i], 0.0, scale**2, 0.0, f"{label} x[{i}]")
        for level in (0.05, 0.5, 0.95):
            assert_quantile(x[..., i], stats.norm.ppf(level) * scale, level, f"{label} x[{i}]")


# ---------------------------------------------------------------------------------------
# Marginals of full runs
# ---------------------------------------------------------------------------------------
def test_gaussian_of_varied_scales():
    """Scales 0.01 ... 10: NUTS warmup adapts the metric, then one-step stages with persistent momentum.

    The same run checks the ArviZ statistics.
    """
    mcmc = run(DRGHMC(varied_gaussian), seed=0)
    x = np.asarray(mcmc.get_samples(group_by_chain=True)["x"])
    assert_gaussian_marginals(x, SCALES, "default")

    idata, arviz_own = from_mcmc(mcmc), az.from_numpyro(mcmc)
    assert set(idata.sample_stats.data_vars) == set(arviz_own.sample_stats.data_vars) == SAMPLE_STATS
    sample_stats = idata.sample_stats
    for name in SAMPLE_STATS:
        assert sample_stats[name].shape == x.shape[:2], name
    assert (sample_stats["num_grad_evals"].values >= sample_stats["n_steps"].values).all()
    stage = sample_stats["stage"].values
    assert set(np.unique(stage)) == {-1, 0, 1, 2}, "all stages (and full rejections) occur at 2x the NUTS step"
    step_size = sample_stats["step_size"].values  # fixed while sampling
    assert np.all(step_size == step_size[:, :1])
    ess = [float(az.ess(x[..., i])) for i in range(len(SCALES))]
    grads = sample_stats["num_grad_evals"].values.mean()
    print(f"varied scales: ESS {np.round(ess)}, {grads:.2f} gradients/iteration, step sizes {step_size[:, 0]}")


@pytest.mark.slow  # ~40 s: two more settings of the varied-scale Gaussian, longer chains
@pytest.mark.parametrize(
    "settings", [dict(probabilistic=False, max_proposals=2), dict(constant_trajectory=True, damping=0.5)]
)
def test_gaussian_of_varied_scales_other_settings(settings):
    mcmc = run(DRGHMC(varied_gaussian, **settings), num_samples=5000)
    assert_gaussian_marginals(np.asarray(mcmc.get_samples(group_by_chain=True)["x"]), SCALES, str(settings))


@pytest.mark.slow  # ~40 s: three compilations of the same short run
def test_same_seed_same_draws_and_unbatched_chains():
    first = run(DRGHMC(varied_gaussian), num_warmup=100, num_samples=200, num_chains=2, seed=5)
    second = run(DRGHMC(varied_gaussian), num_warmup=100, num_samples=200, num_chains=2, seed=5)
    np.testing.assert_array_equal(first.get_samples()["x"], second.get_samples()["x"])
    sequential = MCMC(
        DRGHMC(varied_gaussian),
        num_warmup=100,
        num_samples=200,
        num_chains=2,
        chain_method="sequential",
        progress_bar=False,
    )
    sequential.run(jax.random.PRNGKey(5))  # the kernel's unbatched path
    assert sequential.get_samples(group_by_chain=True)["x"].shape == (2, 200, 4)
    assert set(np.unique(np.asarray(sequential.get_extra_fields()["stage"]))) <= {-1, 0, 1, 2}


@pytest.mark.slow  # ~20 s: one more compilation
def test_numpyro_target():
    from adapters import Target

    mcmc = run(DRGHMC(Target.from_numpyro(varied_gaussian)), num_warmup=300, num_samples=1000, num_chains=2)
    x = np.asarray(mcmc.get_samples(group_by_chain=True)["x"])
    assert x.shape == (2, 1000, 4)
    assert_mean(x[..., 3], 0.0, 10.0, "x[3]")


@pytest.mark.slow  # ~1-2 min: 10-D funnel, 4 x 100000 draws
def test_funnel_v_marginal_against_exact_draws():
    """The 10-D funnel's v against exact draws: mean, variance, five quantiles, two-sample KS.

    The unit metric is kept (``adapt_mass_matrix=False``): with NumPyro's diagonal adaptation the NUTS
    warmup ends at step sizes 0.05-0.3 depending on the chain, and at one leapfrog step per iteration
    the small-step chains explore v so slowly (ESS(v) 20-60 in 4 x 20000 draws) that the neck's share
    is not reached in a test's time; with the unit metric the step sizes agree (0.6-0.8).
    """
    mcmc = run(DRGHMC(test_problems.funnel, adapt_mass_matrix=False), num_warmup=1000, num_samples=100000)
    v = np.asarray(mcmc.get_samples(group_by_chain=True)["v"])
    exact = test_problems.exact_draws("funnel", 10, num_draws=20000, seed=3)["v"][0]
    assert_mean(v, 0.0, 3.0, "v")
    assert_variance(v, 0.0, 9.0, 0.0, "v")
    for level in (0.05, 0.25, 0.5, 0.75, 0.95):
        assert_quantile(v, np.quantile(exact, level), level, "v (quantile of exact draws)")
    ess = float(az.ess(v))
    thinned = v[:, :: max(1, int(np.ceil(v.size / ess)))].ravel()
    p_value = stats.ks_2samp(thinned, exact).pvalue
    assert p_value > 1e-3, f"v: two-sample KS p-value {p_value:.1e} ({thinned.size} thinned draws, ESS {ess:.0f})"
    stage = np.asarray(mcmc.get_extra_fields()["stage"])
    print(f"funnel: ESS(v) {ess:.0f}, stages {np.bincount(stage.ravel() + 1)} (-1, 0, 1, 2)")


# ---------------------------------------------------------------------------------------
# Invariance from exact draws (no autocorrelation)
# ---------------------------------------------------------------------------------------
FUNNEL_DIM = 3


def funnel_logdensity(z):
    v, x = z[0], z[1:]
    return -(v**2) / 18.0 - 0.5 * jnp.sum(x**2) * jnp.exp(-v) - 0.5 * (z.shape[0] - 1) * v


def test_funnel_exact_draws_stay_exact():
    """Exact (position, momentum) draws in, five transitions each, exact draws out.

    ``eps = 1.2`` is too large for the neck (scale ``e^{v/2}``), so the later stages and their ghosts
    decide many moves: a wrong acceptance ratio, refresh or flip would move the v or momentum marginals.
    """
    n, num_transitions = 20000, 5
    draws = test_problems.exact_draws("funnel", FUNNEL_DIM, num_draws=n, seed=1)
    start = np.stack([draws["v"][0], draws["x[1]"][0], draws["x[2]"][0]], axis=1)
    momentum = np.random.default_rng(2).normal(size=start.shape)
    step = build_kernel(max_proposals=3, damping=0.3)
    imm = jnp.ones(FUNNEL_DIM)

    def chain(z, r, key):
        state = init(z, funnel_logdensity, key)._replace(momentum=r)

        def one(state, key):
            state, info = step(key, state, funnel_logdensity, 1.2, imm)
            return state, info.stage

        state, stages = jax.lax.scan(one, state, jax.random.split(key, num_transitions))
        return state.position, state.momentum, stages

    keys = jax.random.split(jax.random.PRNGKey(0), n)
    z, r, stages = map(np.asarray, jax.jit(jax.vmap(chain))(jnp.asarray(start), jnp.asarray(momentum), keys))
    assert (stages == 1).mean() > 0.05 and (stages == 2).mean() > 0.005, np.bincount(stages.ravel() + 1)
    v = z[:, 0]
    assert abs(v.mean()) / (3.0 / np.sqrt(n)) < 4
    assert abs(v.var() - 9.0) / (9.0 * np.sqrt(2.0 / n)) < 4
    assert stats.kstest(v, stats.norm(0, 3).cdf).pvalue > 1e-3
    x_scaled = z[:, 1:] * np.exp(-v / 2)[:, None]  # N(0, 1) given v
    for values, label in [(x_scaled.ravel(), "x e^{-v/2}"), (r.ravel(), "momentum")]:
        assert stats.kstest(values, "norm").pvalue > 1e-3, label


# ---------------------------------------------------------------------------------------
# A float64 NumPy twin of the reference recursion: detailed balance, and the sampler draw by draw
# ---------------------------------------------------------------------------------------
class Twin:
    """DR-G-HMC in NumPy after bayes-kit's ``DrGhmcDiag`` (``proposal_map``, ``accept``, ``sample``).

    Conventions as the library's (``M^{-1}`` = ``imm`` on the velocity).  Unlike the reference it
    finishes a ghost ladder after a surely accepted ghost instead of returning early; the acceptance
    is the same (zero) and the gradient count then matches the JAX core's, which does the same.
    """

    def __init__(self, imm, eps, num_steps, reduction, max_proposals, probabilistic, constant_trajectory=False):
        self.imm, self.k_max, self.probabilistic = np.asarray(imm), max_proposals, probabilistic
        self.schedule = []
        for k in range(max_proposals):
            n_k = int(np.ceil(num_steps * reduction**k - 1e-6)) if constant_trajectory else num_steps
            eps_k = eps * num_steps / n_k if constant_trajectory else eps / reduction**k
            self.schedule.append((eps_k, n_k))
        self.grads = 0

    def value_grad(self, z):
        self.grads += 1
        v, x = z[0], z[1:]
        logp = -(v**2) / 18.0 - 0.5 * np.sum(x**2) * np.exp(-v) - 0.5 * x.size * v
        grad = np.concatenate([[-v / 9.0 + 0.5 * np.sum(x**2) * np.exp(-v) - 0.5 * x.size], -x * np.exp(-v)])
        return logp, grad

    def proposal(self, point, k):
        x, r, logp, g = (np.array(a, dtype=float) for a in point)
        eps, n = self.schedule[k]
        for _ in range(n):
            r = r + 0.5 * eps * g
            x = x + eps * (self.imm * r)
            logp, g = self.value_grad(x)
            r = r + 0.5 * eps * g
        return x, -r, logp, g

    def log_joint(self, point):
        x, r, logp, _ = point
        value = logp - 0.5 * np.sum(r * (self.imm * r))
        return value if np.isfinite(value) and np.all(np.isfinite(x)) else -np.inf

    def log_accept(self, prop, k, cur_hastings, cur_logp):
        """bayes-kit ``accept``: log alpha_k of moving to ``prop`` given the start's rejection history."""
        prop_logp, prop_hastings = self.log_joint(prop), 0.0
        with np.errstate(all="ignore"):
            for i in range(k):
                ghost = self.proposal(prop, i)
                a = self.log_accept(ghost, i, prop_hastings, prop_logp)
                prop_hastings += np.log1p(-np.exp(a))
            weight = 2.0 if self.probabilistic else 1.0
            frac = (prop_logp - cur_logp) + weight * (prop_hastings - cur_hastings)
        return -np.inf if np.isnan(frac) else min(0.0, frac)

    def stage_probabilities(self, point):
        """P(the DR step from ``point`` accepts stage k), k < K, and the proposals y_k."""
        cur_logp, cur_hastings, reach, probs, proposals = self.log_joint(point), 0.0, 1.0, [], []
        for k in range(self.k_max):
            prop = self.proposal(point, k)
            alpha = np.exp(self.log_accept(prop, k, cur_hastings, cur_logp))
            probs.append(reach * alpha)
            proposals.append(prop)
            reach *= (1 - alpha) * ((1 - alpha) if self.probabilistic else 1.0)
            cur_hastings += np.log1p(-alpha) if alpha < 1 else -np.inf
        return np.array(probs), proposals

    def transition(self, point, noise, damping, log_u_accept, log_u_retry):
        """bayes-kit ``sample`` with given random numbers: refresh, stages, unconditional flip."""
        x, r, logp, g = point
        r = np.sqrt(1 - damping) * r + np.sqrt(damping) * (noise / np.sqrt(self.imm))
        start = (x, r, logp, g)
        cur_logp, cur_hastings, new, stage = self.log_joint(start), 0.0, start, -1
        for k in range(self.k_max):
            prop = self.proposal(start, k)
            log_alpha = self.log_accept(prop, k, cur_hastings, cur_logp)
            if log_u_accept[k] < log_alpha:
                new, stage = prop, k
                break
            with np.errstate(divide="ignore"):
                log_reject = np.log1p(-np.exp(log_alpha))
            cur_hastings += log_reject
            if not log_u_retry[k] < (log_reject if self.probabilistic else 0.0):
                break
        x, r, logp, g = new
        return (x, -r, logp, g), stage


def funnel_point(z, r):
    twin = Twin(np.ones(len(z)), 1.0, 1, 2.0, 1, True)
    return (np.asarray(z, float), np.asarray(r, float), *twin.value_grad(np.asarray(z, float)))


@pytest.mark.parametrize("probabilistic", [True, False])
@pytest.mark.parametrize("constant_trajectory", [False, True])
def test_every_stage_satisfies_detailed_balance_exactly(probabilistic, constant_trajectory):
    """pi(z) P(accept stage k | z) = pi(y_k) P(accept stage k | y_k), with y_k = F_k(z), F_k(y_k) = z.

    The delayed-rejection step's kernel from a point ``z`` (position and momentum) is discrete: it moves
    to ``y_k`` with the probability of rejecting stages ``0..k-1`` (and retrying) and accepting stage
    ``k``.  Computed exactly in float64 on the 3-D funnel at step sizes where the stages disagree.
    """
    rng = np.random.default_rng(0)
    twin = Twin(np.array([1.0, 0.5, 2.0]), 1.3, 2, 3.0, 3, probabilistic, constant_trajectory)
    tested = 0
    for _ in range(60):
        z = np.array([rng.normal(0, 3), *rng.normal(size=2)])
        z[1:] *= np.exp(z[0] / 2)
        point = funnel_point(z, rng.normal(size=3) / np.sqrt(twin.imm))
        forward, proposals = twin.stage_probabilities(point)
        for k, y in enumerate(proposals):
            # where the leapfrog blows up (energy error > 50) rounding breaks reversibility, but the move's
            # probability is below e^-50 both ways: nothing to compare
            if not twin.log_joint(y) - twin.log_joint(point) > -50:
                continue
            back, returns = twin.stage_probabilities(y)
            np.testing.assert_allclose(returns[k][0], point[0], rtol=1e-7, atol=1e-9)  # an involution
            np.testing.assert_allclose(returns[k][1], point[1], rtol=1e-7, atol=1e-9)
            flow_forward = np.exp(twin.log_joint(point)) * forward[k]
            flow_back = np.exp(twin.log_joint(y)) * back[k]
            np.testing.assert_allclose(flow_forward, flow_back, rtol=1e-7, atol=1e-300)
            tested += 1e-12 < forward[k] < 1 - 1e-12 and k > 0
    assert tested >= 20, f"only {tested} later-stage moves with probability strictly in (0, 1)"


@pytest.mark.parametrize(
    "settings",
    [
        dict(max_proposals=3, probabilistic=True),
        dict(max_proposals=3, probabilistic=False, constant_trajectory=True, num_steps=2),
    ],
)
def test_sampler_follows_the_reference_recursion_draw_by_draw(settings):
    """The JAX kernel and the NumPy twin, fed the same normals and uniforms, move the same way.

    Positions, momenta (the refresh and the unconditional flip), accepted stages and gradient counts
    agree to 1e-9, each transition started from the kernel's state, for 150 transitions of the 3-D funnel
    at a step size where all three stages are used.
    """
    settings = dict(settings)
    num_steps = settings.pop("num_steps", 1)
    kw = dict(reduction_factor=3.0, damping=0.2, **settings)
    imm = np.array([1.0, 0.5, 2.0])
    eps = 0.9
    step = jax.jit(build_kernel(**kw), static_argnums=(2,))
    twin = Twin(
        imm, eps, num_steps, 3.0, kw["max_proposals"], kw["probabilistic"], kw.get("constant_trajectory", False)
    )

    z0, r0 = np.array([-1.0, 0.3, -0.2]), np.array([0.5, -1.0, 0.2])
    state = init(jnp.asarray(z0), funnel_logdensity, jax.random.PRNGKey(0))._replace(momentum=jnp.asarray(r0))
    # the kernel's random numbers, derived as build_kernel and delayed_rejection derive them
    keys = jax.random.split(jax.random.PRNGKey(7), 150)
    num_stages = kw["max_proposals"]

    @jax.jit
    @jax.vmap
    def random_numbers(key):
        refresh_key, accept_key = jax.random.split(key)
        accept_keys, retry_keys = jax.random.split(accept_key)
        return (
            jax.random.normal(refresh_key, (3,), jnp.float64),
            jnp.log(jax.random.uniform(accept_keys, (num_stages,), jnp.float64)),
            jnp.log(jax.random.uniform(retry_keys, (num_stages,), jnp.float64)),
        )

    stages = []
    for key, noise, log_ua, log_ur in zip(keys, *map(np.asarray, random_numbers(keys)), strict=True):
        # each transition from the kernel's own state: rounding differences do not compound
        point = tuple(np.asarray(a) for a in state)
        state, info = step(key, state, funnel_logdensity, eps, jnp.asarray(imm), num_steps)
        twin.grads = 0
        point, stage = twin.transition(point, noise, kw["damping"], log_ua, log_ur)
        assert int(info.stage) == stage
        assert int(info.num_grad_evals) == twin.grads
        np.testing.assert_allclose(np.asarray(state.position), point[0], rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(np.asarray(state.momentum), point[1], rtol=1e-9, atol=1e-10)
        stages.append(stage)
    assert set(stages) == {-1, 0, 1, 2}, np.bincount(np.array(stages) + 1)


# ---------------------------------------------------------------------------------------
# Gradient counting, the momentum flip, NaN densities
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("constant_trajectory", [False, True])
def test_every_gradient_is_counted(constant_trajectory):
    """``num_grad_evals`` equals the gradients actually evaluated (a host counter in the density).

    With one step per stage, trying stages ``0..m`` costs ``2^(m+1) - 1`` gradients (each stage's
    ghosts re-run the earlier stages from its proposal); ``num_integration_steps`` counts the chain's.
    """
    calls = []

    def logdensity(x):
        jax.debug.callback(lambda: calls.append(1))
        return -0.5 * jnp.sum((x / jnp.array([1.0, 0.05])) ** 2)

    step = jax.jit(
        build_kernel(max_proposals=3, reduction_factor=2.0, constant_trajectory=constant_trajectory),
        static_argnums=(2,),
    )
    state = init(jnp.array([0.5, 0.02]), logdensity, jax.random.PRNGKey(0))
    jax.effects_barrier()
    tried = set()
    for key in jax.random.split(jax.random.PRNGKey(1), 60):
        calls.clear()
        state, info = step(key, state, logdensity, 0.35, jnp.ones(2))
        jax.effects_barrier()
        assert int(info.num_grad_evals) == len(calls)
        m = int(info.num_proposals)
        tried.add(m)
        steps = [1, 2, 4] if constant_trajectory else [1, 1, 1]
        assert int(info.num_integration_steps) == sum(steps[:m])
        if not constant_trajectory:
            assert len(calls) == 2**m - 1
    assert tried == {1, 2, 3}


def test_momentum_keeps_its_direction_when_accepted_and_turns_when_rejected():
    """No refresh (damping 0 for the call): accepted -> the leapfrog's end momentum; rejected -> -r."""
    step = jax.jit(build_kernel(max_proposals=1), static_argnums=(2,))
    logdensity = lambda x: -0.5 * jnp.sum(x**2)  # noqa: E731
    # x = 1, r = 1.25, eps = 1.9 on N(0, 1): one leapfrog step accepted with probability 0.52
    state = DRGHMCState(jnp.array([1.0]), jnp.array([1.25]), jnp.array(-0.5), jnp.array([-1.0]))
    moved = turned = 0
    for key in jax.random.split(jax.random.PRNGKey(0), 40):
        new, info = step(key, state, logdensity, 1.9, jnp.ones(1), 1, 0.0)
        if bool(info.is_accepted):
            r_half = 1.25 + 0.5 * 1.9 * -1.0
            x = 1.0 + 1.9 * r_half
            np.testing.assert_allclose(new.position, [x], rtol=1e-12)
            np.testing.assert_allclose(new.momentum, [r_half - 0.5 * 1.9 * x], rtol=1e-12)
            moved += 1
        else:
            np.testing.assert_array_equal(new.position, state.position)
            np.testing.assert_array_equal(new.momentum, -state.momentum)
            turned += 1
    assert moved and turned


def test_partial_refresh_keeps_the_momentum_distribution():
    r = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (50000, 2))) * np.array([2.0, 0.5])  # M = diag(4, 1/4)
    noise = jax.random.normal(jax.random.PRNGKey(1), r.shape)
    out = np.asarray(partial_refresh(noise, jnp.asarray(r), jnp.array([0.25, 4.0]), 0.3))
    np.testing.assert_allclose(out.std(0), [2.0, 0.5], rtol=0.02)
    np.testing.assert_allclose(np.corrcoef(r[:, 0], out[:, 0])[0, 1], np.sqrt(0.7), atol=0.01)


def test_stage_step_schedules():
    assert [float(stage_step(0.8, 1, k, 4.0, False)[0]) for k in range(3)] == [0.8, 0.2, 0.05]
    assert [int(stage_step(0.8, 1, k, 4.0, False)[1]) for k in range(3)] == [1, 1, 1]
    for k in range(3):
        eps, n = stage_step(0.8, 2, k, 4.0, True)
        assert int(n) == 2 * 4**k and np.isclose(float(eps) * int(n), 1.6)


def test_nan_region_is_rejected_and_counted():
    def truncated(x):  # N(0, 1) restricted to x < 1.5, NaN beyond
        return jnp.where(x[0] < 1.5, -0.5 * x[0] ** 2, jnp.nan)

    # fixed step size: sampling steps step_size_factor x the step size warmup ends with
    kernel = DRGHMC(potential_fn=lambda x: -truncated(x), max_proposals=2, step_size=0.6, adapt_step_size=False)
    mcmc = run(kernel, num_warmup=300, num_samples=4000, num_chains=2, seed=1, init_params=jnp.zeros((2, 1)))
    np.testing.assert_allclose(np.asarray(mcmc.get_extra_fields()["adapt_state.step_size"]), 1.2)
    x = np.asarray(mcmc.get_samples(group_by_chain=True))[..., 0]
    assert np.isfinite(x).all() and x.max() < 1.5
    exact = stats.truncnorm(-np.inf, 1.5)
    assert_mean(x, exact.mean(), exact.std(), "x")
    assert_ks(x, exact.cdf, "x")
    assert int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum()) > 0


def test_infinite_and_nan_densities_are_rejected_from_exact_draws():
    """N(0, 1) on (-1.5, 1.5) written as +inf above and NaN below: both are zero density, never accepted.

    Exact draws in, five transitions at a step size that often leaves the support, exact draws out; the
    failed tries are counted as divergences (when every tried stage failed).
    """

    def logdensity(x):
        inside = -0.5 * jnp.sum(x**2)
        return jnp.where(x[0] > 1.5, jnp.inf, jnp.where(x[0] < -1.5, jnp.nan, inside))

    n = 20000
    exact = stats.truncnorm(-1.5, 1.5)
    start = exact.rvs(size=(n, 1), random_state=np.random.default_rng(0))
    step = build_kernel(max_proposals=2, damping=0.5)

    def chain(x, key):
        init_key, key = jax.random.split(key)

        def one(state, key):
            state, info = step(key, state, logdensity, 1.5, jnp.ones(1))
            return state, info.is_divergent

        state, divergent = jax.lax.scan(one, init(x, logdensity, init_key), jax.random.split(key, 5))
        return state.position[0], divergent.sum()

    x, divergent = map(
        np.asarray, jax.jit(jax.vmap(chain))(jnp.asarray(start), jax.random.split(jax.random.PRNGKey(1), n))
    )
    assert np.isfinite(x).all() and np.abs(x).max() < 1.5
    assert stats.kstest(x, exact.cdf).pvalue > 1e-3
    assert abs(x.var() - exact.var()) / (exact.var() * np.sqrt((exact.moment(4) / exact.var() ** 2 - 1) / n)) < 4
    assert divergent.sum() > 0.05 * n


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(step_size=0.0), "step_size"),
        (dict(step_size_factor=-1.0), "step_size_factor"),
        (dict(num_steps=0), "num_steps"),
        (dict(max_proposals=0), "max_proposals"),
        (dict(reduction_factor=1), "reduction_factor"),
        (dict(damping=0.0), "damping"),
        (dict(damping=1.5), "damping"),
        (dict(probabilistic=1), "probabilistic"),
        (dict(constant_trajectory="yes"), "constant_trajectory"),
        (dict(target_accept_prob=1.0), "target_accept_prob"),
        (dict(max_delta_energy=0.0), "max_delta_energy"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        DRGHMC(varied_gaussian, **kwargs)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="exactly one"):
        DRGHMC()
    with pytest.raises(ValueError, match="damping"):
        build_kernel(damping=0.0)
    with pytest.raises(TypeError, match="inverse_mass_matrix must be an array"):
        DRGHMC(varied_gaussian, inverse_mass_matrix="diag")
    kernel = DRGHMC(potential_fn=lambda x: jnp.sum(x**2), inverse_mass_matrix=jnp.ones(2))
    with pytest.raises(ValueError, match=r"inverse_mass_matrix must have shape \(3,\) or \(3, 3\)"):
        kernel.init(jax.random.PRNGKey(0), 10, jnp.zeros(3), (), {})
    with pytest.raises(ValueError, match="init_params"):
        run(DRGHMC(potential_fn=lambda x: jnp.sum(x**2)), num_warmup=10, num_samples=10, num_chains=1)

    def discrete():
        numpyro.sample("k", dist.Poisson(3.0))

    with pytest.raises(ValueError, match="'k'"):
        run(DRGHMC(discrete), num_warmup=10, num_samples=10, num_chains=1)
