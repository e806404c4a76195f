"""RACS and Alice as torch optimizers and Pyro ``PyroOptim`` wrappers (Gong et al. 2025, arXiv:2502.07752).

The oracles: a 2 x 3 case of RACS's fixed point worked by hand, numpy's SVD (the fixed point of
Eq. 16 is the best rank-1 approximation of ``G∘G``), numpy's ``eigh`` (Alice's leading basis),
``torch.optim.Adam`` run in the rotated basis (full-rank Alice) and ``torch.optim.AdamW`` (the 1-D
fallback); the equations that hold exactly (scale invariance, the limiter's bound, full-rank
tracking) are checked at floating-point tolerance.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal, init_to_value

from pyro_ext.optim import RACS, Alice, AliceOptimizer, RACSOptimizer
from pyro_ext.optim.alice import alice_direction, switch_basis
from pyro_ext.optim.racs import racs_fixed_point

torch.set_num_threads(1)


def run(optimizer_factory, grads, init, **kwargs):
    """Feed ``grads`` (a list of lists of tensors) to a fresh optimizer; returns ``(params, optimizer)``."""
    params = [x.clone().requires_grad_(True) for x in init]
    optimizer = optimizer_factory(params, **kwargs)
    for step_grads in grads:
        for param, grad in zip(params, step_grads, strict=True):
            param.grad = grad.clone()
        optimizer.step()
    return params, optimizer


def random_grads(shapes, steps, seed, scale_growth=1.0):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(shape, generator=gen) * scale_growth**t for shape in shapes] for t in range(steps)]


# --------------------------------------------------------------------------------------- RACS
def test_racs_hand_worked_2x3():
    # A = G∘G = [[1, 4, 9], [16, 25, 36]]; one sweep of Eq. 16 from q = 1:
    # s = A^T 1 / 2 = [17, 29, 45] / 2; q = A s / ||s||^2 = [269, 1308.5] / 788.75 = [1076, 5234] / 3155
    grad = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    (w,), opt = run(RACSOptimizer, [[grad]], [torch.zeros(2, 3)], lr=0.5, alpha=2.0, eps=0.0, beta=0.9)
    state = opt.state[opt.param_groups[0]["params"][0]]
    s = torch.tensor([17.0, 29.0, 45.0]) / 2
    q = torch.tensor([1076.0, 5234.0]) / 3155
    torch.testing.assert_close(state["s"], 0.1 * s, rtol=1e-14, atol=0)  # raw EMA: (1 - beta) * s
    torch.testing.assert_close(state["q"], 0.1 * q, rtol=1e-14, atol=0)
    expected = -0.5 * 2.0 * grad / torch.outer(q.sqrt(), s.sqrt())  # bias-corrected, eta_1 = 1
    torch.testing.assert_close(w.detach(), expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(state["phi"], torch.linalg.vector_norm(grad / torch.outer(q.sqrt(), s.sqrt())))


def test_racs_fixed_point_is_best_rank_one_approximation():
    gen = torch.Generator().manual_seed(3)
    grad = torch.randn(5, 7, generator=gen)
    sq = (grad * grad).numpy()
    u, sv, vt = np.linalg.svd(sq)
    rank_one = sv[0] * np.outer(u[:, 0], vt[0])
    # many sweeps from ones at one step
    q, s = racs_fixed_point(grad * grad, torch.ones(5), 200)
    np.testing.assert_allclose(np.outer(q, s), rank_one, rtol=1e-12)
    # one warm-started sweep per step on a constant gradient reaches the same fixed point of Eq. 16
    (_,), opt = run(RACSOptimizer, [[grad]] * 400, [torch.zeros(5, 7)], eps=0.0, beta=0.9)
    state = opt.state[opt.param_groups[0]["params"][0]]
    c = 1 - 0.9 ** state["step"]
    q, s = state["q"] / c, state["s"] / c
    np.testing.assert_allclose(np.outer(q, s), rank_one, rtol=1e-10)
    a = torch.as_tensor(sq)
    torch.testing.assert_close(s, a.T @ q / (q @ q), rtol=1e-10, atol=0)  # Eq. 16, both halves
    torch.testing.assert_close(q, a @ s / (s @ s), rtol=1e-10, atol=0)


@pytest.mark.parametrize("c", [1e-3, 1e4])
def test_racs_update_is_invariant_to_gradient_scale(c):
    # with eps = 0 the equations give exactly the same steps for G_t and c G_t, limiter included
    shapes = [(6, 4), (3, 2, 5)]
    grads = random_grads(shapes, 12, seed=1, scale_growth=1.3)  # growing norms make the limiter bind
    init = [torch.randn(shape, generator=torch.Generator().manual_seed(2)) for shape in shapes]
    kwargs = dict(lr=0.1, eps=0.0, gamma=1.01, alpha=1.0)
    ref, opt = run(RACSOptimizer, grads, init, **kwargs)
    scaled, _ = run(RACSOptimizer, [[c * g for g in gs] for gs in grads], init, **kwargs)
    for a, b in zip(ref, scaled, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    unlimited, _ = run(RACSOptimizer, grads, init, **{**kwargs, "gamma": None})
    assert not torch.allclose(unlimited[0], ref[0], rtol=1e-3)  # the limiter acted on this sequence


def test_racs_limiter_bounds_norm_growth():
    gamma = 1.05
    grads = random_grads([(4, 5)], 8, seed=4, scale_growth=3.0)
    w = torch.zeros(4, 5, requires_grad=True)
    opt = RACSOptimizer([w], lr=1.0, alpha=1.0, gamma=gamma, beta=0.5)
    norms, binding = [], 0
    for (grad,) in grads:
        before = w.detach().clone()
        w.grad = grad
        opt.step()
        norms.append(float(torch.linalg.vector_norm(w.detach() - before)))
    for previous, current in zip(norms, norms[1:], strict=False):
        assert current <= gamma * previous * (1 + 1e-12)
        binding += math.isclose(current, gamma * previous, rel_tol=1e-10)
    assert binding >= 3  # the gradients grow 3x a step, so the limiter is what sets the norm
    unlimited, _ = run(
        RACSOptimizer, [[g] for (g,) in grads], [torch.zeros(4, 5)], lr=1.0, alpha=1.0, gamma=None, beta=0.5
    )
    assert float(torch.linalg.vector_norm(unlimited[0].detach())) > 1.05 * float(torch.linalg.vector_norm(w.detach()))


def test_racs_state_has_m_plus_n_entries():
    w = torch.zeros(6, 4, requires_grad=True)
    conv = torch.zeros(3, 2, 5, requires_grad=True)
    bias = torch.zeros(4, requires_grad=True)
    opt = RACSOptimizer([w, conv, bias])
    for p in (w, conv, bias):
        p.grad = torch.ones_like(p)
    opt.step()
    states = opt.state_dict()["state"]
    vector_entries = [
        sum(v.numel() for v in st.values() if torch.is_tensor(v) and v.dim() > 0) for st in states.values()
    ]
    scalars = [sum(1 for v in st.values() if not torch.is_tensor(v) or v.dim() == 0) for st in states.values()]
    assert vector_entries[:2] == [6 + 4, 3 + 10]
    assert scalars[:2] == [2, 2]  # phi and step
    assert vector_entries[2] == 2 * 4  # AdamW fallback: exp_avg and exp_avg_sq


# --------------------------------------------------------------------------------------- Alice
def orthonormality_error(basis):
    return float((basis.T @ basis - torch.eye(basis.shape[1], dtype=basis.dtype)).abs().max())


@pytest.mark.parametrize("shape", [(5, 9), (9, 5), (4, 3, 3)])
def test_alice_basis_orthonormal_after_updates_and_switches(shape):
    grads = random_grads([shape], 9, seed=5)
    (w,), opt = run(AliceOptimizer, grads, [torch.zeros(shape)], rank=2, leading_basis=1, update_interval=2)
    state = opt.state[opt.param_groups[0]["params"][0]]
    d = min(shape[0], math.prod(shape[1:]))
    assert state["basis"].shape == (d, 2)
    assert orthonormality_error(state["basis"]) < 1e-13
    assert torch.isfinite(w).all()


def test_alice_switched_in_directions_depend_on_the_seed():
    grads = random_grads([(6, 9)], 1, seed=15)  # the first subspace update: the same covariance for every seed
    kwargs = dict(rank=3, leading_basis=1)
    bases = [run(AliceOptimizer, grads, [torch.zeros(6, 9)], seed=seed, **kwargs)[1] for seed in (0, 0, 1)]
    bases = [opt.state[opt.param_groups[0]["params"][0]]["basis"] for opt in bases]
    assert torch.equal(bases[0], bases[1])  # deterministic given the seed
    assert not torch.allclose(bases[0][:, 1:].abs(), bases[2][:, 1:].abs())
    torch.testing.assert_close(bases[0][:, 0].abs(), bases[2][:, 0].abs())  # the leading eigenvector is the same


def test_alice_first_step_closed_form():
    # step 1: Sigma = (1 - beta3) G G^T, U = [top-l eigenvectors, r - l others],
    # m_hat / sqrt(v_hat) = sigma / (|sigma| + eps),
    # C = sqrt(d - r) (G - U sigma) / (||column|| + eps) with no limiting at step 1
    gen = torch.Generator().manual_seed(6)
    grad = torch.randn(6, 10, generator=gen)
    rank, lead, lr, alpha, alpha_c, eps = 3, 2, 0.1, 0.7, 0.4, 1e-8
    (w,), opt = run(
        AliceOptimizer,
        [[grad]],
        [torch.zeros(6, 10)],
        rank=rank,
        leading_basis=lead,
        lr=lr,
        alpha=alpha,
        alpha_c=alpha_c,
        eps=eps,
    )
    basis = opt.state[opt.param_groups[0]["params"][0]]["basis"]
    values, vectors = np.linalg.eigh((grad @ grad.T).numpy())
    top = vectors[:, ::-1][:, :lead]
    np.testing.assert_allclose(basis[:, :lead] @ basis[:, :lead].T, top @ top.T, atol=1e-12)
    cov = grad @ grad.T
    for j in range(lead, rank):  # the switched-in columns are eigenvectors of the same covariance
        u = basis[:, j]
        torch.testing.assert_close(cov @ u, (u @ cov @ u) * u, rtol=0, atol=1e-10)
    sigma = basis.T @ grad
    residual = grad - basis @ sigma
    compensation = math.sqrt(6 - rank) * residual / (residual.norm(dim=0) + eps)
    expected = -lr * alpha * (basis @ (sigma / (sigma.abs() + eps)) + alpha_c * compensation)
    torch.testing.assert_close(w.detach(), expected, rtol=1e-12, atol=1e-14)


def test_alice_full_rank_is_adam_in_the_rotated_basis():
    # rank >= min(m, n) with clip_rank: U is the full eigenbasis of G_1 G_1^T (kept: update_interval > steps),
    # no complement, so the iterates are torch.optim.Adam's on U^T W
    grads = random_grads([(4, 7)], 10, seed=7)
    (w,), opt = run(
        AliceOptimizer,
        grads,
        [torch.zeros(4, 7)],
        rank=10,
        clip_rank=True,
        leading_basis=2,
        lr=0.05,
        alpha=1.0,
        update_interval=100,
        betas=(0.8, 0.95, 0.9),
    )
    _, vectors = torch.linalg.eigh(grads[0][0] @ grads[0][0].T)
    x = torch.zeros(4, 7, requires_grad=True)
    adam = torch.optim.Adam([x], lr=0.05, betas=(0.8, 0.95), eps=1e-8)
    for (grad,) in grads:
        x.grad = vectors.T @ grad
        adam.step()
    torch.testing.assert_close(w.detach(), vectors @ x.detach(), rtol=1e-12, atol=1e-14)
    assert set(opt.state[w].keys()) == {"step", "basis", "cov", "exp_avg", "exp_avg_sq"}  # no complement state


def test_alice_full_rank_tracking_is_exact():
    # at full rank U Q U^T is the EMA of G G^T and U m the EMA of G, through every basis switch
    beta1, beta2, beta3 = 0.8, 0.9, 0.7
    grads = random_grads([(5, 8)], 9, seed=8)
    w = torch.zeros(5, 8, requires_grad=True)
    opt = AliceOptimizer([w], rank=5, clip_rank=True, leading_basis=2, update_interval=2, betas=(beta1, beta2, beta3))
    ema_cov, ema_grad = torch.zeros(5, 5), torch.zeros(5, 8)
    for (grad,) in grads:
        w.grad = grad
        opt.step()
        ema_cov = beta3 * ema_cov + (1 - beta3) * grad @ grad.T
        ema_grad = beta1 * ema_grad + (1 - beta1) * grad
        state = opt.state[w]
        basis = state["basis"]
        assert orthonormality_error(basis) < 1e-13 and basis.shape == (5, 5)
        torch.testing.assert_close(basis @ state["cov"] @ basis.T, ema_cov, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(basis @ state["exp_avg"], ema_grad, rtol=1e-12, atol=1e-13)


def test_alice_state_sizes_as_documented():
    m, n, rank = 6, 11, 2
    params = [torch.zeros(m, n, requires_grad=True) for _ in range(3)]
    configs = [dict(), dict(tracking=False), dict(rank=50, clip_rank=True)]
    expected = [m * rank + rank**2 + 2 * rank * n + n, m * rank + 2 * rank * n + n, m * m + m * m + 2 * m * n]
    for param, config, size in zip(params, configs, expected, strict=True):
        opt = AliceOptimizer([param], **{"rank": rank, "leading_basis": 1, **config})
        param.grad = torch.randn(m, n)
        opt.step()
        state = opt.state_dict()["state"][0]
        assert sum(v.numel() for v in state.values() if torch.is_tensor(v) and v.dim() > 0) == size


def test_alice_compensation_norm_growth_is_limited():
    gamma = 1.02
    grads = random_grads([(5, 8)], 8, seed=9, scale_growth=2.0)
    w = torch.zeros(5, 8, requires_grad=True)
    opt = AliceOptimizer([w], rank=2, leading_basis=1, gamma=gamma, update_interval=3)
    phis = []
    for (grad,) in grads:
        w.grad = grad
        opt.step()
        phis.append(float(opt.state[w]["phi"]))
    assert all(b <= gamma * a * (1 + 1e-12) for a, b in zip(phis, phis[1:], strict=False))
    assert math.isclose(phis[-1], gamma ** (len(phis) - 1) * phis[0], rel_tol=1e-9)  # binds every step here


def test_alice_switch_basis_and_direction_are_pure():
    cov = torch.diag(torch.tensor([1.0, 5.0, 3.0, 4.0]))
    basis = switch_basis(cov, 2, torch.tensor([1]))
    # eigenvectors by descending eigenvalue: e1 (5), e3 (4), e2 (3), e0 (1); keep 2 leading, then the 2nd of the rest
    torch.testing.assert_close(basis.abs(), torch.eye(4)[:, [1, 3, 0]])
    state = {
        "step": 0,
        "basis": torch.zeros(4, 2),
        "cov": torch.zeros(2, 2),
        "exp_avg": torch.zeros(2, 3),
        "exp_avg_sq": torch.zeros(2, 3),
        "comp": torch.zeros(3),
        "phi": torch.zeros(()),
    }
    frozen = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in state.items()}
    alice_direction(
        torch.randn(4, 3),
        state,
        rank=2,
        leading_basis=1,
        update_interval=5,
        betas=(0.9, 0.9, 0.9),
        alpha=1.0,
        alpha_c=0.4,
        gamma=1.01,
        eps=1e-8,
        tracking=True,
        bias_correction=True,
        complement=lambda n, k: torch.arange(k),
    )
    assert all(torch.equal(state[k], frozen[k]) if torch.is_tensor(v) else state[k] == v for k, v in frozen.items())


# --------------------------------------------------------------------------------------- shared behaviour
@pytest.mark.parametrize("cls", [RACSOptimizer, AliceOptimizer])
def test_one_dimensional_parameters_get_adamw(cls):
    grads = random_grads([(7,), ()], 6, seed=10)
    init = [torch.randn(7), torch.tensor(0.3)]
    kwargs = dict(lr=0.03, weight_decay=0.1, eps=1e-8, fallback_betas=(0.85, 0.99))
    if cls is AliceOptimizer:
        kwargs["rank"] = 2
    ours, _ = run(cls, grads, init, **kwargs)
    theirs, _ = run(torch.optim.AdamW, grads, init, lr=0.03, weight_decay=0.1, eps=1e-8, betas=(0.85, 0.99))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize(
    "cls,kwargs",
    [(RACSOptimizer, {}), (AliceOptimizer, dict(rank=2, leading_basis=1, update_interval=2))],
)
def test_state_dict_round_trip_resumes_the_uninterrupted_run(cls, kwargs, dtype):
    # bfloat16: the float32 state survives load_state_dict (torch would cast it to the parameter's dtype)
    shapes = [(5, 8), (9, 4), (3,)]
    grads = [[g.to(dtype) for g in gs] for gs in random_grads(shapes, 10, seed=11)]
    init = [torch.randn(shape, generator=torch.Generator().manual_seed(12)).to(dtype) for shape in shapes]
    ref, _ = run(cls, grads, init, **kwargs)
    first, opt = run(cls, grads[:5], init, **kwargs)
    saved = copy.deepcopy(opt.state_dict())
    params = [p.detach().clone().requires_grad_(True) for p in first]
    resumed = cls(params, **kwargs)
    resumed.load_state_dict(saved)
    assert resumed.state[params[0]]["step"] == 5
    for step_grads in grads[5:]:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        resumed.step()
    for a, b in zip(ref, params, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("cls,extra", [(RACSOptimizer, {}), (AliceOptimizer, {"rank": 1})])
def test_low_precision_parameters_use_float32_state(cls, extra):
    grads = random_grads([(6, 5)], 6, seed=13)
    ref, _ = run(cls, [[g.float() for g in gs] for gs in grads], [torch.zeros(6, 5, dtype=torch.float32)], **extra)
    (w,), opt = run(
        cls, [[g.bfloat16() for g in gs] for gs in grads], [torch.zeros(6, 5, dtype=torch.bfloat16)], **extra
    )
    state = opt.state[w]
    assert w.dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 for v in state.values() if torch.is_tensor(v))
    if "basis" in state:
        assert orthonormality_error(state["basis"]) < 1e-6
    # bf16 rounding of the gradients and of the iterates (8 bits of mantissa) is the only difference
    torch.testing.assert_close(w.float(), ref[0], rtol=0.05, atol=0.02 * float(ref[0].abs().max()))


@pytest.mark.parametrize("cls,extra", [(RACSOptimizer, {}), (AliceOptimizer, {"rank": 1})])
def test_non_finite_gradient_is_an_error_naming_the_parameter(cls, extra):
    w = torch.zeros(3, 4, requires_grad=True)
    opt = cls([torch.zeros(2, requires_grad=True), w], **extra)
    w.grad = torch.ones(3, 4)
    w.grad[1, 2] = float("nan")
    with pytest.raises(FloatingPointError, match=r"0\.1 \(shape \(3, 4\)\)"):
        opt.step()
    assert torch.equal(w.detach(), torch.zeros(3, 4)) and not opt.state[w]


@pytest.mark.parametrize(
    "cls,kwargs,match",
    [
        (RACSOptimizer, dict(lr=0.0), "lr"),
        (RACSOptimizer, dict(lr=-1e-3), "lr"),
        (RACSOptimizer, dict(beta=1.0), "beta"),
        (RACSOptimizer, dict(beta=-0.1), "beta"),
        (RACSOptimizer, dict(gamma=0.9), "gamma"),
        (RACSOptimizer, dict(alpha=0.0), "alpha"),
        (RACSOptimizer, dict(eps=-1.0), "eps"),
        (RACSOptimizer, dict(num_iterations=0), "num_iterations"),
        (RACSOptimizer, dict(fallback_betas=(0.9, 1.0)), "fallback_betas"),
        (AliceOptimizer, dict(rank=2, lr=0.0), "lr"),
        (AliceOptimizer, dict(rank=0), "rank"),
        (AliceOptimizer, dict(rank=2.5), "rank"),
        (AliceOptimizer, dict(rank=4), "rank must be < min"),  # the 4 x 6 parameter allows rank <= 3
        (AliceOptimizer, dict(rank=2, leading_basis=3), "leading_basis"),
        (AliceOptimizer, dict(rank=2, betas=(0.9, 0.9, 1.0)), "betas"),
        (AliceOptimizer, dict(rank=2, betas=(0.9, 0.9)), "betas"),
        (AliceOptimizer, dict(rank=2, update_interval=0), "update_interval"),
        (AliceOptimizer, dict(rank=2, alpha_c=-1.0), "alpha_c"),
        (AliceOptimizer, dict(rank=2, gamma=0.5), "gamma"),
        (AliceOptimizer, dict(rank=2, seed=-1), "seed"),
    ],
)
def test_bad_input(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls([torch.zeros(4, 6, requires_grad=True)], **kwargs)


def test_clip_rank_uses_the_layer_size():
    (w,), opt = run(AliceOptimizer, random_grads([(3, 5)], 2, seed=14), [torch.zeros(3, 5)], rank=8, clip_rank=True)
    assert opt.state[w]["basis"].shape == (3, 3)


# --------------------------------------------------------------------------------------- Pyro
def bnn_data(seed=0, n=50, din=4, hidden=8, dout=3):
    """Data from a tanh MLP, and a starting point near its weights (shared by every optimizer)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, din, generator=gen)
    w1, w2 = torch.randn(din, hidden, generator=gen), torch.randn(hidden, dout, generator=gen) / hidden**0.5
    y = torch.tanh(x @ w1) @ w2 + 0.3 * torch.randn(n, dout, generator=gen)
    start = {
        "w1": w1 + 0.3 * torch.randn(din, hidden, generator=gen),
        "b1": 0.3 * torch.randn(hidden, generator=gen),
        "w2": w2 + 0.3 * torch.randn(hidden, dout, generator=gen),
        "b2": 0.3 * torch.randn(dout, generator=gen),
    }
    return x, y, start


