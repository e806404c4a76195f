"""NumPyro's NUTS on the HMM and Gaussian-process ports matches the posteriordb reference draws.

The HMMs' ``ordered``/``positive_ordered`` emission parameters (as in the Stan programs) keep
the chains on one labelling, so no chain sees the mirror mode.  Runs over 30 s (4 chains on
2 CPU cores) are marked ``slow``.
"""

import pytest

from adapters import metrics, posteriordb

jax = pytest.importorskip("jax", reason="the numpyro extra is not installed")
from numpyro.infer import MCMC, NUTS  # noqa: E402


def _nuts(name, seed=0, **kernel_kwargs):
    port = posteriordb.numpyro_model(name)
    mcmc = MCMC(
        NUTS(port.model, **kernel_kwargs),
        num_warmup=1000,
        num_samples=1000,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(seed), **port.data)
    draws = metrics.flatten_draws(mcmc.get_samples(group_by_chain=True))
    return metrics.reference_score(draws, posteriordb.load(name).reference_draws)


@pytest.mark.parametrize(
    "name",
    [
        "gp_pois_regr-gp_regr",
        "bball_drive_event_0-hmm_drive_0",
        "hmm_example-hmm_example",
        pytest.param("bball_drive_event_1-hmm_drive_1", marks=pytest.mark.slow),
        "gp_pois_regr-gp_pois_regr",
    ],
)
def test_nuts_on_port_matches_reference(name, shared_db):
    score = _nuts(name)
    assert score.passed, f"{name}\n{score}"
