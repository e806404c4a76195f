"""The backend-free half of DVI: the network description and the data checks (numpy only)."""

import numpy as np
import pytest

from adapters.dvi import DEFAULT_EB_ALPHA, DVIConfig, check_dvi_data, check_positive_values, check_sizes


def test_config_defaults_and_derived_sizes():
    config = DVIConfig((3, 50, 2))
    assert (config.covariance, config.likelihood, config.prior) == ("full", "heteroscedastic", "empirical_bayes")
    assert config.num_layers == 2 and config.num_targets == 1
    assert config.prior_variance == (1.0, 1.0)
    assert config.eb_alpha == DEFAULT_EB_ALPHA
    # the inverse-gamma hyperprior's mode beta / (alpha + 1) is the layer's prior variance
    per_layer = DVIConfig([3, 50, 4], likelihood="homoscedastic", prior_variance=[0.5, 2.0], eb_alpha=2.0)
    assert per_layer.sizes == (3, 50, 4) and per_layer.num_targets == 4
    assert per_layer.eb_beta(1) / (per_layer.eb_alpha + 1.0) == pytest.approx(2.0)
    assert DVIConfig((3, 10), likelihood="categorical").num_targets == 10
    assert hash(config) == hash(DVIConfig((3, 50, 2)))  # static argument of jax.jit


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sizes": (3,)}, ValueError, "sizes must hold at least two positive integers"),
        ({"sizes": (3, 0, 2)}, ValueError, "sizes must hold at least two positive integers"),
        ({"sizes": (3, 2.5, 2)}, ValueError, "sizes must hold at least two positive integers"),
        ({"sizes": "3,2"}, TypeError, "sizes must be a sequence of positive integers"),
        ({"sizes": (3, 5, 3)}, ValueError, "sizes: a heteroscedastic network .* must be even"),
        ({"sizes": (3, 1), "likelihood": "categorical"}, ValueError, "at least 2 outputs"),
        ({"sizes": (3, 2), "likelihood": "poisson"}, ValueError, "likelihood must be one of"),
        ({"sizes": (3, 2), "covariance": "low_rank"}, ValueError, "covariance must be one of"),
        ({"sizes": (3, 2), "prior": "horseshoe"}, ValueError, "prior must be one of"),
        ({"sizes": (3, 2), "prior_variance": -1.0}, ValueError, "prior_variance must be a finite number > 0"),
        ({"sizes": (3, 4, 2), "prior_variance": (1.0,)}, ValueError, r"one per layer \(2 layers\)"),
        ({"sizes": (3, 4, 2), "prior_variance": (1.0, 0.0)}, ValueError, r"prior_variance\[1\] must be"),
        ({"sizes": (3, 2), "prior_variance": "big"}, TypeError, "prior_variance must be a number > 0"),
        ({"sizes": (3, 2), "eb_alpha": 0.0}, ValueError, "eb_alpha must be a finite number > 0"),
    ],
)
def test_bad_config_names_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        DVIConfig(**kwargs)


def test_data_checks_name_x_or_y():
    regression = DVIConfig((2, 8, 4))  # heteroscedastic: D = 2 targets
    x = np.zeros((5, 2))
    check_dvi_data(regression, x, np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\) .* got shape \(5, 3\)"):
        check_dvi_data(regression, np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\)"):
        check_dvi_data(regression, np.zeros(5))
    with pytest.raises(ValueError, match="x must be finite"):
        check_dvi_data(regression, np.array([[0.0, np.inf]]))
    with pytest.raises(TypeError, match="x must be an array of numbers"):
        check_dvi_data(regression, "data")
    with pytest.raises(ValueError, match=r"y must have shape \(5, 2\)"):
        check_dvi_data(regression, x, np.zeros(5))
    with pytest.raises(ValueError, match=r"y must be finite, got 1 non-finite entries \(first at index \(3, 1\)"):
        y = np.zeros((5, 2))
        y[3, 1] = np.nan
        check_dvi_data(regression, x, y)
    one_target = DVIConfig((2, 8, 1), likelihood="homoscedastic")
    check_dvi_data(one_target, x, np.zeros(5))
    check_dvi_data(one_target, x, np.zeros((5, 1)))
    classes = DVIConfig((2, 8, 3), likelihood="categorical")
    check_dvi_data(classes, x, np.array([0, 1, 2, 2, 0]))
    with pytest.raises(TypeError, match="y must be integer class labels"):
        check_dvi_data(classes, x, np.zeros(5))
    with pytest.raises(ValueError, match=r"y must hold class labels in \[0, 3\) .* got -1 at index 4"):
        check_dvi_data(classes, x, np.array([0, 1, 2, 2, -1]))
    with pytest.raises(ValueError, match=r"y must be integer class labels of shape \(5,\)"):
        check_dvi_data(classes, x, np.zeros((5, 1), int))


def test_sizes_and_positive_value_checks():
    assert check_sizes("sizes", np.array([2, 3])) == (2, 3)
    check_positive_values("var", np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"var must be > 0 everywhere .* 2 entries .* index \(1,\), value 0.0"):
        check_positive_values("var", np.array([1.0, 0.0, np.nan]))
