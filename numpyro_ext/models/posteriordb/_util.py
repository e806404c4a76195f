"""Helpers shared by the NumPyro ports."""

import jax
import jax.numpy as jnp
import numpy as np


def as_float(x) -> jax.Array:
    """Data as an array of JAX's default float type (float32, or float64 under x64)."""
    return jnp.asarray(x, dtype=jax.dtypes.canonicalize_dtype(np.float64))
