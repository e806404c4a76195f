"""AIS, BDMC and the multi-sample AIS / IWAE mutual-information bounds (NumPyro backend) against exact answers.

Problems with closed forms:

* a linear-Gaussian latent model ``x = W z + eps`` with one observed ``x``: ``log p(x)`` from
  :func:`adapters.mi.linear_gaussian_log_marginal`, exact posterior draws for BDMC;
* the same model as a joint for the MI bounds, ``I(x; z)`` from
  :func:`adapters.mi.linear_gaussian_mi`, with the exact per-sample ``log p(x_i)`` for paired
  comparisons (all bounds see the same outer draws, so ``bound_i - exact_i`` has a small spread);
* a Gamma-Poisson NumPyro model (constrained latent, conjugate evidence);
* a Gaussian prior and likelihood whose log likelihood is NaN beyond ``x = 1`` (a truncated
  evidence, ``N(y; 0, 1 + s^2) Phi((1 - mu) / sd)``).

Tolerances are 4 Monte Carlo standard errors (``Z``) plus, where a bound is only tight in the
limit, a stated slack.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.scipy.stats import norm
from numpyro import handlers
from scipy import special, stats

from adapters.diagnostics import ReliabilityWarning
from adapters.mi import (
    check_schedule,
    linear_gaussian_log_marginal,
    linear_gaussian_mi,
    log_mean_exp_bound,
    mean_row_ess,
)
from numpyro_ext.infer import AIS
from numpyro_ext.infer.ais import ais, ais_init, ais_reverse, ais_step
from numpyro_ext.infer.ais_mi import ais_mi_lower, ais_mi_upper, iwae_mi_lower, iwae_mi_upper

Z = 4.0

# ---------------------------------------------------------------------------------------
# Linear-Gaussian evidence (dz = 3, dx = 5, noise 0.3: the posterior is ~10x narrower than the prior)
# ---------------------------------------------------------------------------------------
_rng = np.random.default_rng(0)
DZ, DX, NOISE = 3, 5, 0.3
WEIGHT = _rng.normal(size=(DX, DZ))
X_OBS = WEIGHT @ _rng.normal(size=DZ) + NOISE * _rng.normal(size=DX)
LOG_Z = float(linear_gaussian_log_marginal(X_OBS, WEIGHT, NOISE))
POST_COV = np.linalg.inv(np.eye(DZ) + WEIGHT.T @ WEIGHT / NOISE**2)
POST_MEAN = POST_COV @ WEIGHT.T @ X_OBS / NOISE**2
PRIOR = dist.Normal(jnp.zeros(DZ), 1.0).to_event(1)


def lg_log_likelihood(z):
    return norm.logpdf(jnp.asarray(X_OBS), jnp.asarray(WEIGHT) @ z, NOISE).sum()


def exact_posterior_draws(seed: int, num: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(size=(num, DZ))
    return POST_MEAN + noise @ np.linalg.cholesky(POST_COV).T


def test_linear_gaussian_bdmc_sandwich_tightens_with_num_steps():
    """Forward AIS below, reverse AIS (BDMC) above log Z; the sandwich closes as T grows.

    Checked for T = 10, 100, 1000 with K = 256 chains: both log-mean-exp bounds (``log_Z``,
    stochastic bounds) within 4 stderr on the right side; the single-chain bounds
    ``mean log w`` (``mean_log_weight``) strictly nested around log Z, with a gap that shrinks
    monotonically (measured ~22, ~1.5, ~0.18 nats) and is below 0.3 nats at T = 1000, where the
    log-mean-exp bounds are within 4 stderr + 0.02 of log Z.
    """
    gaps, lme_gaps = [], []
    for num_steps in (10, 100, 1000):
        sampler = AIS(log_likelihood_fn=lg_log_likelihood, proposal=PRIOR, num_steps=num_steps, num_chains=256)
        forward = sampler.run(jax.random.PRNGKey(num_steps))
        reverse = sampler.run_reverse(jax.random.PRNGKey(num_steps + 1), exact_posterior_draws(num_steps, 256))
        lower, upper = forward.log_Z, reverse.log_Z
        assert (lower.kind, upper.kind) == ("lower", "upper")
        assert lower.value <= LOG_Z + Z * lower.stderr, (num_steps, lower, LOG_Z)
        assert upper.value >= LOG_Z - Z * upper.stderr, (num_steps, upper, LOG_Z)
        elbo, eubo = forward.mean_log_weight, reverse.mean_log_weight
        assert elbo.value <= LOG_Z + Z * elbo.stderr and eubo.value >= LOG_Z - Z * eubo.stderr
        gaps.append(eubo.value - elbo.value)
        lme_gaps.append(upper.value - lower.value)
        assert forward.num_divergent == 0 and forward.log_weights.shape == (256,)
    assert gaps[0] > gaps[1] > gaps[2], gaps
    assert gaps[2] < 0.3, gaps
    assert lme_gaps[0] > 1.0 > abs(lme_gaps[2]), lme_gaps
    assert abs(lower.value - LOG_Z) < Z * lower.stderr + 0.02, (lower, LOG_Z)
    assert abs(upper.value - LOG_Z) < Z * upper.stderr + 0.02, (upper, LOG_Z)


# ---------------------------------------------------------------------------------------
# MI bounds on a 2-D linear-Gaussian joint with I = 2.84 nats > log 8
# ---------------------------------------------------------------------------------------
MI_WEIGHT = np.array([[1.5, 0.3], [0.2, 1.0]])
MI_NOISE = 0.3
MI_TRUE = linear_gaussian_mi(MI_WEIGHT, MI_NOISE)


def sample_joint(rng_key, n):
    noise = jax.random.normal(rng_key, (n, 4))  # one random call: z and the observation noise
    z = noise[:, :2]
    return z @ jnp.asarray(MI_WEIGHT).T + MI_NOISE * noise[:, 2:], z


def mi_log_prior(z):
    return norm.logpdf(z).sum()


def mi_log_likelihood(x, z):
    return norm.logpdf(x, jnp.asarray(MI_WEIGHT) @ z, MI_NOISE).sum()


def exact_pointwise_mi(details: dict) -> np.ndarray:
    """``log p(x_i | z_i) - log p(x_i)`` for the outer draws of an estimator (exact)."""
    return details["log_px_given_z"] - linear_gaussian_log_marginal(details["x"], MI_WEIGHT, MI_NOISE)


def paired(details: dict) -> tuple[float, float]:
    """Mean and standard error of ``bound_i - exact_i`` over the outer draws."""
    diff = details["per_sample"] - exact_pointwise_mi(details)
    return float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(diff.size))


def posterior_proposal(scale: float):
    """``q(z | x) = N(posterior mean, scale^2 * posterior covariance)``: exact for ``scale = 1``."""
    cov = np.linalg.inv(np.eye(2) + MI_WEIGHT.T @ MI_WEIGHT / MI_NOISE**2)
    gain = jnp.asarray(cov @ MI_WEIGHT.T / MI_NOISE**2)
    chol = jnp.asarray(scale * np.linalg.cholesky(cov))
    return lambda x: dist.MultivariateNormal(gain @ x, scale_tril=chol)


def test_mi_bounds_sandwich_the_true_mi_and_ais_is_tighter_than_iwae():
    """Lower <= I <= upper (paired with the exact log p(x_i), and unpaired against I) for the
    IWAE (K = 8, prior proposal) and multi-sample AIS (K = 8, T = 100) bounds; AIS is within
    0.3 (lower) / 0.15 (upper) nats of the truth (measured -0.11 / -0.03), IWAE is far off, and
    the IWAE lower bound saturates at log K: every per-sample term is <= log 8 < I."""
    key = jax.random.PRNGKey(7)
    common = dict(num_samples=64, return_details=True)
    results = {
        "iwae_lower": iwae_mi_lower(key, sample_joint, mi_log_prior, mi_log_likelihood, num_importance=8, **common),
        "iwae_upper": iwae_mi_upper(key, sample_joint, mi_log_prior, mi_log_likelihood, num_importance=8, **common),
        "ais_lower": ais_mi_lower(
            key, sample_joint, mi_log_prior, mi_log_likelihood, num_chains=8, num_steps=100, **common
        ),
        "ais_upper": ais_mi_upper(
            key, sample_joint, mi_log_prior, mi_log_likelihood, num_chains=8, num_steps=100, **common
        ),
    }
    diffs = {}
    for name, (estimate, details) in results.items():
        mean, se = paired(details)
        diffs[name] = mean
        if name.endswith("lower"):
            assert estimate.kind == "lower" and mean <= Z * se, (name, mean, se)
            assert estimate.value <= MI_TRUE + Z * estimate.stderr, (name, estimate, MI_TRUE)
        else:
            assert estimate.kind == "upper" and mean >= -Z * se, (name, mean, se)
            assert estimate.value >= MI_TRUE - Z * estimate.stderr, (name, estimate, MI_TRUE)
    assert diffs["ais_lower"] > -0.3 and diffs["ais_upper"] < 0.15, diffs
    assert diffs["iwae_lower"] < diffs["ais_lower"] - 0.5 and diffs["iwae_upper"] > diffs["ais_upper"] + 2.0, diffs
    iwae_lower_terms = results["iwae_lower"][1]["per_sample"]
    assert np.all(iwae_lower_terms <= math.log(8) + 1e-12) and math.log(8) < MI_TRUE
    ais_details = results["ais_lower"][1]
    assert ais_details["log_weights"].shape == (64, 8) and ais_details["step_sizes"].shape == (100,)
    assert int(ais_details["num_divergent"]) == 0


EXACT_PROPOSAL, WIDE_PROPOSAL = posterior_proposal(1.0), posterior_proposal(2.0)


@jax.jit
def saturation_ceiling(x, z):
    """``log q(z | x) - log p(z)`` for the wide proposal, per outer draw."""
    return jax.vmap(lambda x_i, z_i: WIDE_PROPOSAL(x_i).log_prob(z_i) - mi_log_prior(z_i))(x, z)


def test_iwae_with_the_exact_posterior_is_exact_and_saturation_holds_for_any_proposal():
    """With q = p(z | x) every importance weight equals p(x), so both bounds equal the exact
    pointwise MI for every outer draw.  With a wider proposal the lower bound obeys, per draw,
    l_i <= log K + log q(z_i | x_i) - log p(z_i), and lower <= exact <= upper (paired)."""
    key = jax.random.PRNGKey(3)
    args = (key, sample_joint, mi_log_prior, mi_log_likelihood, 64, 4)
    for bound in (iwae_mi_lower, iwae_mi_upper):
        _, details = bound(*args, EXACT_PROPOSAL, return_details=True)
        np.testing.assert_allclose(details["per_sample"], exact_pointwise_mi(details), atol=1e-9)
    lower, details = iwae_mi_lower(*args, WIDE_PROPOSAL, return_details=True)
    ceiling = math.log(4) + np.asarray(saturation_ceiling(details["x"], details["z"]))
    assert np.all(details["per_sample"] <= ceiling + 1e-10)
    mean, se = paired(details)
    assert mean <= Z * se and lower.num_samples == 64
    _, upper_details = iwae_mi_upper(*args, WIDE_PROPOSAL, return_details=True)
    mean, se = paired(upper_details)
    assert mean >= -Z * se


def test_one_step_ais_mi_bounds_are_the_iwae_bounds():
    """T = 1: forward weights are p(x | z^k) at prior draws, the reverse chain's weight is
    p(x_i | z_i), so the multi-sample AIS bounds equal the IWAE bounds on the same draws."""
    key = jax.random.PRNGKey(11)
    args = (key, sample_joint, mi_log_prior, mi_log_likelihood)
    for ais_bound, iwae_bound in ((ais_mi_lower, iwae_mi_lower), (ais_mi_upper, iwae_mi_upper)):
        _, ais_details = ais_bound(*args, num_samples=64, num_chains=8, num_steps=1, return_details=True)
        _, iwae_details = iwae_bound(*args, num_samples=64, num_importance=8, return_details=True)
        np.testing.assert_allclose(ais_details["per_sample"], iwae_details["per_sample"], rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------
# A NumPyro model with a constrained latent: Gamma-Poisson
# ---------------------------------------------------------------------------------------
SHAPE, RATE = 3.0, 2.0
COUNTS = np.array([2, 0, 3, 1, 1, 4, 2, 0, 1, 2, 3, 1, 0, 2, 1, 1, 2, 3, 0, 1])


def gamma_poisson(counts):
    lam = numpyro.sample("lam", dist.Gamma(SHAPE, RATE))
    numpyro.deterministic("log_lam", jnp.log(lam))
    with numpyro.plate("obs", counts.shape[0]):
        numpyro.sample("y", dist.Poisson(lam), obs=counts)


def gamma_poisson_evidence(counts) -> float:
    n, total = counts.size, counts.sum()
    return float(
        SHAPE * math.log(RATE)
        - special.gammaln(SHAPE)
        + special.gammaln(SHAPE + total)
        - (SHAPE + total) * math.log(RATE + n)
        - special.gammaln(counts + 1).sum()
    )


@pytest.mark.filterwarnings("error::adapters.diagnostics.ReliabilityWarning")
def test_gamma_poisson_model_log_z_bdmc_samples_and_seed():
    """A healthy run (no divergence, ESS well above a tenth of the chains) must not warn: the
    ReliabilityWarning is an error here, and both results keep an empty ``warnings``."""
    exact = gamma_poisson_evidence(COUNTS)
    post_shape, post_rate = SHAPE + COUNTS.sum(), RATE + COUNTS.size
    counts = jnp.asarray(COUNTS)
    sampler = AIS(gamma_poisson, num_steps=100, num_chains=64)
    result = sampler.run(jax.random.PRNGKey(0), counts)
    assert result.log_Z.value <= exact + Z * result.log_Z.stderr
    assert abs(result.log_Z.value - exact) < Z * result.log_Z.stderr + 0.02, (result.log_Z, exact)
    # BDMC from exact posterior draws (the same compiled program runs the reverse chains)
    draws = stats.gamma(post_shape, scale=1.0 / post_rate).rvs(size=64, random_state=1)
    reverse = sampler.run_reverse(jax.random.PRNGKey(1), {"lam": draws}, counts)
    assert reverse.log_Z.value >= exact - Z * reverse.log_Z.stderr
    assert abs(reverse.log_Z.value - exact) < Z * reverse.log_Z.stderr + 0.02, (reverse.log_Z, exact)
    # constrained samples, deterministic sites included; resampled ones follow the posterior
    weighted = result.get_samples()
    assert weighted["lam"].shape == (64,) and np.all(np.asarray(weighted["lam"]) > 0)
    np.testing.assert_allclose(weighted["log_lam"], np.log(weighted["lam"]), rtol=1e-12)
    resampled = np.asarray(result.get_samples(jax.random.PRNGKey(2), num_samples=4000)["lam"])
    post_sd = math.sqrt(post_shape) / post_rate
    assert abs(resampled.mean() - post_shape / post_rate) < Z * post_sd / math.sqrt(max(result.ess, 1.0))
    idata = result.to_arviz()
    assert idata.posterior["lam"].shape == (1, 64) and idata.attrs["log_Z"] == result.log_Z.value
    assert result.warnings == [] and reverse.warnings == [] and idata.attrs["warnings"] == []
    assert result.num_divergent <= 0.01 * result.num_transitions and result.ess > 0.1 * 64
    assert idata.attrs["ess"] == result.ess and idata.attrs["num_divergent"] == result.num_divergent
    # reproducible from the seed, different for another seed
    again = sampler.run(jax.random.PRNGKey(0), counts)
    np.testing.assert_array_equal(again.log_weights, result.log_weights)
    other = sampler.run(jax.random.PRNGKey(5), counts)
    assert not np.array_equal(other.log_weights, result.log_weights)


# ---------------------------------------------------------------------------------------
# NaN log likelihood beyond x = 1, with HMC (float32) and a user random-walk kernel
# ---------------------------------------------------------------------------------------
Y_OBS, LIK_SCALE = 1.2, 0.5


def truncated_log_likelihood(x):
    value = norm.logpdf(Y_OBS, x[0], LIK_SCALE)
    return jnp.where(x[0] < 1.0, value, jnp.nan)


def truncated_evidence() -> float:
    post_var = LIK_SCALE**2 / (1 + LIK_SCALE**2)
    post_mean = Y_OBS / (1 + LIK_SCALE**2)
    evidence = stats.norm(0.0, math.sqrt(1 + LIK_SCALE**2)).logpdf(Y_OBS)
    return float(evidence + stats.norm.logcdf((1.0 - post_mean) / math.sqrt(post_var)))


def random_walk(rng_key, position, logdensity_fn, step_size):
    """Gaussian random-walk Metropolis: reversible for any target."""
    move_key, accept_key = jax.random.split(rng_key)
    proposal = position + step_size * jax.random.normal(move_key, position.shape, position.dtype)
    log_ratio = logdensity_fn(proposal) - logdensity_fn(position)
    log_accept = jnp.where(jnp.isnan(log_ratio), -jnp.inf, jnp.minimum(log_ratio, 0.0))
    accept = jnp.log(jax.random.uniform(accept_key, dtype=position.dtype)) < log_accept
    return jnp.where(accept, proposal, position), jnp.exp(log_accept)


def test_nan_likelihood_region_is_rejected_and_counted_user_kernel():
    """The shell with a user random-walk kernel (and the pilot adapting its step size)."""
    exact = truncated_evidence()
    prior = dist.Normal(jnp.zeros(1), 1.0).to_event(1)
    sampler = AIS(
        log_likelihood_fn=truncated_log_likelihood,
        proposal=prior,
        num_steps=100,
        num_chains=256,
        transition=random_walk,
    )
    result = sampler.run(jax.random.PRNGKey(4))
    assert np.isfinite(result.log_Z.value) and result.num_divergent > 0
    assert abs(result.log_Z.value - exact) < Z * result.log_Z.stderr + 0.03, (result.log_Z, exact)
    # chains that started in the NaN region carry zero weight; every weighted chain ends below 1
    final = np.asarray(result.positions[:, 0])
    assert np.all(final[np.isfinite(result.log_weights)] < 1.0)


def test_nan_likelihood_region_hmc_core_in_float32():
    """The math core with HMC in float32: NaN proposals rejected and counted, dtypes kept."""
    exact = truncated_evidence()
    betas = check_schedule("sigmoid", 100)
    prior = dist.Normal(jnp.zeros(1, jnp.float32), 1.0).to_event(1)

    @jax.jit
    def run(key):
        init_key, run_key = jax.random.split(key)
        init = jax.random.normal(init_key, (256, 1), jnp.float32)
        return ais(run_key, init, prior.log_prob, truncated_log_likelihood, betas, 0.4, num_leapfrog=5)

    output = run(jax.random.PRNGKey(6))
    assert output.positions.dtype == jnp.float32 and output.log_weights.dtype == jnp.float32
    assert output.step_size.dtype == jnp.float32 and output.acceptance_rate.shape == (100, 256)
    assert int(output.is_divergent.sum()) > 0
    log_z = log_mean_exp_bound(np.asarray(output.log_weights), "lower", "ais")
    assert abs(log_z.value - exact) < Z * log_z.stderr + 0.03, (log_z, exact)
    final = np.asarray(output.positions[:, 0])
    assert np.all(final[np.isfinite(np.asarray(output.log_weights))] < 1.0)


# ---------------------------------------------------------------------------------------
# The math core directly
# ---------------------------------------------------------------------------------------
def test_core_step_adds_the_weight_increment_before_moving():
    """One step adds (beta - beta_prev) log L at the current point, then moves (HMC)."""
    position = jnp.array([0.3, -0.2, 0.1])

    @jax.jit
    def one_step(key):
        state = ais_init(position, PRIOR.log_prob, lg_log_likelihood)
        return state, *ais_step(key, state, 0.25, 0.5, PRIOR.log_prob, lg_log_likelihood, step_size=0.05)

    state, new, info = one_step(jax.random.PRNGKey(0))
    assert state.log_likelihood == pytest.approx(float(lg_log_likelihood(position)), rel=1e-12)
    assert state.log_weight == 0.0
    assert new.log_weight == pytest.approx(0.25 * float(lg_log_likelihood(position)), rel=1e-12)
    assert 0.0 <= float(info.acceptance_rate) <= 1.0 and float(info.step_size) == 0.05
    moved = bool(info.is_accepted)
    assert bool(jnp.any(new.position != position)) == moved
    assert new.log_likelihood == pytest.approx(float(lg_log_likelihood(new.position)), rel=1e-12)


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_steps": 0}, "num_steps must be a positive integer, got 0"),
        ({"schedule": [0.0, 0.5, 0.3, 1.0]}, r"schedule must increase strictly, but schedule\[2\] = 0.3"),
        ({"schedule": [0.1, 0.5, 1.0]}, "schedule must start at 0 and end at 1"),
        ({"num_chains": 0}, "num_chains must be a positive integer, got 0"),
        ({"step_size": 0.0}, "step_size must be a finite number > 0, got 0.0"),
        ({"step_size": -1.0}, "step_size must be a finite number > 0, got -1.0"),
        ({"transition": "nuts"}, "transition must be 'hmc' or a kernel function"),
        ({"target_accept_prob": 0.0}, r"target_accept_prob must be a number in \(0, 1\)"),
    ],
)
def test_ais_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AIS(gamma_poisson, **kwargs)


def test_ais_rejects_bad_sources():
    with pytest.raises(ValueError, match="give exactly one of `model`"):
        AIS()
    with pytest.raises(ValueError, match="proposal: with log_likelihood_fn, give the prior"):
        AIS(log_likelihood_fn=lg_log_likelihood)
    with pytest.raises(ValueError, match="proposal must have sample"):
        AIS(log_likelihood_fn=lg_log_likelihood, proposal=object()).run(jax.random.PRNGKey(0))

    def no_data():
        numpyro.sample("a", dist.Normal())

    with pytest.raises(ValueError, match="the model has no observed sites"):
        AIS(no_data).run(jax.random.PRNGKey(0))

    def discrete(y):
        k = numpyro.sample("k", dist.Bernoulli(0.5))
        numpyro.sample("y", dist.Normal(k, 1.0), obs=y)

    with pytest.raises(ValueError, match=r"continuous latent sites, but \['k'\] are discrete"):
        AIS(discrete).run(jax.random.PRNGKey(0), 1.0)


def test_get_samples_refuses_to_resample_when_every_weight_is_zero():
    """A likelihood that is zero everywhere: log Z = -inf, the weighted states are still there, and
    resampling raises (the same rule as the Pyro twin) instead of drawing uniformly."""
    sampler = AIS(log_likelihood_fn=lambda z: -jnp.inf * jnp.sum(z**2 + 1.0), proposal=PRIOR, num_steps=3, num_chains=4)
    result = sampler.run(jax.random.PRNGKey(0))
    assert result.log_Z.value == -math.inf and result.ess == 0.0
    assert result.get_samples()["x"].shape == (4, DZ)
    with pytest.raises(ValueError, match="every chain has zero weight"):
        result.get_samples(jax.random.PRNGKey(1))
    with pytest.raises(ValueError, match="nothing to resample"):
        result.to_arviz()


def test_core_rejects_bad_arguments():
    init = jnp.zeros((4, 3))
    args = (jax.random.PRNGKey(0), init, PRIOR.log_prob, lg_log_likelihood)
    with pytest.raises(ValueError, match=r"betas must increase strictly, but betas\[2\]"):
        ais(*args, [0.0, 0.5, 0.5, 1.0])
    with pytest.raises(ValueError, match="betas must start at 0 and end at 1"):
        ais_reverse(*args, [0.0, 0.5])
    with pytest.raises(ValueError, match="step_size must be finite and > 0"):
        ais(*args, [0.0, 1.0], step_size=0.0)
    with pytest.raises(ValueError, match=r"step_size must be a scalar or have shape \(2,\) or \(2, 4\)"):
        ais(*args, [0.0, 0.5, 1.0], step_size=jnp.ones(3) * 0.1)
    with pytest.raises(ValueError, match=r"init_positions must be an array of shape \(num_chains, d\)"):
        ais(jax.random.PRNGKey(0), jnp.zeros(3), PRIOR.log_prob, lg_log_likelihood, [0.0, 1.0])
    with pytest.raises(ValueError, match="num_leapfrog must be a positive integer"):
        ais(*args, [0.0, 1.0], num_leapfrog=0)
    with pytest.raises(ValueError, match="transition must be 'hmc' or a kernel function"):
        ais(*args, [0.0, 1.0], transition="mala")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_chains": 0}, "num_chains must be a positive integer"),
        ({"num_steps": 0}, "num_steps must be a positive integer"),
        ({"schedule": [0.0, 0.7, 0.6, 1.0]}, "schedule must increase strictly"),
        ({"step_size": -0.5}, "step_size must be a finite number > 0"),
        ({"num_samples": 0}, "num_samples must be a positive integer"),
    ],
)
def test_mi_bounds_reject_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ais_mi_lower(jax.random.PRNGKey(0), sample_joint, mi_log_prior, mi_log_likelihood, **kwargs)


def test_iwae_and_joint_sampler_checks():
    with pytest.raises(ValueError, match="num_importance must be a positive integer"):
        iwae_mi_upper(jax.random.PRNGKey(0), sample_joint, mi_log_prior, mi_log_likelihood, num_importance=0)

    def flat_joint(key, n):
        x, z = sample_joint(key, n)
        return x[:, 0], z

    with pytest.raises(ValueError, match=r"must return \(x, z\) of shapes \(n, dx\) and \(n, dz\)"):
        iwae_mi_lower(jax.random.PRNGKey(0), flat_joint, mi_log_prior, mi_log_likelihood)


# ---------------------------------------------------------------------------------------
# Validation at the door, and warnings when a run is unreliable (issue 20)
# ---------------------------------------------------------------------------------------
def half_invalid_prior(y):
    """Half the prior's scales are negative: NUTS refuses it ("invalid scale parameter")."""
    theta = numpyro.sample("theta", dist.Normal(0.0, jnp.array([1.0, 1.0, -1.0, -1.0])))
    numpyro.sample("y", dist.Normal(theta.sum(), 1.0), obs=y)


