"""The NumPyro shell of twisted SMC: :class:`TwistedSMC` (build, run, bound, learn twists) and :class:`SMCResult`.

Equations: :mod:`numpyro_ext.infer.twisted_smc`; the pure filters are in ``core``/``tokens``,
the losses in ``learning``; argument checks, exact-sample parsing and the result's
summary/ArviZ conversion are backend-free (:mod:`adapters.smc`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adapters.diagnostics import warn_unreliable
from adapters.smc import (
    TWIST_METHODS,
    LogZBounds,
    TwistedSMCConfig,
    check_ess_threshold,
    check_init_args,
    check_step_args,
    check_token_paths,
    check_twist_steps,
    combine_bounds,
    exact_sample_paths,
    format_summary,
    lost_runs_warning,
    run_warnings,
    smc_inference_data,
    smc_summary,
    twist_shape_error,
)
from adapters.validation import check_choice, check_positive_int
from numpyro_ext.infer.smc_util import normalized_weights
from numpyro_ext.infer.twisted_smc.core import SMCOutput, check_data, move_particle, paths, run_filter
from numpyro_ext.infer.twisted_smc.learning import state_space_twist_loss, token_twist_loss
from numpyro_ext.infer.twisted_smc.tokens import TokenModel, run_token_filter
from numpyro_ext.infer.twisted_smc.twists import QuadraticTwist

__all__ = ["SMCResult", "TwistedSMC"]


class SMCResult:
    """The result of :meth:`TwistedSMC.run`.

    ``log_Z``: ``log Z_hat`` (a float); ``log_weights``: final ``(N,)``; ``ess``: ``(T + 1,)``
    after the init and every step; ``output``: the raw :class:`SMCOutput`; ``warnings``: the
    :class:`~adapters.diagnostics.ReliabilityWarning` messages the run gave (weights degenerate
    to about one particle at some steps, or every particle lost), empty for a healthy run.
    """

    def __init__(self, output: SMCOutput, names: Mapping[str, list], warnings: Sequence[str] = ()):
        self.output = output
        self.warnings = list(warnings)
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
        index = self._draw(rng_key, num_samples)
        return jax.tree.map(lambda v: v[index], samples)

    def _draw(self, rng_key: jax.Array, num_samples: int | None) -> jax.Array:
        """``num_samples`` (default ``N``) particle indices drawn by weight."""
        num = self.log_weights.shape[0] if num_samples is None else check_positive_int("num_samples", num_samples)
        return jax.random.categorical(check_key(rng_key), jnp.log(normalized_weights(self.log_weights)), shape=(num,))

    def summary(self) -> dict[str, float]:
        """``log_Z``, the final and smallest ESS, and how many steps resampled (:func:`adapters.smc.smc_summary`)."""
        return smc_summary(self.log_Z, self.log_weights, self.ess, self.resampled)

    def print_summary(self) -> None:
        """Print :meth:`summary`, one line per entry."""
        print(format_summary(self.summary()))

    def to_arviz(self, rng_key: jax.Array | None = None, num_samples: int | None = None):
        """``arviz.InferenceData`` (:func:`adapters.smc.smc_inference_data`): ``num_samples`` (default
        ``N``) paths resampled by weight (``rng_key``, default ``PRNGKey(0)``) as one chain of equally
        weighted draws (``posterior``); per draw the ``particle`` it copies and that particle's
        ``log_weight`` (``sample_stats``); :meth:`summary` (``log_Z``, ESS, ...) in ``attrs``."""
        index = self._draw(jax.random.PRNGKey(0) if rng_key is None else rng_key, num_samples)
        samples = jax.tree.map(lambda v: np.asarray(v[index]), self.get_samples())
        return smc_inference_data(samples, np.asarray(index), np.asarray(self.log_weights), self.summary())


def check_key(rng_key: Any) -> jax.Array:
    """``rng_key`` if it is one JAX PRNG key (``jax.random.PRNGKey(seed)`` or ``jax.random.key(seed)``)."""
    if isinstance(rng_key, jax.Array | np.ndarray):
        typed = jax.dtypes.issubdtype(rng_key.dtype, jax.dtypes.prng_key)
        if (typed and rng_key.shape == ()) or (rng_key.dtype == np.uint32 and rng_key.shape == (2,)):
            return jnp.asarray(rng_key) if isinstance(rng_key, np.ndarray) else rng_key
    shown = (
        f"an array of shape {rng_key.shape} and dtype {rng_key.dtype}" if hasattr(rng_key, "dtype") else repr(rng_key)
    )
    raise TypeError(
        f"rng_key: expected one JAX PRNG key (jax.random.PRNGKey(seed) or jax.random.key(seed)), got {shown}"
    )


def _as_array(value: Any) -> jax.Array:
    return jnp.asarray(value)


def _exact_paths(samples: Mapping[str, Mapping[str, Any]], count: int | None, **checks: Any) -> tuple[tuple, tuple]:
    """``get_samples``-layout paths -> ``(init values, step values)`` per site in order (first ``count`` paths);
    ``checks``: the model's ``num_steps`` and site ``names`` (:func:`adapters.smc.exact_sample_paths`)."""
    return exact_sample_paths(samples, count, _as_array, jax.Array, **checks)


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
        self._checked: dict = {}

    # ---- running ----------------------------------------------------------------------
    def _filter(self, num_particles: int, clamped: bool):
        """A jitted ``(key, step_args, init_args, params, clamp, ess_threshold) -> SMCOutput``, and its
        vmap over keys and clamped paths (cached per particle count and clamping; the threshold is
        traced, so SIS and SMC share one compilation)."""
        cache_key = (num_particles, clamped)
        if cache_key not in self._compiled:
            names: dict = {}

            def fn(key, step_args, init_args, params, clamp, ess_threshold):
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

            self._compiled[cache_key] = (
                jax.jit(fn),
                jax.jit(jax.vmap(fn, in_axes=(0, None, None, None, 0, None))),
                names,
            )
        return self._compiled[cache_key]

    def _params(self):
        if self.learnable and self.twist_params is None:
            raise ValueError("twist: a learnable twist needs parameters: call fit_twists() or set twist_params")
        return self.twist_params if self.learnable else None

    def _data(self, step_args: tuple, init_args: Any, params: Any = None) -> tuple[tuple, tuple, dict]:
        """The data checked at the door: ``(step_args, init_args, latent site names)``.

        Arrays, numbers and lists become JAX arrays (strings and the like are refused, naming
        the argument); step arguments share one leading time axis; the model's init and first
        step are traced once per data shape, so observed sites fed by the data have its shape
        (:func:`core.check_data`), and the twist gives one ``log psi`` per particle.
        """
        init_args = check_init_args(init_args, _as_array, jax.Array)
        if self.tokens:
            if step_args or init_args:
                raise ValueError(
                    "step_args: a TokenModel takes no step or init arguments (its length is TokenModel.length), got "
                    f"{len(step_args)} step and {len(init_args)} init argument(s)"
                )
            return (), (), {"init": [], "step": ["token"]}
        step_args, T = check_step_args(step_args, _as_array, jax.Array)
        if T is None:
            raise ValueError("step_args: expected at least one array with a leading time axis (one entry per step)")
        signature = tuple(None if a is None else (a.shape, str(a.dtype)) for a in step_args + init_args)
        if signature not in self._checked:
            self._checked[signature] = check_data(self.model, step_args, init_args)
        names, state = self._checked[signature]
        if isinstance(self.twist, QuadraticTwist):
            check_twist_steps(self.twist.num_steps, T)
        if self.twist is not None:
            t = jnp.array(0)
            value = self.twist(params, t, state) if self.learnable else self.twist(t, state)
            if jnp.shape(value) != ():
                raise twist_shape_error(jnp.shape(value))
        return step_args, init_args, names

    def run(self, rng_key: jax.Array, *step_args: Any, init_args: Sequence[Any] = ()) -> SMCResult:
        """Run the filter over the steps of ``step_args`` (each with a leading time axis).

        Step arguments (and ``init_args``) may be numbers, lists, NumPy or JAX arrays; they are
        checked against the model first (see :meth:`_data`).  A run whose weights degenerate
        warns with :class:`~adapters.diagnostics.ReliabilityWarning` and keeps the messages in
        :attr:`SMCResult.warnings`.
        """
        params = self._params()
        step_args, init_args, _ = self._data(step_args, init_args, params)
        single, _, names = self._filter(self.num_particles, False)
        output = single(check_key(rng_key), step_args, init_args, params, None, self.ess_threshold)
        log_Z = float(output.log_Z)
        messages = warn_unreliable(*run_warnings("TwistedSMC", log_Z, output.ess, self.num_particles), stacklevel=3)
        return SMCResult(output, names, messages)

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
        (``get_samples`` layout, leading axis >= ``num_runs``) run ``r`` clamps particle 0 to sample ``r``.

        ``ess_threshold`` (default the constructor's) may be 0 here: never resample (SIS/IWAE).
        Runs that lose every particle (``-inf``) warn with
        :class:`~adapters.diagnostics.ReliabilityWarning`.
        """
        rng_key = check_key(rng_key)
        num_runs = check_positive_int("num_runs", num_runs)
        num_particles = (
            self.num_particles if num_particles is None else check_positive_int("num_particles", num_particles)
        )
        threshold = self.ess_threshold if ess_threshold is None else check_ess_threshold(ess_threshold, allow_zero=True)
        params = self._params()
        step_args, init_args, names = self._data(step_args, init_args, params)
        if exact_samples is None:
            clamp = None
        elif self.tokens:
            clamp = ((), (self._token_paths(exact_samples, num_runs),))
        else:
            clamp = _exact_paths(exact_samples, num_runs, num_steps=_num_steps(step_args), names=names)
        _, batched, _ = self._filter(num_particles, clamp is not None)
        log_Z = batched(jax.random.split(rng_key, num_runs), step_args, init_args, params, clamp, threshold).log_Z
        warn_unreliable(lost_runs_warning("TwistedSMC", log_Z), stacklevel=3)
        return log_Z

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
        keys = jax.random.split(check_key(rng_key), 6)
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
        if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
            raise TypeError(
                f"optimizer: expected an optax.GradientTransformation (e.g. optax.adam(1e-2)), got {optimizer!r}"
            )
        num_steps = check_positive_int("num_steps", num_steps)
        num_particles = (
            self.num_particles if num_particles is None else check_positive_int("num_particles", num_particles)
        )
        init_key, rng_key = jax.random.split(check_key(rng_key))
        params = self.twist.init(init_key) if self.twist_params is None else self.twist_params
        step_args, init_args, names = self._data(step_args, init_args, params)
        opt_state = optimizer.init(params)
        single, _, _ = self._filter(num_particles, False)
        positives = None
        if exact_samples is not None and self.tokens:
            positives = jnp.asarray(self._token_paths(exact_samples), dtype=jnp.int32)
        elif exact_samples is not None:
            positives = self._replay_states(exact_samples, step_args, init_args, names)

        def loss_fn(params, output, positive_states, positive_weights):
            if self.tokens:
                return token_twist_loss(
                    self.twist, params, method, output, positive_states, positive_weights, self.model.length
                )
            return state_space_twist_loss(self.twist, params, method, output, positive_states, positive_weights)

        @jax.jit
        def update(params, opt_state, key):
            output = jax.lax.stop_gradient(single(key, step_args, init_args, params, None, self.ess_threshold))
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

        losses = np.empty(num_steps)
        for i in trange(num_steps, disable=not progress_bar, desc=f"fit_twists ({method})"):
            rng_key, key = jax.random.split(rng_key)
            params, opt_state, loss = update(params, opt_state, key)
            losses[i] = float(loss)
        self.twist_params = params
        return params, losses

    def _replay_states(self, samples, step_args, init_args, names):
        """States ``(M, T + 1, ...)`` along given paths: the model run on the paths' latent values."""
        init_latents, step_latents = _exact_paths(samples, None, num_steps=_num_steps(step_args), names=names)

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


def _num_steps(step_args: tuple) -> int:
    """``T``, the leading axis of the (checked) step arguments."""
    return next(a.shape[0] for a in step_args if a is not None)
