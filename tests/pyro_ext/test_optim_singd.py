"""SINGD (Lin et al., ICML 2024) against the authors' ``singd`` package, step for step.

The key tests train the same network from the same initialisation on the same data with
both optimizers and compare the parameters after several steps: float64 where ``singd``
supports it (dense, diagonal), float32 where its structured kernels require it
(hierarchical, Toeplitz, block-diagonal).  Tolerances are floating-point round-off of a few
hundred operations on O(1) numbers: 1e-12 in float64, 2e-6 in float32 (measured 2e-16 and
1.5e-7).  The structure kernels are also checked against dense matrix algebra, the
fallbacks against torch's own AdamW/SGD, and the Pyro wrapper in SVI against Adam.
"""

from __future__ import annotations

import copy
import io
import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroSample
from torch import nn

from pyro_ext.optim import SINGD, SINGDOptimizer
from pyro_ext.optim.singd import get_structure

singd_optim = pytest.importorskip("singd.optim.optimizer", reason="the authors' singd package is the oracle")
from singd.structures.blockdiagonal import Block3DiagonalMatrix  # noqa: E402
from singd.structures.hierarchical import Hierarchical3_2Matrix  # noqa: E402

RefSINGD = singd_optim.SINGD


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture
def ref_structures(monkeypatch):
    """Register singd's own small-block classes (its defaults have blocks of 15/30) under our names."""
    extra = {"hierarchical3_2": Hierarchical3_2Matrix, "block3diagonal": Block3DiagonalMatrix}
    monkeypatch.setattr(RefSINGD, "SUPPORTED_STRUCTURES", {**RefSINGD.SUPPORTED_STRUCTURES, **extra})