def test_ais_refuses_a_model_that_nuts_refuses():
    """The density of this model is NaN everywhere; old AIS ran it (every transition divergent,
    log Z from prior draws that never moved) without a word.  Now run and run_reverse raise the
    ValueError NUTS raises at initialisation, naming the site and the parameter."""
    sampler = AIS(half_invalid_prior, num_steps=2, num_chains=4)
    message = r"model: site 'theta': Normal distribution got invalid scale parameter \(2 of 4 values\)"
    with pytest.raises(ValueError, match=message):
        sampler.run(jax.random.PRNGKey(0), jnp.array(0.5))
    with pytest.raises(ValueError, match=message):
        sampler.run_reverse(jax.random.PRNGKey(0), {"theta": jnp.zeros((4, 4))}, jnp.array(0.5))
    # an observed value outside the support: every weight would be zero
    with pytest.raises(ValueError, match=r"site 'y': observed value is outside the support of its Poisson"):
        AIS(gamma_poisson, num_steps=2, num_chains=4).run(jax.random.PRNGKey(0), jnp.array([1.0, -2.0, 3.0]))


def test_ais_warns_when_transitions_diverge_and_weights_degenerate():
    """A step size far too large (5 where the posterior sd is ~0.1) and a one-step schedule: most
    transitions diverge and one chain carries the weight.  The run warns with both counts, keeps
    the messages in ``result.warnings`` and in ``to_arviz().attrs``."""
    sampler = AIS(
        log_likelihood_fn=lg_log_likelihood,
        proposal=PRIOR,
        num_steps=1,
        num_chains=32,
        adapt_step_size=False,
        step_size=5.0,
    )
    with pytest.warns(ReliabilityWarning) as record:
        result = sampler.run(jax.random.PRNGKey(0))
    assert result.num_divergent > 0.5 * 32 and result.ess < 0.1 * 32, (result.num_divergent, result.ess)
    messages = [str(w.message) for w in record if w.category is ReliabilityWarning]
    assert messages == result.warnings and len(messages) == 2
    assert messages[0].startswith(f"AIS: {result.num_divergent} of 32 transitions diverged")
    assert messages[1].startswith(f"AIS: the importance weights are degenerate: effective sample size {result.ess:.1f}")
    assert record[0].filename == __file__  # the warning points at the caller's line
    assert result.to_arviz().attrs["warnings"] == messages


