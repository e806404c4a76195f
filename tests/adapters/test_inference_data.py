"""ArviZ conversion of NumPyro MCMC, Pyro MCMC and plain arrays."""

import numpy as np
import pytest

from adapters import inference_data, posteriordb
from adapters.posteriordb import EMBEDDED_PATH

jax = pytest.importorskip("jax", reason="the numpyro extra is not installed")
torch = pytest.importorskip("torch", reason="the pyro extra is not installed")


def test_numpyro_mcmc_to_arviz():
    from numpyro.infer import MCMC, NUTS

    port = posteriordb.numpyro_model("eight_schools-eight_schools_noncentered", EMBEDDED_PATH)
    mcmc = MCMC(NUTS(port.model), num_warmup=50, num_samples=30, num_chains=2, progress_bar=False)
    mcmc.run(
        jax.random.PRNGKey(0), extra_fields=("potential_energy", "accept_prob", "num_steps", "energy"), **port.data
    )
    idata = inference_data.from_mcmc(mcmc)
    assert idata.posterior["theta"].shape == (2, 30, 8)
    stats = idata.sample_stats
    for name in ["lp", "acceptance_rate", "diverging", "n_steps", "energy"]:
        assert stats[name].shape == (2, 30), name
    np.testing.assert_allclose(
        stats["lp"].values, -np.asarray(mcmc.get_extra_fields(group_by_chain=True)["potential_energy"])
    )
    assert idata.log_likelihood["y"].shape == (2, 30, 8)


def test_pyro_mcmc_to_arviz():
    from pyro.infer import MCMC, NUTS

    port = posteriordb.pyro_model("eight_schools-eight_schools_noncentered", EMBEDDED_PATH)
    mcmc = MCMC(NUTS(port.model), warmup_steps=20, num_samples=15, num_chains=1, disable_progbar=True)
    mcmc.run(**port.data)
    idata = inference_data.from_mcmc(mcmc)
    assert idata.posterior["theta_trans"].shape == (1, 15, 8)
    assert idata.sample_stats["diverging"].shape == (1, 15)
    assert idata.log_likelihood["y"].shape == (1, 15, 8)


def test_from_samples_renames_stats_and_takes_tensors():
    samples = {"x": torch.zeros(2, 10, 3), "y": np.ones((2, 10))}
    stats = {
        "accept_prob": np.full((2, 10), 0.5),
        "potential_energy": np.ones((2, 10)),
        "num_grad_evals": np.ones((2, 10)),
    }
    idata = inference_data.from_samples(samples, sample_stats=stats)
    assert idata.posterior["x"].shape == (2, 10, 3)
    # az.from_numpyro's renames only: the library's own statistics keep their names
    assert set(idata.sample_stats.data_vars) == {"acceptance_rate", "lp", "num_grad_evals"}
    assert float(idata.sample_stats["lp"][0, 0]) == -1.0


def test_tree_depth_is_arviz_own():
    """The Pyro route adds ``tree_depth`` as ``az.from_numpyro`` derives it, so both backends give it."""
    num_steps = np.array([1, 2, 3, 4, 7, 8, 65])
    np.testing.assert_array_equal(inference_data.tree_depth(num_steps), np.log2(num_steps).astype(int) + 1)
    assert inference_data.tree_depth(np.array([0]))[0] == 0  # no step ran: no warning, no garbage


def test_from_samples_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"samples must be arrays shaped \(chains, draws, ...\)"):
        inference_data.from_samples({"x": np.zeros((2, 10)), "y": np.zeros((3, 10))})


def test_from_mcmc_rejects_other_objects():
    with pytest.raises(TypeError, match="mcmc must be a numpyro.infer.MCMC or pyro.infer.MCMC object, got dict"):
        inference_data.from_mcmc({})