def bnn(x, y, hidden=8):
    """Bayesian MLP regression: weight matrices w1 (4 x 8), w2 (8 x 3) -- matrix parameters of the guide."""
    w1 = pyro.sample("w1", dist.Normal(0.0, 1.0).expand([x.shape[1], hidden]).to_event(2))
    b1 = pyro.sample("b1", dist.Normal(0.0, 1.0).expand([hidden]).to_event(1))
    w2 = pyro.sample("w2", dist.Normal(0.0, 1.0).expand([hidden, y.shape[1]]).to_event(2))
    b2 = pyro.sample("b2", dist.Normal(0.0, 1.0).expand([y.shape[1]]).to_event(1))
    mean = torch.tanh(x @ w1 + b1.unsqueeze(-2)) @ w2 + b2.unsqueeze(-2)
    pyro.sample("y", dist.Normal(mean, 0.3).to_event(2), obs=y)


SVI_STEPS, SVI_LR = 200, 0.05


def fit_bnn(optimizer_class, optim_args, steps=SVI_STEPS):
    """Negative ELBO after ``steps`` SVI steps (8 particles each), estimated with 2000 particles (s.e. ~0.1 nat).

    The learning rate decays from ``SVI_LR`` to a tenth (``pyro.optim.ExponentialLR``, a ``PyroLRScheduler``), so
    the final iterate is not dominated by gradient noise; the guide starts with its locations near the
    data-generating weights and broad scales (0.5), so every optimizer works in the same basin of this multimodal
    posterior and the comparison is one of convergence.
    """
    x, y, start = bnn_data()
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    guide = AutoNormal(bnn, init_loc_fn=init_to_value(values=start), init_scale=0.5)
    optim = pyro.optim.ExponentialLR(
        {"optimizer": optimizer_class, "optim_args": {"lr": SVI_LR, **optim_args}, "gamma": 0.1 ** (1 / steps)}
    )
    svi = SVI(bnn, guide, optim, Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=0))
    for _ in range(steps):
        svi.step(x, y)
        optim.step()
    pyro.set_rng_seed(2)
    with torch.no_grad():
        return Trace_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=0).loss(bnn, guide, x, y)


