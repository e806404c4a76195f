"""Per-datum ELBO terms, the per-datum importance-weighted bound and the amortization gap (Pyro), against closed
forms.  The NumPyro twin's tests (tests/numpyro_ext/test_amortized_gap.py) check the same things at larger sizes.

* Linear normal-normal model (``z_i ~ N(0, 1)``, ``x_i ~ N(theta + tau z_i, sigma^2)``, theta known): every
  datum's posterior is Gaussian, so a Gaussian ``q_i`` has a closed-form ELBO term and a closed-form variance
  of its one-draw estimate, and the importance weights ``w = p(x_i) p(z | x_i) / q(z)`` have a closed-form
  second moment, which fixes the IWAE bound's leading bias ``-(E[w^2] / E[w]^2 - 1) / (2 K)`` (Maddison et al.
  2017, Prop. 1; Rainforth et al. 2018).  The bound's gradient in the encoder's location bias is closed-form
  too, with a closed-form variance.
* AR(1) hidden Markov model (``z_t = rho z_{t-1} + N(0, s^2)``, ``x_t ~ N(z_t, r^2)``): Gaussian, so the F-VI
  (mean-field) optimum and the ELBO of any mean-field Gaussian are closed-form, and so is the best affine
  encoder reading a window of ``2 k + 1`` observations; the gap is positive at ``k = 0`` (no ideal inference
  function of ``x_t`` alone, Margossian & Blei Sec. 4) and a window shrinks it (closed form for the data
  below, ``N_HMM = 500``: 181.0 nats at k = 0, 5.43 at k = 3).
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from adapters.amortized import softplus_inverse
from pyro_ext.infer.amortized import AutoAmortizedNormal
from pyro_ext.infer.amortized.gap import amortization_gap, per_datum_elbo
from pyro_ext.infer.amortized.local_elbo import LocalRenyiELBO, per_datum_log_weights
from tests.amortized_checks import (
    NOISE,
    RHO,
    SD,
    SHIFT,
    SIGMA,
    SLOPE,
    STATIONARY,
    STEP,
    TAU,
    THETA,
    WIDEN,
    best_window_loc_gap,
    chi2_ratio,
    hmm_data,
    hmm_elbo,
    linear_terms,
    window_features,
)

ENCODER_BIAS = "AutoAmortizedNormal.encoder.layers.0.bias"


@pytest.fixture(autouse=True)
def _fresh_param_store():
    # guides of the same class share Pyro's global parameter store by name
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def linear_model(x, subsample_size=None):
    with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(THETA + TAU * z, SIGMA), obs=x[idx])


def linear_data(seed, n):
    rng = np.random.default_rng(seed)
    return torch.as_tensor(THETA + TAU * rng.standard_normal(n) + SIGMA * rng.standard_normal(n))


def shifted_params():
    """The hand-set ``q_i`` as the NumPyro guide's affine encoder parameters."""
    weight = np.array([[SLOPE, 0.0]])
    bias = np.array([-SLOPE * THETA + SHIFT, softplus_inverse(WIDEN * SD) - softplus_inverse(0.1)])
    return {"auto_data_encoder": [(weight, bias)]}


def shifted_guide(x, subsample_size=None):
    """An ``AutoAmortizedNormal`` set up on ``x`` with the hand-set ``q_i``."""
    guide = AutoAmortizedNormal(linear_model, hidden=())
    guide(x, subsample_size)
    guide.load_numpyro_params(shifted_params())
    return guide


def test_per_datum_terms_are_the_closed_form_elbo_terms_in_padded_chunks():
    n, b, draws = 250, 100, 128  # chunks of 100, 100 and 50 (+ 50 padding)
    x = linear_data(0, n)
    guide = shifted_guide(x, b)
    pyro.set_rng_seed(0)
    result = per_datum_elbo(linear_model, guide, x, b, num_particles=draws)
    elbo, variance, _ = linear_terms(x)
    # per datum: a mean of `draws` one-draw estimates; 5 sd over 250 data fails by chance with p ~ 1.4e-4
    assert np.max(np.abs(result.per_datum - elbo) / np.sqrt(variance / draws)) < 5.0
    total_sd = math.sqrt(variance.sum() / draws)
    assert abs(result.elbo - elbo.sum()) < 4 * total_sd
    assert result.elbo_se == pytest.approx(total_sd, rel=0.25)  # 128 draws: the sd's own error is ~6.3%
    # a subsample of the plate's size is taken as given; its scale is n / b
    terms = per_datum_log_weights(linear_model, guide, (x, b), {}, "data", 3, indices=torch.arange(150, 250))
    assert terms.local.shape == (3, b) and float(terms.scale) == n / b
    assert torch.equal(terms.indices, torch.arange(150, 250))


