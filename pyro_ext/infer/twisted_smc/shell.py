"""The Pyro shell of twisted SMC: :class:`TwistedSMC` (build, run, bound, learn twists) and :class:`SMCResult`.

Equations: :mod:`pyro_ext.infer.twisted_smc`; the filters are in ``core``/``tokens``, the
losses in ``learning``; argument checks, exact-sample parsing and the result's
summary/ArviZ conversion are backend-free (:mod:`adapters.smc`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from adapters.diagnostics import warn_unreliable
from adapters.smc import (
    TWIST_METHODS,
    LogZBounds,
    TwistedSMCConfig,
    check_ess_threshold,
    check_init_args,
    check_step_args,
    check_twist_steps,
    combine_bounds,
    exact_sample_paths,
    format_summary,
    lost_runs_warning,
    run_warnings,
    smc_inference_data,
    smc_summary,
)
from adapters.validation import check_choice, check_positive_int
from pyro_ext.infer.smc_util import normalized_weights
from pyro_ext.infer.twisted_smc.core import FilterOptions, SMCOutput, check_data, filter_runs, paths, select_run
from pyro_ext.infer.twisted_smc.learning import optimizer_step, state_space_twist_loss, token_twist_loss
from pyro_ext.infer.twisted_smc.tokens import TokenModel, token_paths, token_runs
from pyro_ext.infer.twisted_smc.twists import QuadraticTwist

__all__ = ["SMCResult", "TwistedSMC"]

_MAX_BATCH = 1 << 16  # particles per plate when runs are batched
_MAX_TOKEN_PAIRS = 1 << 20  # (particle, next token) pairs per batch of token-model runs


def _generator(seed: int | torch.Generator) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(check_positive_int("seed", seed, allow_zero=True))


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

    def get_samples(
        self, seed: int | torch.Generator | None = None, num_samples: int | None = None
    ) -> dict[str, dict[str, torch.Tensor]]:
        """The final particles' paths, ``{"init": {site: (N, ...)}, "step": {site: (N, T, ...)}}``.

        Without ``seed`` these are the ``N`` weighted paths (pair them with
        :attr:`log_weights`); with it (an int or a ``torch.Generator``), ``num_samples``
        (default ``N``) paths resampled multinomially by weight, so they are equally weighted
        draws from the target.  Site names are those of the model's first traced init/step.
        """
        init, steps, _ = paths(self.output)
        samples = {
            "init": dict(zip(self.names["init"], init, strict=True)),
            "step": dict(zip(self.names["step"], steps, strict=True)),
        }
        if seed is None:
            return samples
        index = self._draw(seed, num_samples)
        return {group: {k: v[index] for k, v in values.items()} for group, values in samples.items()}

    def _draw(self, seed: int | torch.Generator, num_samples: int | None) -> torch.Tensor:
        """``num_samples`` (default ``N``) particle indices drawn by weight."""
        num = self.log_weights.shape[0] if num_samples is None else check_positive_int("num_samples", num_samples)
        weights = normalized_weights(self.log_weights)
        return torch.multinomial(weights, num, replacement=True, generator=_generator(seed))

    def summary(self) -> dict[str, float]:
        """``log_Z``, the final and smallest ESS, and how many steps resampled (:func:`adapters.smc.smc_summary`)."""
        numpy = (v.detach().cpu().numpy() for v in (self.log_weights, self.ess, self.resampled))
        return smc_summary(self.log_Z, *numpy)

    def print_summary(self) -> None:
        """Print :meth:`summary`, one line per entry."""
        print(format_summary(self.summary()))

    def to_arviz(self, seed: int | torch.Generator = 0, num_samples: int | None = None):
        """``arviz.InferenceData`` (:func:`adapters.smc.smc_inference_data`): ``num_samples`` (default
        ``N``) paths resampled by weight (``seed``: an int or a ``torch.Generator``) as one chain of
        equally weighted draws (``posterior``); per draw the ``particle`` it copies and that
        particle's ``log_weight`` (``sample_stats``); :meth:`summary` (``log_Z``, ESS, ...) in ``attrs``."""
        index = self._draw(seed, num_samples)
        samples = {
            g: {k: v[index].detach().cpu().numpy() for k, v in group.items()} for g, group in self.get_samples().items()
        }
        log_weights = self.log_weights.detach().cpu().numpy()
        return smc_inference_data(samples, index.cpu().numpy(), log_weights, self.summary())


