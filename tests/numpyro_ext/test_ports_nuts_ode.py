"""NumPyro's NUTS on the ODE ports (diffrax solves) matches the posteriordb reference draws.

Every gradient is an ODE solve and its backpropagation: lotka_volterra (about 60 steps a
solve) takes over three minutes on 2 CPU cores and is marked ``slow``; one_comp_mm_elim_abs
(about 15 steps) takes 35-65 s and runs by default.

one_comp_mm_elim_abs: along ``K_m >> C`` the elimination is linear, ``(V_m / K_m) C / V``,
so the data pin only the ratio ``V_m / K_m`` and the tails of ``K_m`` and ``V_m`` follow their
Cauchy priors.  NUTS runs there at ``target_accept_prob=0.99``, as the reference did
(``adapt_delta = 0.99``; at 0.8 it diverges and cuts the ``V_m`` tail short).  The standard
deviations of ``K_m`` and ``V_m`` themselves are ruled by a few far-tail draws: among the 210
ways to take 4 of the reference's own 10 chains, 17% miss the rule's ``|log sd ratio| < 0.2``
on them (up to 0.44).  So their raw-scale sd is left out of the check; every other metric
of the rule holds, the sd of ``log(K_m)`` and ``log(V_m)`` included.
"""

import pytest

pytest.importorskip("jax", reason="the numpyro extra is not installed")
pytest.importorskip("diffrax", reason="diffrax (the numpyro extra) is not installed")
from tests.numpyro_ext.test_ports_nuts import nuts_score  # noqa: E402

HEAVY_TAILED = ("K_m", "V_m")  # raw-scale sd too noisy to score (see the module docstring)


@pytest.mark.slow
def test_nuts_on_lotka_volterra_matches_reference(posterior_db):
    posterior_db.require("hudson_lynx_hare-lotka_volterra")
    name = "hudson_lynx_hare-lotka_volterra"
    score = nuts_score(name)
    assert score.passed, f"{name}\n{score}"


@pytest.mark.slow  # 170 s; the port's density is checked against SciPy in CI (tests/adapters/test_ports_ode.py)
def test_nuts_on_one_comp_mm_elim_abs_matches_reference(posterior_db):
    posterior_db.require("one_comp_mm_elim_abs-one_comp_mm_elim_abs")
    name = "one_comp_mm_elim_abs-one_comp_mm_elim_abs"
    score = nuts_score(name, target_accept_prob=0.99)
    rule = score.rule
    assert score.min_ess >= rule.min_ess, f"{name}\n{score}"
    for p in score.parameters:
        assert p.z_mean < rule.max_z_mean, f"{name}: {p.name}\n{score}"
        assert max(p.q05, p.q95) < rule.max_quantile, f"{name}: {p.name}\n{score}"
        if p.name not in HEAVY_TAILED:
            assert p.log_sd < rule.max_log_sd, f"{name}: {p.name}\n{score}"
