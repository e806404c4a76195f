"""Critic-based MI bounds in torch (pyro_ext.infer.mi_bounds) against the exact MI of correlated Gaussians.

``z ~ N(0, I_d)``, ``x = rho z + sqrt(1 - rho^2) eps``: ``I = -d/2 log(1 - rho^2)``, the optimal
critic is the log density ratio ``log p(x|z)/p(x)`` and the posterior ``p(z|x) = N(rho x, (1 - rho^2) I)``,
all in closed form.  Tolerances: ``Z`` Monte Carlo standard errors (one-sided for bounds), with
``Z = 3`` (a correct bound fails with probability ~1e-3 per check); equalities use ``Z = 4``.
NumPyro-Pyro agreement: the same inputs give the same terms and estimates to float64 rounding.
"""

import functools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the pyro extra is not installed")
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402

from adapters.mi import BoundEstimate, correlated_gaussian_mi  # noqa: E402
from pyro_ext.infer import mi_bounds as mb  # noqa: E402

Z_BOUND = 3.0
Z_EQUAL = 4.0


def joint_sampler(rho: float, dim: int):
    def sample(n):
        z = torch.randn(n, dim)
        return rho * z + math.sqrt(1.0 - rho**2) * torch.randn(n, dim), z

    return sample


def optimal_critic(rho: float, shift: float = 0.0):
    """``log p(x|z) - log p(x) + shift``, broadcasting like the library's critics."""
    var = 1.0 - rho**2

    def critic(x, z):
        return torch.sum(-0.5 * math.log(var) - (x - rho * z) ** 2 / (2 * var) + 0.5 * x**2, dim=-1) + shift

    return critic


def posterior_log_prob(rho, x, z):
    var = 1.0 - rho**2
    return torch.sum(-0.5 * (z - rho * x) ** 2 / var - 0.5 * math.log(2 * math.pi * var), dim=-1)


def prior_of(dim):
    return dist.Normal(torch.zeros(dim), 1.0).to_event(1)


def grouped_scores(critic, x, z, k):
    return mb.score_matrix(critic, x.reshape(-1, k, x.shape[-1]), z.reshape(-1, k, z.shape[-1]))


def adam(lr):
    return functools.partial(torch.optim.Adam, lr=lr)


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
    pyro.set_rng_seed(0)
    return joint_sampler(RHO, DIM)(64 * 128)


def test_infonce_with_the_optimal_critic(joint):
    x, z = joint
    critic = optimal_critic(RHO)
    small = mb.infonce(grouped_scores(critic, x, z, 2))
    large = mb.infonce(grouped_scores(critic, x, z, 128))
    assert small.kind == large.kind == "lower" and large.num_samples == 64
    for k, estimate in ((2, small), (128, large)):
        assert estimate.value <= math.log(k)
        assert_below(estimate, TRUE_MI, f"InfoNCE K={k}")
    # for the optimal critic the InfoNCE bound is nondecreasing in K
    assert small.value <= large.value + Z_BOUND * math.hypot(small.stderr, large.stderr)
    # a tight bound at K = 128 >> e^I: within 0.05 nats (measured gap 0.02) plus the MC error
    assert large.value >= TRUE_MI - 0.05 - Z_BOUND * large.stderr
    # InfoNCE is invariant to critic terms c(x)
    shifted = mb.infonce(grouped_scores(optimal_critic(RHO, shift=5.0), x, z, 128))
    assert shifted.value == pytest.approx(large.value, abs=1e-10)


def test_infonce_never_exceeds_log_k():
    # adversarial scores: a huge positive diagonal drives every term to log K from below
    scores = torch.as_tensor(np.random.default_rng(1).normal(size=(4, 16, 16))) + 1e3 * torch.eye(16)
    assert float(torch.max(mb.infonce_terms(scores))) <= math.log(16)
    assert mb.infonce(scores).value <= math.log(16)
    # and on random scores of every K
    for k in (1, 2, 5, 33):
        terms = mb.infonce_terms(torch.as_tensor(np.random.default_rng(k).normal(scale=10.0, size=(3, k, k))))
        assert float(torch.max(terms)) <= math.log(k)


