"""Pyro ports of posteriordb models, one module per Stan model.

Same contract as :mod:`numpyro_ext.models.posteriordb`: ``model(**data)`` with the Stan
program's data names, matching its parameterisation, constraints and priors, with
transformed parameters as ``pyro.deterministic`` sites.  Data become tensors of torch's
default dtype.  Look ports up with :func:`adapters.posteriordb.pyro_model`.
"""
