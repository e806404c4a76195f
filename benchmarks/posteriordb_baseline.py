"""Study ``posteriordb-baseline``: NumPyro NUTS and HMC on every ported posteriordb posterior.

Per posterior and algorithm: gradient evaluations of the sampling phase, the smallest bulk
ESS, ESS per gradient, the reference score (max z_mean, max |log sd ratio|, max quantile
error, worst parameter, pass/fail) and wall time.  The peer of every later algorithm is
NUTS: the table reports each algorithm's ESS/grad as a ratio to NUTS on the same posterior.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from tqdm import tqdm

from benchmarks._harness import ResultFile, table

ALGORITHMS = ("nuts", "hmc")
HMC_NUM_STEPS = 16


def _kernel(name: str, model):
    from numpyro.infer import HMC, NUTS

    if name == "nuts":
        return NUTS(model)
    # static HMC: 16 leapfrog steps, step size (dual averaging) and diagonal mass matrix adapted.
    # NumPyro's default fixed trajectory length 2*pi costs 2*pi/step_size gradients per draw,
    # which on kidscore_momiq's badly scaled posterior (mom_iq ~ 100) runs for hours in warmup.
    return HMC(model, num_steps=HMC_NUM_STEPS, trajectory_length=None)


def run_one(
    posterior: str,
    algorithm: str,
    num_warmup: int,
    num_samples: int,
    num_chains: int,
    seed: int,
    path: str | None = None,
) -> dict[str, Any]:
    """One (posterior, algorithm, seed) run: a pure function of its arguments."""
    import jax
    import numpy as np
    from numpyro.infer import MCMC

    from adapters import metrics, posteriordb

    port = posteriordb.numpyro_model(posterior, path)
    mcmc = MCMC(
        _kernel(algorithm, port.model),
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method="vectorized",
        progress_bar=False,
    )
    start = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(seed), extra_fields=("num_steps", "diverging"), **port.data)
    samples = mcmc.get_samples(group_by_chain=True)
    jax.block_until_ready(samples)
    wall = time.perf_counter() - start
    extra = mcmc.get_extra_fields(group_by_chain=True)
    grads = int(np.sum(extra["num_steps"]))
    draws = metrics.flatten_draws(samples)
    score = metrics.reference_score(draws, posteriordb.load(posterior, path).reference_draws)
    summary = score.summary()
    return {
        "posterior": posterior,
        "algorithm": algorithm,
        "seed": seed,
        "wall_s": wall,
        "grad_evals": grads,
        "divergences": int(np.sum(extra["diverging"])),
        "min_ess_bulk": summary["min_ess"],
        "ess_per_grad": summary["min_ess"] / grads,
        "max_z_mean": summary["max_z_mean"],
        "max_log_sd": summary["max_log_sd"],
        "max_quantile": summary["max_quantile"],
        "worst": summary["worst"],
        "passed": summary["passed"],
    }


def main(argv: list[str] | None = None, out_dir=None) -> dict[str, Any]:
    from adapters import posteriordb

    parser = argparse.ArgumentParser(prog="python -m benchmarks posteriordb-baseline", description=__doc__)
    parser.add_argument("--posteriors", default="all", help="comma-separated names, or 'all' ported posteriors")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--num-warmup", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--path", default=None, help="posteriordb folder (default: $POSTERIOR_DB_PATH or embedded)")
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)  # scores against posteriordb run in float64

    ported = posteriordb.ported_posteriors("numpyro", args.path)
    names = ported if args.posteriors == "all" else args.posteriors.split(",")
    for n in names:
        if n not in ported:
            raise SystemExit(f"--posteriors: {n!r} has no NumPyro port; ported posteriors: {ported}")
    algorithms = args.algorithms.split(",")
    for a in algorithms:
        if a not in ALGORITHMS:
            raise SystemExit(f"--algorithms: unknown {a!r}; known: {list(ALGORITHMS)}")
    config = {k: v for k, v in vars(args).items() if k != "path"}
    config["database"] = str(posteriordb.find_database(args.path))
    out = ResultFile("posteriordb-baseline", config, out_dir)
    grid = [(p, a) for p in names for a in algorithms]
    try:
        for posterior, algorithm in tqdm(grid, desc="posteriordb-baseline", unit="run"):
            out.add(
                run_one(posterior, algorithm, args.num_warmup, args.num_samples, args.num_chains, args.seed, args.path)
            )
    except KeyboardInterrupt:
        print(f"\ninterrupted: {len(out.data['runs'])} finished runs kept in {out.path}")
        raise
    rows = out.data["runs"]
    nuts = {r["posterior"]: r["ess_per_grad"] for r in rows if r["algorithm"] == "nuts"}
    for r in rows:
        if r["posterior"] in nuts:
            r["ess_per_grad_vs_nuts"] = r["ess_per_grad"] / nuts[r["posterior"]]
    out.finish({"passed": sum(r["passed"] for r in rows), "runs": len(rows)})
    print(
        table(
            rows,
            [
                "posterior",
                "algorithm",
                "grad_evals",
                "min_ess_bulk",
                "ess_per_grad",
                "ess_per_grad_vs_nuts",
                "max_z_mean",
                "max_quantile",
                "worst",
                "passed",
                "wall_s",
            ],
        )
    )
    print(f"\nwritten: {out.path}")
    return out.data