def mlp(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    # d_K = 7 and 9, d_C = 8 and 3: the hierarchical3_2 structure uses all five blocks on both
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def data(steps, dtype=torch.float64, batch=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(steps, batch, 6, generator=g, dtype=dtype), torch.randn(
        steps, batch, 3, generator=g, dtype=dtype
    )


def mse(out, y, mean=True):
    per_example = ((out - y) ** 2).sum(-1)
    return per_example.mean() if mean else per_example.sum()


def run_pair(make_model, make_ref_model, batches, loss_fn, kw, ref_kw=None, steps=None):
    """Train ours and singd's on the same data; return the largest parameter difference and movement."""
    net = make_model()
    ref = copy.deepcopy(net) if make_ref_model is None else make_ref_model(net)
    start = [p.detach().clone() for p in net.parameters()]
    ours = SINGDOptimizer(net, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = RefSINGD(ref, **(ref_kw or kw))
    for x, y in batches[:steps]:
        for model, opt in ((net, ours), (ref, theirs)):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
    diff = max((p - q).abs().max().item() for p, q in zip(net.parameters(), ref.parameters(), strict=True))
    moved = max((p - q).abs().max().item() for p, q in zip(net.parameters(), start, strict=True))
    return diff, moved


BASE = dict(lr=0.1, momentum=0.9, damping=1e-2, alpha1=0.5, weight_decay=1e-2, T=1, lr_cov=0.2)


# ---------------------------------------------------------------------------------------
# step for step against singd
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "structures,extra",
    [
        (("dense", "dense"), {}),
        (("diagonal", "diagonal"), {}),
        (("dense", "diagonal"), {}),
        (("diagonal", "dense"), {"T": 2}),
        (("dense", "dense"), {"kfac_like": True, "alpha1": 0.0}),
        (("dense", "dense"), {"normalize_lr_cov": True, "momentum": 0.0}),
        (("diagonal", "dense"), {"alpha1": 0.0, "weight_decay": 0.0}),
        (("dense", "dense"), {"loss_average": None, "lr": 0.01, "lr_cov": 0.01}),
    ],
)
def test_matches_singd_float64(structures, extra):
    X, Y = data(6)
    kw = {**BASE, "structures": structures, **extra}
    mean = kw.get("loss_average", "batch") is not None
    diff, moved = run_pair(mlp, None, list(zip(X, Y, strict=True)), lambda o, y: mse(o, y, mean), kw)
    assert moved > 1e-2  # the trajectories went somewhere
    assert diff < 1e-12


@pytest.mark.parametrize(
    "structures",
    [("hierarchical3_2", "hierarchical3_2"), ("triltoeplitz", "triutoeplitz"), ("triutoeplitz", "hierarchical3_2")],
)
def test_matches_singd_float32(structures, ref_structures):
    # singd's hierarchical and Toeplitz kernels refuse float64, so compare in float32
    X, Y = data(5, torch.float32)
    kw = {**BASE, "structures": structures}
    diff, moved = run_pair(lambda: mlp(torch.float32), None, list(zip(X, Y, strict=True)), mse, kw)
    assert moved > 1e-2
    assert diff < 2e-6


class _TransposedBlock3(Block3DiagonalMatrix):
    """singd's block-diagonal class with ``Kᵀ`` where it uses ``K`` (its blocks are assumed symmetric)."""

    def rmatmat(self, mat):
        return type(self)(self._blocks.mT, self._last.mT) @ mat

    def from_inner(self, X=None):
        if X is None:
            return type(self)(self._blocks.mT @ self._blocks, self._last.mT @ self._last)
        return super().from_inner(X)


def test_block_diagonal_matches_singd(ref_structures, monkeypatch):
    """singd's block-diagonal factors multiply by ``K`` where the update needs ``Kᵀ`` (its
    ``rmatmat``) and form ``K Kᵀ`` where it needs ``Kᵀ K``; the two agree while ``K`` is
    symmetric (the first step, from ``K = I``) and drift apart once ``K(I − β₁ m)`` is not.
    With the transposes restored the packages agree step for step."""
    X, Y = data(5, torch.float32)
    batches = list(zip(X, Y, strict=True))
    kw = {**BASE, "structures": ("block3diagonal", "block3diagonal")}
    diff, _ = run_pair(lambda: mlp(torch.float32), None, batches, mse, kw, steps=1)
    assert diff < 2e-6
    monkeypatch.setitem(RefSINGD.SUPPORTED_STRUCTURES, "block3diagonal", _TransposedBlock3)
    diff, moved = run_pair(lambda: mlp(torch.float32), None, batches, mse, kw)
    assert moved > 1e-2
    assert diff < 2e-6


@pytest.mark.parametrize("kfac_approx", ["expand", "reduce"])
def test_conv_and_weight_sharing_match_singd(kfac_approx):
    torch.manual_seed(3)
    cnn = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 2, stride=2), nn.Flatten(), nn.Linear(8, 2)
    )
    x, y = torch.randn(4, 8, 2, 4, 4), torch.randn(4, 8, 2)
    kw = {**BASE, "kfac_approx": kfac_approx}
    diff, moved = run_pair(lambda: copy.deepcopy(cnn), None, list(zip(x, y, strict=True)), mse, kw)
    assert moved > 1e-2 and diff < 1e-12
    # a Linear layer on (batch, sequence, features) inputs, the loss a mean over both axes
    torch.manual_seed(4)
    seq = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    x, y = torch.randn(4, 6, 7, 3), torch.randn(4, 6, 7, 2)
    kw = {**BASE, "kfac_approx": kfac_approx, "loss_average": "batch+sequence"}
    diff, moved = run_pair(
        lambda: copy.deepcopy(seq), None, list(zip(x, y, strict=True)), lambda o, t: ((o - t) ** 2).mean(), kw
    )
    assert moved > 1e-2 and diff < 1e-12


def test_loss_scale_is_the_factor_in_front_of_the_sum():
    """``loss_average=None, loss_scale=1/B`` on a batch-mean loss is singd's ``loss_average="batch"``."""
    X, Y = data(5)
    ref_kw = {**BASE, "structures": ("dense", "diagonal"), "loss_average": "batch"}
    kw = {**ref_kw, "loss_average": None, "loss_scale": 1 / 16}
    diff, moved = run_pair(mlp, None, list(zip(X, Y, strict=True)), mse, kw, ref_kw=ref_kw)
    assert moved > 1e-2 and diff < 1e-12


