"""Matrix optimizers on a guide's parameters (issue 20): which parameters they take, and the exact answer.

The AutoNormal Bayesian linear regression of ``tests/numpyro_ext/test_optim_guides.py`` (``W`` of shape
(5, 3), N(0, 1) prior, known noise scale): the best mean-field Gaussian has ``loc`` the posterior mean
and ``scale_i = 1 / sqrt(Λ_ii)``, ``Λ = X^T X / σ² + I``.  Before the fix ``SWAN`` moved
``AutoNormal.locs.W`` with its centred direction (the column sums never moved) and
``Alice({"lr": ...})`` failed for want of ``rank``; by default a matrix method now leaves a guide's
locations and scales (named in Pyro's param store) to AdamW.
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.infer.autoguide.initialization import init_to_median

from pyro_ext.optim import RACS, SWAN, Alice, AliceOptimizer, IFShampoo, RACSOptimizer, SinkGDOptimizer, SWANOptimizer

P, K, N, SIGMA, STEPS = 5, 3, 100, 0.5, 300


def regression() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Data ``(X, Y)`` and the exact mean-field optimum ``(loc, scale)`` of ``W``."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, P))
    y = x @ rng.normal(size=(P, K)) + SIGMA * rng.normal(size=(N, K))
    precision = x.T @ x / SIGMA**2 + np.eye(P)
    loc = np.linalg.solve(precision, x.T @ y / SIGMA**2)
    scale = np.broadcast_to(1.0 / np.sqrt(np.diag(precision))[:, None], (P, K))
    return x, y, loc, scale


def model(x, y=None):
    w = pyro.sample("W", dist.Normal(0.0, 1.0).expand([P, K]).to_event(2))
    pyro.sample("y", dist.Normal(x @ w, SIGMA).to_event(2), obs=y)


def fit(optimizer_class: type[torch.optim.Optimizer]) -> tuple[np.ndarray, np.ndarray]:
    """SVI with ``optimizer_class`` under ``pyro.optim.ExponentialLR`` (lr 0.1 down to 0.002), the docs' recipe."""
    x, y = (torch.tensor(a) for a in regression()[:2])
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(model, init_loc_fn=init_to_median)
    scheduler = pyro.optim.ExponentialLR(
        {"optimizer": optimizer_class, "optim_args": {"lr": 0.1}, "gamma": 0.02 ** (1 / STEPS)}
    )
    svi = SVI(model, guide, scheduler, Trace_ELBO(num_particles=8, vectorize_particles=True))
    for _ in range(STEPS):
        svi.step(x, y)
        scheduler.step()
    loc = pyro.param("AutoNormal.locs.W").detach().numpy()
    return loc, pyro.param("AutoNormal.scales.W").detach().numpy()


@pytest.fixture(autouse=True)
def float64():
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(default)


@pytest.mark.parametrize(
    "optimizer_class",
    [
        SWANOptimizer,
        AliceOptimizer,
        pytest.param(SinkGDOptimizer, marks=pytest.mark.slow),
        pytest.param(RACSOptimizer, marks=pytest.mark.slow),
    ],
)
def test_matrix_method_reaches_exact_mean_field_optimum(optimizer_class):
    # 8 particles, the learning rate down to 0.002: AdamW's last iterate is within 0.3 posterior sd of
    # the optimum and the scales within 20%; SWAN on the guide's locations ended >10 sd off
    loc, scale = fit(optimizer_class)
    _, _, exact_loc, exact_scale = regression()
    assert np.max(np.abs(loc - exact_loc) / exact_scale) < 0.3
    assert np.max(np.abs(np.log(scale / exact_scale))) < 0.2


def step_once(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
    for p in params:
        p.grad = torch.arange(1.0, 1.0 + p.numel()).reshape(p.shape)
    optimizer.step()


def test_guide_parameters_go_to_adamw_by_name():
    loc = torch.zeros(5, 3, requires_grad=True)
    weight = torch.zeros(5, 3, requires_grad=True)
    opt = SWANOptimizer([("AutoNormal.locs.W", loc), ("net.0.weight", weight)], lr=0.1)
    step_once(opt, [loc, weight])
    # AdamW's first step is -lr * sign(grad) and keeps moments; SWAN keeps no state
    torch.testing.assert_close(loc.detach(), torch.full((5, 3), -0.1))
    assert opt.state[loc] and not opt.state[weight]
    np.testing.assert_allclose(weight.detach().sum(0).numpy(), 0.0, atol=1e-6)  # SWAN's centred direction


def test_param_store_names_decide_in_pyro_optim():
    pyro.clear_param_store()
    loc = pyro.param("W_loc", torch.zeros(5, 3))
    weight = pyro.param("fc.weight", torch.zeros(5, 3))
    unconstrained = [pyro.get_param_store()._params[name] for name in ("W_loc", "fc.weight")]
    optim = SWAN({"lr": 0.1})
    for p in unconstrained:
        p.grad = torch.arange(1.0, 16.0).reshape(5, 3)
    optim(unconstrained)
    torch.testing.assert_close(loc.detach(), torch.full((5, 3), -0.1))
    assert not torch.allclose(weight.detach(), torch.full((5, 3), -0.1))
    opted_in = SWAN({"lr": 0.1, "matrix_params": "all"})
    opted_in(unconstrained)
    assert opted_in.optim_objs[unconstrained[0]].state[unconstrained[0]] == {}


def test_matrix_params_callable_and_validation():
    a, b = torch.zeros(4, 6, requires_grad=True), torch.zeros(4, 6, requires_grad=True)
    opt = RACSOptimizer([("a", a), ("b", b)], lr=0.1, matrix_params=lambda name: name == "a")
    step_once(opt, [a, b])
    assert "q" in opt.state[a] and "exp_avg" in opt.state[b]
    for factory in (SWAN, RACS, Alice):
        with pytest.raises(ValueError, match="matrix_params must be None"):
            factory({"lr": 0.1, "matrix_params": "weights"})([torch.zeros(2, 2, requires_grad=True)])
    with pytest.raises(ValueError, match="needs parameter names"):
        step_once(SWANOptimizer([a], matrix_params=lambda name: True), [a])


def test_alice_default_rank_fits_every_matrix_shape():
    params = [torch.ones(2, 7, requires_grad=True), torch.ones(9, 4, requires_grad=True), torch.ones(3, 3)]
    params[2].requires_grad_(True)
    opt = AliceOptimizer(params, lr=0.01)
    step_once(opt, params)
    assert [opt.state[p]["basis"].shape[1] for p in params] == [1, 1, 1]
    assert all(torch.isfinite(p).all() for p in params)


def test_ifshampoo_on_a_summed_elbo_stops_with_what_to_pass():
    # the ELBO sums 100 data points; without loss_scale the root-free step blows up.  Before the fix the next
    # step failed inside the model ("Expected parameter scale ... invalid values"); now the optimizer stops at
    # the first non-finite step with the message NumPyro's ifshampoo gives
    x, y = (torch.tensor(a) for a in regression()[:2])
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svi = SVI(model, AutoNormal(model), IFShampoo({"lr": 0.1}), Trace_ELBO())
    with pytest.raises(FloatingPointError, match="IFShampoo: .* is not finite.*pass loss_scale=N"):
        for _ in range(50):
            svi.step(x, y)