def test_local_bound_is_the_elbo_at_k1_and_approaches_log_evidence_as_the_iwae_bias_predicts():
    n, reps = 400, 64
    x = linear_data(1, n)
    guide = shifted_guide(x)
    elbo, variance, log_evidence = linear_terms(x)
    pyro.set_rng_seed(2)
    # alpha = 1 (any K, vectorized or looped) and alpha = 0 at K = 1 are the ELBO: mean of `reps` estimates
    for alpha, k, vectorize in ((1.0, 4, True), (1.0, 3, False), (0.0, 1, True)):
        loss = LocalRenyiELBO(
            alpha=alpha, num_local_particles=k, num_particles=reps, vectorize_local_particles=vectorize
        )
        value = -loss.loss(linear_model, guide, x)
        assert abs(value - elbo.sum()) < 4 * math.sqrt(variance.sum() / (reps * k)), (alpha, k, vectorize)
    # IWAE at K: E[log mean_K w] = log p(x_i) - (rho - 1) / (2 K) + O(K^-2), rho = E[w^2] / E[w]^2
    k = 64
    with torch.no_grad():
        bounds = np.array(
            [
                float(torch.logsumexp(per_datum_log_weights(linear_model, guide, (x,), {}, "data", k).local, 0).sum())
                - n * math.log(k)
                for _ in range(reps)
            ]
        )
    predicted = log_evidence.sum() - n * (chi2_ratio() - 1) / (2 * k)
    gap_to_evidence = log_evidence.sum() - predicted  # ~ n (rho - 1) / 2K
    assert elbo.sum() < bounds.mean() < log_evidence.sum()
    # the O(K^-2) term is below 10% of the leading one at K = 64 here; the rest is Monte Carlo error
    assert abs(bounds.mean() - predicted) < 0.1 * gap_to_evidence + 4 * bounds.std(ddof=1) / math.sqrt(reps)


def test_local_bound_gradient_is_the_closed_form_elbo_gradient():
    """``loss_and_grads`` at alpha = 1, K = 1: the encoder's location bias moves every m_i, and the one-draw
    gradient is sum_i (tau resid_i / sigma^2 - m_i) - s (tau^2 / sigma^2 + 1) sum_i eps_i: its mean and variance
    are closed-form.  Subsampled (b of n): the scale n / b multiplies the sum over the subsample."""
    n, b, reps = 300, 60, 32
    x = linear_data(3, n)
    guide = shifted_guide(x, b)
    m, s = SLOPE * (x.numpy() - THETA) + SHIFT, WIDEN * SD
    per_datum_grad = TAU * (x.numpy() - THETA - TAU * m) / SIGMA**2 - m
    # over random subsamples: E = sum_i g_i; Var = (n/b)^2 (b Var_I(g) (n - b) / (n - 1) + b s^2 (...)^2) / reps
    subsample_var = b * per_datum_grad.var() * (n - b) / (n - 1)
    noise_var = b * (s * (TAU**2 / SIGMA**2 + 1)) ** 2
    sd = (n / b) * math.sqrt((subsample_var + noise_var) / reps)
    elbo = LocalRenyiELBO(alpha=1.0, num_local_particles=1, num_particles=reps)
    pyro.set_rng_seed(4)
    loss = elbo.loss_and_grads(linear_model, guide, x, b)
    grad = dict(pyro.get_param_store().named_parameters())[ENCODER_BIAS].grad
    assert np.isfinite(loss)
    assert abs(-float(grad[0]) - per_datum_grad.sum()) < 4 * sd


def test_bad_local_bound_arguments_name_the_argument():
    with pytest.raises(ValueError, match="num_local_particles"):
        LocalRenyiELBO(num_local_particles=0)
    with pytest.raises(ValueError, match="alpha"):
        LocalRenyiELBO(alpha=float("nan"))
    with pytest.raises(TypeError, match="plate"):
        LocalRenyiELBO(plate="")
    x = linear_data(0, 20)
    guide = shifted_guide(x, 5)
    with pytest.raises(ValueError, match="plate: the guide has no plate named 'rows'"):
        LocalRenyiELBO(plate="rows").loss(linear_model, guide, x, 5)
    with pytest.raises(ValueError, match="indices: .* subsample size"):
        per_datum_log_weights(linear_model, guide, (x, 5), {}, "data", indices=torch.arange(4))
    with pytest.raises(ValueError, match="num_particles must be at least 2"):
        per_datum_elbo(linear_model, guide, x, 5, num_particles=1)
    with pytest.raises(ValueError, match="batch_size must be None or plate 'data''s subsample size 5"):
        per_datum_elbo(linear_model, guide, x, 5, batch_size=7)

    def discrete_guide(x, subsample_size=None):
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size):
            pyro.sample("z", dist.Poisson(torch.ones(())))

    with pytest.raises(ValueError, match="guide: site 'z' has no reparameterised sampler"):
        LocalRenyiELBO().loss(linear_model, discrete_guide, x)
    with pytest.raises(TypeError, match="optim must be a pyro.optim optimizer"):
        amortization_gap(linear_model, x, optim=torch.optim.Adam)
    with pytest.raises(ValueError, match="hidden must name at least one"):
        amortization_gap(linear_model, x, hidden=[])


