"""The amortization gap (Margossian & Blei, UAI 2024, Sec. 3): F-VI and A-VI fitted to one model and data.

:func:`per_datum_elbo` estimates a fitted guide's full-data ELBO and each datum's share of it (Eq. (1) of
:mod:`.local_elbo`), visiting the data in chunks when the plate is subsampled, so memory does not grow with
``n``.  :func:`amortization_gap` fits ``AutoNormal`` (F-VI) and :class:`~.guide.AutoAmortizedNormal` (A-VI)
for a sweep of encoder widths with the same optimizer, steps and seed, and returns an
:class:`adapters.amortized.AmortizationGap`: the gap per fit and per datum, a table and ArviZ output.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro import handlers
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

from adapters.amortized import AmortizationGap, GapFit, check_hidden, gap_fit_name
from adapters.validation import check_non_negative, check_positive_int
from numpyro_ext.infer.amortized.guide import AutoAmortizedNormal
from numpyro_ext.infer.amortized.local_elbo import global_values, per_datum_log_weights, run_guide_and_model


class PerDatumELBO(NamedTuple):
    """A fitted guide's ELBO, its standard error over global draws, and ``(n,)`` per-datum terms."""

    elbo: float
    elbo_se: float
    per_datum: np.ndarray


def _plate_sizes(model, guide, params, args, kwargs, plate) -> tuple[int, int]:
    """The plate's full size and the size of one visit (its subsample size, or the full size)."""
    try:
        _, guide_trace = run_guide_and_model(model, guide, params, args, kwargs, jax.random.PRNGKey(0), {})
    except ValueError as err:
        if "got invalid" not in str(err):
            raise
        raise ValueError(
            f"params: the guide's distributions are invalid at these parameters ({err}); e.g. a scale that "
            "underflowed to 0: the fit collapsed (lower the learning rate, or clip gradients)"
        ) from err
    if plate not in guide_trace:
        raise ValueError(f"plate: the guide has no plate named {plate!r}")
    full, _ = guide_trace[plate]["args"]
    return int(full), int(guide_trace[plate]["value"].shape[0])


def per_datum_elbo(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    params: dict[str, Any],
    *args: Any,
    plate: str = "data",
    num_particles: int = 64,
    rng_key: jax.Array | None = None,
    batch_size: int | None = None,
    **kwargs: Any,
) -> PerDatumELBO:
    """The full-data ELBO of ``guide`` at ``params`` and each datum's term, by ``num_particles`` global draws.

    Each global draw ``beta_p`` (and one local draw per datum given it) gives ``ELBO_p = global term +
    sum_i l_i``; the estimate is their mean with standard error ``sd_p / sqrt(P)``, and ``per_datum`` is
    ``mean_p l_i``, ``(n,)``.  With a subsampled plate the data are visited in chunks of ``batch_size`` (default
    the plate's subsample size), every chunk under the same global draws, so the model must index its data by
    the plate's indices; an unsubsampled plate is visited whole.
    """
    num_particles = check_positive_int("num_particles", num_particles)
    if num_particles < 2:
        raise ValueError(f"num_particles must be at least 2 (a standard error needs two draws), got {num_particles}")
    rng_key = jax.random.PRNGKey(0) if rng_key is None else rng_key
    for name, value in params.items():
        if not all(bool(np.all(np.isfinite(np.asarray(leaf)))) for leaf in jax.tree_util.tree_leaves(value)):
            raise ValueError(
                f"params: {name!r} holds non-finite values (the fit diverged); skip non-finite steps with "
                "optax.apply_if_finite or lower the learning rate"
            )
    full, visit = _plate_sizes(model, guide, params, args, kwargs, plate)
    subsampled = visit != full
    chunk = check_positive_int("batch_size", batch_size) if batch_size is not None else visit
    chunk = min(chunk, full) if subsampled else full

    @jax.jit
    def draw_globals(keys: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
        def one(key: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
            indices = jnp.arange(chunk) if subsampled else None
            draw_key, term_key = jax.random.split(key)
            _, guide_trace = run_guide_and_model(
                model, guide, params, args, kwargs, draw_key, {} if indices is None else {plate: indices}
            )
            fixed = global_values(guide_trace, plate)
            terms = per_datum_log_weights(
                model, guide, params, args, kwargs, term_key, plate, 1, indices=indices, fixed_globals=fixed
            )
            return fixed, terms.global_term

        return jax.vmap(one)(keys)

    @jax.jit
    def chunk_terms(keys: jax.Array, globals_: dict[str, jax.Array], indices: jax.Array) -> jax.Array:
        def one(key: jax.Array, fixed: dict[str, jax.Array]) -> jax.Array:
            terms = per_datum_log_weights(
                model, guide, params, args, kwargs, key, plate, 1, indices=indices, fixed_globals=fixed
            )
            return terms.local[0]

        return jax.vmap(one)(keys, globals_)

    global_key, local_key = jax.random.split(rng_key)
    globals_, global_terms = draw_globals(jax.random.split(global_key, num_particles))
    locals_ = np.zeros((num_particles, full))
    for c, start in enumerate(range(0, full, chunk)):
        indices = np.minimum(np.arange(start, start + chunk), full - 1)  # the last chunk repeats its end
        keys = jax.random.split(jax.random.fold_in(local_key, c), num_particles)
        values = np.asarray(chunk_terms(keys, globals_, jnp.asarray(indices)), dtype=np.float64)
        locals_[:, start : start + chunk] = values[:, : min(chunk, full - start)]
    elbos = np.asarray(global_terms, dtype=np.float64) + locals_.sum(axis=1)
    return PerDatumELBO(float(elbos.mean()), float(elbos.std(ddof=1) / math.sqrt(num_particles)), locals_.mean(0))


def _num_params(params: dict[str, Any]) -> int:
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))


