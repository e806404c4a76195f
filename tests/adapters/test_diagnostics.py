"""The shared run-reliability warnings: thresholds, counts in the message, and nothing when healthy."""

import pytest

from adapters.diagnostics import ReliabilityWarning, divergence_warning, warn_unreliable, weight_degeneracy_warning


def test_divergence_warning_states_count_rate_and_threshold():
    assert divergence_warning("AIS", 10, 1000) is None  # exactly at 1% is tolerated
    message = divergence_warning("AIS", 1506, 3000)
    assert "AIS: 1506 of 3000 transitions diverged (50.2%, more than 1.0%)" in message
    assert divergence_warning("AIS", 0, 0) is None


def test_weight_degeneracy_warning_flags_low_and_non_finite_ess():
    assert weight_degeneracy_warning("TwistedSMC", 50.0, 1000) is None
    assert "effective sample size 1.0 of 1000" in weight_degeneracy_warning("TwistedSMC", 1.0, 1000)
    assert weight_degeneracy_warning("AIS", float("nan"), 10) is not None
    assert weight_degeneracy_warning("AIS", 1.0, 1) is None  # a single sample has nothing to degenerate


def test_warn_unreliable_warns_once_per_message():
    with pytest.warns(ReliabilityWarning) as record:
        issued = warn_unreliable(None, "first", "second")
    assert issued == ["first", "second"] and len(record) == 2
