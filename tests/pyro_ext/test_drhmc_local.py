"""DR-HMC and DR-G-HMC with ATLAS's local step size (``local_step_size=True``, Pyro backend) against exact answers.

The delayed stages step ``a / c^(k-1)`` with ``a`` drawn once per transition from a log-normal law whose
mean reads the curvature that the first stage's trajectory met (Modi 2024); the chain and every ghost
share ``a``, and each stage ``k >= 1`` carries ``q(a | y_k) / q(a | start)``.

* Detailed balance of every stage, exactly (float64, no Monte Carlo error): for a given ``a`` the
  transition is discrete, ``pi(z) q(a | z) P(stage k | z, a) = pi(y_k) q(a | y_k) P(stage k | y_k, a)``
  with ``P`` from the library's :func:`delayed_rejection` (ghosts, retries and all) fed chosen uniforms
  (``ScriptedRandom``), as ``tests/pyro_ext/test_drghmc.py`` checks the fixed ladder.
* Exact funnel draws stay exact under the kernels (KS tests on independent draws).
* The kernels pass the option to their cores, and refuse a non-flag.

That the torch cores make the JAX cores' transitions given the same random numbers is
``tests/test_parity_drhmc_local.py``; the JAX cores' own exactness tests are
``tests/numpyro_ext/test_drhmc_local.py``.
"""

import math

import numpy as np
import pytest
import torch
from pyro.infer import MCMC
from scipy import stats

from pyro_ext.infer import DRGHMC, DRHMC, drghmc, drhmc
from pyro_ext.infer.drhmc import StageAuxiliary, delayed_rejection, local_step_stages
from pyro_ext.infer.hmc_util import IntegratorState, kinetic_energy
from pyro_ext.models import test_problems
from tests.pyro_ext.test_drghmc import ALMOST_ONE, TINY, ScriptedRandom, funnel_logdensity

IMM = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)


def log_joint(point: IntegratorState) -> float:
    if point.logdensity == -math.inf:
        return -math.inf
    return point.logdensity - float(kinetic_energy(IMM, point.momentum))


def stage_probabilities(monkeypatch, point, a, settings):
    """``(P(accept stage k | point, a) for each k, the proposals y_k, log q(a | point))``, exactly.

    For stage ``k`` a ladder of ``k + 1`` stages (the same ``alpha_j``, ``j <= k``: a stage's ghosts run
    only earlier stages) rejects stages ``< k`` (and retries) and accepts stage ``k`` whenever
    ``alpha_k > 0``; its info reports ``alpha_k``.  The law's sample is replaced by the given ``a``.
    """
    eps, num_steps, num_stages, reduction, probabilistic, constant = settings
    stages, law = local_step_stages(funnel_logdensity, IMM, eps, num_steps, num_stages, reduction, constant)
    given = StageAuxiliary(lambda generator, summary: a, law.log_density)
    alphas, proposals = [], []
    for k in range(num_stages):
        retry = [TINY] if probabilistic else []
        ScriptedRandom(monkeypatch, [], [u for _ in range(k) for u in [ALMOST_ONE, *retry]] + [TINY])
        new, info = delayed_rejection(None, point, log_joint, stages[: k + 1], probabilistic, 1000.0, given)
        if info.stage not in (-1, k):  # an earlier stage is accepted (almost) surely: stage k is not reached
            alphas += [0.0] * (num_stages - k)
            proposals += [None] * (num_stages - k)
            break
        alphas.append(info.acceptance_rate)
        proposals.append(new if info.stage == k else None)
    weight = 2 if probabilistic else 1
    probs = [alphas[k] * math.prod((1 - alpha) ** weight for alpha in alphas[:k]) for k in range(num_stages)]
    curvature = stages[0](point)[2]
    return np.array(probs), proposals, law.log_density(a, curvature), curvature


