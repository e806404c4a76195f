import math

import numpy as np
import pytest

from adapters import validation as v


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3", None])
def test_positive_int_rejects_and_names_the_argument(bad):
    with pytest.raises(ValueError, match=r"num_chains must be a positive integer, got"):
        v.check_positive_int("num_chains", bad)


def test_positive_int_accepts_numpy_integers_and_zero_when_allowed():
    assert v.check_positive_int("n", np.int64(3)) == 3
    assert v.check_positive_int("n", 0, allow_zero=True) == 0


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan, "1"])
def test_positive_rejects(bad):
    with pytest.raises(ValueError, match="step_size must be a finite number > 0"):
        v.check_positive("step_size", bad)


def test_probability_open_and_closed():
    assert v.check_probability("p", 0.5) == 0.5
    with pytest.raises(ValueError, match=r"target_accept_prob must be a number in \(0, 1\), got 1"):
        v.check_probability("target_accept_prob", 1)
    assert v.check_probability("p", 1.0, open_interval=False) == 1.0


def test_choice_lists_the_choices():
    with pytest.raises(ValueError, match=r"backend must be one of \['numpyro', 'pyro'\], got 'jax'"):
        v.check_choice("backend", "jax", ["numpyro", "pyro"])


def test_name_suggests_close_matches():
    known = ["eight_schools-eight_schools_centered", "eight_schools-eight_schools_noncentered", "arK-arK"]
    with pytest.raises(KeyError, match="Did you mean") as err:
        v.check_name("posterior", "eight_schools", known)
    assert "eight_schools-eight_schools_centered" in str(err.value)
    assert v.check_name("posterior", "arK-arK", known) == "arK-arK"


def test_vector_checks_last_axis():
    assert v.check_vector("x", [1, 2], 2).dtype == np.float64
    with pytest.raises(ValueError, match=r"x must be an array with last axis of length 3, got shape \(2,\)"):
        v.check_vector("x", [1.0, 2.0], 3)


def test_unit_interval_and_beta_pair_name_the_argument():
    from adapters.validation import check_beta_pair, check_unit_interval

    assert check_unit_interval("beta2", 0) == 0.0
    assert check_unit_interval("alpha", 1, include_one=True) == 1.0
    for bad, flags in [(1.0, {}), (0.0, {"include_zero": False}), (float("nan"), {}), (True, {})]:
        with pytest.raises(ValueError, match=r"beta2 must be a number in [\[(]0, 1[\])]"):
            check_unit_interval("beta2", bad, **flags)
    assert check_beta_pair("betas", (0.9, 0.99)) == (0.9, 0.99)
    with pytest.raises(ValueError, match="betas must be a pair"):
        check_beta_pair("betas", (0.9, 0.99, 0.5))
    with pytest.raises(ValueError, match="betas must be a tuple of numbers in"):
        check_beta_pair("betas", (0.9, 1.0))
