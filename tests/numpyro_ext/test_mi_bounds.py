"""Critic-based MI bounds (numpyro_ext.infer.mi_bounds) against the exact MI of correlated Gaussians.

``z ~ N(0, I_d)``, ``x = rho z + sqrt(1 - rho^2) eps``: ``I = -d/2 log(1 - rho^2)``, the optimal
critic is the log density ratio ``log p(x|z)/p(x)`` and the posterior ``p(z|x) = N(rho x, (1 - rho^2) I)``,
all in closed form.  Tolerances: ``Z`` Monte Carlo standard errors (one-sided for bounds), with
``Z = 3`` (a correct bound fails with probability ~1e-3 per check); equalities use ``Z = 4``.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest

from adapters.mi import correlated_gaussian_mi
from numpyro_ext.infer import mi_bounds as mb

Z_BOUND = 3.0
Z_EQUAL = 4.0


def joint_sampler(rho: float, dim: int):
    @functools.partial(jax.jit, static_argnums=1)
    def sample(rng_key, n):
        z, noise = jax.random.normal(rng_key, (2, n, dim))  # one draw site: less to compile
        return rho * z + math.sqrt(1.0 - rho**2) * noise, z

    return sample


def optimal_critic(rho: float, shift: float = 0.0):
    """``log p(x|z) - log p(x) + shift`` (broadcasting like the library's critics; ``params`` unused)."""
    var = 1.0 - rho**2

    def critic(params, x, z):
        return jnp.sum(-0.5 * math.log(var) - (x - rho * z) ** 2 / (2 * var) + 0.5 * x**2, axis=-1) + shift

    return critic


def zero_critic(params, x, z):
    return jnp.zeros(jnp.broadcast_shapes(x.shape[:-1], z.shape[:-1]))


def posterior_log_prob(rho, x, z):
    var = 1.0 - rho**2
    return jnp.sum(-0.5 * (z - rho * x) ** 2 / var - 0.5 * math.log(2 * math.pi * var), axis=-1)


def prior_of(dim):
    return dist.Normal(jnp.zeros(dim), 1.0).to_event(1)


@functools.partial(jax.jit, static_argnums=(0, 3))
def grouped_scores(critic, x, z, k):
    xs, zs = x.reshape(-1, k, x.shape[-1]), z.reshape(-1, k, z.shape[-1])
    return jax.vmap(lambda a, b: mb.score_matrix(critic, None, a, b))(xs, zs)


def assert_below(estimate, truth, label, z=Z_BOUND):
    assert estimate.value <= truth + z * estimate.stderr, f"{label}: {estimate} exceeds the true MI {truth:.4f}"


def assert_equal(estimate, truth, label, z=Z_EQUAL):
    assert abs(estimate.value - truth) <= z * estimate.stderr, f"{label}: {estimate} vs the true MI {truth:.4f}"


# ---------------------------------------------------------------------------------------
# The optimal critic and the exact posterior (no training)
# ---------------------------------------------------------------------------------------
RHO, DIM = 0.8, 2
TRUE_MI = correlated_gaussian_mi(RHO, DIM)  # 1.0217


@pytest.fixture(scope="module")
def joint():
    return joint_sampler(RHO, DIM)(jax.random.PRNGKey(0), 64 * 128)


def test_infonce_with_the_optimal_critic(joint):
    x, z = joint
    critic = optimal_critic(RHO)
    small = mb.infonce(grouped_scores(critic, x, z, 2))
    large = mb.infonce(grouped_scores(critic, x, z, 128))
    assert small.kind == large.kind == "lower" and large.num_samples == 64
    for k, estimate in ((2, small), (128, large)):
        assert estimate.value <= math.log(k)
        assert_below(estimate, TRUE_MI, f"InfoNCE K={k}")
    # for the optimal critic the InfoNCE bound is nondecreasing in K (its gap is an IWAE-type gap)
    assert small.value <= large.value + Z_BOUND * math.hypot(small.stderr, large.stderr)
    # InfoNCE is invariant to critic terms c(x)
    shifted = mb.infonce(grouped_scores(optimal_critic(RHO, shift=5.0), x, z, 128))
    assert shifted.value == pytest.approx(large.value, abs=1e-10)


def test_infonce_never_exceeds_log_k():
    # adversarial scores: a huge positive diagonal drives every term to log K from below
    scores = np.random.default_rng(1).normal(size=(4, 16, 16)) + 1e3 * np.eye(16)
    terms = mb.infonce_terms(scores)
    assert float(jnp.max(terms)) <= math.log(16)
    assert mb.infonce(scores).value <= math.log(16)


def test_nwj_and_dv_with_the_optimal_critic_are_unbiased(joint):
    x, z = joint
    scores = grouped_scores(optimal_critic(RHO), x, z, 128)
    # NWJ is tight at T = 1 + log r and its estimate is unbiased
    nwj = mb.nwj(scores + 1.0)
    assert nwj.kind == "lower"
    assert_equal(nwj, TRUE_MI, "NWJ(1 + log r)")
    # at T = log r it loses exactly 1/e: E_p T - e^{-1} E_{p(x)p(z)} e^T = I - 1/e
    assert_equal(mb.nwj(scores), TRUE_MI - math.exp(-1.0), "NWJ(log r)")
    # DV is tight at T = log r + c for any constant c; the plug-in bias is O(1 / (K (K - 1))) here
    dv = mb.mine_dv(scores + 3.0)
    assert dv.kind == "estimate"
    assert_equal(dv, TRUE_MI, "DV(log r + 3)")
    single = mb.mine_dv(scores[0])  # one matrix: delta-method stderr
    assert_equal(single, TRUE_MI, "DV one matrix")
    assert single.num_samples == 128


@functools.partial(jax.jit, static_argnums=3)
def exact_giwae_inputs(rng_key, x, z, k):
    """log q, log p and (K, N) scores for q = p(z|x) with T = 0 and T = T*, and for q = p(z) with T = T*."""
    n = x.shape[0]
    log_post, log_prior = posterior_log_prob(RHO, x, z), prior_of(DIM).log_prob(z)
    noise = jax.random.normal(rng_key, (2, k - 1, n, DIM))
    post_zs = jnp.concatenate([z[None], RHO * x + math.sqrt(1 - RHO**2) * noise[0]])
    prior_zs = jnp.concatenate([z[None], noise[1]])
    critic = optimal_critic(RHO)
    return (
        log_post,
        log_prior,
        zero_critic(None, x[None], post_zs),
        critic(None, x[None], post_zs),
        critic(None, x[None], prior_zs),
    )


def test_barber_agakov_and_giwae_with_exact_densities(joint):
    x, z = joint
    k = 16
    log_post, log_prior, zero_post, optimal_post, optimal_prior = exact_giwae_inputs(jax.random.PRNGKey(3), x, z, k)
    # BA with q = p(z|x) is tight and unbiased; with the entropy H(z) given instead of log p(z) too
    ba = mb.barber_agakov(log_post, log_prior)
    assert_equal(ba, TRUE_MI, "BA(q = posterior)")
    entropy = 0.5 * DIM * math.log(2 * math.pi * math.e)
    assert_equal(mb.barber_agakov(log_post, entropy=entropy), TRUE_MI, "BA(q = posterior, H(z))")
    # GIWAE with T = 0 is BA exactly (the contrastive term is log K - log K)
    assert mb.giwae(log_post, log_prior, zero_post).value == pytest.approx(ba.value, abs=1e-12)
    # GIWAE with q = p(z|x) and the optimal critic: the contrastive term has E <= 0 (exchangeable draws)
    assert_below(mb.giwae(log_post, log_prior, optimal_post), TRUE_MI, "GIWAE(q = posterior, T*)")
    # GIWAE with q = p(z) is InfoNCE with prior negatives: <= log K per sample, <= I, ~ InfoNCE with K
    giwae_prior = mb.giwae(log_prior, log_prior, optimal_prior)
    assert float(jnp.max(mb.giwae_terms(log_prior, log_prior, optimal_prior))) <= math.log(k)
    assert_below(giwae_prior, TRUE_MI, "GIWAE(q = prior, T*)")
    infonce = mb.infonce(grouped_scores(optimal_critic(RHO), x, z, k))
    assert abs(giwae_prior.value - infonce.value) <= Z_EQUAL * math.hypot(giwae_prior.stderr, infonce.stderr)


def test_mine_ais_with_the_optimal_critic_is_tight_from_below(joint):
    x, z = joint[0][:256], joint[1][:256]
    # T* = log r has Z_T(x) = 1, so each term minus the pointwise MI is -log (1/K) sum_k w_k,
    # whose mean is <= 0 (E mean w = 1) and -> 0 as AIS becomes exact: a low-variance check
    estimate, details = mb.mine_ais(
        jax.random.PRNGKey(5),
        optimal_critic(RHO),
        None,
        x,
        z,
        prior_of(DIM),
        num_chains=4,
        num_steps=50,
        step_size=0.3,
        num_leapfrog=5,
        adapt_step_size=False,
        return_details=True,
    )
    assert estimate.kind == "lower" and estimate.num_samples == 256
    assert details["log_weights"].shape == (256, 4)
    assert_below(estimate, TRUE_MI, "MINE-AIS(T*)")
    gap = mb.BoundEstimate.from_samples(
        details["per_sample"] - np.asarray(optimal_critic(RHO)(None, x, z)), "lower", "gap"
    )
    assert gap.value <= Z_BOUND * gap.stderr
    # 50 annealing steps leave an AIS gap of ~0.01 nats here; allow 0.05 plus the MC error
    assert gap.value >= -0.05 - Z_BOUND * gap.stderr, f"AIS with 50 steps should be within 0.05 nats: {gap}"
    assert 0.5 < float(details["acceptance_rate"].mean()) <= 1.0


# ---------------------------------------------------------------------------------------
# Trained critics
# ---------------------------------------------------------------------------------------
def test_giwae_dominates_barber_agakov_and_infonce():
    """The paper's setting: BA and GIWAE share the proposal family, InfoNCE and GIWAE the critic family and K.

    The proposal family is deliberately weak (unit scale, affine mean), so BA cannot reach I
    (its optimum is d rho^2 / 2 = 1.215) and InfoNCE is capped at log 8 = 2.08 < I = 2.49; GIWAE
    must beat both, and it is <= BA(q) + log K sample by sample for its own q.
    """
    rho, dim, k = 0.9, 3, 8
    truth = correlated_gaussian_mi(rho, dim)
    sample, prior = joint_sampler(rho, dim), prior_of(dim)
    proposal = mb.GaussianProposal(dim, dim, hidden=(), fixed_scale=1.0)
    critic = mb.ConcatCritic(dim, dim, hidden=(32, 32))
    x, z = sample(jax.random.PRNGKey(10), 4096)
    estimators = {
        "BA": mb.BarberAgakov(proposal, prior),
        "InfoNCE": mb.InfoNCE(critic, num_samples=k),
        "GIWAE": mb.GIWAE(proposal, critic, prior, num_samples=k),
    }
    init = {name: est.init(jax.random.PRNGKey(12)) for name, est in estimators.items()}
    # trained side by side on the same batches, in one compiled program
    fit = mb.fit_critic(jax.random.PRNGKey(11), estimators, init, sample, 600, 128, optax.adam(3e-3))
    results = {}
    for name, estimator in estimators.items():
        assert fit.losses[name].shape == (600,) and np.all(np.isfinite(fit.losses[name]))
        results[name] = (estimator.estimate(fit.params[name], jax.random.PRNGKey(13), x, z), fit.params[name])
    ba, nce, giwae = (results[name][0] for name in ("BA", "InfoNCE", "GIWAE"))
    for estimate in (ba, nce, giwae):
        assert_below(estimate, truth, estimate.estimator)
    assert nce.value <= math.log(k)
    assert ba.value == pytest.approx(dim * rho**2 / 2, abs=Z_EQUAL * ba.stderr + 0.02)
    for other in (ba, nce):
        assert giwae.value >= other.value - Z_BOUND * math.hypot(giwae.stderr, other.stderr), (giwae, other)
    assert giwae.value > max(ba.value, nce.value) + 0.3  # a real gain, not a tie (measured: 2.24 vs 1.56)
    log_q, log_p, scores = jax.jit(estimators["GIWAE"].parts)(results["GIWAE"][1], jax.random.PRNGKey(14), x, z)
    assert bool(jnp.all(mb.giwae_terms(log_q, log_p, scores) <= log_q - log_p + math.log(k) + 1e-12))


@pytest.mark.slow
def test_trained_bounds_are_close_to_the_truth():
    """InfoNCE, NWJ and GIWAE trained on a low-MI problem (I = 0.288 nats) land within 0.05 nats of I.

    0.05 nats is the budget for the fit (600 Adam steps) and the bounds' own gaps at these K (for
    the optimal critic the InfoNCE gap at K = 128 is ~0.002 nats here); on top, 3 MC stderr.
    """
    rho, dim = 0.5, 2
    truth = correlated_gaussian_mi(rho, dim)
    sample, prior = joint_sampler(rho, dim), prior_of(dim)
    critic = mb.SeparableCritic(dim, dim, embed_dim=8, hidden=(32,))
    x, z = sample(jax.random.PRNGKey(20), 8192)
    for estimator in (
        mb.InfoNCE(critic, num_samples=128),
        mb.NWJ(critic, num_samples=128),
        mb.GIWAE(mb.GaussianProposal(dim, dim, hidden=(16,)), mb.ConcatCritic(dim, dim, (16,)), prior, 16),
    ):
        fit = mb.fit_critic(
            jax.random.PRNGKey(21),
            estimator,
            estimator.init(jax.random.PRNGKey(22)),
            sample,
            600,
            128,
            optax.adam(3e-3),
        )
        estimate = estimator.estimate(fit.params, jax.random.PRNGKey(23), x, z)
        assert_below(estimate, truth, estimate.estimator)
        assert estimate.value >= truth - 0.05 - Z_BOUND * estimate.stderr, (estimate, truth)


@pytest.mark.slow
def test_mine_ais_trained_is_below_the_truth_and_above_mine_dv():
    """MINE-AIS's critic trained with HMC negatives; evaluated with Multi-Sample AIS (K = 8, T = 50, N = 2048).

    For its own critic MINE-AIS >= DV (I_EB >= I_DV by Jensen, and AIS is near exact here); it is
    also >= the DV value of a critic trained for DV itself, within MC error.
    """
    rho, dim = 0.8, 2
    truth = correlated_gaussian_mi(rho, dim)
    sample, prior = joint_sampler(rho, dim), prior_of(dim)
    critic = mb.ConcatCritic(dim, dim, hidden=(32,))
    mine_ais = mb.MINEAIS(critic, prior, num_mcmc_steps=10, step_size=0.2, num_leapfrog=5)
    mine_dv = mb.MINEDV(critic, num_samples=128)
    fits = {}
    for name, estimator in (("ais", mine_ais), ("dv", mine_dv)):
        fits[name] = mb.fit_critic(
            jax.random.PRNGKey(30),
            estimator,
            estimator.init(jax.random.PRNGKey(31)),
            sample,
            600,
            128,
            optax.adam(3e-3),
        )
    x, z = sample(jax.random.PRNGKey(32), 2048)
    ais_value = mine_ais.estimate(fits["ais"].params, jax.random.PRNGKey(33), x, z, num_chains=8, num_steps=50)
    assert_below(ais_value, truth, "MINE-AIS")
    xd, zd = sample(jax.random.PRNGKey(34), 32 * 128)
    dv_same = mb.mine_dv(grouped_scores(lambda p, a, b: critic(fits["ais"].params, a, b), xd, zd, 128))
    dv_own = mine_dv.estimate(fits["dv"].params, jax.random.PRNGKey(35), xd, zd)
    assert ais_value.value >= dv_same.value - Z_BOUND * math.hypot(ais_value.stderr, dv_same.stderr)
    assert ais_value.value >= dv_own.value - Z_BOUND * math.hypot(ais_value.stderr, dv_own.stderr)
    assert ais_value.value >= truth - 0.1 - Z_BOUND * ais_value.stderr


@pytest.mark.slow
def test_mine_ais_with_one_step_saturates_at_log_k(joint):
    x, z = joint[0][:256], joint[1][:256]
    estimate, details = mb.mine_ais(
        jax.random.PRNGKey(6),
        optimal_critic(RHO),
        None,
        x,
        z,
        prior_of(DIM),
        num_chains=4,
        num_steps=1,
        adapt_step_size=False,
        return_details=True,
    )
    assert float(np.max(details["per_sample"])) <= math.log(4) + 1e-12
    assert_below(estimate, TRUE_MI, "MINE-AIS T=1")


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------
def test_bad_input_names_the_argument():
    prior = prior_of(2)
    critic = mb.ConcatCritic(2, 2, hidden=(4,))
    with pytest.raises(ValueError, match="scores must be a square"):
        mb.infonce(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="scores must have K >= 1"):
        mb.infonce(np.zeros((0, 0)))
    with pytest.raises(ValueError, match="scores must have K >= 2"):
        mb.nwj(np.zeros((1, 1)))
    with pytest.raises(ValueError, match="scores must be finite"):
        mb.mine_dv(np.array([[0.0, np.inf], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="scores must be finite"):
        mb.infonce(np.array([[0.0, np.nan], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        mb.GIWAE(mb.GaussianProposal(2, 2), critic, prior, num_samples=0)
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        mb.InfoNCE(critic, num_samples=0)
    with pytest.raises(ValueError, match="num_chains must be a positive integer"):
        mb.mine_ais(jax.random.PRNGKey(0), critic, None, np.zeros((4, 2)), np.zeros((4, 2)), prior, num_chains=0)
    estimator = mb.InfoNCE(critic, num_samples=2)
    params = estimator.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="x and z must hold the same number"):
        estimator.estimate(params, jax.random.PRNGKey(0), np.zeros((4, 2)), np.zeros((6, 2)))
    with pytest.raises(ValueError, match="x must have last axis of length x_dim = 2"):
        estimator.estimate(params, jax.random.PRNGKey(0), np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="groups of num_samples = 2"):
        estimator.estimate(params, jax.random.PRNGKey(0), np.zeros((5, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="x must be finite"):
        estimator.estimate(params, jax.random.PRNGKey(0), np.full((4, 2), np.nan), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="log_prior must have the shape of log_q"):
        mb.barber_agakov(np.zeros(4), np.zeros(5))
    with pytest.raises(ValueError, match="exactly one of log_prior"):
        mb.barber_agakov(np.zeros(4))
    with pytest.raises(ValueError, match=r"scores must have shape \(K, N\)"):
        mb.giwae(np.zeros(4), np.zeros(4), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="prior must have event_shape"):
        mb.BarberAgakov(mb.GaussianProposal(2, 2), dist.Normal(0.0, 1.0))
    with pytest.raises(ValueError, match="sample_joint must return x"):
        mb.fit_critic(
            jax.random.PRNGKey(0), estimator, params, lambda k, n: (np.zeros((n + 1, 2)), np.zeros((n, 2))), 2, 4
        )


def test_float32_inputs_stay_float32():
    scores = jnp.zeros((8, 8), jnp.float32)
    assert mb.infonce_terms(scores).dtype == jnp.float32
    assert mb.nwj_terms(scores).dtype == jnp.float32
    assert mb.infonce(scores).value == pytest.approx(0.0, abs=1e-6)
