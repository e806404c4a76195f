"""The backend-free amortization-gap report: gaps, their standard errors, the table's note, ArviZ output."""

import math

import numpy as np
import pytest

from adapters.amortized import AmortizationGap, GapFit, gap_fit_name


def fit(name, elbo, se, per_datum, hidden=None, window=None):
    draws = {"z": np.arange(6.0).reshape(3, 2)}
    return GapFit(name, hidden, window, elbo, se, np.asarray(per_datum), 4, 1.0, np.zeros(3), draws)


def test_gaps_their_errors_and_the_not_converged_note():
    fvi = fit("F-VI", -100.0, 0.3, [-40.0, -50.0])
    good = fit(gap_fit_name((), 0), -104.0, 0.4, [-42.0, -51.0], (), 0)
    report = AmortizationGap(fvi, [good], num_data=2)
    assert report.gap(good) == pytest.approx(4.0) and report.gap_se(good) == pytest.approx(0.5)
    np.testing.assert_allclose(report.per_datum_gap(good), [2.0, 1.0])
    row = report.rows()[1]
    assert row["gap_per_datum"] == pytest.approx(2.0) and row["relative_gap"] == pytest.approx(0.04)
    assert "A-VI hidden=() window=0" in report.table() and "note:" not in report.table()
    # an A-VI fit 4 standard errors above F-VI: F-VI has not converged, and the table says so
    better = fit(gap_fit_name((8,), 1), -97.0, 0.4, [-39.0, -48.0], (8,), 1)
    assert math.isclose(AmortizationGap(fvi, [better], 2).gap(better), -3.0)
    assert "note: a negative gap means F-VI has not reached its optimum" in AmortizationGap(fvi, [better], 2).table()


def test_to_arviz_gives_one_inference_data_per_fit_with_the_elbo():
    pytest.importorskip("arviz")
    fvi = fit("F-VI", -100.0, 0.3, [-40.0, -50.0])
    avi = fit(gap_fit_name((), 0), -104.0, 0.4, [-42.0, -51.0], (), 0)
    idata = AmortizationGap(fvi, [avi], num_data=2).to_arviz()
    assert list(idata) == ["F-VI", "A-VI hidden=() window=0"]
    posterior = idata["A-VI hidden=() window=0"].posterior
    assert posterior["z"].shape == (1, 3, 2) and posterior.attrs["amortization_gap"] == pytest.approx(4.0)
