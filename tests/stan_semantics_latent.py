"""Stan's log densities for the latent-state and Gaussian-process ports, written out as Stan evaluates them.

Like :mod:`tests.stan_semantics`: each function ``<model>(u, d)`` takes the parameters on
*Stan's* unconstrained scale by site (``{site: 1-d array}``) and the posterior's data, and
returns Stan's ``log_prob(jacobian=True)`` up to a constant, with explicit loops where the
Stan program loops (the forward algorithm of the HMMs included).  Written from the Stan
programs in ``stan-dev/posteriordb`` (``posterior_database/models/stan/<model>.stan``).

Stan's own transforms are used (:func:`stan_constrain`, :func:`stan_unconstrain`):
``simplex`` is Stan's stick-breaking, ``ordered`` is ``x[1] = u[1]``,
``x[k] = x[k-1] + exp(u[k])``, ``positive_ordered`` the same with ``x[1] = exp(u[1])``.
NumPyro and Pyro unconstrain ``positive_ordered`` differently (``log(x)`` ordered), so
:data:`SUPPORTS` names each site's constraint: the tests compare on the constrained scale,
``log p(x) = lp_stan(u) - log|J_stan(u)|``, plus each library's own ``log|J|``.
"""

import numpy as np
from scipy import stats
from scipy.special import expit, gammaln, log_expit, logsumexp


# ---- Stan's transforms ----------------------------------------------------------------
def stan_constrain(kind, u):
    """Stan's constraining transform of one site: ``(x, log|J|)`` for unconstrained ``u`` (1-d)."""
    u = np.asarray(u, dtype=np.float64)
    if kind == "real":
        return u, 0.0
    if kind == "positive":
        return np.exp(u), float(u.sum())
    if kind in ("ordered", "positive_ordered"):
        x = np.empty_like(u)
        x[0] = np.exp(u[0]) if kind == "positive_ordered" else u[0]
        log_j = u[0] if kind == "positive_ordered" else 0.0
        for k in range(1, len(u)):
            x[k] = x[k - 1] + np.exp(u[k])
            log_j += u[k]
        return x, float(log_j)
    if kind == "simplex":  # stick-breaking, K - 1 free coordinates
        size = len(u) + 1
        x = np.empty(size)
        stick, log_j = 1.0, 0.0
        for k in range(size - 1):
            adj = u[k] - np.log(size - k - 1)  # Stan: y[k] + log(1 / (K - k)), k 1-based
            z = expit(adj)
            x[k] = stick * z
            log_j += log_expit(adj) + log_expit(-adj) + np.log(stick)
            stick -= x[k]
        x[-1] = stick
        return x, float(log_j)
    raise ValueError(f"unknown constraint {kind!r}")


def stan_unconstrain(kind, x):
    """The inverse of :func:`stan_constrain`: Stan's unconstrained value of one site (1-d)."""
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    if kind == "real":
        return x
    if kind == "positive":
        return np.log(x)
    if kind in ("ordered", "positive_ordered"):
        first = np.log(x[:1]) if kind == "positive_ordered" else x[:1]
        return np.concatenate([first, np.log(np.diff(x))])
    if kind == "simplex":
        size = len(x)
        u = np.empty(size - 1)
        stick = 1.0
        for k in range(size - 1):
            z = x[k] / stick
            u[k] = np.log(z) - np.log1p(-z) + np.log(size - k - 1)
            stick -= x[k]
        return u
    raise ValueError(f"unknown constraint {kind!r}")


def _jacobian(model, u):
    return sum(stan_constrain(kind, u[site])[1] for site, kind in SUPPORTS[model].items())


def _params(model, u):
    return {site: stan_constrain(kind, u[site])[0] for site, kind in SUPPORTS[model].items()}


def _forward(log_theta, log_emission):
    """Stan's forward algorithm, loop for loop: ``log_theta[j, k]``, ``log_emission[t, k]``."""
    n, size = log_emission.shape
    gamma = np.empty((n, size))
    for k in range(size):
        gamma[0, k] = log_emission[0, k]
    for t in range(1, n):
        for k in range(size):
            acc = np.empty(size)
            for j in range(size):
                acc[j] = gamma[t - 1, j] + log_theta[j, k] + log_emission[t, k]
            gamma[t, k] = logsumexp(acc)
    return logsumexp(gamma[n - 1])


# ---- the models ------------------------------------------------------------------------
def hmm_example(u, d):
    p = _params("hmm_example", u)
    theta = np.stack([p["theta1"], p["theta2"]])  # simplexes with Stan's implicit flat prior
    mu, y = p["mu"], np.asarray(d["y"], dtype=np.float64)
    lp = _jacobian("hmm_example", u)
    lp += stats.norm.logpdf(mu[0], 3, 1) + stats.norm.logpdf(mu[1], 10, 1)
    log_emission = np.array([[stats.norm.logpdf(y[t], mu[k], 1) for k in range(d["K"])] for t in range(d["N"])])
    return lp + _forward(np.log(theta), log_emission)