def test_nwj_and_dv_with_the_optimal_critic_are_unbiased(joint):
    x, z = joint
    scores = grouped_scores(optimal_critic(RHO), x, z, 128)
    nwj = mb.nwj(scores + 1.0)  # tight at T = 1 + log r, unbiased
    assert nwj.kind == "lower"
    assert_equal(nwj, TRUE_MI, "NWJ(1 + log r)")
    # at T = log r it loses exactly 1/e
    assert_equal(mb.nwj(scores), TRUE_MI - math.exp(-1.0), "NWJ(log r)")
    dv = mb.mine_dv(scores + 3.0)  # tight at T = log r + c
    assert dv.kind == "estimate"
    assert_equal(dv, TRUE_MI, "DV(log r + 3)")
    single = mb.mine_dv(scores[0])  # one matrix: delta-method stderr
    assert_equal(single, TRUE_MI, "DV one matrix")
    assert single.num_samples == 128


def exact_giwae_inputs(x, z, k):
    """log q, log p and (K, N) scores for q = p(z|x) with T = 0 and T = T*, and for q = p(z) with T = T*."""
    n = x.shape[0]
    log_post, log_prior = posterior_log_prob(RHO, x, z), prior_of(DIM).log_prob(z)
    noise = torch.randn(2, k - 1, n, DIM)
    post_zs = torch.cat([z[None], RHO * x + math.sqrt(1 - RHO**2) * noise[0]])
    prior_zs = torch.cat([z[None], noise[1]])
    critic = optimal_critic(RHO)
    zero = torch.zeros(k, n)
    return log_post, log_prior, zero, critic(x[None], post_zs), critic(x[None], prior_zs)


def test_barber_agakov_and_giwae_with_exact_densities(joint):
    x, z = joint
    k = 16
    pyro.set_rng_seed(3)
    log_post, log_prior, zero_post, optimal_post, optimal_prior = exact_giwae_inputs(x, z, k)
    ba = mb.barber_agakov(log_post, log_prior)  # q = p(z|x): tight and unbiased
    assert_equal(ba, TRUE_MI, "BA(q = posterior)")
    entropy = 0.5 * DIM * math.log(2 * math.pi * math.e)
    assert_equal(mb.barber_agakov(log_post, entropy=entropy), TRUE_MI, "BA(q = posterior, H(z))")
    # GIWAE with T = 0 is BA exactly
    assert mb.giwae(log_post, log_prior, zero_post).value == pytest.approx(ba.value, abs=1e-12)
    assert_below(mb.giwae(log_post, log_prior, optimal_post), TRUE_MI, "GIWAE(q = posterior, T*)")
    # GIWAE with q = p(z) is InfoNCE with prior negatives: <= log K per sample, <= I, ~ InfoNCE with K
    giwae_prior = mb.giwae(log_prior, log_prior, optimal_prior)
    assert float(torch.max(mb.giwae_terms(log_prior, log_prior, optimal_prior))) <= math.log(k)
    assert_below(giwae_prior, TRUE_MI, "GIWAE(q = prior, T*)")
    infonce = mb.infonce(grouped_scores(optimal_critic(RHO), x, z, k))
    assert abs(giwae_prior.value - infonce.value) <= Z_EQUAL * math.hypot(giwae_prior.stderr, infonce.stderr)


def test_mine_ais_with_the_optimal_critic_is_tight_from_below(joint):
    x, z = joint[0][:256], joint[1][:256]
    pyro.set_rng_seed(5)
    # T* = log r has Z_T(x) = 1, so each term minus the pointwise MI is -log (1/K) sum_k w_k,
    # whose mean is <= 0 (E mean w = 1) and -> 0 as AIS becomes exact: a low-variance check
    estimate, details = mb.mine_ais(
        optimal_critic(RHO),
        x,
        z,
        prior_of(DIM),
        num_chains=4,
        num_steps=50,
        step_size=0.3,
        num_leapfrog=5,
        adapt_step_size=False,
        return_details=True,
        generator=torch.Generator().manual_seed(5),
    )
    assert estimate.kind == "lower" and estimate.num_samples == 256
    assert details["log_weights"].shape == (256, 4) and details["step_sizes"].shape == (50,)
    assert_below(estimate, TRUE_MI, "MINE-AIS(T*)")
    gap = BoundEstimate.from_samples(details["per_sample"] - optimal_critic(RHO)(x, z).numpy(), "lower", "gap")
    assert gap.value <= Z_BOUND * gap.stderr
    assert gap.value >= -0.05 - Z_BOUND * gap.stderr, f"AIS with 50 steps should be within 0.05 nats: {gap}"
    assert 0.5 < float(details["acceptance_rate"].mean()) <= 1.0