def test_several_passes_equal_one_pass():
    """Two half-batch passes before a step (each loss a half-batch mean) average their input
    statistics and add their gradient statistics: the same step as one pass over the batch
    of the summed loss ``mean₁ + mean₂ = 2 · mean`` with ``loss_scale=2``."""
    X, Y = data(4)
    kw = {**BASE, "structures": ("dense", "dense")}
    one, two = mlp(), mlp()
    opt_one = SINGDOptimizer(one, **{**kw, "loss_scale": 2.0})
    opt_two = SINGDOptimizer(two, **kw)
    for x, y in zip(X, Y, strict=True):
        opt_one.zero_grad()
        (2 * mse(one(x), y)).backward()
        opt_one.step()
        opt_two.zero_grad()
        for half in (slice(0, 8), slice(8, 16)):
            mse(two(x[half]), y[half]).backward()
        opt_two.step()
    diff = max((p - q).abs().max().item() for p, q in zip(one.parameters(), two.parameters(), strict=True))
    assert diff < 1e-12


# ---------------------------------------------------------------------------------------
# structure kernels against dense matrix algebra
# ---------------------------------------------------------------------------------------
def dense_projection(name: str, M: torch.Tensor) -> torch.Tensor:
    """Π̂ of a symmetric ``M``, written densely: a sparsity pattern P keeps M_ij where P holds
    (i, j) and (j, i) and doubles it where only (i, j); Toeplitz averages that over each diagonal."""
    d = M.shape[0]
    ones = torch.ones(d, d, dtype=M.dtype)
    if name == "dense":
        P = ones
    elif name == "diagonal":
        P = torch.eye(d, dtype=M.dtype)
    elif name == "block3diagonal":
        P = torch.block_diag(*[ones[:3, :3]] * (d // 3), ones[: d % 3, : d % 3])
    elif name == "hierarchical3_2":
        P = torch.zeros(d, d, dtype=M.dtype)
        P[:3, :] = 1
        P[range(3, d - 2), range(3, d - 2)] = 1
        P[d - 2 :, 3:] = 1
    else:  # Toeplitz: double the strict sub-diagonals' sums, average over each diagonal
        v = torch.stack([M.diagonal(-k).sum() * (1 if k == 0 else 2) / (d - k) for k in range(d)])
        L = sum(torch.diag(v[k].expand(d - k), -k) for k in range(d))
        return L if name == "triltoeplitz" else L.mT
    return P * 2 * M - (P * P.mT) * M


NAMES = ["dense", "diagonal", "block3diagonal", "hierarchical3_2", "triltoeplitz", "triutoeplitz"]


@pytest.mark.parametrize("name", NAMES)
def test_structure_kernels(name):
    d, n = 9, 5
    s = get_structure(name)
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    # non-symmetric group elements: products of I - 0.3 Π̂(S Sᵀ)
    K = s.eye(d, torch.float64, torch.device("cpu"))
    for _ in range(2):
        K = s.compose(K, tuple(-0.3 * t for t in s.add_to_diag(s.project_gram(rand(d, n)), -1 / 0.3)))
    M = s.add_to_diag(s.project_gram(rand(d, n)), 0.5)
    Kd, Md, X = s.to_dense(K), s.to_dense(M), rand(d, n)
    assert not torch.allclose(Kd, Kd.mT) or name == "diagonal"
    torch.testing.assert_close(s.matmul(K, X), Kd @ X)
    torch.testing.assert_close(s.rmatmul(K, X), Kd.mT @ X)
    torch.testing.assert_close(s.to_dense(s.compose(K, M)), Kd @ Md)
    torch.testing.assert_close(s.to_dense(s.project_gram(X)), dense_projection(name, X @ X.mT))
    torch.testing.assert_close(s.to_dense(s.project_self_gram(K)), dense_projection(name, Kd.mT @ Kd))
    torch.testing.assert_close(s.avg_trace(M), Md.diagonal().mean())
    assert s.inf_norm(M) == Md.abs().max()
    assert s.numel(d) == sum(t.numel() for t in K)
    torch.testing.assert_close(s.to_dense(s.add_to_diag(M, 2.0)), Md + 2 * torch.eye(d, dtype=Md.dtype))


def test_state_size():
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    sizes = SINGDOptimizer(net, structures=("diagonal", "dense")).state_size()
    # K: d_K numbers, C: d_C², both twice (m_K, m_C), plus the momentum buffer of W and b
    assert sizes == {"0": 2 * (7 + 64) + 56, "2": 2 * (9 + 9) + 27}
    sizes = SINGDOptimizer(net, structures=("hierarchical3_2", "triltoeplitz"), alpha1=0.0, momentum=0.0).state_size()
    assert sizes == {"0": (9 + 12 + 2 + 4 + 4) + 8, "2": (9 + 18 + 4 + 8 + 4) + 3}


# ---------------------------------------------------------------------------------------
# fallback, dtypes, checkpoints, bad input
# ---------------------------------------------------------------------------------------
def net_with_norm():
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 3))


