"""NumPyro MCMC kernels as sweep algorithms (:mod:`adapters.sweep`): NUTS, HMC, DR-HMC and DR-G-HMC.

Algorithms ``nuts`` and ``hmc`` (NumPyro's own kernels, the peers), ``drhmc`` and ``drghmc``,
declared as entry points of the group ``ppl_ext.sweep_algorithms`` in ``pyproject.toml``
(:data:`NUTS_SWEEP`, :data:`HMC_SWEEP`, :data:`DRHMC_SWEEP`, :data:`DRGHMC_SWEEP`); nothing
imports this module but the sweep (and the ``drhmc`` benchmarks, for :func:`counting_drghmc`).
Every run uses ``MCMC(..., chain_method="vectorized")`` under float64 and counts the
gradient evaluations of the sampling phase (``num_steps`` for NUTS/HMC, DR-HMC's and
DR-G-HMC's ``num_grad_evals``, ghost trajectories included).  DR-G-HMC takes one short step an
iteration, so its run makes ``thinning`` iterations per kept draw (``num_samples`` draws are
kept) and counts the gradients and divergences of every iteration (:func:`counting_drghmc`).
A posterior with a NumPyro port is run on the model; any other :class:`~adapters.target.Target`
(e.g. the Stan route) through its JAX view as a ``potential_fn``, with draws constrained by the
target afterwards.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from adapters.configs import DRHMC_SWEEP_OPTIONS
from adapters.sweep_registry import RunOutput, define_algorithm

# HMC's fixed 16 leapfrog steps (step size and diagonal mass matrix adapted): NumPyro's
# default trajectory length 2*pi costs 2*pi/step_size gradients a draw, which on badly
# scaled posteriors (kidscore_momiq) runs for hours in warmup.
HMC_NUM_STEPS = 16


def enable_x64() -> None:
    """posteriordb's reference draws are float64; so are the sweep's JAX runs."""
    import jax

    jax.config.update("jax_enable_x64", True)


@functools.cache
def counting_drghmc() -> type:
    """:class:`numpyro_ext.infer.DRGHMC` whose ``num_grad_evals`` and ``diverging`` are running sums.

    Both restart at the first sampling iteration and add every later iteration's count (``diverging``
    becomes an ``int32`` count).  ``MCMC(thinning=n)`` keeps every ``n``-th iteration's extra fields,
    the last of each block of ``n``, so the kept values are cumulative counts over *all* sampling
    iterations and their differences the counts of each block.  (A class made on first use: this
    module imports no JAX until a run needs it.)
    """
    import jax.numpy as jnp

    from numpyro_ext.infer.drghmc import DRGHMC

    class CountingDRGHMC(DRGHMC):
        def init(self, *args, **kwargs):
            state = super().init(*args, **kwargs)
            return state._replace(diverging=jnp.asarray(state.diverging, jnp.int32))

        def sample(self, state, model_args, model_kwargs):
            new = super().sample(state, model_args, model_kwargs)
            # state.i == num_warmup: its counts are warmup's last (NUTS) transition's, not the sampling phase's
            sampling = state.i > self._num_warmup
            return new._replace(
                num_grad_evals=jnp.where(sampling, state.num_grad_evals, 0) + new.num_grad_evals,
                diverging=jnp.where(sampling, state.diverging, 0) + jnp.asarray(new.diverging, jnp.int32),
            )

    return CountingDRGHMC


def per_block(running: np.ndarray) -> np.ndarray:
    """The counts of each kept draw's block of iterations from :func:`counting_drghmc`'s running sums
    ``(chains, draws)``."""
    running = np.asarray(running, dtype=np.int64)
    return np.diff(running, axis=-1, prepend=np.zeros_like(running[..., :1]))


def run_mcmc(
    make_kernel: Callable[..., Any],
    grad_field: str,
    target: Any,
    config: Mapping[str, Any],
    seed: int,
    thinning: int = 1,
    running_counts: bool = False,
) -> RunOutput:
    """``MCMC(make_kernel(model=... | potential_fn=...))`` on ``target``: the sweep's run function.

    ``make_kernel(model=None, potential_fn=None)`` builds the kernel; ``grad_field`` is the
    extra field that counts gradient evaluations per draw.  ``thinning``: iterations per kept
    draw (``num_samples`` draws are kept); ``running_counts``: the kernel's gradient and
    divergence fields are :func:`counting_drghmc`'s running sums (needed for exact counts when
    ``thinning > 1``).
    """
    import jax
    from numpyro.infer import MCMC

    native = target.backend == "numpyro"
    if native:
        kernel = make_kernel(model=target.model)
    else:
        logdensity = target.as_jax()
        kernel = make_kernel(potential_fn=lambda x: -logdensity(x))
    num_chains = int(config["num_chains"])
    mcmc = MCMC(
        kernel,
        num_warmup=int(config["num_warmup"]),
        num_samples=int(config["num_samples"]) * thinning,
        thinning=thinning,
        num_chains=num_chains,
        chain_method="vectorized",
        progress_bar=False,
    )
    rng_key = jax.random.PRNGKey(seed)
    fields = (grad_field, "diverging")
    if native:
        mcmc.run(rng_key, *target.model_args, extra_fields=fields, **target.model_kwargs)
        draws = mcmc.get_samples(group_by_chain=True)
    else:
        init = np.stack([target.initial_position(seed=1000 * seed + c) for c in range(num_chains)])
        mcmc.run(rng_key, init_params=init if num_chains > 1 else init[0], extra_fields=fields)
        draws = target.constrain(np.asarray(mcmc.get_samples(group_by_chain=True)))
    extra = mcmc.get_extra_fields(group_by_chain=True)
    stats = {"diverging": np.asarray(extra["diverging"]), "num_grad_evals": np.asarray(extra[grad_field])}
    if running_counts:  # per kept draw: the counts of its block of `thinning` iterations
        stats = {key: per_block(value) for key, value in stats.items()}
    return RunOutput(draws, int(np.sum(stats["num_grad_evals"])), int(np.sum(stats["diverging"])), stats)


def make_nuts(config: Mapping[str, Any]) -> Callable[..., Any]:
    """``make_kernel(model=None, potential_fn=None)`` of the sweep's ``nuts`` for a resolved ``config``."""
    from numpyro.infer import NUTS

    return lambda **source: NUTS(**source, target_accept_prob=config["target_accept_prob"])


