"""``python -m benchmarks <study> [options]``: run one study (``--help`` after a study for its options)."""

import sys

from benchmarks import (
    abc,
    abc_scaling,
    amortized_vi,
    drhmc,
    drhmc_funnel,
    dvi,
    mi_bounds,
    optimizers,
    posteriordb_baseline,
    report,
    score_calibration,
    sweep,
    twisted_smc,
)

STUDIES = {
    "abc": abc.main,
    "abc-scaling": abc_scaling.main,
    "amortized-vi": amortized_vi.main,
    "drhmc": drhmc.main,
    "drhmc-funnel": drhmc_funnel.main,
    "dvi": dvi.main,
    "mi-bounds": mi_bounds.main,
    "optimizers": optimizers.main,
    "posteriordb-baseline": posteriordb_baseline.main,
    "score-calibration": score_calibration.main,
    "sweep": sweep.main,
    "sweep-engines": sweep.engines_main,
    "report": report.main,
    "twisted-smc": twisted_smc.main,
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in STUDIES:
        print(f"usage: python -m benchmarks <study> [options]; studies: {', '.join(STUDIES)}", file=sys.stderr)
        return 2
    STUDIES[argv[0]](argv[1:])
    return 0


sys.exit(main(sys.argv[1:]))