@pytest.mark.parametrize("fallback", ["adam", "sgd"])
def test_fallback_is_torch_adamw_or_sgd(fallback):
    net = net_with_norm()
    ref = copy.deepcopy(net[1])
    opt = SINGDOptimizer(
        net, lr=0.05, momentum=0.9, weight_decay=0.01, fallback=fallback, fallback_lr=0.02, betas=(0.8, 0.9)
    )
    if fallback == "adam":
        ref_opt = torch.optim.AdamW(ref.parameters(), lr=0.02, betas=(0.8, 0.9), eps=1e-8, weight_decay=0.01)
    else:
        ref_opt = torch.optim.SGD(ref.parameters(), lr=0.02, momentum=0.9, weight_decay=0.01)
    assert opt.layers.keys() == {"0", "3"}
    X, Y = data(4)
    for x, y in zip(X, Y, strict=True):
        opt.zero_grad()
        mse(net(x), y).backward()
        for p, q in zip(ref.parameters(), net[1].parameters(), strict=True):
            p.grad = q.grad.clone()
        opt.step()
        ref_opt.step()
    for p, q in zip(ref.parameters(), net[1].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


def test_state_dict_round_trip():
    X, Y = data(8)
    kw = dict(lr=0.05, lr_cov=0.1, T=2, structures=("dense", "diagonal"), weight_decay=1e-3)
    net = net_with_norm()
    opt = SINGDOptimizer(net, **kw)

    def train(model, optimizer, batches):
        for x, y in batches:
            optimizer.zero_grad()
            mse(model(x), y).backward()
            optimizer.step()

    train(net, opt, zip(X[:3], Y[:3], strict=True))
    buffer = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    clone = net_with_norm()
    clone.load_state_dict(saved["model"])
    clone_opt = SINGDOptimizer(clone, **kw)
    clone_opt.load_state_dict(saved["opt"])
    train(net, opt, zip(X[3:], Y[3:], strict=True))
    train(clone, clone_opt, zip(X[3:], Y[3:], strict=True))
    for p, q in zip(net.parameters(), clone.parameters(), strict=True):
        assert torch.equal(p, q)
    state = opt.state[net[0].weight]
    assert state["step"] == 8 and len(state["K"]) == 1 and state["C"][0].shape == (8,)


def test_float32_and_preconditioner_dtype():
    X, Y = data(5)
    kw = dict(BASE, structures=("dense", "dense"))
    reference = mlp()
    opt64 = SINGDOptimizer(reference, **kw)
    net32 = mlp(torch.float32)
    opt32 = SINGDOptimizer(net32, **kw, preconditioner_dtype=(torch.float64, torch.float64))
    for x, y in zip(X, Y, strict=True):
        for model, opt, dtype in ((reference, opt64, torch.float64), (net32, opt32, torch.float32)):
            opt.zero_grad()
            mse(model(x.to(dtype)), y.to(dtype)).backward()
            opt.step()
    assert all(p.dtype == torch.float32 for p in net32.parameters())
    assert opt32.state[net32[0].weight]["K"][0].dtype == torch.float64
    for p, q in zip(reference.parameters(), net32.parameters(), strict=True):
        torch.testing.assert_close(q.double(), p, rtol=0, atol=1e-5)  # float32 round-off of the forward pass
    # loading a checkpoint keeps the factors in their own dtype
    opt32.load_state_dict(opt32.state_dict())
    assert opt32.state[net32[0].weight]["K"][0].dtype == torch.float64


def test_non_finite_gradient_is_an_error_and_changes_nothing():
    net = mlp()
    opt = SINGDOptimizer(net, T=1)
    x, y = data(1)
    mse(net(x[0]), y[0]).backward()
    net[2].bias.grad[0] = math.nan
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(FloatingPointError, match=r"2\.bias"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before, strict=True))
    assert not opt._pending and opt.state[net[0].weight]["step"] == 0
    # the next (finite) step starts from clean statistics
    opt.zero_grad()
    mse(net(x[0]), y[0]).backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_no_statistics_without_gradients():
    net = mlp()
    opt = SINGDOptimizer(net)
    with torch.no_grad():
        net(torch.randn(3, 6))
    assert not opt._pending
    opt.remove_hooks()
    mse(net(torch.randn(3, 6)), torch.randn(3, 3)).backward()
    assert not opt._pending


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": -1e-3}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"alpha1": 1.0}, "alpha1"),
        ({"damping": -1e-3}, "damping"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"T": 0}, "T"),
        ({"lr_cov": 0.0}, "lr_cov"),
        ({"loss_average": "mean"}, "loss_average"),
        ({"loss_scale": 0.0}, "loss_scale"),
        ({"structures": ("dense", "blockdiagonal")}, "structures"),
        ({"structures": ("dense", "lowrank")}, "structures"),
        ({"structures": "dense"}, "structures"),
        ({"kfac_approx": "full"}, "kfac_approx"),
        ({"fallback": "lbfgs"}, "fallback"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"preconditioner_dtype": (torch.int32, None)}, "preconditioner_dtype"),
    ],
)
def test_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SINGDOptimizer(mlp(), **kwargs)


