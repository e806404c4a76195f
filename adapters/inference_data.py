"""Results -> ``arviz.InferenceData``: the one module that talks to ArviZ's converters.

Written against arviz 0.2x (``InferenceData``); arviz 1.x (Python >= 3.12) returns a
``DataTree`` and would be ported here alone.

* :func:`from_mcmc` takes a NumPyro or a Pyro ``MCMC`` object and returns ArviZ's own
  conversion (posterior, sample_stats, log_likelihood, observed_data); a Pyro kernel's
  per-draw statistics are added under the names ``az.from_numpyro`` gives its NumPyro twin's.
* :func:`from_samples` builds one from arrays shaped ``(chains, draws, *event)``, for the
  library's own result objects (SMC, AIS, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

# library / NumPyro names -> ArviZ sample_stats names: exactly the renames ``az.from_numpyro`` makes,
# so a statistic has one name whichever converter made the InferenceData. Other statistics keep the
# kernel's name (DR-HMC's ``stage``, ``num_grad_evals``), as ``az.from_numpyro`` keeps them.
SAMPLE_STAT_NAMES = {
    "accept_prob": "acceptance_rate",
    "num_steps": "n_steps",
    "potential_energy": "lp",  # negated on the way
    "adapt_state.step_size": "step_size",
}


def tree_depth(num_steps: Any) -> np.ndarray:
    """ArviZ's ``tree_depth`` statistic, ``floor(log2(n_steps)) + 1``, as ``az.from_numpyro`` derives it.

    It is NUTS's tree depth when the steps come from a NUTS tree; for a fixed-length kernel such as
    DR-HMC it is only the binary order of magnitude of the leapfrog steps (0 where no step ran).
    """
    num_steps = np.asarray(num_steps)
    safe = np.maximum(num_steps, 1)
    return np.where(num_steps > 0, np.log2(safe).astype(int) + 1, 0)


def _rename_stats(stats: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in stats.items():
        value = np.asarray(value)
        if key == "potential_energy":
            value = -value
        out[SAMPLE_STAT_NAMES.get(key, key)] = value
    return out


def from_mcmc(mcmc: Any, log_likelihood: bool = True, **kwargs: Any):
    """ArviZ ``InferenceData`` of a NumPyro or Pyro ``MCMC`` run.

    NumPyro: exactly ``az.from_numpyro``, which reads the kernel's default fields and every
    field passed as ``extra_fields=`` to ``mcmc.run`` (renamed by :data:`SAMPLE_STAT_NAMES`,
    plus ArviZ's :func:`tree_depth` from ``num_steps``).  Pyro: ``az.from_pyro`` (posterior,
    ``diverging``, log likelihood), plus the per-draw statistics a library kernel keeps
    (``kernel.get_sample_stats()``, e.g. DR-HMC's ``stage``) when the chain ran in this process
    (one chain), under the same names ``az.from_numpyro`` gives the NumPyro twin's.
    Extra keyword arguments go to the ArviZ converter (``coords``, ``dims``, ...).
    """
    import arviz as az

    module = type(mcmc).__module__
    if module.startswith("numpyro"):
        return az.from_numpyro(mcmc, log_likelihood=log_likelihood, **kwargs)
    if module.startswith("pyro"):
        idata = az.from_pyro(mcmc, log_likelihood=log_likelihood, **kwargs)
        return _add_kernel_stats(idata, mcmc)
    raise TypeError(f"mcmc must be a numpyro.infer.MCMC or pyro.infer.MCMC object, got {type(mcmc).__name__}")


def from_samples(
    samples: Mapping[str, Any],
    sample_stats: Mapping[str, Any] | None = None,
    log_likelihood: Mapping[str, Any] | None = None,
    observed_data: Mapping[str, Any] | None = None,
    posterior_predictive: Mapping[str, Any] | None = None,
    **kwargs: Any,
):
    """ArviZ ``InferenceData`` from dicts of arrays shaped ``(chains, draws, *event)``.

    ``sample_stats`` keys are renamed to ArviZ's names (``accept_prob`` ->
    ``acceptance_rate``, ``num_steps`` -> ``n_steps``, ``potential_energy`` -> ``lp``
    negated, ...).  Arrays may be JAX or torch; they are converted to numpy.
    """
    import arviz as az

    def to_numpy(d):
        return None if d is None else {k: as_numpy(v) for k, v in d.items()}

    posterior = to_numpy(samples)
    shapes = {k: v.shape[:2] for k, v in posterior.items()}
    if any(len(s) < 2 for s in shapes.values()) or len(set(shapes.values())) > 1:
        raise ValueError(f"samples must be arrays shaped (chains, draws, ...) with equal (chains, draws); got {shapes}")
    return az.from_dict(
        posterior=posterior,
        sample_stats=None if sample_stats is None else _rename_stats(to_numpy(sample_stats)),
        log_likelihood=to_numpy(log_likelihood),
        observed_data=to_numpy(observed_data),
        posterior_predictive=to_numpy(posterior_predictive),
        **kwargs,
    )


def as_numpy(value: Any) -> np.ndarray:
    """A numpy array from a numpy, JAX or torch array (detached, on the CPU)."""
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _add_kernel_stats(idata, mcmc):
    """Sampling-phase statistics a Pyro kernel of this library kept, as ``sample_stats``."""
    import xarray as xr

    get_stats = getattr(mcmc.kernel, "get_sample_stats", None)
    stats = get_stats() if get_stats is not None else {}
    num_chains = idata.posterior.sizes["chain"]
    if not stats or num_chains != 1 or "warmup" not in stats:
        return idata  # chains that ran in worker processes took their kernels' statistics with them
    sampling = ~np.asarray(stats["warmup"], dtype=bool)
    renamed = _rename_stats({k: np.asarray(v)[sampling][None] for k, v in stats.items() if k != "warmup"})
    if "n_steps" in renamed:  # as az.from_numpyro adds it to a NumPyro kernel's statistics
        renamed["tree_depth"] = tree_depth(renamed["n_steps"])
    draws = idata.posterior.sizes["draw"]
    if any(v.shape[1] != draws for v in renamed.values()):
        return idata
    extra = xr.Dataset({k: (("chain", "draw"), v) for k, v in renamed.items()}, coords=idata.posterior.coords)
    if "sample_stats" in idata.groups():
        merged = idata.sample_stats.drop_vars([k for k in renamed if k in idata.sample_stats]).merge(extra)
        idata.sample_stats = merged
    else:
        idata.add_groups(sample_stats=extra)
    return idata
