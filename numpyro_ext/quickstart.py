"""Quick start: NUTS on a posteriordb posterior, an ArviZ summary and the reference score.

``python -m numpyro_ext [--posterior NAME] [--num-samples N] ...`` runs on the embedded
posteriordb subset by default (no download).
"""

from __future__ import annotations

import argparse
import time

import arviz as az
import jax
from numpyro.infer import MCMC, NUTS

from adapters import inference_data, metrics, posteriordb

DEFAULT_POSTERIOR = "eight_schools-eight_schools_noncentered"


def run(
    posterior: str = DEFAULT_POSTERIOR,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 4,
    seed: int = 0,
    path: str | None = None,
) -> tuple[az.InferenceData, metrics.ReferenceScore]:
    """Sample ``posterior`` with NumPyro's NUTS; return the ArviZ data and the reference score."""
    port = posteriordb.numpyro_model(posterior, path)
    mcmc = MCMC(
        NUTS(port.model),
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(seed), extra_fields=("potential_energy", "accept_prob", "num_steps"), **port.data)
    idata = inference_data.from_mcmc(mcmc)
    draws = metrics.flatten_draws(mcmc.get_samples(group_by_chain=True))
    reference = posteriordb.load(posterior, path).reference_draws
    return idata, metrics.reference_score(draws, reference)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m numpyro_ext", description=__doc__.splitlines()[0])
    parser.add_argument("--posterior", default=DEFAULT_POSTERIOR, help="posteriordb posterior name")
    parser.add_argument("--num-warmup", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--path", default=None, help="posteriordb folder (default: $POSTERIOR_DB_PATH or embedded)")
    args = parser.parse_args(argv)
    print(f"database: {posteriordb.find_database(args.path)}")
    print(f"NumPyro NUTS on {args.posterior}: {args.num_chains} chains x {args.num_samples} draws")
    start = time.perf_counter()
    idata, score = run(args.posterior, args.num_warmup, args.num_samples, args.num_chains, args.seed, args.path)
    print(f"sampled in {time.perf_counter() - start:.1f} s\n")
    print(az.summary(idata).to_string())
    print("\nscore against the posteriordb reference draws (units of reference sd):")
    print(score)
    return 0 if score.passed else 1
