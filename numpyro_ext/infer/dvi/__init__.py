"""Deterministic variational inference (DVI) for Bayesian MLPs (Wu et al., ICLR 2019, arXiv:1810.03958).

The math core, pure JAX: moment propagation (:mod:`.moments`), closed-form expected log-likelihoods
(:mod:`.likelihoods`), KL terms with the empirical-Bayes prior (:mod:`.priors`), and the network's
parameters, ELBO and predictions (:mod:`.core`); the NumPyro shell (:mod:`.network`): :class:`DVIMLP`, a
pure init/apply pair with NumPyro ``param`` sites, and :class:`DVI_ELBO`, the DVI loss for NumPyro's ``SVI``.
The network is described by :class:`adapters.dvi.DVIConfig` (shared with the Pyro backend).
"""

from adapters.dvi import DVIConfig
from numpyro_ext.infer.dvi.core import (
    DVIParams,
    ELBOTerms,
    LayerParams,
    check_params,
    dvi_elbo,
    dvi_elbo_terms,
    dvi_kl,
    dvi_predict,
    init_params,
    mlp_moments,
)
from numpyro_ext.infer.dvi.likelihoods import (
    categorical_expected_log_likelihood,
    categorical_predictive_probabilities,
    expected_log_softmax,
    gaussian_expected_log_likelihood,
    heteroscedastic_expected_log_likelihood,
    homoscedastic_expected_log_likelihood,
    regression_predictive,
)
from numpyro_ext.infer.dvi.mcvi import (
    log_predictive_density,
    mcvi_elbo,
    mcvi_expected_log_likelihood,
    output_log_likelihood,
    sample_outputs,
)
from numpyro_ext.infer.dvi.moments import (
    GaussianMoments,
    linear_certain_moments,
    linear_moments,
    relu_correlation_term,
    relu_mean_var,
    relu_moments,
    standard_normal_pdf,
)
from numpyro_ext.infer.dvi.network import DVI_ELBO, DVIMLP, MCVI_ELBO
from numpyro_ext.infer.dvi.priors import empirical_bayes_kl, empirical_bayes_prior_variance, gaussian_kl

__all__ = [
    "DVIConfig",
    "DVIMLP",
    "DVI_ELBO",
    "DVIParams",
    "ELBOTerms",
    "GaussianMoments",
    "LayerParams",
    "MCVI_ELBO",
    "categorical_expected_log_likelihood",
    "categorical_predictive_probabilities",
    "check_params",
    "dvi_elbo",
    "dvi_elbo_terms",
    "dvi_kl",
    "dvi_predict",
    "empirical_bayes_kl",
    "empirical_bayes_prior_variance",
    "expected_log_softmax",
    "gaussian_expected_log_likelihood",
    "gaussian_kl",
    "heteroscedastic_expected_log_likelihood",
    "homoscedastic_expected_log_likelihood",
    "init_params",
    "linear_certain_moments",
    "linear_moments",
    "log_predictive_density",
    "mcvi_elbo",
    "mcvi_expected_log_likelihood",
    "mlp_moments",
    "output_log_likelihood",
    "regression_predictive",
    "relu_correlation_term",
    "relu_mean_var",
    "relu_moments",
    "sample_outputs",
    "standard_normal_pdf",
]
