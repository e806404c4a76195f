"""Pyro MCMC kernels as sweep algorithms (:mod:`adapters.sweep`): ``pyro-nuts``, ``pyro-drhmc``, ``pyro-drghmc``.

All are declared as entry points of the group ``ppl_ext.sweep_algorithms`` in
``pyproject.toml`` (:data:`NUTS_SWEEP`, :data:`DRHMC_SWEEP`, :data:`DRGHMC_SWEEP`); nothing
imports this module but the sweep, when a run needs one of them.  ``pyro-drghmc`` runs
``thinning`` iterations per kept draw (the NumPyro ``drghmc``'s settings) and counts the
gradients and divergences of every iteration.

Chains run one after the other in the calling process (Pyro's multi-chain MCMC starts
processes, which a Dask worker may not), chain ``c`` seeded with ``1000 * seed + c``,
in float64.  A posterior with a Pyro port is run on the model; any other
:class:`~adapters.target.Target` through its torch view as a ``potential_fn`` of one
site ``x``, with draws constrained by the target afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyro
import torch
from pyro.infer import MCMC, NUTS, Predictive

from adapters.configs import DRHMC_SWEEP_OPTIONS
from adapters.sweep_registry import RunOutput, define_algorithm
from pyro_ext.infer.drghmc import DRGHMC
from pyro_ext.infer.drhmc import DRHMC


def enable_float64() -> None:
    """posteriordb's reference draws are float64; so are the sweep's torch runs."""
    torch.set_default_dtype(torch.float64)


class _CountingNUTS(NUTS):
    """Pyro's NUTS that counts potential-energy evaluations (one per leapfrog step) of each draw after warmup."""

    def setup(self, warmup_steps: int, *args, **kwargs) -> None:
        super().setup(warmup_steps, *args, **kwargs)
        potential_fn = self.potential_fn
        self._warmup_left = warmup_steps
        self.sampling_evals: list[int] = []
        self._evals = 0

        def counting(params):
            self._evals += 1
            return potential_fn(params)

        self.potential_fn = counting

    def sample(self, params):
        before = self._evals
        out = super().sample(params)
        if self._warmup_left > 0:
            self._warmup_left -= 1
        else:
            self.sampling_evals.append(self._evals - before)
        return out


def with_deterministic_sites(
    model: Callable, samples: dict[str, torch.Tensor], *args: Any, **kwargs: Any
) -> dict[str, torch.Tensor]:
    """``samples`` of Pyro's ``MCMC`` plus the model's ``pyro.deterministic`` sites at each draw."""
    trace = pyro.poutine.trace(model).get_trace(*args, **kwargs)
    sites = [k for k, s in trace.nodes.items() if s["type"] == "sample" and s["infer"].get("_deterministic")]
    if not sites:
        return dict(samples)
    return {**samples, **Predictive(model, posterior_samples=samples, return_sites=sites)(*args, **kwargs)}