@pytest.fixture(scope="module")
def adam_bnn_loss():
    return fit_bnn(torch.optim.Adam, {})


@pytest.mark.parametrize(
    "optimizer_class,optim_args",
    [
        # the guide's weight matrices opted in: by default guide locations and scales go to AdamW
        (RACSOptimizer, {"alpha": 1.0, "matrix_params": "all"}),
        (
            AliceOptimizer,
            {
                "alpha": 1.0,
                "alpha_c": 1.0,
                "rank": 2,
                "leading_basis": 1,
                "update_interval": 10,
                "matrix_params": "all",
            },
        ),
    ],
    ids=["racs", "alice"],
)
def test_pyro_svi_bayesian_mlp_reaches_adams_elbo(optimizer_class, optim_args, adam_bnn_loss):
    # same budget and schedule as Adam (200 steps, lr 0.05 -> 0.005), from a negative ELBO of ~2000.  Tolerance:
    # within 2% of Adam's negative ELBO (~4 nats; the 2000-particle estimates' error is ~0.1 nat).  Measured over SVI
    # seeds 1-3: Adam 187.0-190.9, RACS 168.9-172.4, Alice 165.5-172.8 (at a constant lr 0.05 all three end at
    # 150-158, within 3.5 nats of Adam, but that final iterate is noisier).
    loss = fit_bnn(optimizer_class, optim_args)
    assert loss <= adam_bnn_loss + 0.02 * abs(adam_bnn_loss)