def test_mine_ais_pilot_and_one_step(joint):
    x, z = joint[0][:64], joint[1][:64]
    pyro.set_rng_seed(6)
    # the adaptive pilot moves the step sizes toward the target acceptance rate
    estimate, details = mb.mine_ais(
        optimal_critic(RHO), x, z, prior_of(DIM), num_chains=4, num_steps=20, num_leapfrog=3, return_details=True
    )
    assert_below(estimate, TRUE_MI, "MINE-AIS(T*, pilot)")
    assert np.all(details["step_sizes"] > 0.1) and 0.4 < float(details["acceptance_rate"].mean()) < 0.95
    # one annealing step is GIWAE with q = p(z): every term <= log K
    _, details = mb.mine_ais(
        optimal_critic(RHO), x, z, prior_of(DIM), num_chains=4, num_steps=1, adapt_step_size=False, return_details=True
    )
    assert float(np.max(details["per_sample"])) <= math.log(4) + 1e-12


# ---------------------------------------------------------------------------------------
# NumPyro-Pyro agreement on identical inputs
# ---------------------------------------------------------------------------------------
def test_terms_and_estimates_agree_with_numpyro(joint):
    jax = pytest.importorskip("jax", reason="the numpyro extra is not installed")
    import jax.numpy as jnp

    from numpyro_ext.infer import mi_bounds as nb

    x, z = joint
    critic = optimal_critic(RHO)
    scores = grouped_scores(critic, x, z, 128)  # (64, 128, 128), the optimal critic
    if jnp.zeros(()).dtype != jnp.float64:  # tests/conftest.py turns x64 on
        pytest.skip("float64 agreement needs JAX's x64 mode")
    js = jnp.asarray(scores.numpy())
    for name, shift in (("infonce_terms", 0.0), ("nwj_terms", 1.0), ("mine_dv_value", 3.0)):
        ours = getattr(mb, name)(scores + shift).numpy()
        theirs = np.asarray(getattr(nb, name)(js + shift))
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12, err_msg=name)
    for name, shift in (("infonce", 0.0), ("nwj", 1.0), ("mine_dv", 3.0)):
        for s_torch, s_jax in ((scores, js), (scores[0], js[0])):  # a batch and one matrix
            ours, theirs = getattr(mb, name)(s_torch + shift), getattr(nb, name)(s_jax + shift)
            assert (ours.kind, ours.estimator, ours.num_samples) == (
                theirs.kind,
                theirs.estimator,
                theirs.num_samples,
            )
            assert ours.value == pytest.approx(theirs.value, abs=1e-11)
            assert ours.stderr == pytest.approx(theirs.stderr, rel=1e-9)
    pyro.set_rng_seed(7)
    log_post, log_prior, _, optimal_post, _ = exact_giwae_inputs(x[:512], z[:512], 8)
    lq, lp, sc = (jnp.asarray(t.numpy()) for t in (log_post, log_prior, optimal_post))
    np.testing.assert_allclose(mb.giwae_terms(log_post, log_prior, optimal_post).numpy(), nb.giwae_terms(lq, lp, sc))
    np.testing.assert_allclose(mb.barber_agakov_terms(log_post, log_prior).numpy(), nb.barber_agakov_terms(lq, lp))
    assert mb.giwae(log_post, log_prior, optimal_post).value == pytest.approx(nb.giwae(lq, lp, sc).value, abs=1e-12)
    log_w = torch.randn(4, 512, dtype=torch.float64)
    np.testing.assert_allclose(
        mb.mine_ais_terms(optimal_post[0], log_w).numpy(),
        nb.mine_ais_terms(sc[0], jnp.asarray(log_w.numpy())),
        rtol=1e-12,
        atol=1e-12,
    )

    # the MLP critics and the proposal with NumPyro's weights give the same values
    def to_torch(module_mlp, jax_layers):
        with torch.no_grad():
            for layer, params in zip(module_mlp.layers, jax_layers, strict=True):
                layer.weight.copy_(torch.as_tensor(np.asarray(params["w"])).T)
                layer.bias.copy_(torch.as_tensor(np.asarray(params["b"])))

    key = jax.random.PRNGKey(0)
    j_concat, t_concat = nb.ConcatCritic(DIM, DIM, hidden=(8, 8)), mb.ConcatCritic(DIM, DIM, hidden=(8, 8))
    j_params = j_concat.init(key)
    to_torch(t_concat.net, j_params)
    xs, zs = x[:32], z[:32]
    jx, jz = jnp.asarray(xs.numpy()), jnp.asarray(zs.numpy())
    np.testing.assert_allclose(
        mb.score_matrix(t_concat, xs, zs).detach().numpy(), nb.score_matrix(j_concat, j_params, jx, jz), rtol=1e-12
    )
    j_sep, t_sep = nb.SeparableCritic(DIM, DIM, 4, (8,)), mb.SeparableCritic(DIM, DIM, 4, (8,))
    s_params = j_sep.init(key)
    to_torch(t_sep.g, s_params["g"])
    to_torch(t_sep.h, s_params["h"])
    np.testing.assert_allclose(
        mb.infonce_terms(mb.score_matrix(t_sep, xs, zs)).detach().numpy(),
        nb.infonce_terms(nb.score_matrix(j_sep, s_params, jx, jz)),
        rtol=1e-12,
    )
    j_q, t_q = nb.GaussianProposal(DIM, DIM, hidden=(8,)), mb.GaussianProposal(DIM, DIM, hidden=(8,))
    q_params = j_q.init(key)
    to_torch(t_q.net, q_params)
    np.testing.assert_allclose(t_q.log_prob(xs, zs).detach().numpy(), j_q.log_prob(q_params, jx, jz), rtol=1e-12)


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
    gen = torch.Generator().manual_seed(12)
    estimators = {
        "BA": mb.BarberAgakov(mb.GaussianProposal(dim, dim, hidden=(), fixed_scale=1.0, generator=gen), prior),
        "InfoNCE": mb.InfoNCE(mb.ConcatCritic(dim, dim, hidden=(32, 32), generator=gen), num_samples=k),
        "GIWAE": mb.GIWAE(
            mb.GaussianProposal(dim, dim, hidden=(), fixed_scale=1.0, generator=gen),
            mb.ConcatCritic(dim, dim, hidden=(32, 32), generator=gen),
            prior,
            num_samples=k,
        ),
    }
    pyro.set_rng_seed(11)
    fit = mb.fit_critic(estimators, sample, 600, 128, adam(3e-3), generator=torch.Generator().manual_seed(11))
    x, z = sample(4096)
    results = {}
    for name, estimator in estimators.items():
        assert fit.losses[name].shape == (600,) and np.all(np.isfinite(fit.losses[name]))
        results[name] = estimator.estimate(x, z, generator=torch.Generator().manual_seed(13))
    ba, nce, giwae = (results[name] for name in ("BA", "InfoNCE", "GIWAE"))
    for estimate in (ba, nce, giwae):
        assert_below(estimate, truth, estimate.estimator)
    assert nce.value <= math.log(k)
    assert ba.value == pytest.approx(dim * rho**2 / 2, abs=Z_EQUAL * ba.stderr + 0.05)
    for other in (ba, nce):
        assert giwae.value >= other.value - Z_BOUND * math.hypot(giwae.stderr, other.stderr), (giwae, other)
    assert giwae.value > max(ba.value, nce.value) + 0.3  # a real gain, not a tie (measured: 2.14 vs 1.55)
    with torch.no_grad():
        log_q, log_p, scores = estimators["GIWAE"].parts(x, z)
        assert bool(torch.all(mb.giwae_terms(log_q, log_p, scores) <= log_q - log_p + math.log(k) + 1e-12))


