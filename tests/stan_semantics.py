"""The ported posteriordb models' log densities written out the way Stan evaluates them.

Each function takes the unconstrained parameters by site (``{site: array}``) and the
posterior's data, and returns Stan's ``log_prob(jacobian=True)`` up to a constant, with
explicit loops where the Stan program loops.  Written from the Stan programs in
``stan-dev/posteriordb`` (``posterior_database/models/stan/<model>.stan``); these are the
ground truth the ports are tested against.
"""

import numpy as np
from scipy import stats
from scipy.special import expit, log_expit


def _log_dsigmoid(u):
    # log of d/du sigmoid(u): the Jacobian of a (0, 1) bound
    return log_expit(u) + log_expit(-u)


def eight_schools_centered(u, d):
    mu, tau, theta = u["mu"][0], np.exp(u["tau"][0]), u["theta"]
    lp = u["tau"][0]
    lp += stats.cauchy.logpdf(tau, 0, 5) + stats.norm.logpdf(theta, mu, tau).sum()
    lp += stats.norm.logpdf(d["y"], theta, d["sigma"]).sum() + stats.norm.logpdf(mu, 0, 5)
    return lp


def eight_schools_noncentered(u, d):
    mu, tau, theta_trans = u["mu"][0], np.exp(u["tau"][0]), u["theta_trans"]
    theta = theta_trans * tau + mu
    lp = u["tau"][0]
    lp += stats.norm.logpdf(theta_trans, 0, 1).sum() + stats.norm.logpdf(d["y"], theta, d["sigma"]).sum()
    lp += stats.norm.logpdf(mu, 0, 5) + stats.cauchy.logpdf(tau, 0, 5)
    return lp


def kidscore_momiq(u, d):
    beta, sigma = u["beta"], np.exp(u["sigma"][0])
    lp = u["sigma"][0] + stats.cauchy.logpdf(sigma, 0, 2.5)
    return lp + stats.norm.logpdf(d["kid_score"], beta[0] + beta[1] * d["mom_iq"], sigma).sum()


def blr(u, d):
    beta, sigma = u["beta"], np.exp(u["sigma"][0])
    lp = u["sigma"][0] + stats.norm.logpdf(beta, 0, 10).sum() + stats.norm.logpdf(sigma, 0, 10)
    return lp + stats.norm.logpdf(d["y"], np.asarray(d["X"]) @ beta, sigma).sum()


def arK(u, d):
    alpha, beta, sigma = u["alpha"][0], u["beta"], np.exp(u["sigma"][0])
    K, T, y = d["K"], d["T"], d["y"]
    lp = u["sigma"][0] + stats.norm.logpdf(alpha, 0, 10) + stats.norm.logpdf(beta, 0, 10).sum()
    lp += stats.cauchy.logpdf(sigma, 0, 2.5)
    for t in range(K + 1, T + 1):  # Stan's 1-based loop
        mu = alpha
        for k in range(1, K + 1):
            mu = mu + beta[k - 1] * y[t - k - 1]
        lp += stats.norm.logpdf(y[t - 1], mu, sigma)
    return lp


def garch11(u, d):
    mu = u["mu"][0]
    alpha0 = np.exp(u["alpha0"][0])
    alpha1 = expit(u["alpha1"][0])
    beta1 = (1 - alpha1) * expit(u["beta1_unit"][0])  # upper bound 1 - alpha1
    lp = u["alpha0"][0] + _log_dsigmoid(u["alpha1"][0]) + np.log(1 - alpha1) + _log_dsigmoid(u["beta1_unit"][0])
    y, T = d["y"], d["T"]
    sigma = np.empty(T)
    sigma[0] = d["sigma1"]
    for t in range(1, T):
        sigma[t] = np.sqrt(alpha0 + alpha1 * (y[t - 1] - mu) ** 2 + beta1 * sigma[t - 1] ** 2)
    return lp + stats.norm.logpdf(y, mu, sigma).sum()


LOG_DENSITIES = {
    f.__name__: f for f in [eight_schools_centered, eight_schools_noncentered, kidscore_momiq, blr, arK, garch11]
}
