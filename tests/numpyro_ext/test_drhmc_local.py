"""DR-HMC with ATLAS's local step size (``local_step_size=True``, NumPyro backend) against exact answers.

The delayed stages step ``a / c^(k-1)`` with ``a`` drawn from a log-normal law whose mean reads the
curvature that the first stage's trajectory met (Modi 2024).  A float64 NumPy twin of the recursion,
written from the equations (the chain and every ghost path share ``a``; each stage ``k >= 1`` carries
``q(a | y_k) / q(a | start)``), checks detailed balance of every stage exactly for given ``a``, and,
fed the sampler's own random numbers, the sampler's transitions draw by draw.  Exact funnel draws must
stay exact under the kernel, and a model run must recover a Gaussian of scales 0.01 ... 10.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC
from scipy import stats

from numpyro_ext.infer import DRHMC, drghmc
from numpyro_ext.infer.drhmc import build_kernel, init
from numpyro_ext.infer.drhmc.core import (
    LOCAL_STEP_CAP,
    LOCAL_STEP_FLOOR,
    LOCAL_STEP_FRACTION,
    LOCAL_STEP_LOG_SD,
)
from numpyro_ext.models import test_problems
from tests.mc_checks import assert_mean, assert_variance
from tests.numpyro_ext.test_drghmc import Twin as DRGHMCTwin


def funnel_logdensity(z):
    v, x = z[0], z[1:]
    return -(v**2) / 18.0 - 0.5 * jnp.sum(x**2) * jnp.exp(-v) - 0.5 * x.size * v


class Twin:
    """DR-HMC with the local step size in float64 NumPy, on the funnel, diagonal inverse mass ``imm``."""

    def __init__(self, imm, eps, num_steps, reduction, max_proposals, probabilistic):
        self.imm, self.eps, self.num_steps, self.c = np.asarray(imm, float), eps, num_steps, reduction
        self.k_max, self.weight = max_proposals, 2.0 if probabilistic else 1.0
        self.probabilistic = probabilistic
        self.grads = 0

    value_grad = DRGHMCTwin.value_grad  # the funnel's log density and gradient, counting calls in self.grads

    def leapfrog(self, point, eps, n):
        x, r, logp, g = (np.array(a, dtype=float) for a in point)
        curvature, measuring = 0.0, True
        energy_start = 0.5 * np.sum(r * self.imm * r) - logp
        with np.errstate(all="ignore"):
            for _ in range(n):
                r = r + 0.5 * eps * g
                x = x + eps * self.imm * r
                logp, g_new = self.value_grad(x)
                dg = g_new - g
                ratio = np.sqrt(np.sum(dg * self.imm * dg) / (eps**2 * np.sum(r * self.imm * r)))
                g = g_new
                r = r + 0.5 * eps * g
                # the curvature is measured until the energy error first exceeds 10 (ATLAS's divergence)
                measuring = measuring and abs(0.5 * np.sum(r * self.imm * r) - logp - energy_start) <= 10.0
                if measuring and not np.isnan(ratio):
                    curvature = max(curvature, ratio)
        return (x, -r, logp, g), curvature

    def proposal(self, point, k, a):
        """Stage k's proposal and, for stage 0, the curvature its trajectory met."""
        if k == 0:
            return self.leapfrog(point, self.eps, self.num_steps)
        length = self.eps * self.num_steps
        n = int(np.ceil(length / (a / self.c ** (k - 1)) - 1e-6))
        return self.leapfrog(point, length / n, n)[0], None

    def log_q(self, a, curvature):
        """log density of the local step ``a`` given stage 0's curvature (ATLAS's log-normal)."""
        loc = np.log(self.mean_step(curvature)) - 0.5 * LOCAL_STEP_LOG_SD**2
        return stats.norm(loc, LOCAL_STEP_LOG_SD).logpdf(np.log(a)) - np.log(a)

    def transition(self, point, noise, aux_noise, log_u_accept, log_u_retry):
        """One DR-HMC transition with given random numbers: momentum, local step, stages."""
        x, _, logp, g = point
        start = (x, noise / np.sqrt(self.imm), logp, g)
        first, curvature = self.proposal(start, 0, None)
        loc = np.log(self.mean_step(curvature)) - 0.5 * LOCAL_STEP_LOG_SD**2
        a = np.exp(loc + LOCAL_STEP_LOG_SD * aux_noise)
        cur_logp, cur_hastings = self.log_joint(start), 0.0
        for k in range(self.k_max):
            prop = first if k == 0 else self.proposal(start, k, a)[0]
            log_alpha = self.log_accept(prop, k, a, cur_hastings, cur_logp, curvature)
            if log_u_accept[k] < log_alpha:
                return prop, k
            with np.errstate(divide="ignore"):
                log_reject = np.log1p(-np.exp(log_alpha))
            cur_hastings += log_reject
            if not log_u_retry[k] < (log_reject if self.probabilistic else 0.0):
                break
        return start, -1

    def mean_step(self, curvature):
        if curvature > 0:
            return np.clip(
                LOCAL_STEP_FRACTION / np.sqrt(curvature), LOCAL_STEP_FLOOR * self.eps, LOCAL_STEP_CAP * self.eps
            )
        return self.eps / self.c

    def log_joint(self, point):
        x, r, logp, _ = point
        value = logp - 0.5 * np.sum(r * self.imm * r)
        return value if np.isfinite(value) and np.all(np.isfinite(x)) else -np.inf

    def log_accept(self, prop, k, a, cur_hastings, cur_logp, cur_curvature):
        """log alpha_k of moving to ``prop`` given the start's rejection history and stage-0 curvature."""
        prop_logp, prop_hastings, prop_curvature = self.log_joint(prop), 0.0, None
        with np.errstate(all="ignore"):
            for i in range(k):
                ghost, curvature = self.proposal(prop, i, a)
                if i == 0:
                    prop_curvature = curvature
                log_a = self.log_accept(ghost, i, a, prop_hastings, prop_logp, prop_curvature)
                prop_hastings += np.log1p(-np.exp(log_a))
            frac = (prop_logp - cur_logp) + self.weight * (prop_hastings - cur_hastings)
            if k > 0:
                frac += self.log_q(a, prop_curvature) - self.log_q(a, cur_curvature)
        return -np.inf if np.isnan(frac) else min(0.0, frac)

    def stage_probabilities(self, point, a):
        """P(the DR step from ``point`` with local step ``a`` accepts stage k) and the proposals y_k."""
        cur_logp, cur_hastings, reach, probs, proposals = self.log_joint(point), 0.0, 1.0, [], []
        cur_curvature = None
        for k in range(self.k_max):
            prop, curvature = self.proposal(point, k, a)
            if k == 0:
                cur_curvature = curvature
            alpha = np.exp(self.log_accept(prop, k, a, cur_hastings, cur_logp, cur_curvature))
            probs.append(reach * alpha)
            proposals.append(prop)
            reach *= (1 - alpha) * ((1 - alpha) if self.probabilistic else 1.0)
            cur_hastings += np.log1p(-alpha) if alpha < 1 else -np.inf
        return np.array(probs), proposals, cur_curvature