def test_ais_entry_points_name_bad_arguments():
    sampler = AIS(log_likelihood_fn=lg_log_likelihood, proposal=PRIOR, num_steps=2, num_chains=4)
    with pytest.raises(TypeError, match="rng_key must be a JAX PRNG key"):
        sampler.run(0)
    with pytest.raises(TypeError, match="posterior_samples must be an array"):
        sampler.run_reverse(jax.random.PRNGKey(0), "draws")
    with pytest.raises(TypeError, match=r"posterior_samples\['lam'\] must be an array of draws"):
        AIS(gamma_poisson).run_reverse(jax.random.PRNGKey(0), {"lam": ["a", "b"]}, jnp.asarray(COUNTS))
    with pytest.raises(TypeError, match="inverse_mass_matrix must be an array"):
        AIS(gamma_poisson, inverse_mass_matrix="diag")
    with pytest.raises(ValueError, match=r"inverse_mass_matrix must have shape \(3,\) or \(3, 3\), got \(2,\)"):
        AIS(log_likelihood_fn=lg_log_likelihood, proposal=PRIOR, inverse_mass_matrix=jnp.ones(2)).run(
            jax.random.PRNGKey(0)
        )
    with pytest.raises(TypeError, match="schedule must be 'linear', 'sigmoid' or an array"):
        AIS(gamma_poisson, schedule=["0", "1"])