def make_hmc(config: Mapping[str, Any]) -> Callable[..., Any]:
    """``make_kernel(model=None, potential_fn=None)`` of the sweep's ``hmc`` for a resolved ``config``."""
    from numpyro.infer import HMC

    return lambda **source: HMC(
        **source, num_steps=config["num_steps"], trajectory_length=None, target_accept_prob=config["target_accept_prob"]
    )


def make_drhmc(config: Mapping[str, Any]) -> Callable[..., Any]:
    """``make_kernel(model=None, potential_fn=None)`` of the sweep's ``drhmc`` for a resolved ``config``."""
    from numpyro_ext.infer.drhmc import DRHMC

    return lambda **source: DRHMC(
        **source,
        max_proposals=config["max_proposals"],
        reduction_factor=config["reduction_factor"],
        probabilistic=config["probabilistic"],
        target_accept_prob=config["target_accept_prob"],
        **{key: config.get(key, default) for key, default in DRHMC_SWEEP_OPTIONS.items()},
    )


def make_drghmc(config: Mapping[str, Any]) -> Callable[..., Any]:
    """``make_kernel(model=None, potential_fn=None)`` of the sweep's ``drghmc`` for a resolved ``config``:
    :func:`counting_drghmc`'s kernel."""
    kernel = counting_drghmc()
    return lambda **source: kernel(**source, **{key: config[key] for key in DRGHMC_KERNEL_OPTIONS})


def run_nuts(target: Any, config: Mapping[str, Any], seed: int) -> RunOutput:
    return run_mcmc(make_nuts(config), "num_steps", target, config, seed)


def run_hmc(target: Any, config: Mapping[str, Any], seed: int) -> RunOutput:
    return run_mcmc(make_hmc(config), "num_steps", target, config, seed)


def run_drhmc(target: Any, config: Mapping[str, Any], seed: int) -> RunOutput:
    return run_mcmc(make_drhmc(config), "num_grad_evals", target, config, seed)


def run_drghmc(target: Any, config: Mapping[str, Any], seed: int) -> RunOutput:
    thinning = int(config["thinning"])
    return run_mcmc(make_drghmc(config), "num_grad_evals", target, config, seed, thinning, running_counts=True)


NUTS_SWEEP = define_algorithm(
    "nuts", "numpyro", run_nuts, {"target_accept_prob": 0.8}, "NumPyro NUTS (the peer)", setup=enable_x64
)
HMC_SWEEP = define_algorithm(
    "hmc",
    "numpyro",
    run_hmc,
    {"num_steps": HMC_NUM_STEPS, "target_accept_prob": 0.8},
    "NumPyro static HMC, 16 leapfrog steps",
    setup=enable_x64,
)
DRHMC_SWEEP = define_algorithm(
    "drhmc",
    "numpyro",
    run_drhmc,
    {"max_proposals": 3, "reduction_factor": 4, "probabilistic": True, "target_accept_prob": 0.8},
    "DR-HMC (numpyro_ext.infer.DRHMC), trajectory length from NUTS warmup",
    setup=enable_x64,
    optional=DRHMC_SWEEP_OPTIONS,
)

# DR-G-HMC's sweep settings: the reference recipe (Turok, Modi & Carpenter 2025; see
# numpyro_ext.infer.drghmc.core) with the metric chosen by the drhmc-funnel defaults study
# (docs/drhmc.rst), and `thinning` iterations per kept draw
DRGHMC_KERNEL_OPTIONS = (
    "step_size_factor",
    "num_steps",
    "max_proposals",
    "reduction_factor",
    "damping",
    "probabilistic",
    "adapt_mass_matrix",
    "target_accept_prob",
)
DRGHMC_SWEEP = define_algorithm(
    "drghmc",
    "numpyro",
    run_drghmc,
    {
        "step_size_factor": 2.0,
        "num_steps": 1,
        "max_proposals": 3,
        "reduction_factor": 4,
        "damping": 0.08,
        "probabilistic": True,
        "adapt_mass_matrix": True,
        "target_accept_prob": 0.8,
        "thinning": 10,
    },
    "DR-G-HMC (numpyro_ext.infer.DRGHMC), NUTS-warmup recipe, `thinning` iterations per kept draw",
    setup=enable_x64,
)
