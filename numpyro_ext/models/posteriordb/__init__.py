"""NumPyro ports of posteriordb models, one module per Stan model.

Each module defines ``model(**data)`` whose keyword arguments are the Stan program's data
names, and matches the Stan program's parameterisation, constraints and priors (the Stan
program, read from ``stan-dev/posteriordb`` at ``posterior_database/models/stan/<name>.stan``,
is the specification; it is not copied here).  Transformed parameters are
``numpyro.deterministic`` sites named as in the reference draws.  Look ports up with
:func:`adapters.posteriordb.numpyro_model`.
"""