def test_fit_is_reproducible_with_a_seed():
    sample = joint_sampler(RHO, DIM)

    def run():
        pyro.set_rng_seed(40)
        estimator = mb.GIWAE(
            mb.GaussianProposal(DIM, DIM, (8,)), mb.SeparableCritic(DIM, DIM, 4, (8,)), prior_of(DIM), 4
        )
        return mb.fit_critic(estimator, sample, 15, 32, adam(1e-2))

    first, second = run(), run()
    np.testing.assert_array_equal(first.losses, second.losses)
    assert set(first.params) == set(second.params)
    for name, value in first.params.items():
        assert torch.equal(value, second.params[name]), name
    assert not np.array_equal(first.losses[:1], first.losses[-1:])  # it did train


def test_mine_ais_trained_is_below_the_truth_and_above_mine_dv():
    """MINE-AIS's critic trained with HMC negatives (300 steps); Multi-Sample AIS with K = 8, T = 30, N = 1024.

    For its own critic MINE-AIS >= DV (I_EB >= I_DV by Jensen, AIS near exact): the DV value of the
    same critic is far lower, since I_EB ignores terms c(x) of the critic and DV does not.
    """
    rho, dim = 0.8, 2
    truth = correlated_gaussian_mi(rho, dim)
    sample, prior = joint_sampler(rho, dim), prior_of(dim)
    gen = torch.Generator().manual_seed(30)
    estimator = mb.MINEAIS(
        mb.ConcatCritic(dim, dim, hidden=(32,), generator=gen), prior, num_mcmc_steps=5, step_size=0.2, num_leapfrog=3
    )
    pyro.set_rng_seed(30)
    fit = mb.fit_critic(estimator, sample, 300, 128, adam(3e-3), generator=gen)
    assert np.all(np.isfinite(fit.losses)) and np.allclose(fit.losses, -fit.bounds, rtol=0, atol=1e-12)
    x, z = sample(1024)
    ais_value = estimator.estimate(x, z, generator=gen, num_chains=8, num_steps=30, num_leapfrog=5)
    assert_below(ais_value, truth, "MINE-AIS")
    xd, zd = sample(32 * 128)
    with torch.no_grad():
        dv_same = mb.mine_dv(grouped_scores(estimator.critic, xd, zd, 128))
    assert ais_value.value >= dv_same.value - Z_BOUND * math.hypot(ais_value.stderr, dv_same.stderr)
    assert ais_value.value >= truth - 0.2 - Z_BOUND * ais_value.stderr