def _exact_paths(
    samples: Mapping[str, Mapping[str, Any]], count: int | None, **checks: Any
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """``get_samples``-layout paths -> ``(init values (M, ...), step values (M, T, ...))`` per site in order;
    ``checks``: the model's ``num_steps`` and site ``names`` (:func:`adapters.smc.exact_sample_paths`)."""
    return exact_sample_paths(samples, count, torch.as_tensor, torch.Tensor, **checks)


def _num_steps(step_args: tuple) -> int:
    """``T``, the leading axis of the (checked) step arguments."""
    return next(a.shape[0] for a in step_args if a is not None)


class TwistedSMC:
    """Twisted SMC for a Pyro state-space model in :class:`pyro.infer.SMCFilter`'s convention.

    ``smc = TwistedSMC(model, num_particles=256, twist=None, proposal=None,
    resampling="systematic", ess_threshold=0.5, max_plate_nesting=0)``;
    ``result = smc.run(ys)`` with ``model.step(state, y_t)`` called for each ``y_t`` of ``ys``
    (leading time axis; ``init_args=`` go to ``init``), after ``pyro.set_rng_seed(...)``.
    ``proposal`` is ``None`` (bootstrap) or an SMCFilter guide.  ``twist`` is ``None`` (plain
    SMC), ``twist(t, state) -> log psi_t`` of shape ``(N,)``, or a learnable
    ``torch.nn.Module`` twist (e.g. :class:`QuadraticTwist`) that :meth:`fit_twists` trains;
    ``twist_params`` (``{name: tensor}``) loads its parameters.  See the module docstring for
    the equations.

    For a :class:`TokenModel` (the language-model case) ``run()`` etc. take no step or init
    arguments, ``proposal`` is ``None`` (twist-induced) or ``"prior"``, twists are
    ``twist(tokens (N, T), position) -> (N, V)`` (e.g. :class:`TabularTwist`), exact samples
    are ``{"init": {}, "step": {"token": (M, T)}}``, and :meth:`fit_twists` uses the
    Rao-Blackwellised CTL/SIXO losses over every (particle, next token) pair.
    """

    def __init__(
        self,
        model: Any,
        num_particles: int = 256,
        twist: Any = None,
        proposal: Any = None,
        resampling: str = "systematic",
        ess_threshold: float = 0.5,
        twist_params: Mapping[str, Any] | None = None,
        max_plate_nesting: int = 0,
    ):
        self.tokens = isinstance(model, TokenModel)
        self.config = TwistedSMCConfig(
            model, num_particles, twist, proposal, resampling, ess_threshold, max_plate_nesting, tokens=self.tokens
        )
        self.model = model
        self.proposal = proposal
        self.num_particles = self.config.num_particles
        self.resampling = self.config.resampling
        self.ess_threshold = self.config.ess_threshold
        self.max_plate_nesting = self.config.max_plate_nesting
        self.twist = twist
        self.learnable = isinstance(twist, torch.nn.Module) and any(True for _ in twist.parameters())
        self._checked: dict = {}
        if twist_params is not None:
            self.twist_params = twist_params

    @property
    def twist_params(self) -> dict[str, torch.Tensor] | None:
        """The learnable twist's parameters ``{name: tensor}`` (detached copies); ``None`` without one."""
        if not self.learnable:
            return None
        return {k: v.detach().clone() for k, v in self.twist.named_parameters()}

    @twist_params.setter
    def twist_params(self, params: Mapping[str, Any]) -> None:
        if not self.learnable:
            raise ValueError("twist_params: given, but the twist is not a learnable torch.nn.Module with parameters")
        own = dict(self.twist.named_parameters())
        if not isinstance(params, Mapping):
            raise TypeError(f"twist_params: expected a mapping {{name: tensor}}, got {type(params).__name__}")
        unknown = sorted(set(params) - set(own))
        if unknown:
            raise ValueError(f"twist_params: {unknown} are not parameters of the twist (it has {sorted(own)})")
        with torch.no_grad():
            for name, value in params.items():
                value = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
                if value.shape != own[name].shape:
                    raise ValueError(
                        f"twist_params: {name!r} has shape {tuple(value.shape)}, expected {tuple(own[name].shape)}"
                    )
                own[name].copy_(value)

    # ---- running ----------------------------------------------------------------------
    def _data(self, step_args: tuple, init_args: Any) -> tuple[tuple, tuple, dict]:
        """The data checked at the door: ``(step_args, init_args, latent site names)``.

        Arrays, numbers and lists become tensors (strings and the like are refused, naming the
        argument); step arguments share one leading time axis; the model's init and first step
        are traced once per data shape, so observed sites fed by the data have its shape
        (:func:`core.check_data`).
        """
        init_args = check_init_args(init_args, torch.as_tensor, torch.Tensor)
        if self.tokens:
            if step_args or init_args:
                raise ValueError(
                    "step_args: a TokenModel takes no step or init arguments (its length is TokenModel.length), got "
                    f"{len(step_args)} step and {len(init_args)} init argument(s)"
                )
            return (), (), {"init": [], "step": ["token"]}
        step_args, T = check_step_args(step_args, torch.as_tensor, torch.Tensor)
        if T is None:
            raise ValueError("step_args: expected at least one array with a leading time axis (one entry per step)")
        signature = tuple(None if a is None else (tuple(a.shape), str(a.dtype)) for a in step_args + init_args)
        if signature not in self._checked:
            self._checked[signature] = check_data(self.model, step_args, init_args, self.max_plate_nesting)
        if isinstance(self.twist, QuadraticTwist):
            check_twist_steps(self.twist.num_steps, T)
        return step_args, init_args, self._checked[signature]

    def _run(self, step_args, init_args, num_groups, num_particles, ess_threshold, clamp, record, names=None):
        if self.tokens and names is not None:
            names.update(init=[], step=["token"])
        options = FilterOptions(
            tuple(init_args), self.proposal, self.twist, self.resampling, ess_threshold, self.max_plate_nesting
        )
        if self.tokens:
            tokens = None if clamp is None else token_paths(clamp, self.model)
            return token_runs(self.model, num_groups, num_particles, options, clamp=tokens, record=record)
        return filter_runs(
            self.model, tuple(step_args), num_groups, num_particles, options, clamp=clamp, record=record, names=names
        )

    def run(self, *step_args: Any, init_args: Sequence[Any] = ()) -> SMCResult:
        """Run the filter over the steps of ``step_args`` (each with a leading time axis).

        Step arguments (and ``init_args``) may be numbers, lists, NumPy arrays or tensors; they
        are checked against the model first (see :meth:`_data`).  A run whose weights degenerate
        warns with :class:`~adapters.diagnostics.ReliabilityWarning` and keeps the messages in
        :attr:`SMCResult.warnings`.
        """
        step_args, init_args, _ = self._data(step_args, init_args)
        names: dict = {}
        output = select_run(
            self._run(step_args, init_args, 1, self.num_particles, self.ess_threshold, None, True, names), 0
        )
        log_Z = float(output.log_Z)
        messages = warn_unreliable(*run_warnings("TwistedSMC", log_Z, output.ess, self.num_particles), stacklevel=3)
        return SMCResult(output, names, messages)

    def log_Z_samples(
        self,
        *step_args: Any,
        num_runs: int = 16,
        num_particles: int | None = None,
        ess_threshold: float | None = None,
        exact_samples: Mapping[str, Mapping[str, Any]] | None = None,
        init_args: Sequence[Any] = (),
    ) -> torch.Tensor:
        """``log Z_hat`` ``(num_runs,)`` of independent runs (batched in the particle plate); with
        ``exact_samples`` (``get_samples`` layout, leading axis >= ``num_runs``) run ``r``
        clamps particle 0 to path ``r`` (conditional SMC).

        ``ess_threshold`` (default the constructor's) may be 0 here: never resample (SIS/IWAE).
        Runs that lose every particle (``-inf``) warn with
        :class:`~adapters.diagnostics.ReliabilityWarning`.
        """
        num_runs = check_positive_int("num_runs", num_runs)
        num_particles = (
            self.num_particles if num_particles is None else check_positive_int("num_particles", num_particles)
        )
        threshold = self.ess_threshold if ess_threshold is None else check_ess_threshold(ess_threshold, allow_zero=True)
        step_args, init_args, names = self._data(step_args, init_args)
        if exact_samples is None:
            clamp = None
        elif self.tokens:
            clamp = _exact_paths(exact_samples, num_runs)
        else:
            clamp = _exact_paths(exact_samples, num_runs, num_steps=_num_steps(step_args), names=names)
        if self.tokens:
            per_batch = max(1, _MAX_TOKEN_PAIRS // (num_particles * self.model.vocab_size))
        else:
            per_batch = max(1, _MAX_BATCH // num_particles)
        out = []
        for start in range(0, num_runs, per_batch):
            stop = min(start + per_batch, num_runs)
            part = None if clamp is None else tuple(tuple(v[start:stop] for v in vs) for vs in clamp)
            out.append(self._run(step_args, init_args, stop - start, num_particles, threshold, part, False).log_Z)
        log_Z = torch.cat(out)
        warn_unreliable(lost_runs_warning("TwistedSMC", log_Z.numpy()), stacklevel=3)
        return log_Z

    def log_Z_bounds(
        self,
        *step_args: Any,
        exact_samples: Mapping[str, Mapping[str, Any]] | None = None,
        num_particles: int | None = None,
        num_runs: int = 16,
        init_args: Sequence[Any] = (),
    ) -> LogZBounds:
        """The sandwich on ``log Z`` (see :class:`adapters.smc.LogZBounds`), each bound a mean over ``num_runs``.

        The upper bounds and the KL intervals need ``exact_samples`` from the target
        (``get_samples`` layout, leading axis ``>= num_runs``); without them they are NaN.
        """
        common = dict(num_runs=num_runs, num_particles=num_particles, init_args=init_args)
        never = 0.0  # SIS/IWAE: no resampling
        sis = self.log_Z_samples(*step_args, ess_threshold=never, **common)
        smc = self.log_Z_samples(*step_args, **common)
        if exact_samples is None:
            return combine_bounds(sis.numpy(), smc.numpy())
        iwae = self.log_Z_samples(*step_args, ess_threshold=never, exact_samples=exact_samples, **common)
        csmc = self.log_Z_samples(*step_args, exact_samples=exact_samples, **common)
        one = dict(num_runs=num_runs, num_particles=1, init_args=init_args, ess_threshold=never)
        elbo = self.log_Z_samples(*step_args, **one)
        eubo = self.log_Z_samples(*step_args, exact_samples=exact_samples, **one)
        return combine_bounds(*(v.numpy() for v in (sis, smc, iwae, csmc, elbo, eubo)))

    # ---- twist learning ---------------------------------------------------------------
    def fit_twists(
        self,
        *step_args: Any,
        method: str = "ctl",
        num_steps: int = 500,
        optimizer: Any = None,
        exact_samples: Mapping[str, Mapping[str, Any]] | None = None,
        num_particles: int | None = None,
        init_args: Sequence[Any] = (),
        progress_bar: bool = False,
    ) -> tuple[torch.nn.Module, np.ndarray]:
        """Train the learnable twist by CTL (``method="ctl"``) or SIXO (``"sixo"``), in place.

        Each step runs the filter with the current twists (no gradient through it, weights
        detached), then takes one ``optimizer`` step on the CTL / SIXO loss.  ``optimizer``:
        ``None`` (``torch.optim.Adam(lr=1e-2)``), a ``torch.optim.Optimizer`` over the twist's
        parameters, a ``pyro.optim.PyroOptim`` (e.g. ``pyro.optim.Adam({"lr": 1e-2})``), or a
        callable ``params -> torch.optim.Optimizer`` (e.g. ``torch.optim.SGD`` with a default
        ``lr``, or a ``functools.partial``).  Positive (target) samples are ``exact_samples``
        when given (the ``get_samples`` layout, any number of paths), else the filter's final
        weighted paths.  Returns ``(twist module, losses (num_steps,))``.

        For a :class:`TokenModel` the losses are Rao-Blackwellised over the next token: at each
        position ``t < T - 1`` the negative term averages ``log psi_{t+1}(s, v)`` over every
        (particle prefix ``s``, token ``v``) pair, weighted under ``pi_{t+1}`` (CTL) or under the
        untwisted ``p0`` (SIXO); positives are ``exact_samples["step"]["token"]`` ``(M, T)``
        (uniform weights) or the final particles' sequences with their weights.
        """
        from tqdm.auto import trange

        check_choice("method", method, TWIST_METHODS)
        if not self.learnable:
            raise TypeError("twist: fit_twists needs a learnable twist (a torch.nn.Module with parameters)")
        num_steps = check_positive_int("num_steps", num_steps)
        num_particles = (
            self.num_particles if num_particles is None else check_positive_int("num_particles", num_particles)
        )
        step_args, init_args, names = self._data(step_args, init_args)
        if self.tokens and self.model.length < 2:
            raise ValueError("length: fit_twists needs a TokenModel of length >= 2 (psi_T = phi is not learned)")
        params = [p for p in self.twist.parameters() if p.requires_grad]
        step = optimizer_step(optimizer, params)
        positives = None
        if exact_samples is not None and self.tokens:
            positives = token_paths(_exact_paths(exact_samples, None), self.model)
            count = positives.shape[0]
            positive_weights = torch.full((count,), 1.0 / count, dtype=torch.get_default_dtype())
        elif exact_samples is not None:
            positives = self._replay_states(exact_samples, step_args, init_args, names)
            count = next(iter(positives.values())).shape[0]
            positive_weights = torch.full((count,), 1.0 / count, dtype=torch.get_default_dtype())
        losses = np.empty(num_steps)
        for i in trange(num_steps, disable=not progress_bar, desc=f"fit_twists ({method})"):
            output = select_run(self._run(step_args, init_args, 1, num_particles, self.ess_threshold, None, True), 0)
            if positives is not None:
                states, weights = positives, positive_weights
            elif self.tokens:
                states, weights = output.states["tokens"][-1], normalized_weights(output.log_weights)
            else:
                _, _, states = paths(output)
                weights = normalized_weights(output.log_weights)
            if self.tokens:
                loss = token_twist_loss(self.twist, method, output, states, weights, self.model.length)
            else:
                loss = state_space_twist_loss(self.twist, method, output, states, weights)
            for p in params:
                p.grad = None
            loss.backward()
            step()
            losses[i] = float(loss.detach())
        return self.twist, losses

    def _replay_states(self, samples, step_args, init_args, names) -> dict[str, torch.Tensor]:
        """States ``(M, T + 1, ...)`` along given paths: the model run on the paths' latent values."""
        clamp = _exact_paths(samples, None, num_steps=_num_steps(step_args), names=names)
        count = clamp[0][0].shape[0] if clamp[0] else clamp[1][0].shape[0]
        options = FilterOptions(tuple(init_args), ess_threshold=0.0, max_plate_nesting=self.max_plate_nesting)
        output = filter_runs(self.model, tuple(step_args), count, 1, options, clamp=clamp)
        return {k: v[:, :, 0].movedim(0, 1) for k, v in output.states.items()}