@pytest.mark.parametrize("probabilistic", [True, False])
@pytest.mark.parametrize("constant_trajectory", [True, False], ids=["drhmc-stages", "drghmc-stages"])
def test_every_stage_satisfies_detailed_balance_exactly(monkeypatch, probabilistic, constant_trajectory):
    """pi(z) q(a | z) P(stage k | z, a) = pi(y_k) q(a | y_k) P(stage k | y_k, a), y_k = F_{k,a}(z), in float64.

    On the 3-D funnel at a step size the neck cannot take, ``a`` drawn from the law at ``z`` (the moves
    that happen); ``constant_trajectory`` gives DR-HMC's stages (each integrating the first's time) or
    DR-G-HMC's default (each ``num_steps`` steps).
    """
    settings = (1.0, 2, 3, 3.0, probabilistic, constant_trajectory)
    rng = np.random.default_rng(1)
    tested = 0
    for _ in range(30):
        z = np.array([rng.normal(0, 3), *rng.normal(size=2)])
        z[1:] *= np.exp(z[0] / 2)
        point = drhmc.init(torch.tensor(z), funnel_logdensity)
        point = IntegratorState(point.position, torch.tensor(rng.normal(size=3)) / IMM.sqrt(), *point[1:])
        stages, law = local_step_stages(funnel_logdensity, IMM, *settings[:4], constant_trajectory)
        ScriptedRandom(monkeypatch, [rng.normal()])  # the law's one normal
        a = law.sample(None, stages[0](point)[2])
        forward, proposals, log_q_start, _ = stage_probabilities(monkeypatch, point, a, settings)
        for k, y in enumerate(proposals):
            if y is None or not log_joint(y) - log_joint(point) > -50:
                continue  # never accepted, or a move of probability below e^-50 both ways
            back, returns, log_q_end, _ = stage_probabilities(monkeypatch, y, a, settings)
            np.testing.assert_allclose(returns[k].position, point.position, rtol=1e-7, atol=1e-9)  # an involution
            np.testing.assert_allclose(returns[k].momentum, point.momentum, rtol=1e-7, atol=1e-9)
            log_q = (log_q_start, log_q_end) if k > 0 else (0.0, 0.0)
            flow_forward = math.exp(log_joint(point) + log_q[0]) * forward[k]
            flow_back = math.exp(log_joint(y) + log_q[1]) * back[k]
            np.testing.assert_allclose(flow_forward, flow_back, rtol=1e-7, atol=1e-300)
            tested += 1e-12 < forward[k] < 1 - 1e-12 and k > 0 and abs(log_q_start - log_q_end) > 1e-3
    assert tested >= 8, f"only {tested} later-stage moves with probability in (0, 1) and q differing at the ends"


def exact_funnel_starts(num_draws, seed):
    """``(num_draws, 3)`` independent draws of the 3-D funnel: v ~ N(0, 3), x ~ N(0, e^v) given v."""
    rng = np.random.default_rng(seed)
    v = rng.normal(0.0, 3.0, num_draws)
    return np.column_stack([v, rng.normal(size=(num_draws, 2)) * np.exp(v / 2)[:, None]])


def assert_exact_funnel(z, label):
    """``(n, 3)`` independent draws against the funnel: v ~ N(0, 3) and x e^{-v/2} ~ N(0, 1) (KS)."""
    v = z[:, 0]
    assert stats.kstest(v, stats.norm(0, 3).cdf).pvalue > 1e-3, f"{label}: v"
    assert stats.kstest((z[:, 1:] * np.exp(-v / 2)[:, None]).ravel(), "norm").pvalue > 1e-3, f"{label}: x given v"
    assert abs(v.mean()) / (3.0 / math.sqrt(len(v))) < 4, f"{label}: v's mean {v.mean():.3f}"


