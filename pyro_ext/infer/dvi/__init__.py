"""Deterministic variational inference (DVI) for Bayesian MLPs in torch/Pyro (Wu et al., ICLR 2019, arXiv:1810.03958).

The twin of :mod:`numpyro_ext.infer.dvi`, with the same names.  The math core, pure torch: moment propagation
(:mod:`.moments`), closed-form expected log-likelihoods (:mod:`.likelihoods`), KL terms with the empirical-Bayes
prior (:mod:`.priors`), the network's parameters, ELBO and predictions (:mod:`.core`) and the Monte Carlo baseline
with the local reparameterisation trick (:mod:`.mcvi`); the Pyro shell (:mod:`.network`): :class:`DVIMLP`, a
``PyroModule`` whose variational parameters are ``PyroParam`` s, and :class:`DVI_ELBO` / :class:`MCVI_ELBO`,
``pyro.infer.ELBO`` losses for Pyro's ``SVI``.  The network is described by :class:`adapters.dvi.DVIConfig`
(shared with the NumPyro backend); weights move between backends with :meth:`DVIMLP.load_params` /
:meth:`DVIMLP.param_dict` (or :func:`convert_params` / :func:`params_as_dict`).
"""

from adapters.dvi import DVIConfig, minibatch_scale
from pyro_ext.infer.dvi.core import (
    DVIParams,
    ELBOTerms,
    LayerParams,
    check_params,
    convert_params,
    dvi_elbo,
    dvi_elbo_terms,
    dvi_kl,
    dvi_predict,
    expected_log_likelihood,
    init_params,
    mlp_moments,
    params_as_dict,
)
from pyro_ext.infer.dvi.likelihoods import (
    categorical_expected_log_likelihood,
    categorical_predictive_probabilities,
    expected_log_softmax,
    gaussian_expected_log_likelihood,
    heteroscedastic_expected_log_likelihood,
    homoscedastic_expected_log_likelihood,
    regression_predictive,
)
from pyro_ext.infer.dvi.mcvi import (
    log_predictive_density,
    mcvi_elbo,
    mcvi_expected_log_likelihood,
    output_log_likelihood,
    sample_outputs,
)
from pyro_ext.infer.dvi.moments import (
    GaussianMoments,
    linear_certain_moments,
    linear_moments,
    relu_correlation_term,
    relu_mean_var,
    relu_moments,
    standard_normal_pdf,
)
from pyro_ext.infer.dvi.network import DVI_ELBO, DVIMLP, MCVI_ELBO
from pyro_ext.infer.dvi.priors import empirical_bayes_kl, empirical_bayes_prior_variance, gaussian_kl

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
    "convert_params",
    "dvi_elbo",
    "dvi_elbo_terms",
    "dvi_kl",
    "dvi_predict",
    "empirical_bayes_kl",
    "empirical_bayes_prior_variance",
    "expected_log_likelihood",
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
    "minibatch_scale",
    "mlp_moments",
    "output_log_likelihood",
    "params_as_dict",
    "regression_predictive",
    "relu_correlation_term",
    "relu_mean_var",
    "relu_moments",
    "sample_outputs",
    "standard_normal_pdf",
]
