"""The command line shared by ``python -m numpyro_ext`` and ``python -m pyro_ext``.

Each backend supplies ``run(posterior, num_warmup, num_samples, num_chains, seed, path) ->
(InferenceData, ReferenceScore)`` and its defaults; this module parses the arguments,
times the run and prints the ArviZ summary and the reference score.
"""

from __future__ import annotations

import argparse
import inspect
import time
from collections.abc import Callable

from adapters import posteriordb


def main(prog: str, sampler: str, run: Callable, argv: list[str] | None = None) -> int:
    """Parse ``argv``, call ``run`` and print; exit code 0 when the reference score passes."""
    import arviz as az

    defaults = {k: p.default for k, p in inspect.signature(run).parameters.items()}
    parser = argparse.ArgumentParser(prog=prog, description=f"{sampler} on a posteriordb posterior")
    parser.add_argument("--posterior", default=defaults["posterior"], help="posteriordb posterior name")
    for name in ("num_warmup", "num_samples", "num_chains", "seed"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=defaults[name])
    parser.add_argument("--path", default=None, help="posteriordb folder (default: $POSTERIOR_DB_PATH or embedded)")
    args = parser.parse_args(argv)
    print(f"database: {posteriordb.find_database(args.path)}")
    print(f"{sampler} on {args.posterior}: {args.num_chains} chains x {args.num_samples} draws")
    start = time.perf_counter()
    idata, score = run(args.posterior, args.num_warmup, args.num_samples, args.num_chains, args.seed, args.path)
    print(f"sampled in {time.perf_counter() - start:.1f} s\n")
    print(az.summary(idata).to_string())
    print("\nscore against the posteriordb reference draws (units of reference sd):")
    print(score)
    return 0 if score.passed else 1