@pytest.mark.slow
def test_mine_ais_at_numpyro_scale_beats_a_dv_trained_critic():
    """As tests/numpyro_ext: 600 steps, 10 HMC moves of 5 leapfrog steps; evaluated with K = 8, T = 50 on 2048 pairs.

    MINE-AIS is also >= the DV value of a critic trained for DV itself, within MC error.
    """
    rho, dim = 0.8, 2
    truth = correlated_gaussian_mi(rho, dim)
    sample, prior = joint_sampler(rho, dim), prior_of(dim)
    gen = torch.Generator().manual_seed(31)
    mine_ais = mb.MINEAIS(mb.ConcatCritic(dim, dim, (32,), generator=gen), prior, 10, step_size=0.2, num_leapfrog=5)
    mine_dv = mb.MINEDV(mb.ConcatCritic(dim, dim, (32,), generator=gen), num_samples=128)
    pyro.set_rng_seed(31)
    for estimator in (mine_ais, mine_dv):
        mb.fit_critic(estimator, sample, 600, 128, adam(3e-3), generator=gen)
    x, z = sample(2048)
    ais_value = mine_ais.estimate(x, z, generator=gen, num_chains=8, num_steps=50)
    assert_below(ais_value, truth, "MINE-AIS")
    xd, zd = sample(32 * 128)
    dv_own = mine_dv.estimate(xd, zd)
    assert ais_value.value >= dv_own.value - Z_BOUND * math.hypot(ais_value.stderr, dv_own.stderr)
    assert ais_value.value >= truth - 0.1 - Z_BOUND * ais_value.stderr


