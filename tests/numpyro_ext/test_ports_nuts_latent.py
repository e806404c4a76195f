"""NumPyro's NUTS on the HMM and Gaussian-process ports matches the posteriordb reference draws.

The HMMs' ``ordered``/``positive_ordered`` emission parameters (as in the Stan programs) keep
the chains on one labelling, so no chain sees the mirror mode.  Runs of 40 s or more (4 chains
on 2 CPU cores) are marked ``slow``.
"""

import pytest

pytest.importorskip("jax", reason="the numpyro extra is not installed")
from tests.numpyro_ext.test_ports_nuts import nuts_score  # noqa: E402


@pytest.mark.parametrize(
    "name",
    [
        "gp_pois_regr-gp_regr",
        pytest.param("bball_drive_event_0-hmm_drive_0", marks=pytest.mark.slow),
        pytest.param("hmm_example-hmm_example", marks=pytest.mark.slow),  # 40 s; its density: test_ports_latent
        pytest.param("bball_drive_event_1-hmm_drive_1", marks=pytest.mark.slow),
        pytest.param("gp_pois_regr-gp_pois_regr", marks=pytest.mark.slow),
    ],
)
def test_nuts_on_port_matches_reference(name, posterior_db):
    posterior_db.require(name)
    score = nuts_score(name)
    assert score.passed, f"{name}\n{score}"
