"""optax ``GradientTransformation``s of ``ppl-ext``, usable directly in NumPyro's ``SVI``.

Each method lives in its own module; this package re-exports its public constructors.
"""