@pytest.mark.parametrize(
    "sampler, num_draws",
    [("drghmc", 700), pytest.param("drhmc", 1500, marks=pytest.mark.slow)],  # slow: DR-HMC ~15 s
)
def test_funnel_exact_draws_stay_exact(sampler, num_draws):
    """Exact funnel draws in, transitions with ``local_step_size=True``, exact draws out.

    ``eps = 1.2`` is too large for the neck (scale ``e^{v/2}``): the local step decides many moves, so a
    wrong density ratio of its draw would move v's marginal.  DR-G-HMC (two transitions each) also
    carries the momentum, which must stay ``N(0, M)``; DR-HMC takes one transition each.
    """
    starts, generator = exact_funnel_starts(num_draws, 4), torch.Generator().manual_seed(5)
    imm = torch.ones(3, dtype=torch.float64)
    out, momenta, stages = np.empty((num_draws, 3)), np.empty((num_draws, 3)), []
    if sampler == "drghmc":
        step = drghmc.build_kernel(3, 4.0, damping=0.5, local_step_size=True)
        for n, z in enumerate(starts):
            state = drghmc.init(torch.tensor(z), funnel_logdensity, generator)
            for _ in range(2):
                state, info = step(state, funnel_logdensity, 1.2, imm, 2, generator=generator)
                stages.append(info.stage)
            out[n], momenta[n] = state.position.numpy(), state.momentum.numpy()
        assert stats.kstest(momenta.ravel(), "norm").pvalue > 1e-3, "the kept momentum"
    else:
        step = drhmc.build_kernel(3, 4.0, True, local_step_size=True)
        for n, z in enumerate(starts):
            state = drhmc.init(torch.tensor(z), funnel_logdensity)
            state, info = step(state, funnel_logdensity, 1.2, imm, 2, generator)
            out[n] = state.position.numpy()
            stages.append(info.stage)
    stages = np.array(stages)
    assert (stages >= 1).mean() > 0.05, np.bincount(stages + 1)
    assert_exact_funnel(out, sampler)


def two_scale_potential(params):  # N(0, diag(0.05^2, 1))
    x = params["x"]
    return 0.5 * ((x[0] / 0.05) ** 2 + x[1] ** 2)


@pytest.mark.parametrize("kernel", [DRHMC, DRGHMC])
def test_the_kernels_pass_the_option_to_their_cores(kernel):
    """Four steps of 0.1, at the stability limit of the 0.05 scale: stage 0 often fails.  The fixed ladder's
    stage ``k`` takes ``4 * 4^k`` steps, so a transition takes 4, 20 or 84; the local step (about
    ``0.5 / sqrt(400) = 0.025``, log-normal) takes ``ceil(0.4 / a)``, other counts (DR-G-HMC with a full
    refresh and ``constant_trajectory=True`` is DR-HMC)."""
    fixed = dict(step_size=0.1, num_steps=4, adapt_step_size=False, adapt_mass_matrix=False)
    if kernel is DRGHMC:
        fixed.update(step_size_factor=1.0, damping=1.0, constant_trajectory=True)
    num_steps = {}
    for local in (True, False):
        torch.manual_seed(0)
        k = kernel(potential_fn=two_scale_potential, local_step_size=local, **fixed)
        initial = {"x": torch.tensor([0.01, 0.3], dtype=torch.float64)}
        MCMC(k, warmup_steps=0, num_samples=40, initial_params=initial, disable_progbar=True).run()
        stats_ = k.get_sample_stats()
        assert (stats_["stage"] >= 1).mean() > 0.3, np.bincount(stats_["stage"] + 1)
        num_steps[local] = set(stats_["num_steps"].tolist())
    assert num_steps[False] <= {4, 20, 84} and len(num_steps[True] - {4, 20, 84}) >= 3, num_steps


@pytest.mark.parametrize("kernel", [DRHMC, DRGHMC])
def test_local_step_size_must_be_a_flag(kernel):
    with pytest.raises(ValueError, match="local_step_size must be True or False, got 'yes'"):
        kernel(test_problems.funnel, local_step_size="yes")
    with pytest.raises(ValueError, match="local_step_size must be True or False, got 1"):
        {DRHMC: drhmc, DRGHMC: drghmc}[kernel].build_kernel(local_step_size=1)
