"""The amortization gap (Margossian & Blei, UAI 2024, Sec. 3): F-VI and A-VI fitted to one model and data (Pyro).

The twin of :mod:`numpyro_ext.infer.amortized.gap`.  :func:`per_datum_elbo` estimates a fitted guide's
full-data ELBO and each datum's share of it (Eq. (1) of :mod:`.local_elbo`), visiting the data in chunks when
the plate is subsampled, so memory does not grow with ``n``.  :func:`amortization_gap` fits ``AutoNormal``
(F-VI) and :class:`~.guide.AutoAmortizedNormal` (A-VI) for a sweep of encoder widths with the same optimizer,
steps and seed, each in a fresh parameter store, and returns an :class:`adapters.amortized.AmortizationGap`.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.poutine.util import site_is_subsample

from adapters.amortized import AmortizationGap, GapFit, check_hidden, gap_fit_name
from adapters.validation import check_non_negative, check_positive_int
from pyro_ext.infer.amortized.guide import AutoAmortizedNormal
from pyro_ext.infer.amortized.local_elbo import global_values, per_datum_log_weights, run_guide_and_model


class PerDatumELBO(NamedTuple):
    """A fitted guide's ELBO, its standard error over global draws, and ``(n,)`` per-datum terms."""

    elbo: float
    elbo_se: float
    per_datum: np.ndarray


def _plate_sizes(model, guide, args, kwargs, plate) -> tuple[int, int]:
    """The plate's full size and the size of one visit (its subsample size, or the full size)."""
    _, guide_trace = run_guide_and_model(model, guide, args, kwargs, {})
    site = guide_trace.nodes.get(plate)
    if site is None or not site_is_subsample(site):
        raise ValueError(f"plate: the guide has no plate named {plate!r}")
    return int(site["fn"].size), int(site["value"].shape[0])


@torch.no_grad()
def per_datum_elbo(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    *args: Any,
    plate: str = "data",
    num_particles: int = 64,
    batch_size: int | None = None,
    **kwargs: Any,
) -> PerDatumELBO:
    """The full-data ELBO of ``guide`` (parameters: Pyro's parameter store) and each datum's term, by
    ``num_particles`` global draws (torch's generator).

    Each global draw ``beta_p`` (and one local draw per datum given it) gives ``ELBO_p = global term +
    sum_i l_i``; the estimate is their mean with standard error ``sd_p / sqrt(P)``, and ``per_datum`` is
    ``mean_p l_i``, ``(n,)``.  With a subsampled plate the data are visited in chunks of exactly the plate's
    subsample size (Pyro takes a given subsample only at that size; the last chunk is padded by repeating the
    last index and the padding dropped), every chunk under the same global draw, so the model must index its
    data by the plate's indices; an unsubsampled plate is visited whole.  ``batch_size``: ``None`` or the
    plate's subsample size (a ``ValueError`` naming it otherwise).
    """
    num_particles = check_positive_int("num_particles", num_particles)
    if num_particles < 2:
        raise ValueError(f"num_particles must be at least 2 (a standard error needs two draws), got {num_particles}")
    with poutine.block():  # an estimate, not part of any handler's run around it
        full, visit = _plate_sizes(model, guide, args, kwargs, plate)
        subsampled = visit != full
        if batch_size is not None and subsampled and check_positive_int("batch_size", batch_size) != visit:
            raise ValueError(
                f"batch_size must be None or plate {plate!r}'s subsample size {visit} (Pyro takes a given subsample "
                f"only at that size), got {batch_size!r}"
            )
        starts = range(0, full, visit) if subsampled else range(1)
        global_terms = np.zeros(num_particles)
        locals_ = np.zeros((num_particles, full))
        for p in range(num_particles):
            fixed = None
            for start in starts:
                indices = torch.arange(start, start + visit).clamp(max=full - 1) if subsampled else None
                if fixed is None:  # the first chunk draws this particle's globals
                    _, guide_trace = run_guide_and_model(
                        model, guide, args, kwargs, {} if indices is None else {plate: indices}
                    )
                    fixed = global_values(guide_trace, plate)
                terms = per_datum_log_weights(
                    model, guide, args, kwargs, plate, 1, indices=indices, fixed_globals=fixed
                )
                if start == 0:
                    global_terms[p] = float(terms.global_term)
                count = min(visit, full - start)
                values = terms.local[0].detach().cpu().numpy().astype(np.float64)
                locals_[p, start : start + count] = values[:count]
    elbos = global_terms + locals_.sum(axis=1)
    return PerDatumELBO(float(elbos.mean()), float(elbos.std(ddof=1) / math.sqrt(num_particles)), locals_.mean(0))


def _store_numpy() -> dict[str, np.ndarray]:
    return {name: value.detach().cpu().numpy().copy() for name, value in pyro.get_param_store().items()}


def _latent_names(guide: Any) -> list[str]:
    return [name for name, _ in guide.prototype_trace.iter_stochastic_nodes()]