def funnel_point(twin, z, r):
    z = np.asarray(z, float)
    return (z, np.asarray(r, float), *twin.value_grad(z))


@pytest.mark.parametrize("probabilistic", [True, False])
def test_every_stage_satisfies_detailed_balance_exactly(probabilistic):
    """pi(z) q(a | z) P(accept stage k | z, a) = pi(y_k) q(a | y_k) P(accept stage k | y_k, a), y_k = F_{k,a}(z).

    For a given local step ``a`` the delayed-rejection kernel from ``z`` is discrete: it moves to ``y_k``
    with the probability of rejecting (and retrying) stages ``0..k-1`` and accepting stage ``k``; the
    density ``q(a | .)`` of drawing ``a`` enters for ``k >= 1``.  Exact in float64 on the 3-D funnel,
    with ``a`` drawn from the law at ``z`` (the moves that happen) and ``q`` read at both ends.
    """
    rng = np.random.default_rng(1)
    twin = Twin([1.0, 0.5, 2.0], 1.3, 3, 3.0, 3, probabilistic)
    tested = 0
    for _ in range(40):
        z = np.array([rng.normal(0, 3), *rng.normal(size=2)])
        z[1:] *= np.exp(z[0] / 2)
        point = funnel_point(twin, z, rng.normal(size=3) / np.sqrt(twin.imm))
        _, _, curvature = twin.stage_probabilities(point, 1.0)
        a = twin.mean_step(curvature) * np.exp(LOCAL_STEP_LOG_SD * rng.normal())
        forward, proposals, start_curvature = twin.stage_probabilities(point, a)
        for k, y in enumerate(proposals):
            if not twin.log_joint(y) - twin.log_joint(point) > -50:  # rounding breaks reversibility; both ~0
                continue
            back, returns, end_curvature = twin.stage_probabilities(y, a)
            np.testing.assert_allclose(returns[k][0], point[0], rtol=1e-7, atol=1e-9)  # an involution
            np.testing.assert_allclose(returns[k][1], point[1], rtol=1e-7, atol=1e-9)
            log_q = (twin.log_q(a, start_curvature), twin.log_q(a, end_curvature)) if k > 0 else (0.0, 0.0)
            flow_forward = np.exp(twin.log_joint(point) + log_q[0]) * forward[k]
            flow_back = np.exp(twin.log_joint(y) + log_q[1]) * back[k]
            np.testing.assert_allclose(flow_forward, flow_back, rtol=1e-7, atol=1e-300)
            tested += 1e-12 < forward[k] < 1 - 1e-12 and k > 0
    assert tested >= 15, f"only {tested} later-stage moves with probability strictly in (0, 1)"


