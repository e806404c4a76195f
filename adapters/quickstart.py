"""The command line shared by ``python -m numpyro_ext`` and ``python -m pyro_ext``.

Each backend supplies ``run(posterior, num_warmup, num_samples, num_chains, seed, path,
sampler) -> (InferenceData, ReferenceScore)`` with its defaults and ``SAMPLERS`` (the
choices of ``--sampler``); this module parses the arguments, times the run and prints the
ArviZ summary and the reference score.
"""

from __future__ import annotations

import argparse
import inspect
import time
from collections.abc import Callable

from adapters import posteriordb


def main(prog: str, backend: str, run: Callable, samplers: dict[str, str], argv: list[str] | None = None) -> int:
    """Parse ``argv``, call ``run`` and print; exit code 0 when the reference score passes.

    ``backend`` is ``"NumPyro"`` or ``"Pyro"``; ``samplers`` maps each ``--sampler`` choice to
    the name printed for it.  A database that is not there, a posterior it lacks (for the
    embedded subset: what it holds and how to point at a full posteriordb) or a posterior
    without a port in ``backend`` exits with status 2 and the library's message.
    """
    import arviz as az

    defaults = {k: p.default for k, p in inspect.signature(run).parameters.items()}
    parser = argparse.ArgumentParser(prog=prog, description=f"{backend} MCMC on a posteriordb posterior")
    parser.add_argument("--posterior", default=defaults["posterior"], help="posteriordb posterior name")
    parser.add_argument("--sampler", default=defaults["sampler"], choices=list(samplers))
    for name in ("num_warmup", "num_samples", "num_chains", "seed"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=defaults[name])
    parser.add_argument("--path", default=None, help="posteriordb folder (default: $POSTERIOR_DB_PATH or embedded)")
    args = parser.parse_args(argv)
    port = {"numpyro": posteriordb.numpyro_model, "pyro": posteriordb.pyro_model}[backend.lower()]
    try:  # a wrong database, posterior name or port stops here, before any sampling
        database = posteriordb.find_database(args.path)
        port(args.posterior, args.path)
    except (FileNotFoundError, KeyError, TypeError) as err:
        parser.error(err.args[0])  # the library's message, without KeyError's quotes; exit status 2
    print(f"database: {database}")
    print(f"{samplers[args.sampler]} on {args.posterior}: {args.num_chains} chains x {args.num_samples} draws")
    start = time.perf_counter()
    idata, score = run(
        args.posterior, args.num_warmup, args.num_samples, args.num_chains, args.seed, args.path, args.sampler
    )
    print(f"sampled in {time.perf_counter() - start:.1f} s\n")
    print(az.summary(idata).to_string())
    print("\nscore against the posteriordb reference draws (units of reference sd):")
    print(score)
    return 0 if score.passed else 1
