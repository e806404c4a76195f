"""The sweep's counting DR-G-HMC (:func:`numpyro_ext.infer.sweep_runs.counting_drghmc`) against the plain kernel.

Thinning keeps one iteration's extra fields in ``n``; the counting kernel's running sums must give, per
kept draw, exactly the gradients and divergences of the ``n`` iterations behind it, and the same draws as
the plain kernel on the same seed (the counting changes no random number).
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC

from numpyro_ext.infer import DRGHMC
from numpyro_ext.infer.sweep_runs import counting_drghmc, per_block


def funnel3():
    v = numpyro.sample("v", dist.Normal(0.0, 3.0))
    numpyro.sample("x", dist.Normal(0.0, jnp.exp(v / 2)).expand([2]).to_event(1))


def run(kernel, thinning):
    mcmc = MCMC(kernel, num_warmup=30, num_samples=60, thinning=thinning, num_chains=2,
                chain_method="vectorized", progress_bar=False)  # fmt: skip
    mcmc.run(jax.random.PRNGKey(3), extra_fields=("num_grad_evals", "diverging"))
    return mcmc.get_samples(group_by_chain=True)["v"], mcmc.get_extra_fields(group_by_chain=True)


def test_running_sums_count_every_thinned_out_iteration():
    # a step too large for the neck and a low divergence threshold: later stages and "divergences" happen,
    # so the counts vary from iteration to iteration
    settings = dict(step_size=3.0, adapt_step_size=False, adapt_mass_matrix=False, max_delta_energy=0.5)
    v_plain, plain = run(DRGHMC(funnel3, **settings), thinning=1)
    v_counted, counted = run(counting_drghmc()(funnel3, **settings), thinning=5)
    np.testing.assert_array_equal(np.asarray(v_counted), np.asarray(v_plain)[:, 4::5])
    for field in ("num_grad_evals", "diverging"):
        every = np.asarray(plain[field], np.int64).reshape(2, 12, 5).sum(-1)  # the plain kernel's blocks of 5
        np.testing.assert_array_equal(per_block(counted[field]), every, err_msg=field)
    assert np.asarray(plain["diverging"]).sum() > 0 and len(np.unique(np.asarray(plain["num_grad_evals"]))) > 2