@pytest.mark.slow
def test_trained_bounds_are_close_to_the_truth():
    """InfoNCE, NWJ and GIWAE trained on a low-MI problem (I = 0.288 nats) land within 0.05 nats of I."""
    rho, dim = 0.5, 2
    truth = correlated_gaussian_mi(rho, dim)
    sample, prior = joint_sampler(rho, dim), prior_of(dim)
    gen = torch.Generator().manual_seed(20)
    pyro.set_rng_seed(20)
    x, z = sample(8192)
    for estimator in (
        mb.InfoNCE(mb.SeparableCritic(dim, dim, embed_dim=8, hidden=(32,), generator=gen), num_samples=128),
        mb.NWJ(mb.SeparableCritic(dim, dim, embed_dim=8, hidden=(32,), generator=gen), num_samples=128),
        mb.GIWAE(
            mb.GaussianProposal(dim, dim, hidden=(16,), generator=gen),
            mb.ConcatCritic(dim, dim, (16,), generator=gen),
            prior,
            16,
        ),
    ):
        mb.fit_critic(estimator, sample, 600, 128, adam(3e-3), generator=gen)
        estimate = estimator.estimate(x, z, generator=gen)
        assert_below(estimate, truth, estimate.estimator)
        assert estimate.value >= truth - 0.05 - Z_BOUND * estimate.stderr, (estimate, truth)


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------
def test_bad_input_names_the_argument():
    prior = prior_of(2)
    critic = mb.ConcatCritic(2, 2, hidden=(4,))
    with pytest.raises(ValueError, match="scores must be a square"):
        mb.infonce(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="scores must be a square"):
        mb.infonce_terms(torch.zeros(5))
    with pytest.raises(ValueError, match="scores must have K >= 1"):
        mb.infonce(np.zeros((0, 0)))
    with pytest.raises(ValueError, match="scores must have K >= 2"):
        mb.nwj(np.zeros((1, 1)))
    with pytest.raises(ValueError, match="scores must have K >= 2"):
        mb.mine_dv_value(torch.zeros(3, 1, 1))
    with pytest.raises(ValueError, match="scores must be finite"):
        mb.mine_dv(np.array([[0.0, np.inf], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="scores must be finite"):
        mb.infonce(torch.tensor([[0.0, math.nan], [0.0, 0.0]]))
    with pytest.raises(TypeError, match="scores must be a tensor or an array"):
        mb.infonce(object())
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        mb.GIWAE(mb.GaussianProposal(2, 2), critic, prior, num_samples=0)
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        mb.InfoNCE(critic, num_samples=0)
    with pytest.raises(ValueError, match="num_samples must be >= 2 for NWJ"):
        mb.NWJ(critic, num_samples=1)
    with pytest.raises(ValueError, match="num_chains must be a positive integer"):
        mb.mine_ais(critic, np.zeros((4, 2)), np.zeros((4, 2)), prior, num_chains=0)
    with pytest.raises(ValueError, match="mcmc_init must be one of"):
        mb.MINEAIS(critic, prior, mcmc_init="posterior")
    estimator = mb.InfoNCE(critic, num_samples=2)
    with pytest.raises(ValueError, match="x and z must hold the same number"):
        estimator.estimate(np.zeros((4, 2)), np.zeros((6, 2)))
    with pytest.raises(ValueError, match="x must have last axis of length x_dim = 2"):
        estimator.estimate(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="groups of num_samples = 2"):
        estimator.estimate(np.zeros((5, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="x must be finite"):
        estimator.estimate(np.full((4, 2), np.nan), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="x must be a 2-D array"):
        estimator.estimate(np.zeros(4), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="log_prior must have the shape of log_q"):
        mb.barber_agakov(np.zeros(4), np.zeros(5))
    with pytest.raises(ValueError, match="exactly one of log_prior"):
        mb.barber_agakov(np.zeros(4))
    with pytest.raises(ValueError, match=r"scores must have shape \(K, N\)"):
        mb.giwae(np.zeros(4), np.zeros(4), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="prior must have event_shape"):
        mb.BarberAgakov(mb.GaussianProposal(2, 2), dist.Normal(0.0, 1.0))
    with pytest.raises(ValueError, match="sample_joint must return x"):
        mb.fit_critic(estimator, lambda n: (torch.zeros(n + 1, 2), torch.zeros(n, 2)), 2, 4)
    with pytest.raises(ValueError, match="share parameters"):
        mb.fit_critic({"a": estimator, "b": mb.NWJ(critic, 2)}, joint_sampler(0.5, 2), 2, 4)
    with pytest.raises(ValueError, match="optimizer must cover every parameter"):
        mb.fit_critic(estimator, joint_sampler(0.5, 2), 2, 4, torch.optim.Adam([torch.zeros(1, requires_grad=True)]))
    with pytest.raises(RuntimeError, match="the loss of 'estimator' is"):
        mb.fit_critic(mb.NWJ(critic, 2), lambda n: (torch.full((n, 2), math.nan), torch.ones(n, 2)), 2, 4)


def test_float32_stays_float32():
    scores = torch.zeros(8, 8, dtype=torch.float32)
    assert mb.infonce_terms(scores).dtype == torch.float32
    assert mb.nwj_terms(scores).dtype == torch.float32
    assert mb.infonce(scores).value == pytest.approx(0.0, abs=1e-6)
    critic = mb.ConcatCritic(2, 2, hidden=(4,), dtype=torch.float32)
    # float64 inputs are cast to the critic's dtype
    estimate = mb.InfoNCE(critic, 4).estimate(np.zeros((8, 2)), np.zeros((8, 2)))
    assert estimate.value == pytest.approx(0.0, abs=1e-6)