def test_gap_study_keeps_the_callers_store_and_generator_and_the_finished_fits_on_interrupt(monkeypatch):
    import pyro_ext.infer.amortized.gap as gap_module

    n = 30
    x = linear_data(7, n)
    user_param = pyro.param("user_param", torch.tensor(1.5))
    pyro.set_rng_seed(8)
    state = torch.random.get_rng_state()
    fit = gap_module._fit
    calls = []

    def interrupted_after_fvi(*args, **kwargs):
        calls.append(args[0])
        if len(calls) > 1:
            raise KeyboardInterrupt
        return fit(*args, **kwargs)

    monkeypatch.setattr(gap_module, "_fit", interrupted_after_fvi)
    with pytest.warns(UserWarning, match="interrupted: returning the 1 finished fits"):
        result = amortization_gap(
            linear_model, x, hidden=[()], num_steps=3, num_eval_particles=4, num_posterior_draws=5, progress_bar=False
        )
    assert calls == ["F-VI", "A-VI hidden=() window=0"] and result.avi == []
    assert list(pyro.get_param_store().keys()) == ["user_param"] and pyro.param("user_param") is user_param
    assert torch.equal(torch.random.get_rng_state(), state)
    fvi = result.fvi
    assert fvi.per_datum_elbo.shape == (n,) and fvi.posterior["z"].shape == (5, n) and fvi.losses.shape == (3,)
    assert sorted(fvi.params) == ["AutoNormal.locs.z", "AutoNormal.scales.z"] and fvi.num_guide_params == 2 * n


def global_model(x):
    theta = pyro.sample("theta", dist.Normal(0.0, 3.0))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(theta + TAU * z, SIGMA), obs=x)


def test_numpyro_and_pyro_give_the_same_per_datum_elbo_for_the_same_weights():
    jax = pytest.importorskip("jax", reason="the numpyro extra is not installed")
    import numpyro
    import numpyro.distributions as ndist
    from numpyro import handlers

    from numpyro_ext.infer.amortized import AutoAmortizedNormal as NumPyroAutoAmortizedNormal
    from numpyro_ext.infer.amortized import per_datum_elbo as numpyro_per_datum_elbo

    def numpyro_global_model(x):
        theta = numpyro.sample("theta", ndist.Normal(0.0, 3.0))
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", ndist.Normal(0.0, 1.0))
            numpyro.sample("x", ndist.Normal(theta + TAU * z, SIGMA), obs=x)

    n, draws = 120, 96
    x = linear_data(5, n)
    pyro.set_rng_seed(5)
    guide = AutoAmortizedNormal(global_model, hidden=())
    guide(x)
    with torch.no_grad():  # an affine encoder off the optimum, and a global away from its start
        for layer in guide.encoder.layers:
            layer.weight.normal_(0.0, 0.5)
            layer.bias.normal_(0.0, 0.3)
    params = guide.numpyro_params()
    params["theta_auto_loc"], params["theta_auto_scale"] = np.array(0.4), np.array(0.2)
    guide.load_numpyro_params(params)
    pyro_result = per_datum_elbo(global_model, guide, x, num_particles=draws)
    # the per-datum estimator's variance, from `draws` more one-draw estimates in Pyro
    with torch.no_grad():
        one_draw = torch.stack(
            [per_datum_log_weights(global_model, guide, (x,), {}, "data").local[0] for _ in range(draws)]
        ).numpy()
    numpyro_guide = NumPyroAutoAmortizedNormal(numpyro_global_model, hidden=())
    x_jax = jax.numpy.asarray(x.numpy())
    with handlers.seed(rng_seed=0):
        numpyro_guide(x_jax)
    numpyro_result = numpyro_per_datum_elbo(
        numpyro_global_model, numpyro_guide, params, x_jax, num_particles=draws, rng_key=jax.random.PRNGKey(6)
    )
    per_datum_sd = np.sqrt(2 * one_draw.var(axis=0, ddof=1) / draws)
    # 5 sd over 120 data fails by chance with p ~ 7e-5
    assert np.max(np.abs(pyro_result.per_datum - numpyro_result.per_datum) / per_datum_sd) < 5.0
    joint_se = math.hypot(pyro_result.elbo_se, numpyro_result.elbo_se)
    assert abs(pyro_result.elbo - numpyro_result.elbo) < 4 * joint_se