def _fit(name, model, guide, hidden, window, optim, num_steps, num_particles, num_eval, num_draws, args, kwargs, plate):
    svi = SVI(model, guide, optim, Trace_ELBO(num_particles=num_particles))
    start = time.perf_counter()
    losses = np.array([svi.step(*args, **kwargs) for _ in range(num_steps)], dtype=np.float64)
    wall = time.perf_counter() - start
    elbo = per_datum_elbo(model, guide, *args, plate=plate, num_particles=num_eval, **kwargs)
    posterior = {}
    if num_draws:
        predictive = Predictive(guide, num_samples=num_draws, return_sites=_latent_names(guide))
        with torch.no_grad(), poutine.block():
            draws = predictive(*args, **kwargs)
        posterior = {k: v.detach().cpu().numpy() for k, v in draws.items()}
    params = _store_numpy()
    return GapFit(
        name=name,
        hidden=hidden,
        window=window,
        elbo=elbo.elbo,
        elbo_se=elbo.elbo_se,
        per_datum_elbo=elbo.per_datum,
        num_guide_params=int(sum(v.size for v in params.values())),
        wall_s=wall,
        losses=losses,
        posterior=posterior,
        params=params,
    )


def amortization_gap(
    model: Callable[..., Any],
    *args: Any,
    plate: str = "data",
    hidden: Sequence[Any] = ((16,), (64,), (256,)),
    window: int | Sequence[int] = 0,
    optim: pyro.optim.PyroOptim | None = None,
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

    Every fit uses a fresh copy of the same optimizer (default ``pyro.optim.Adam({"lr": 1e-2})``),
    ``num_steps`` steps of ``Trace_ELBO(num_particles)``, torch's generator seeded with ``seed`` and a fresh
    parameter store (the caller's store and torch's generator state are restored afterwards); each fitted ELBO
    is then estimated by :func:`per_datum_elbo` with ``num_eval_particles`` global draws.  ``hidden``: the
    encoders' hidden widths (``()`` is affine; an int ``w`` means ``(w,)``); ``window``: the encoders' window,
    or a sequence of windows; one A-VI fit per (width, window) pair, widths outermost.  ``guide_kwargs``: more
    arguments of ``AutoAmortizedNormal`` (``inputs``, ``init_scale``, ...).  Fits run in order (F-VI first)
    under a progress bar; interrupting keeps the finished fits (at least F-VI's).

    Each fit's ``params`` is its parameter store (constrained values, numpy); ``posterior`` holds
    ``num_posterior_draws`` draws of the guide (``Predictive``; with a subsampled plate each draw's locals
    are those of one subsample).  Returns an :class:`adapters.amortized.AmortizationGap`: ``print(result)``
    shows the table, ``result.per_datum_gap(fit)`` where the gap sits, ``result.to_arviz()`` both posteriors.
    """
    widths = [check_hidden(h) for h in hidden]
    if not widths:
        raise ValueError("hidden must name at least one encoder width (a sequence of hidden-width tuples)")
    num_steps = check_positive_int("num_steps", num_steps)
    num_particles = check_positive_int("num_particles", num_particles)
    num_posterior_draws = int(check_non_negative("num_posterior_draws", num_posterior_draws))
    if optim is None:
        optim = pyro.optim.Adam({"lr": 1e-2})
    elif not isinstance(optim, pyro.optim.PyroOptim):
        raise TypeError(f"optim must be a pyro.optim optimizer (e.g. pyro.optim.Adam({{'lr': 1e-2}})), got {optim!r}")
    guide_kwargs = dict(guide_kwargs or {})
    for reserved in ("plate", "hidden", "window"):
        if reserved in guide_kwargs:
            raise ValueError(f"guide_kwargs: pass {reserved!r} as amortization_gap's own argument")
    windows = [window] if isinstance(window, int) else list(window)
    if not windows:
        raise ValueError("window must be a non-negative int or a non-empty sequence of them")
    runs = [("F-VI", None, None)] + [(gap_fit_name(h, w), h, w) for h in widths for w in windows]
    fits: list[GapFit] = []
    from tqdm.auto import tqdm

    store = pyro.get_param_store()
    saved = store.get_state()
    bar = tqdm(runs, desc="amortization gap", disable=not progress_bar)
    try:
        with torch.random.fork_rng(devices=[]):
            for i, (name, h, w) in enumerate(bar):
                bar.set_postfix_str(name)
                store.clear()
                torch.manual_seed(seed + i)
                if h is None:
                    guide = AutoNormal(model, init_scale=guide_kwargs.get("init_scale", 0.1))
                else:
                    guide = AutoAmortizedNormal(model, plate=plate, hidden=h, window=w, **guide_kwargs)
                common = (copy.deepcopy(optim), num_steps, num_particles, num_eval_particles, num_posterior_draws)
                fits.append(_fit(name, model, guide, h, w, *common, args, kwargs, plate))
    except KeyboardInterrupt:
        if not fits:
            raise
        warnings.warn(f"amortization_gap interrupted: returning the {len(fits)} finished fits", stacklevel=2)
    finally:
        bar.close()
        store.clear()
        store.set_state(saved)
    return AmortizationGap(fvi=fits[0], avi=fits[1:], num_data=len(fits[0].per_datum_elbo))