@pytest.mark.parametrize("probabilistic", [True, pytest.param(False, marks=pytest.mark.slow)])  # slow: ~7 s more
def test_sampler_follows_the_twin_draw_by_draw(probabilistic):
    """The JAX kernel and the NumPy twin, fed the same normals and uniforms, move the same way.

    Positions, accepted stages and gradient counts (ghosts included) agree, each transition started from
    the kernel's state, for 120 transitions of the 3-D funnel at a step size where every stage is used.
    """
    imm, eps, num_steps = np.array([1.0, 0.5, 2.0]), 1.1, 3
    twin = Twin(imm, eps, num_steps, 3.0, 3, probabilistic)
    step = jax.jit(build_kernel(3, 3.0, probabilistic, local_step_size=True), static_argnums=(2,))
    state = init(jnp.array([-1.0, 0.3, -0.2]), funnel_logdensity)
    keys = jax.random.split(jax.random.PRNGKey(3), 120)

    @jax.jit
    @jax.vmap
    def random_numbers(key):  # derived as build_kernel and delayed_rejection derive them
        momentum_key, accept_key = jax.random.split(key)
        accept_keys, retry_keys, aux_key = jax.random.split(accept_key, 3)
        return (
            jax.random.normal(momentum_key, (3,), jnp.float64),
            jax.random.normal(aux_key, (), jnp.float64),
            jnp.log(jax.random.uniform(accept_keys, (3,), jnp.float64)),
            jnp.log(jax.random.uniform(retry_keys, (3,), jnp.float64)),
        )

    stages = []
    for key, *numbers in zip(keys, *map(np.asarray, random_numbers(keys)), strict=True):
        point = (np.asarray(state.position), None, float(state.logdensity), np.asarray(state.logdensity_grad))
        state, info = step(key, state, funnel_logdensity, eps, jnp.asarray(imm), num_steps)
        twin.grads = 0
        moved, stage = twin.transition(point, *numbers)
        assert int(info.stage) == stage
        assert int(info.num_grad_evals) == twin.grads
        np.testing.assert_allclose(np.asarray(state.position), moved[0], rtol=1e-9, atol=1e-10)
        stages.append(stage)
    assert set(stages) == {-1, 0, 1, 2}, np.bincount(np.array(stages) + 1)