# ------------------------------------------------------------------------------- the AR(1) hidden Markov model

N_HMM = 500
STEPS, TRAINING_SLACK_FVI, TRAINING_SLACK_AVI = 2000, 5.0, 1.0


def hmm_model(x):
    """AR(1) states in a plate: each z_t gets the stationary prior, and the factor swaps it for the
    transition density of z_2..z_n (indexed from the right: the local draws may carry a leading dim)."""
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, STATIONARY))
        pyro.sample("x", dist.Normal(z, NOISE), obs=x)
    markov = dist.Normal(RHO * z[..., :-1], STEP).log_prob(z[..., 1:])
    markov = markov - dist.Normal(0.0, STATIONARY).log_prob(z[..., 1:])
    pyro.factor("markov", markov.sum(-1))


def fitted_moments(fit, x):
    if fit.hidden is None:
        return fit.params["AutoNormal.locs.z"], fit.params["AutoNormal.scales.z"]
    weight = fit.params["AutoAmortizedNormal.encoder.layers.0.weight"]  # (2, 2k + 1): torch's (d_out, d_in)
    out = window_features(x, fit.window) @ weight.T + fit.params[ENCODER_BIAS]
    return out[:, 0], np.logaddexp(0.0, out[:, 1] + softplus_inverse(0.1))


@pytest.mark.slow
def test_hmm_gap_is_positive_and_a_window_closes_it_as_the_closed_form_says():
    x = hmm_data(0, N_HMM)
    gap0, mean, sd = best_window_loc_gap(x, 0)
    gap3, _, _ = best_window_loc_gap(x, 3)
    optimum = hmm_elbo(x, mean, sd)  # the F-VI (mean-field) optimum
    user_param = pyro.param("user_param", torch.tensor(1.5))  # the study must leave the caller's store alone
    result = amortization_gap(
        hmm_model,
        torch.as_tensor(x),
        hidden=[()],
        window=[0, 3],
        optim=pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.02 ** (1 / STEPS), "clip_norm": 1e6}),
        num_steps=STEPS,
        num_eval_particles=32,
        num_posterior_draws=20,
        progress_bar=False,
    )
    assert list(pyro.get_param_store().keys()) == ["user_param"] and pyro.param("user_param") is user_param
    fvi, avi0, avi3 = result.fvi, *result.avi
    exact = {}
    for fit in (fvi, avi0, avi3):
        exact[fit.name] = hmm_elbo(x, *fitted_moments(fit, x))
        # the diagnostic's Monte Carlo ELBO is the fitted guide's exact ELBO
        assert abs(fit.elbo - exact[fit.name]) < 4 * fit.elbo_se, fit.name
        assert fit.posterior["z"].shape == (20, N_HMM) and len(fit.losses) == STEPS
    print({"optimum": optimum, "gap0": gap0, "gap3": gap3, **{k: optimum - v for k, v in exact.items()}})
    print(result)
    # no affine window-0 encoder beats the closed-form bound; the trained ones come near their optima
    # (TRAINING_SLACK_* nats: the calibration run stopped at F-VI 0.89, A-VI 0.14 and 0.28 from them)
    assert exact[avi0.name] <= optimum - gap0 + 1e-6 * abs(optimum)
    assert exact[fvi.name] > optimum - TRAINING_SLACK_FVI
    assert exact[avi0.name] > optimum - gap0 - TRAINING_SLACK_AVI
    assert exact[avi3.name] > optimum - gap3 - TRAINING_SLACK_AVI
    # the reported gaps: positive, and the window removes most of it
    assert result.gap(avi0) > gap0 - TRAINING_SLACK_FVI - 4 * result.gap_se(avi0)
    assert result.gap(avi3) < gap3 + TRAINING_SLACK_AVI + 4 * result.gap_se(avi3)
    assert result.gap(avi3) < 0.1 * result.gap(avi0)
    # F-VI holds n free Gaussians; the encoders hold (2k + 2) x 2 numbers whatever n
    assert fvi.num_guide_params == 2 * N_HMM and avi3.num_guide_params == (7 + 1) * 2
