"""The NumPyro shell of twisted SMC: :class:`TwistedSMC` (build, run, bound, learn twists) and :class:`SMCResult`.

Equations: :mod:`numpyro_ext.infer.twisted_smc`; the pure filters are in ``core``/``tokens``,
the losses in ``learning``; argument checks, exact-sample parsing and the result's
summary/ArviZ conversion are backend-free (:mod:`adapters.smc`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adapters.smc import (
    TWIST_METHODS,
    LogZBounds,
    TwistedSMCConfig,
    check_token_paths,
    combine_bounds,
    exact_sample_paths,
    format_summary,
    smc_inference_data,
    smc_summary,
)
from adapters.validation import check_choice, check_positive_int
from numpyro_ext.infer.smc_util import normalized_weights
from numpyro_ext.infer.twisted_smc.core import SMCOutput, move_particle, paths, run_filter
from numpyro_ext.infer.twisted_smc.learning import state_space_twist_loss, token_twist_loss
from numpyro_ext.infer.twisted_smc.tokens import TokenModel, run_token_filter

__all__ = ["SMCResult", "TwistedSMC"]


class SMCResult:
    """The result of :meth:`TwistedSMC.run`.

    ``log_Z``: ``log Z_hat`` (a float); ``log_weights``: final ``(N,)``; ``ess``: ``(T + 1,)``
    after the init and every step; ``output``: the raw :class:`SMCOutput`.
    """

    def __init__(self, output: SMCOutput, names: Mapping[str, list]):
        self.output = output
        self.names = {k: list(v) for k, v in names.items()}
        self.log_Z = float(output.log_Z)
        self.log_weights = output.log_weights
        self.ess = output.ess
        self.resampled = output.resampled

    def get_samples(self, rng_key: jax.Array | None = None, num_samples: int | None = None) -> dict[str, Any]:
        """The final particles' paths, ``{"init": {site: (N, ...)}, "step": {site: (N, T, ...)}}``.

        Without ``rng_key`` these are the ``N`` weighted paths (pair them with
        :attr:`log_weights`); with it, ``num_samples`` (default ``N``) paths resampled
        multinomially by weight, so they are equally weighted draws from the target.
        Site names are those of the model's first traced init/step.
        """
        init, steps, _ = paths(self.output)
        samples = {
            "init": dict(zip(self.names["init"], init, strict=True)),
            "step": dict(zip(self.names["step"], steps, strict=True)),
        }
        if rng_key is None:
            return samples
        num = check_positive_int("num_samples", num_samples or self.log_weights.shape[0])
        index = jax.random.categorical(rng_key, jnp.log(normalized_weights(self.log_weights)), shape=(num,))
        return jax.tree.map(lambda v: v[index], samples)

    def summary(self) -> dict[str, float]:
        """``log_Z``, the final and smallest ESS, and how many steps resampled (:func:`adapters.smc.smc_summary`)."""
        return smc_summary(self.log_Z, self.log_weights, self.ess, self.resampled)

    def print_summary(self) -> None:
        """Print :meth:`summary`, one line per entry."""
        print(format_summary(self.summary()))

    def to_arviz(self, rng_key: jax.Array | None = None):
        """``arviz.InferenceData``: resampled paths as one chain (``posterior``) and the filter's
        final ``log_weight`` (``sample_stats``); ``attrs["log_Z"]``."""
        samples = self.get_samples(jax.random.PRNGKey(0) if rng_key is None else rng_key)
        numpy_samples = {g: {k: np.asarray(v) for k, v in group.items()} for g, group in samples.items()}
        return smc_inference_data(numpy_samples, np.asarray(self.log_weights), self.log_Z)


def _exact_paths(samples: Mapping[str, Mapping[str, Any]], count: int | None) -> tuple[tuple, tuple]:
    """``get_samples``-layout paths -> ``(init values, step values)`` per site in order (first ``count`` paths)."""
    return exact_sample_paths(samples, count, jnp.asarray)


class TwistedSMC:
    """Twisted SMC for a NumPyro state-space model in Pyro's ``SMCFilter`` convention.

    ``smc = TwistedSMC(model, num_particles=256, twist=None, proposal=None,
    resampling="systematic", ess_threshold=0.5)``; ``result = smc.run(rng_key, ys)`` with
    ``model.step(state, y_t)`` called for each ``y_t`` of ``ys`` (leading time axis).
    ``twist`` is ``None`` (plain SMC), ``twist(t, state) -> log psi_t`` for one particle, or
    a learnable twist (an object with ``init(rng_key) -> params`` and
    ``__call__(params, t, state)``, e.g. :class:`QuadraticTwist`) whose parameters
    :meth:`fit_twists` trains (or set :attr:`twist_params`).  See the module docstring for
    the equations.
    """

    def __init__(
        self,
        model: Any,
        num_particles: int = 256,
        twist: Any = None,
        proposal: Any = None,
        resampling: str = "systematic",
        ess_threshold: float = 0.5,
        twist_params: Any = None,
    ):
        self.tokens = isinstance(model, TokenModel)
        self.config = TwistedSMCConfig(
            model, num_particles, twist, proposal, resampling, ess_threshold, max_plate_nesting=0, tokens=self.tokens
        )
        self.model = model
        self.proposal = proposal
        self.num_particles = self.config.num_particles
        self.resampling = self.config.resampling
        self.ess_threshold = self.config.ess_threshold
        self.twist = twist
        self.learnable = twist is not None and callable(getattr(twist, "init", None))
        self.twist_params = twist_params
        self._compiled: dict = {}

    # ---- running ----------------------------------------------------------------------
    def _filter(self, num_particles: int, ess_threshold: float, clamped: bool):
        """A jitted ``(key, step_args, init_args, params, clamp) -> SMCOutput`` (cached per shape)."""
        cache_key = (num_particles, ess_threshold, clamped)
        if cache_key not in self._compiled:
            names: dict = {}

            def fn(key, step_args, init_args, params, clamp):
                common = dict(
                    proposal=self.proposal,
                    twist=self.twist,
                    twist_params=params if self.learnable else None,
                    resampling=self.resampling,
                    ess_threshold=ess_threshold,
                    clamp=clamp,
                )
                if self.tokens:
                    names.update(init=[], step=["token"])
                    return run_token_filter(key, self.model, num_particles, **common)
                return run_filter(key, self.model, step_args, num_particles, init_args=init_args, names=names, **common)

            self._compiled[cache_key] = (jax.jit(fn), jax.jit(jax.vmap(fn, in_axes=(0, None, None, None, 0))), names)
        return self._compiled[cache_key]

    def _params(self):
        if self.learnable and self.twist_params is None:
            raise ValueError("twist: a learnable twist needs parameters: call fit_twists() or set twist_params")
        return self.twist_params if self.learnable else None

    def run(self, rng_key: jax.Array, *step_args: Any, init_args: Sequence[Any] = ()) -> SMCResult:
        """Run the filter over the steps of ``step_args`` (each with a leading time axis)."""
        single, _, names = self._filter(self.num_particles, self.ess_threshold, False)
        output = single(rng_key, tuple(step_args), tuple(init_args), self._params(), None)
        result = SMCResult(output, names)
        if not math.isfinite(result.log_Z):
            warnings.warn(
                "TwistedSMC: every particle has zero weight (log Z_hat = -inf); the model's log densities are "
                "-inf or NaN for all proposals at some step",
                RuntimeWarning,
                stacklevel=2,
            )
        return result

    def log_Z_samples(
        self,
        rng_key: jax.Array,
        *step_args: Any,
        num_runs: int = 16,
        num_particles: int | None = None,
        ess_threshold: float | None = None,
        exact_samples: Mapping[str, Mapping[str, Any]] | None = None,
        init_args: Sequence[Any] = (),
    ) -> jax.Array:
        """``log Z_hat`` of ``num_runs`` independent runs (vectorised); with ``exact_samples``
        (``get_samples`` layout, leading axis >= ``num_runs``) run ``r`` clamps particle 0 to sample ``r``."""
        num_particles = check_positive_int("num_particles", num_particles or self.num_particles)
        threshold = self.ess_threshold if ess_threshold is None else float(ess_threshold)
        if exact_samples is None:
            clamp = None
        elif self.tokens:
            clamp = ((), (self._token_paths(exact_samples, num_runs),))
        else:
            clamp = _exact_paths(exact_samples, num_runs)
        _, batched, _ = self._filter(num_particles, threshold, clamp is not None)
        keys = jax.random.split(rng_key, check_positive_int("num_runs", num_runs))
        return batched(keys, tuple(step_args), tuple(init_args), self._params(), clamp).log_Z

    def log_Z_bounds(
        self,
        rng_key: jax.Array,
        *step_args: Any,
        exact_samples: Mapping[str, Mapping[str, Any]] | None = None,
        num_particles: int | None = None,
        num_runs: int = 16,
        init_args: Sequence[Any] = (),
    ) -> LogZBounds:
        """The sandwich on ``log Z`` (see :class:`LogZBounds`), each bound a mean over ``num_runs``.

        The upper bounds and the KL intervals need ``exact_samples`` from the target
        (``get_samples`` layout, leading axis ``>= num_runs``); without them they are NaN.
        """
        keys = jax.random.split(rng_key, 6)
        common = dict(num_runs=num_runs, num_particles=num_particles, init_args=init_args)
        never = 0.0  # SIS/IWAE: no resampling
        sis = self.log_Z_samples(keys[0], *step_args, ess_threshold=never, **common)
        smc = self.log_Z_samples(keys[1], *step_args, **common)
        if exact_samples is None:
            return combine_bounds(sis, smc)
        iwae = self.log_Z_samples(keys[2], *step_args, ess_threshold=never, exact_samples=exact_samples, **common)
        csmc = self.log_Z_samples(keys[3], *step_args, exact_samples=exact_samples, **common)
        one = dict(num_runs=num_runs, num_particles=1, init_args=init_args, ess_threshold=never)
        elbo = self.log_Z_samples(keys[4], *step_args, **one)
        eubo = self.log_Z_samples(keys[5], *step_args, exact_samples=exact_samples, **one)
        return combine_bounds(sis, smc, iwae, csmc, elbo, eubo)

    # ---- twist learning ---------------------------------------------------------------
    def fit_twists(
        self,
        rng_key: jax.Array,
        *step_args: Any,
        method: str = "ctl",
        num_steps: int = 500,
        optimizer: Any = None,
        exact_samples: Mapping[str, Mapping[str, Any]] | None = None,
        num_particles: int | None = None,
        init_args: Sequence[Any] = (),
        progress_bar: bool = False,
    ) -> tuple[Any, np.ndarray]:
        """Train the learnable twist by CTL (``method="ctl"``) or SIXO (``"sixo"``).

        Each step runs the filter with the current twists (no gradient through it), then
        takes one ``optimizer`` step (an ``optax.GradientTransformation``; default
        ``optax.adam(1e-2)``) on the CTL / SIXO loss.  Positive (target) samples are
        ``exact_samples`` when given (the ``get_samples`` layout, any number of paths),
        else the filter's final weighted paths.  Returns ``(params, losses)`` and sets
        :attr:`twist_params`.
        """
        import optax
        from tqdm.auto import trange

        check_choice("method", method, TWIST_METHODS)
        if not self.learnable:
            raise TypeError("twist: fit_twists needs a learnable twist (an object with init(rng_key) and __call__)")
        optimizer = optax.adam(1e-2) if optimizer is None else optimizer
        num_particles = check_positive_int("num_particles", num_particles or self.num_particles)
        init_key, rng_key = jax.random.split(rng_key)
        params = self.twist.init(init_key) if self.twist_params is None else self.twist_params
        opt_state = optimizer.init(params)
        step_args, init_args = tuple(step_args), tuple(init_args)
        single, _, names = self._filter(num_particles, self.ess_threshold, False)
        positives = None
        if exact_samples is not None and self.tokens:
            positives = jnp.asarray(self._token_paths(exact_samples), dtype=jnp.int32)
        elif exact_samples is not None:
            positives = self._replay_states(exact_samples, step_args, init_args)

        def loss_fn(params, output, positive_states, positive_weights):
            if self.tokens:
                return token_twist_loss(
                    self.twist, params, method, output, positive_states, positive_weights, self.model.length
                )
            return state_space_twist_loss(self.twist, params, method, output, positive_states, positive_weights)

        @jax.jit
        def update(params, opt_state, key):
            output = jax.lax.stop_gradient(single(key, step_args, init_args, params, None))
            if positives is None and self.tokens:
                states = output.states["tokens"][-1]
                weights = normalized_weights(output.log_weights)[None, :]
            elif positives is None:
                _, _, states = paths(output)
                weights = normalized_weights(output.log_weights)[None, :]
            else:
                states = positives
                count = jax.tree.leaves(positives)[0].shape[0]
                weights = jnp.full((1, count), 1.0 / count)
            loss, grads = jax.value_and_grad(loss_fn)(params, output, states, weights)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        losses = np.empty(check_positive_int("num_steps", num_steps))
        for i in trange(num_steps, disable=not progress_bar, desc=f"fit_twists ({method})"):
            rng_key, key = jax.random.split(rng_key)
            params, opt_state, loss = update(params, opt_state, key)
            losses[i] = float(loss)
        self.twist_params = params
        return params, losses

    def _replay_states(self, samples, step_args, init_args):
        """States ``(M, T + 1, ...)`` along given paths: the model run on the paths' latent values."""
        init_latents, step_latents = _exact_paths(samples, None)

        def one(init_values, step_values, key):
            keys = jax.random.split(key, 2)
            first = move_particle(self.model.init, None, {}, keys[0], init_args, init_values, [])

            def body(state, inputs):
                args_t, values, k = inputs
                moved = move_particle(self.model.step, None, state, k, tuple(args_t), values, [])
                return moved.state, moved.state

            T = jax.tree.leaves(step_values)[0].shape[0]
            _, states = jax.lax.scan(body, first.state, (step_args, step_values, jax.random.split(keys[1], T)))
            return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first.state, states)

        count = jax.tree.leaves(init_latents)[0].shape[0]
        return jax.vmap(one)(init_latents, step_latents, jax.random.split(jax.random.PRNGKey(0), count))

    def _token_paths(self, samples: Mapping[str, Mapping[str, Any]], count: int | None = None) -> jax.Array:
        """A TokenModel's exact paths ``(M, T)``, checked (:func:`adapters.smc.check_token_paths`)."""
        init, steps = _exact_paths(samples, count)
        tokens = steps[0] if len(steps) == 1 else jnp.zeros((0, 0), dtype=jnp.int32)
        check_token_paths(np.asarray(tokens), len(init), len(steps), self.model.length, self.model.vocab_size)
        return tokens