@pytest.mark.parametrize(
    "factory,args",
    [
        (RACS, {"lr": 0.02, "matrix_params": "all"}),
        (Alice, {"lr": 0.02, "rank": 2, "leading_basis": 1, "update_interval": 2, "matrix_params": "all"}),
    ],
    ids=["racs", "alice"],
)
def test_pyro_optim_get_set_state_and_save_load(tmp_path, factory, args):
    x, y, _ = bnn_data()

    def make():
        pyro.clear_param_store()
        pyro.set_rng_seed(5)
        guide = AutoNormal(bnn, init_scale=0.05)
        optim = factory(args)
        return guide, optim, SVI(bnn, guide, optim, Trace_ELBO(max_plate_nesting=0))

    guide, optim, svi = make()
    for _ in range(4):
        svi.step(x, y)
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    saved = copy.deepcopy(optim.get_state())  # state_dict() shares the live (in-place updated) tensors
    assert all(int(state["state"][0]["step"]) == 4 for state in saved.values())
    optim.save(tmp_path / "optim.pt")
    pyro.set_rng_seed(6)
    reference = [svi.step(x, y) for _ in range(3)]

    for restore in ("set_state", "load", None):
        guide, optim, svi = make()
        guide(x, y)
        for k, v in params.items():
            pyro.get_param_store()[k] = v.clone()
        if restore == "set_state":
            optim.set_state(saved)
        elif restore == "load":
            optim.load(tmp_path / "optim.pt")
        pyro.set_rng_seed(6)
        losses = [svi.step(x, y) for _ in range(3)]
        if restore is None:  # a fresh optimizer state gives other steps
            assert abs(losses[1] - reference[1]) > 1e-3
        else:  # the restored parameters went through the store's constraint transforms: equal up to rounding
            np.testing.assert_allclose(losses, reference, rtol=1e-12)


@pytest.mark.parametrize("cls", [RACSOptimizer, AliceOptimizer])
def test_pyro_lr_scheduler(cls):
    x, y, _ = bnn_data()
    pyro.clear_param_store()
    extra = {"rank": 2} if cls is AliceOptimizer else {}
    scheduler = pyro.optim.ExponentialLR({"optimizer": cls, "optim_args": {"lr": 0.04, **extra}, "gamma": 0.5})
    svi = SVI(bnn, AutoNormal(bnn), scheduler, Trace_ELBO(max_plate_nesting=0))
    for _ in range(3):
        svi.step(x, y)
        scheduler.step()
    lrs = {group["lr"] for sched in scheduler.optim_objs.values() for group in sched.optimizer.param_groups}
    assert lrs == {0.04 * 0.5**3}
    assert all(isinstance(sched.optimizer, cls) for sched in scheduler.optim_objs.values())