# ---------------------------------------------------------------------------------------
# The MI bounds take a model (issue 20)
# ---------------------------------------------------------------------------------------
def mi_model(x=None):
    """The linear-Gaussian joint of the MI tests as a NumPyro model (``x`` left None: sampled)."""
    z = numpyro.sample("z", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
    numpyro.sample("x", dist.Normal(jnp.asarray(MI_WEIGHT) @ z, MI_NOISE).to_event(1), obs=x)


def model_sample_joint(rng_key, n):
    """The functional route's sampler, drawing as the model route does (one seeded model run per draw)."""

    def one(key):
        tr = handlers.trace(handlers.seed(mi_model, key)).get_trace()
        return tr["x"]["value"], tr["z"]["value"]

    return jax.vmap(one)(jax.random.split(rng_key, n))


MODEL_ROUTE = {"latent": "z", "observed": "x"}
AIS_MI_SETTINGS = {"num_samples": 64, "num_chains": 8, "num_steps": 30, "return_details": True}


@pytest.mark.filterwarnings("error::adapters.diagnostics.ReliabilityWarning")
def test_mi_bounds_take_a_model_and_bracket_the_truth():
    """``bound(key, model, latent=, observed=)`` gives the numbers of the three functions for the
    same key, and both bracket I(x; z) (paired with the exact log p(x_i) per outer draw, 4 standard
    errors); a healthy run does not warn.  IWAE here (one small compile each); the multi-sample
    AIS pair on the model route is the slow test below."""
    key = jax.random.PRNGKey(5)
    settings = {"num_samples": 64, "num_importance": 8, "return_details": True}
    for bound in (iwae_mi_lower, iwae_mi_upper):
        by_model, model_details = bound(key, mi_model, **MODEL_ROUTE, **settings)
        by_functions, details = bound(key, model_sample_joint, mi_log_prior, mi_log_likelihood, **settings)
        np.testing.assert_allclose(model_details["per_sample"], details["per_sample"], rtol=1e-5, atol=1e-5)
        assert by_model.kind == by_functions.kind and abs(by_model.value - by_functions.value) < 1e-5
        for estimate, terms in ((by_model, model_details), (by_functions, details)):
            mean, se = paired(terms)
            assert (mean <= Z * se) if estimate.kind == "lower" else (mean >= -Z * se), (estimate, mean, se)
            assert estimate.warnings == ()


def test_mi_bounds_warn_on_degenerate_weights_and_name_bad_arguments():
    """IWAE with K = 64 prior draws per outer draw at I = 2.84 nats: one or two draws carry each
    x_i's weight (mean ESS about 4 of 64), so the bound warns and keeps the message.  A model
    passed where the three functions go, or a wrong site, is a clear error."""
    key = jax.random.PRNGKey(5)
    with pytest.warns(ReliabilityWarning, match="iwae_mi_upper: the importance weights of each outer sample") as record:
        estimate, details = iwae_mi_upper(
            key, mi_model, num_samples=64, num_importance=64, return_details=True, **MODEL_ROUTE
        )
    ess = mean_row_ess(details["log_weights"])
    assert ess < 6.4 and f"effective sample size {ess:.1f} of 64" in estimate.warnings[0]
    assert record[0].filename == __file__
    with pytest.raises(TypeError, match="log_prior, log_likelihood missing: .* pass the model in place"):
        ais_mi_lower(key, mi_model)
    with pytest.raises(TypeError, match=r"sample_joint must be a function sample_joint\(rng_key, n\), but it cannot"):
        iwae_mi_lower(key, mi_model, mi_log_prior, mi_log_likelihood)
    with pytest.raises(ValueError, match=r"latent: the model has no sample sites \['w'\]; its sites are \['x', 'z'\]"):
        iwae_mi_lower(key, mi_model, latent="w", observed="x")
    with pytest.raises(TypeError, match="rng_key must be a JAX PRNG key"):
        iwae_mi_upper("0", mi_model, **MODEL_ROUTE)
    with pytest.raises(TypeError, match="inverse_mass_matrix must be an array"):
        ais_mi_lower(key, mi_model, inverse_mass_matrix="unit", **MODEL_ROUTE)


@pytest.mark.slow
@pytest.mark.filterwarnings("error::adapters.diagnostics.ReliabilityWarning")
def test_ais_mi_bounds_on_the_model_route_bracket_the_truth_and_warn_on_divergences():
    """Multi-sample AIS through the model brackets I (paired, 4 standard errors, within 0.5 nat
    at T = 30) without a warning; a fixed step size far too large makes it warn with the count."""
    key = jax.random.PRNGKey(5)
    for bound in (ais_mi_lower, ais_mi_upper):
        estimate, details = bound(key, mi_model, **MODEL_ROUTE, **AIS_MI_SETTINGS)
        mean, se = paired(details)
        if estimate.kind == "lower":
            assert -0.5 < mean <= Z * se, (mean, se)
        else:
            assert Z * -se <= mean < 0.5, (mean, se)
        assert estimate.warnings == () and int(details["num_divergent"]) == 0
    with pytest.warns(ReliabilityWarning, match="ais_mi_upper: .* transitions diverged") as record:
        estimate, details = ais_mi_upper(
            key, mi_model, adapt_step_size=False, step_size=5.0, **MODEL_ROUTE, **AIS_MI_SETTINGS
        )
    total = 64 * 8 * 30
    assert estimate.warnings[0].startswith(f"ais_mi_upper: {int(details['num_divergent'])} of {total} transitions")
    assert record[0].filename == __file__


@pytest.mark.slow
def test_ais_mi_bounds_by_model_and_by_functions_agree():
    """The AIS pair on both routes, with the functions computing the densities as the model does
    (``dist.Normal(...).log_prob``): HMC over 30 temperatures amplifies float32 rounding, so
    ``norm.logpdf`` (the same density, other operations) drifts by up to 0.01 per draw."""

    def log_prior(z):
        return dist.Normal(jnp.zeros(2), 1.0).to_event(1).log_prob(z)

    def log_likelihood(x, z):
        return dist.Normal(jnp.asarray(MI_WEIGHT) @ z, MI_NOISE).to_event(1).log_prob(x)

    key = jax.random.PRNGKey(5)
    for bound in (ais_mi_lower, ais_mi_upper):
        _, model_details = bound(key, mi_model, **MODEL_ROUTE, **AIS_MI_SETTINGS)
        _, details = bound(key, model_sample_joint, log_prior, log_likelihood, **AIS_MI_SETTINGS)
        np.testing.assert_allclose(model_details["per_sample"], details["per_sample"], rtol=1e-5, atol=1e-5)
