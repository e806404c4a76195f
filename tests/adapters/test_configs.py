"""The shared DR-HMC configuration: defaults, normalisation and messages naming the argument."""

import pytest

from adapters.configs import DRHMCConfig, check_model_or_potential


def test_defaults_and_choose_length():
    config = DRHMCConfig()
    assert (config.max_proposals, config.reduction_factor, config.probabilistic) == (3, 4.0, True)
    assert config.choose_length
    assert config.length_scale == 0.5 and DRHMCConfig(trajectory_scale=2.0).length_scale == 2.0
    assert not DRHMCConfig(trajectory_length=2.0).choose_length
    assert not DRHMCConfig(num_steps=5).choose_length
    assert isinstance(DRHMCConfig(reduction_factor=2).reduction_factor, float)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(step_size=0), "step_size"),
        (dict(trajectory_length=-1.0), "trajectory_length"),
        (dict(num_steps=2.5), "num_steps"),
        (dict(max_proposals=0), "max_proposals"),
        (dict(reduction_factor=1.0), "reduction_factor"),
        (dict(target_accept_prob=0.0), "target_accept_prob"),
        (dict(dense_mass="yes"), "dense_mass"),
        (dict(max_tree_depth=0), "max_tree_depth"),
        (dict(trajectory_scale=0.0), "trajectory_scale"),
        (dict(trajectory_scale=0.5, trajectory_length=2.0), "trajectory_scale"),
        (dict(trajectory_scale=0.5, num_steps=8), "trajectory_scale"),
        (dict(jitter_trajectory=1), "jitter_trajectory"),
    ],
)
def test_bad_values_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        DRHMCConfig(**kwargs)


def test_exactly_one_of_model_and_potential():
    check_model_or_potential("X", object(), None)
    for model, potential in ((None, None), (object(), object())):
        with pytest.raises(ValueError, match="exactly one"):
            check_model_or_potential("X", model, potential)