def test_bad_model():
    with pytest.raises(ValueError, match="model"):
        SINGDOptimizer([1, 2])
    with pytest.raises(ValueError, match="model"):
        SINGDOptimizer(nn.Sequential(nn.LayerNorm(3)), fallback=None)
    with pytest.raises(ValueError, match="optim_args"):
        SINGD(mlp(), lambda name: {"lr": 1e-3})


# ---------------------------------------------------------------------------------------
# Pyro
# ---------------------------------------------------------------------------------------
N = 64


def regression():
    g = torch.Generator().manual_seed(0)
    x = torch.linspace(-2, 2, N).unsqueeze(-1)
    return x, torch.sin(3 * x).squeeze(-1) + 0.1 * torch.randn(N, generator=g)


def regression_svi(optim_factory, per_datum=True):
    """A PyroModule MLP for the mean, a latent noise scale with an AutoNormal guide."""
    pyro.clear_param_store()
    pyro.set_rng_seed(2)
    torch.manual_seed(1)
    net = PyroModule[nn.Sequential](PyroModule[nn.Linear](1, 16), nn.Tanh(), PyroModule[nn.Linear](16, 1))

    def model(x, y=None):
        sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(net(x).squeeze(-1), sigma), obs=y)

    guide = AutoNormal(poutine.block(model, hide=["y"]))
    optim = optim_factory(net)
    scale = 1 / N if per_datum else 1.0
    svi = SVI(poutine.scale(model, scale), poutine.scale(guide, scale), optim, Trace_ELBO())
    return net, model, guide, optim, svi


