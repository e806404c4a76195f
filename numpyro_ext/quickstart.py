"""Quick start: DR-HMC (or NUTS) on a posteriordb posterior, an ArviZ summary and the reference score.

``python -m numpyro_ext [--posterior NAME] [--num-samples N] ...`` runs on the embedded
posteriordb subset by default (no download).
"""

from __future__ import annotations

import arviz as az
import jax
from numpyro.infer import MCMC, NUTS

from adapters import inference_data, metrics, posteriordb, quickstart
from numpyro_ext.infer import DRHMC

DEFAULT_POSTERIOR = "eight_schools-eight_schools_noncentered"
SAMPLERS = {"drhmc": "NumPyro DR-HMC (ppl-ext, 3 stages)", "nuts": "NumPyro NUTS"}


def run(
    posterior: str = DEFAULT_POSTERIOR,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 4,
    seed: int = 0,
    path: str | None = None,
    sampler: str = "drhmc",
) -> tuple[az.InferenceData, metrics.ReferenceScore]:
    """Sample ``posterior`` with DR-HMC or NUTS; return the ArviZ data and the reference score."""
    port = posteriordb.numpyro_model(posterior, path)
    kernel = DRHMC(port.model) if sampler == "drhmc" else NUTS(port.model)
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method="vectorized",
        progress_bar=False,
    )
    fields = () if sampler == "drhmc" else ("potential_energy", "accept_prob", "num_steps")  # DRHMC collects its own
    mcmc.run(jax.random.PRNGKey(seed), extra_fields=fields, **port.data)
    idata = inference_data.from_mcmc(mcmc)
    draws = metrics.flatten_draws(mcmc.get_samples(group_by_chain=True))
    # the posterior, not only its draws: its positive parameters get log-scale rows
    return idata, metrics.reference_score(draws, posteriordb.load(posterior, path))


def main(argv: list[str] | None = None) -> int:
    return quickstart.main("python -m numpyro_ext", "NumPyro", run, SAMPLERS, argv)