def _fit(
    name, model, guide, hidden, window, optim, num_steps, num_particles, num_eval, num_draws, key, args, kwargs, plate
):
    train_key, eval_key, draw_key = jax.random.split(key, 3)
    svi = SVI(model, guide, optim, Trace_ELBO(num_particles=num_particles))
    start = time.perf_counter()
    result = svi.run(train_key, num_steps, *args, progress_bar=False, **kwargs)
    jax.block_until_ready(result.params)
    wall = time.perf_counter() - start
    params = result.params
    elbo = per_datum_elbo(model, guide, params, *args, plate=plate, num_particles=num_eval, rng_key=eval_key, **kwargs)
    posterior = {}
    if num_draws:
        with handlers.block():
            draws = guide.sample_posterior(draw_key, params, *args, sample_shape=(num_draws,), **kwargs)
        posterior = {k: np.asarray(v) for k, v in draws.items()}
    return GapFit(
        name=name,
        hidden=hidden,
        window=window,
        elbo=elbo.elbo,
        elbo_se=elbo.elbo_se,
        per_datum_elbo=elbo.per_datum,
        num_guide_params=_num_params(params),
        wall_s=wall,
        losses=np.asarray(result.losses),
        posterior=posterior,
        params=jax.tree_util.tree_map(np.asarray, params),
    )


def amortization_gap(
    model: Callable[..., Any],
    *args: Any,
    plate: str = "data",
    hidden: Sequence[Any] = ((16,), (64,), (256,)),
    window: int | Sequence[int] = 0,
    optim: optax.GradientTransformation | None = None,
    num_steps: int = 2000,
    num_particles: int = 1,
    num_eval_particles: int = 64,
    num_posterior_draws: int = 200,
    seed: int = 0,
    progress_bar: bool = True,
    guide_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> AmortizationGap:
    """Fit F-VI (``AutoNormal``) and A-VI (``AutoAmortizedNormal``, one fit per entry of ``hidden``) to
    ``model(*args, **kwargs)`` and measure the amortization gap (Margossian & Blei, Sec. 3).

    Every fit uses the same optimizer (default ``optax.adam(1e-2)``), ``num_steps`` steps of ``Trace_ELBO
    (num_particles)`` and the same seed; each fitted ELBO is then estimated by :func:`per_datum_elbo` with
    ``num_eval_particles`` global draws.  ``hidden``: the encoders' hidden widths (``()`` is affine; an int
    ``w`` means ``(w,)``); ``window``: the encoders' window, or a sequence of windows; one A-VI fit per
    (width, window) pair, widths outermost.  ``guide_kwargs``: more arguments
    of ``AutoAmortizedNormal`` (``inputs``, ``init_scale``, ...).  Fits run in order (F-VI first) under a
    progress bar; interrupting keeps the finished fits (at least F-VI's).

    Returns an :class:`adapters.amortized.AmortizationGap`: ``print(result)`` shows the table,
    ``result.per_datum_gap(fit)`` where the gap sits, ``result.to_arviz()`` both posteriors.
    """
    widths = [check_hidden(h) for h in hidden]
    if not widths:
        raise ValueError("hidden must name at least one encoder width (a sequence of hidden-width tuples)")
    num_steps = check_positive_int("num_steps", num_steps)
    num_posterior_draws = int(check_non_negative("num_posterior_draws", num_posterior_draws))
    optim = optax.adam(1e-2) if optim is None else optim
    guide_kwargs = dict(guide_kwargs or {})
    for reserved in ("plate", "hidden", "window"):
        if reserved in guide_kwargs:
            raise ValueError(f"guide_kwargs: pass {reserved!r} as amortization_gap's own argument")
    windows = [window] if isinstance(window, int) else list(window)
    if not windows:
        raise ValueError("window must be a non-negative int or a non-empty sequence of them")
    runs = [("F-VI", None, None)] + [(gap_fit_name(h, w), h, w) for h in widths for w in windows]
    keys = jax.random.split(jax.random.PRNGKey(seed), len(runs))
    fits: list[GapFit] = []
    from tqdm.auto import tqdm

    bar = tqdm(runs, desc="amortization gap", disable=not progress_bar)
    try:
        for key, (name, h, w) in zip(keys, bar, strict=False):
            bar.set_postfix_str(name)
            if h is None:
                guide = AutoNormal(model, init_scale=guide_kwargs.get("init_scale", 0.1))
            else:
                guide = AutoAmortizedNormal(model, plate=plate, hidden=h, window=w, **guide_kwargs)
            common = (optim, num_steps, num_particles, num_eval_particles, num_posterior_draws, key, args, kwargs)
            fits.append(_fit(name, model, guide, h, w, *common, plate))
    except KeyboardInterrupt:
        if not fits:
            raise
        warnings.warn(f"amortization_gap interrupted: returning the {len(fits)} finished fits", stacklevel=2)
    finally:
        bar.close()
    return AmortizationGap(fvi=fits[0], avi=fits[1:], num_data=len(fits[0].per_datum_elbo))