@pytest.mark.parametrize("sampler", ["drhmc", "drghmc"])
def test_funnel_exact_draws_stay_exact(sampler):
    """Exact funnel draws in, two transitions each, exact draws out (v's and x's marginals, KS).

    ``eps = 1.2`` is too large for the neck (scale ``e^{v/2}``): the local step decides many moves, so a
    wrong density ratio of its draw would move v's marginal.  DR-G-HMC also carries the momentum.
    """
    n, num_transitions = 6000, 2
    draws = test_problems.exact_draws("funnel", 3, num_draws=n, seed=4)
    start = jnp.asarray(np.stack([draws["v"][0], draws["x[1]"][0], draws["x[2]"][0]], axis=1))
    imm = jnp.ones(3)
    if sampler == "drhmc":
        step = build_kernel(3, 4.0, True, local_step_size=True)
        make = lambda z, key: init(z, funnel_logdensity)  # noqa: E731
        move = lambda key, state: step(key, state, funnel_logdensity, 1.2, imm, 2)  # noqa: E731
    else:
        step = drghmc.build_kernel(3, 4.0, damping=0.5, local_step_size=True)
        make = lambda z, key: drghmc.init(z, funnel_logdensity, key)  # noqa: E731
        move = lambda key, state: step(key, state, funnel_logdensity, 1.2, imm, 2)  # noqa: E731

    def chain(z, key):
        init_key, key = jax.random.split(key)

        def one(state, key):
            state, info = move(key, state)
            return state, info.stage

        state, stages = jax.lax.scan(one, make(z, init_key), jax.random.split(key, num_transitions))
        return state, stages

    state, stages = jax.jit(jax.vmap(chain))(start, jax.random.split(jax.random.PRNGKey(5), n))
    stages = np.asarray(stages)
    assert (stages >= 1).mean() > 0.05, np.bincount(stages.ravel() + 1)
    z = np.asarray(state.position)
    v = z[:, 0]
    assert abs(v.mean()) / (3.0 / np.sqrt(n)) < 4
    assert abs(v.var() - 9.0) / (9.0 * np.sqrt(2.0 / n)) < 4
    assert stats.kstest(v, stats.norm(0, 3).cdf).pvalue > 1e-3
    assert stats.kstest((z[:, 1:] * np.exp(-v / 2)[:, None]).ravel(), "norm").pvalue > 1e-3  # N(0, 1) given v
    if sampler == "drghmc":
        assert stats.kstest(np.asarray(state.momentum).ravel(), "norm").pvalue > 1e-3


SCALES = np.array([0.01, 0.1, 1.0, 10.0])


def varied_gaussian():
    numpyro.sample("x", dist.Normal(0.0, jnp.asarray(SCALES)).to_event(1))


def test_model_of_varied_scales_with_unit_metric():
    """A unit metric on scales 0.01 ... 10 with a first-stage step (0.03) unstable for the 0.01 scale:
    the local step moves most iterations; means and variances within MC error (ESS-based)."""
    fixed = dict(step_size=0.03, adapt_step_size=False, adapt_mass_matrix=False, trajectory_length=1.0)
    kernel = DRHMC(varied_gaussian, local_step_size=True, **fixed)
    mcmc = MCMC(kernel, num_warmup=200, num_samples=1500, num_chains=4, chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), extra_fields=("stage",))
    x = np.asarray(mcmc.get_samples(group_by_chain=True)["x"])
    stages = np.asarray(mcmc.get_extra_fields()["stage"])
    assert (stages >= 1).mean() > 0.5, np.bincount(stages + 1)
    for i, scale in enumerate(SCALES):
        assert_mean(x[..., i], 0.0, scale, f"x[{i}]")
        assert_variance(x[..., i], 0.0, scale**2, 0.0, f"x[{i}]")
