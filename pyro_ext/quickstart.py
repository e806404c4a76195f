"""Quick start: Pyro's NUTS on a posteriordb posterior, an ArviZ summary and the reference score.

``python -m pyro_ext [--posterior NAME] [--num-samples N] ...`` runs on the embedded
posteriordb subset by default (no download).  Pyro's ``MCMC`` returns latent sites only,
so the transformed parameters the reference draws report (``pyro.deterministic`` sites)
are recovered with ``Predictive``.
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pyro
import torch
from pyro.infer import MCMC, NUTS

from adapters import inference_data, metrics, posteriordb, quickstart
from pyro_ext.infer.sweep_runs import with_deterministic_sites

DEFAULT_POSTERIOR = "eight_schools-eight_schools_noncentered"
SAMPLERS = {"nuts": "Pyro NUTS"}


def run(
    posterior: str = DEFAULT_POSTERIOR,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 2,
    seed: int = 0,
    path: str | None = None,
    sampler: str = "nuts",
) -> tuple[az.InferenceData, metrics.ReferenceScore]:
    """Sample ``posterior`` with Pyro's NUTS (chains one after another, float64)."""
    torch.set_default_dtype(torch.float64)
    pyro.set_rng_seed(seed)
    port = posteriordb.pyro_model(posterior, path)
    mcmc = MCMC(
        NUTS(port.model),
        warmup_steps=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        mp_context="spawn" if num_chains > 1 else None,
        disable_progbar=True,
    )
    mcmc.run(**port.data)
    idata = inference_data.from_mcmc(mcmc, log_likelihood=False)
    samples = with_deterministic_sites(port.model, mcmc.get_samples(), **port.data)
    grouped = {
        k: np.asarray(v.detach()).reshape((num_chains, num_samples) + tuple(v.shape[1:])) for k, v in samples.items()
    }
    draws = metrics.flatten_draws(grouped)
    # the posterior, not only its draws: its positive parameters get log-scale rows
    return idata, metrics.reference_score(draws, posteriordb.load(posterior, path))


def main(argv: list[str] | None = None) -> int:
    return quickstart.main("python -m pyro_ext", "Pyro", run, SAMPLERS, argv)