def run_mcmc(
    make_kernel: Callable[..., Any], target: Any, config: Mapping[str, Any], seed: int, thinning: int = 1
) -> RunOutput:
    """Pyro ``MCMC`` of ``make_kernel(model=... | potential_fn=...)`` on ``target``, chain by chain.

    ``thinning``: iterations per kept draw (``num_samples`` draws are kept, the last of each block);
    a kept draw's gradient and divergence counts are those of its whole block.
    """
    num_samples = int(config["num_samples"])
    num_iterations = num_samples * thinning
    native = target.backend == "pyro"
    logdensity = None if native else target.as_torch()
    chains: list[dict[str, np.ndarray]] = []
    grads: list[np.ndarray] = []  # per chain: gradient evaluations of each draw
    diverging: list[np.ndarray] = []
    for chain in range(int(config["num_chains"])):
        pyro.set_rng_seed(1000 * seed + chain)
        if native:
            kernel = make_kernel(model=target.model)
            mcmc = MCMC(
                kernel,
                num_samples=num_iterations,
                warmup_steps=int(config["num_warmup"]),
                disable_progbar=True,
            )
            mcmc.run(*target.model_args, **target.model_kwargs)
        else:
            kernel = make_kernel(potential_fn=lambda params: -logdensity(params["x"]))
            init = torch.as_tensor(target.initial_position(seed=1000 * seed + chain))
            mcmc = MCMC(
                kernel,
                num_samples=num_iterations,
                warmup_steps=int(config["num_warmup"]),
                initial_params={"x": init},
                disable_progbar=True,
            )
            mcmc.run()
        samples = {k: v[thinning - 1 :: thinning] for k, v in mcmc.get_samples().items()}
        if native:
            samples = with_deterministic_sites(target.model, samples, *target.model_args, **target.model_kwargs)
            chains.append({k: v.detach().cpu().numpy() for k, v in samples.items()})
        else:
            chains.append(target.constrain(samples["x"].detach().cpu().numpy()))
        diverged = np.zeros(num_iterations, dtype=bool)
        diverged[np.asarray(mcmc.diagnostics()["divergences"]["chain 0"], dtype=int)] = True
        if isinstance(kernel, (DRHMC, DRGHMC)):
            stats = kernel.get_sample_stats()
            evals = np.asarray(stats["num_grad_evals"])[~np.asarray(stats["warmup"], dtype=bool)]
        else:
            evals = np.asarray(kernel.sampling_evals)
        # per kept draw: the counts of its block of `thinning` iterations
        if thinning == 1:
            diverging.append(diverged)  # bool, as without thinning
        else:
            diverging.append(diverged.reshape(num_samples, thinning).sum(axis=1))
        grads.append(evals.reshape(num_samples, thinning).sum(axis=1))
    draws = {k: np.stack([c[k] for c in chains]) for k in chains[0]}
    stats = {"diverging": np.stack(diverging), "num_grad_evals": np.stack(grads)}
    return RunOutput(draws, int(np.sum(stats["num_grad_evals"])), int(np.sum(stats["diverging"])), stats)


def run_nuts(target: Any, config: Mapping[str, Any], seed: int) -> RunOutput:
    def make_kernel(**source):
        return _CountingNUTS(**source, target_accept_prob=config["target_accept_prob"])

    return run_mcmc(make_kernel, target, config, seed)


def run_drhmc(target: Any, config: Mapping[str, Any], seed: int) -> RunOutput:
    def make_kernel(**source):
        return DRHMC(
            **source,
            max_proposals=config["max_proposals"],
            reduction_factor=config["reduction_factor"],
            probabilistic=config["probabilistic"],
            target_accept_prob=config["target_accept_prob"],
            **{key: config.get(key, default) for key, default in DRHMC_SWEEP_OPTIONS.items()},
        )

    return run_mcmc(make_kernel, target, config, seed)


def run_drghmc(target: Any, config: Mapping[str, Any], seed: int) -> RunOutput:
    from numpyro_ext.infer.sweep_runs import DRGHMC_KERNEL_OPTIONS

    def make_kernel(**source):
        return DRGHMC(**source, **{key: config[key] for key in DRGHMC_KERNEL_OPTIONS})

    return run_mcmc(make_kernel, target, config, seed, int(config["thinning"]))


NUTS_SWEEP = define_algorithm(
    "pyro-nuts", "pyro", run_nuts, {"target_accept_prob": 0.8}, "Pyro NUTS (the peer)", setup=enable_float64
)
DRHMC_SWEEP = define_algorithm(
    "pyro-drhmc",
    "pyro",
    run_drhmc,
    {"max_proposals": 3, "reduction_factor": 4, "probabilistic": True, "target_accept_prob": 0.8},
    "DR-HMC (pyro_ext.infer.DRHMC), trajectory length from NUTS warmup",
    setup=enable_float64,
    optional=DRHMC_SWEEP_OPTIONS,
)


def _drghmc_defaults() -> dict[str, Any]:
    # the NumPyro drghmc's settings, written once (numpyro_ext.infer.sweep_runs imports no JAX at import)
    from numpyro_ext.infer.sweep_runs import DRGHMC_SWEEP as NUMPYRO_DRGHMC

    return {k: v for k, v in NUMPYRO_DRGHMC.defaults.items() if k not in ("num_warmup", "num_samples", "num_chains")}


DRGHMC_SWEEP = define_algorithm(
    "pyro-drghmc",
    "pyro",
    run_drghmc,
    _drghmc_defaults(),
    "DR-G-HMC (pyro_ext.infer.DRGHMC), NUTS-warmup recipe, `thinning` iterations per kept draw",
    setup=enable_float64,
)