def _hmm_drive(model, u, d, emission):
    p = _params(model, u)
    theta = np.stack([p["theta1"], p["theta2"]])
    phi, lam, alpha = p["phi"], p["lambda"], np.asarray(d["alpha"], dtype=np.float64)
    lp = _jacobian(model, u)
    for k in range(d["K"]):
        lp += stats.dirichlet.logpdf(theta[k], alpha[k])
    lp += stats.norm.logpdf(phi[0], 0, 1) + stats.norm.logpdf(phi[1], 3, 1)
    lp += stats.norm.logpdf(lam[0], 0, 1) + stats.norm.logpdf(lam[1], 3, 1)
    log_emission = np.array([[emission(t, phi[k], lam[k]) for k in range(d["K"])] for t in range(d["N"])])
    return lp + _forward(np.log(theta), log_emission)


def hmm_drive_0(u, d):
    def emission(t, phi_k, lambda_k):  # exponential_lpdf(u[t] | phi[k]) + exponential_lpdf(v[t] | lambda[k])
        return stats.expon.logpdf(d["u"][t], scale=1 / phi_k) + stats.expon.logpdf(d["v"][t], scale=1 / lambda_k)

    return _hmm_drive("hmm_drive_0", u, d, emission)


def hmm_drive_1(u, d):
    def emission(t, phi_k, lambda_k):  # normal_lpdf(u[t] | phi[k], tau) + normal_lpdf(v[t] | lambda[k], rho)
        return stats.norm.logpdf(d["u"][t], phi_k, d["tau"]) + stats.norm.logpdf(d["v"][t], lambda_k, d["rho"])

    return _hmm_drive("hmm_drive_1", u, d, emission)


def _gp_exp_quad_cov(x, alpha, rho):
    n = len(x)
    cov = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            cov[i, j] = alpha**2 * np.exp(-((x[i] - x[j]) ** 2) / (2 * rho**2))
    return cov


def gp_regr(u, d):
    p = _params("gp_regr", u)
    rho, alpha, sigma = p["rho"][0], p["alpha"][0], p["sigma"][0]
    n, x = d["N"], np.asarray(d["x"], dtype=np.float64)
    cov = _gp_exp_quad_cov(x, alpha, rho) + np.diag(np.full(n, sigma))  # sigma, as the Stan program has it
    lp = _jacobian("gp_regr", u)
    lp += stats.gamma.logpdf(rho, 25, scale=1 / 4) + stats.norm.logpdf(alpha, 0, 2) + stats.norm.logpdf(sigma, 0, 1)
    return lp + stats.multivariate_normal.logpdf(np.asarray(d["y"], dtype=np.float64), np.zeros(n), cov)


def gp_pois_regr(u, d):
    p = _params("gp_pois_regr", u)
    rho, alpha, f_tilde = p["rho"][0], p["alpha"][0], p["f_tilde"]
    n, x = d["N"], np.asarray(d["x"], dtype=np.float64)
    chol = np.linalg.cholesky(_gp_exp_quad_cov(x, alpha, rho) + np.diag(np.full(n, 1e-10)))
    f = np.zeros(n)
    for i in range(n):
        for j in range(i + 1):
            f[i] += chol[i, j] * f_tilde[j]
    lp = _jacobian("gp_pois_regr", u)
    lp += stats.gamma.logpdf(rho, 25, scale=1 / 4) + stats.norm.logpdf(alpha, 0, 2) + stats.norm.logpdf(f_tilde).sum()
    for i in range(n):  # poisson_log_lpmf(k[i] | f[i])
        lp += d["k"][i] * f[i] - np.exp(f[i]) - gammaln(d["k"][i] + 1)
    return lp


SUPPORTS = {
    "hmm_example": {"theta1": "simplex", "theta2": "simplex", "mu": "positive_ordered"},
    "hmm_drive_0": {"theta1": "simplex", "theta2": "simplex", "phi": "positive_ordered", "lambda": "positive_ordered"},
    "hmm_drive_1": {"theta1": "simplex", "theta2": "simplex", "phi": "ordered", "lambda": "ordered"},
    "gp_regr": {"rho": "positive", "alpha": "positive", "sigma": "positive"},
    "gp_pois_regr": {"rho": "positive", "alpha": "positive", "f_tilde": "real"},
}

LOG_DENSITIES = {f.__name__: f for f in [hmm_example, hmm_drive_0, hmm_drive_1, gp_regr, gp_pois_regr]}