def final_loss(model, guide, x, y):
    # only sigma is random: 500 particles put the Monte Carlo error of the ELBO well under 0.5
    with torch.no_grad():
        return Trace_ELBO(num_particles=500, vectorize_particles=True).loss(model, guide, x, y)


SVI_ARGS = {"lr": 0.05, "lr_cov": 0.1, "T": 5, "normalize_lr_cov": True, "fallback_lr": 0.03, "loss_average": "batch"}


def test_svi_reaches_adams_loss():
    x, y = regression()
    steps = 150
    _, model, guide, _, svi = regression_svi(lambda net: pyro.optim.Adam({"lr": 0.03}))
    first = svi.step(x, y) * N
    for _ in range(steps - 1):
        svi.step(x, y)
    adam = final_loss(model, guide, x, y)
    net, model, guide, optim, svi = regression_svi(lambda net: SINGD(net, SVI_ARGS))
    for _ in range(steps):
        svi.step(x, y)
    singd = final_loss(model, guide, x, y)
    assert set(optim.optimizer.layers) == {"0", "2"}
    # the guide's two parameters joined the fallback group on the first step
    assert sum(len(g["params"]) for g in optim.optimizer.param_groups if g["kind"] == "adam") == 2
    assert adam < first - 50  # Adam learned most of the fit (first ≈ 80, optimum ≈ -55)
    assert singd < adam + 2.0  # ... and SINGD at least as far, up to 2 nats


def test_svi_checkpoint_round_trip(tmp_path):
    """Save after 5 SVI steps, restore into a fresh run, continue 4 steps: the same as not stopping."""
    x, y = regression()
    args = {**SVI_ARGS, "T": 2}
    net, _, guide, optim, svi = regression_svi(lambda net: SINGD(net, args))
    for _ in range(5):
        svi.step(x, y)
    optim.save(str(tmp_path / "singd.pt"))
    store = pyro.get_param_store().get_state()
    guide_state = {key: {k: v for k, v in store[key].items() if k.startswith("AutoNormal")} for key in store}
    guide_state = copy.deepcopy(guide_state)
    module_state = copy.deepcopy(net.state_dict())
    rng = torch.get_rng_state()
    for _ in range(4):
        svi.step(x, y)
    expected = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    net2, _, guide2, optim2, svi2 = regression_svi(lambda net: SINGD(net, args))
    net2.load_state_dict(module_state)  # in place: the optimizer keeps the same parameter objects
    pyro.get_param_store().set_state(guide_state)
    optim2.load(str(tmp_path / "singd.pt"))
    assert set(optim2._waiting["param_store"]) == {"AutoNormal.locs.sigma", "AutoNormal.scales.sigma"}
    with torch.no_grad():
        guide2(x, y)  # AutoNormal builds its parameters (from the store) on its first call
    torch.set_rng_state(rng)
    for _ in range(4):
        svi2.step(x, y)
    assert not optim2._waiting["param_store"]  # consumed when SVI first passed the guide's parameters
    for name, value in pyro.get_param_store().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-12)
    state = optim2.get_state()
    assert set(state["module"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert set(state["param_store"]) == {"AutoNormal.locs.sigma", "AutoNormal.scales.sigma"}


def test_stale_param_store_warns():
    x, y = regression()
    net, model, guide, optim, svi = regression_svi(lambda net: SINGD(net, SVI_ARGS))
    pyro.param("0.weight", torch.zeros(16, 1))  # another tensor under the module's parameter name
    with pytest.warns(UserWarning, match="param store"):
        svi.step(x, y)


def test_bayesian_layers_go_to_the_fallback():
    torch.manual_seed(0)
    net = PyroModule[nn.Sequential](PyroModule[nn.Linear](2, 3), nn.Tanh(), PyroModule[nn.Linear](3, 1))
    net[0].weight = PyroSample(dist.Normal(0.0, 1.0).expand([3, 2]).to_event(2))
    opt = SINGDOptimizer(net)
    assert set(opt.layers) == {"2"}
    assert sum(len(g["params"]) for g in opt.param_groups if g["kind"] == "adam") == 1  # 0.bias
