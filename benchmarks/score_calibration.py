"""Study ``score-calibration``: how an exact sampler scores under the reference-score rule.

For every posterior of the database, random subsets of ``n`` reference draws (near
independent: posteriordb thins them to ESS ~ draws) are scored against the remaining
draws (log rows for the posterior's positive parameters, as for a sampler's draws); the
study reports the median, 95th and 99th percentiles of the maxima (max z_mean, max |log sd
ratio|, max quantile error) and the fraction of subsets that pass
``adapters.metrics.DEFAULT_RULE``.  No sampling: it runs in seconds.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks._harness import ResultFile, table


def main(argv: list[str] | None = None, out_dir=None) -> dict[str, Any]:
    from adapters import metrics, posteriordb

    parser = argparse.ArgumentParser(prog="python -m benchmarks score-calibration", description=__doc__)
    parser.add_argument("--draws", type=int, nargs="+", default=[400, 1000], help="subset sizes (effective draws)")
    parser.add_argument("--repeats", type=int, default=20, help="random subsets per posterior and size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--path", default=None)
    args = parser.parse_args(argv)
    names = posteriordb.list_posteriors(args.path)
    config = {
        "draws": args.draws,
        "repeats": args.repeats,
        "seed": args.seed,
        "database": str(posteriordb.find_database(args.path)),
        "posteriors": len(names),
    }
    out = ResultFile("score-calibration", config, out_dir)
    rule = metrics.ScoreRule(min_ess=0)  # the subsets are exact; ESS estimates only add noise here
    summary = []
    for n in args.draws:
        maxima = {"max_z_mean": [], "max_log_sd": [], "max_quantile": []}
        passed = 0
        for name in tqdm(names, desc=f"score-calibration n={n}", unit="posterior"):
            post = posteriordb.load(name, args.path)
            ref = post.reference_draws
            rng = np.random.default_rng(args.seed)
            total = next(iter(ref.values())).size
            for _ in range(args.repeats):
                order = rng.permutation(total)
                subset = {k: v.ravel()[order[:n]].reshape(4, -1) for k, v in ref.items()}
                rest = {k: v.ravel()[order[n:]].reshape(1, -1) for k, v in ref.items()}
                score = metrics.reference_score(subset, rest, rule=rule, positive=post.positive)
                maxima["max_z_mean"].append(score.max("z_mean"))
                maxima["max_log_sd"].append(score.max("log_sd"))
                maxima["max_quantile"].append(score.max_quantile)
                passed += score.passed
        for metric, values in maxima.items():
            q50, q95, q99 = np.quantile(values, [0.5, 0.95, 0.99])
            summary.append({"draws": n, "metric": metric, "median": q50, "q95": q95, "q99": q99})
        summary.append({"draws": n, "metric": "pass rate", "median": passed / (len(names) * args.repeats)})
        out.add({"draws": n, "maxima": maxima, "pass_rate": passed / (len(names) * args.repeats)})
    out.finish({"table": summary, "rule": vars(metrics.DEFAULT_RULE)})
    print(table(summary, ["draws", "metric", "median", "q95", "q99"]))
    print(f"\nwritten: {out.path}")
    return out.data
