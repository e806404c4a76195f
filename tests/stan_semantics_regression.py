"""Stan's log densities for the regression, ARMA and mixture ports, written out as Stan evaluates them.

Like :mod:`tests.stan_semantics`: each function ``<model>(u, d)`` takes the unconstrained
parameters by site (``{site: 1-d array}``) and the posterior's data, and returns Stan's
``log_prob(jacobian=True)`` up to a constant, with explicit loops where the Stan program
loops (and elementwise loops for the transformed data).  Written from the Stan programs in
``stan-dev/posteriordb`` (``posterior_database/models/stan/<model>.stan``).  Every
constraint here (``<lower=0>``: ``exp``; ``<lower=0, upper=1>``: inverse logit;
``ordered``: ``x[1] = u[1]``, ``x[2] = x[1] + exp(u[2])``) is unconstrained the same way in
Stan, NumPyro and Pyro, so the ports' unconstrained coordinates are Stan's.
"""

import numpy as np
from scipy import stats
from scipy.special import expit, log_expit, logsumexp


def _positive(u):
    """Stan's ``<lower=0>`` transform of one scalar site: ``(value, log|J|)``."""
    return np.exp(u[0]), u[0]


def _linear_regression(u, y, columns, sigma_prior=None):
    """Flat ``beta``; ``y[n] ~ normal(beta[1] + sum_k beta[k + 1] * columns[k][n], sigma)``."""
    beta = u["beta"]
    sigma, lp = _positive(u["sigma"])
    if sigma_prior is not None:
        lp += sigma_prior(sigma)
    for n in range(len(y)):
        mean = beta[0]
        for k, column in enumerate(columns):
            mean += beta[k + 1] * column[n]
        lp += stats.norm.logpdf(y[n], mean, sigma)
    return lp


def arma11(u, d):
    mu, phi, theta = u["mu"][0], u["phi"][0], u["theta"][0]
    sigma, lp = _positive(u["sigma"])
    lp += stats.norm.logpdf(mu, 0, 10) + stats.norm.logpdf(phi, 0, 2) + stats.norm.logpdf(theta, 0, 2)
    lp += stats.cauchy.logpdf(sigma, 0, 2.5)
    y, T = d["y"], d["T"]
    nu, err = np.empty(T), np.empty(T)
    nu[0] = mu + phi * mu
    err[0] = y[0] - nu[0]
    for t in range(1, T):
        nu[t] = mu + phi * y[t - 1] + theta * err[t - 1]
        err[t] = y[t] - nu[t]
    return lp + stats.norm.logpdf(err, 0, sigma).sum()


def earn_height(u, d):
    return _linear_regression(u, d["earn"], [d["height"]])


def log10earn_height(u, d):
    log10_earn = np.array([np.log10(e) for e in d["earn"]])
    return _linear_regression(u, log10_earn, [d["height"]])


def logearn_interaction(u, d):
    inter = np.array([h * m for h, m in zip(d["height"], d["male"], strict=True)])
    return _linear_regression(u, np.log(d["earn"]), [d["height"], d["male"], inter])


def kidscore_interaction(u, d):
    inter = np.array([h * iq for h, iq in zip(d["mom_hs"], d["mom_iq"], strict=True)])
    return _linear_regression(
        u, d["kid_score"], [d["mom_hs"], d["mom_iq"], inter], sigma_prior=lambda s: stats.cauchy.logpdf(s, 0, 2.5)
    )


def kidscore_interaction_c(u, d):
    c_mom_hs = d["mom_hs"] - np.mean(d["mom_hs"])
    c_mom_iq = d["mom_iq"] - np.mean(d["mom_iq"])
    return _linear_regression(u, d["kid_score"], [c_mom_hs, c_mom_iq, c_mom_hs * c_mom_iq])


def kidscore_mom_work(u, d):
    work = [np.array([float(w == level) for w in d["mom_work"]]) for level in (2, 3, 4)]
    return _linear_regression(u, d["kid_score"], work)


def logmesquite_logvas(u, d):
    diam1, diam2 = d["diam1"], d["diam2"]
    columns = [
        np.log(diam1 * diam2 * d["canopy_height"]),
        np.log(diam1 * diam2),
        np.log(diam1 / diam2),
        np.log(d["total_height"]),
        np.log(d["density"]),
        d["group"],
    ]
    return _linear_regression(u, np.log(d["weight"]), columns)


def mesquite(u, d):
    columns = [d[k] for k in ("diam1", "diam2", "canopy_height", "total_height", "density", "group")]
    return _linear_regression(u, d["weight"], columns)


def nes(u, d):
    age = [np.array([float(a == level) for a in d["age_discrete"]]) for level in (2, 3, 4)]
    columns = [d["real_ideo"], d["race_adj"], *age, d["educ1"], d["gender"], d["income"]]
    return _linear_regression(u, d["partyid7"], columns)


def kilpisjarvi(u, d):
    alpha, beta = u["alpha"][0], u["beta"][0]
    sigma, lp = _positive(u["sigma"])
    lp += stats.norm.logpdf(alpha, d["pmualpha"], d["psalpha"]) + stats.norm.logpdf(beta, d["pmubeta"], d["psbeta"])
    for n in range(d["N"]):
        lp += stats.norm.logpdf(d["y"][n], alpha + beta * d["x"][n], sigma)
    return lp


def low_dim_gauss_mix(u, d):
    mu = np.array([u["mu"][0], u["mu"][0] + np.exp(u["mu"][1])])  # ordered[2]
    lp = u["mu"][1]
    sigma = np.exp(u["sigma"])
    lp += u["sigma"].sum()
    theta = expit(u["theta"][0])
    lp += log_expit(u["theta"][0]) + log_expit(-u["theta"][0])
    lp += stats.norm.logpdf(sigma, 0, 2).sum() + stats.norm.logpdf(mu, 0, 2).sum() + stats.beta.logpdf(theta, 5, 5)
    for n in range(d["N"]):
        y = d["y"][n]
        lp += logsumexp(
            [
                np.log(theta) + stats.norm.logpdf(y, mu[0], sigma[0]),
                np.log1p(-theta) + stats.norm.logpdf(y, mu[1], sigma[1]),
            ]
        )
    return lp


LOG_DENSITIES = {
    f.__name__: f
    for f in [
        arma11,
        earn_height,
        log10earn_height,
        logearn_interaction,
        kidscore_interaction,
        kidscore_interaction_c,
        kidscore_mom_work,
        logmesquite_logvas,
        mesquite,
        nes,
        kilpisjarvi,
        low_dim_gauss_mix,
    ]
}
