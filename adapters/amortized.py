"""Backend-free halves of amortized variational inference (A-VI): the guide's configuration and its checks.

Margossian & Blei, "Amortized Variational Inference: When and Why?" (UAI 2024, arXiv:2307.11018), Sec. 2:
a local latent ``z_i`` of datum ``x_i`` gets ``q(z_i) = N(mu(x_i), diag sigma(x_i)^2)`` where ``(mu, sigma)``
is one *inference function* (an encoder) shared by all data, instead of free ``(mu_i, sigma_i)`` per datum
(F-VI).  The encoder's parameters do not grow with ``n``.  Roeder et al. (ICML 2019, arXiv:1905.12090)
feed a window of neighbouring observations, the remedy for models with no ideal inference function of
``x_i`` alone (time series, Margossian & Blei Sec. 4).

Both backends' ``AutoAmortizedNormal`` build an :class:`AmortizedConfig` from their arguments and word
their errors with the functions here, so a bad argument reads the same in NumPyro and in Pyro.

Encoder output layout (:class:`EncoderLayout`): for ``b`` data the encoder returns ``(b, 2 D)``; ``D`` is
the summed size of the local latents' per-datum *unconstrained* shapes, sites in model order.  Columns
``[:D]`` are the locations; columns ``[D:]`` are raw scales, ``sigma = softplus(raw + softplus^-1(init_scale))``
so that an encoder that outputs zeros starts every local at scale ``init_scale`` (as AutoNormal does).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from adapters.validation import check_non_negative, check_positive

#: How ``inputs`` can name what the encoder reads (the guides' docstrings explain each).
INPUTS_FORMS = (
    "None (the observed sample sites inside the plate), a site name or a sequence of site names "
    "(observed sample sites inside the plate), or a callable inputs(*model_args, **model_kwargs) returning "
    "an array whose leading axis runs over the plate's full size"
)


@dataclass(frozen=True)
class AmortizedConfig:
    """An amortized Normal guide's settings.

    ``plate``: the name of the model's plate whose sample sites are the local latents.
    ``inputs``: ``None``, a tuple of observed site names, or a callable of the model's arguments
    (:data:`INPUTS_FORMS`); a single name is stored as a one-name tuple.
    ``hidden``: the default MLP encoder's hidden widths; ``()`` is an affine encoder.
    ``window``: ``k >= 0``; datum ``i``'s encoder reads the inputs of ``i - k, ..., i + k`` (indices clipped
    to ``[0, n - 1]``: edge padding), concatenated in that order.
    ``init_scale``: the scale of every local and global Normal at initialisation (unconstrained space).
    """

    plate: str = "data"
    inputs: tuple[str, ...] | Callable[..., Any] | None = None
    hidden: tuple[int, ...] = (64,)
    window: int = 0
    init_scale: float = 0.1

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not isinstance(self.plate, str) or not self.plate:
            raise TypeError(f"plate must be the name (a non-empty str) of a plate in the model, got {self.plate!r}")
        set_(self, "inputs", normalize_inputs(self.inputs))
        set_(self, "hidden", check_hidden(self.hidden))
        if isinstance(self.window, bool) or not isinstance(self.window, numbers.Integral):
            raise ValueError(f"window must be a non-negative integer (neighbours each side), got {self.window!r}")
        set_(self, "window", int(check_non_negative("window", self.window)))
        set_(self, "init_scale", check_positive("init_scale", self.init_scale))

    @property
    def num_window(self) -> int:
        """How many data each encoder input covers: ``2 window + 1``."""
        return 2 * self.window + 1

    @property
    def window_offsets(self) -> tuple[int, ...]:
        """The neighbour offsets ``-window, ..., window`` in the order their inputs are concatenated."""
        return tuple(range(-self.window, self.window + 1))

    @property
    def scale_bias(self) -> float:
        """``softplus^-1(init_scale)``: added to the raw scales so that a zero output means ``init_scale``."""
        return softplus_inverse(self.init_scale)


def normalize_inputs(inputs: Any) -> tuple[str, ...] | Callable[..., Any] | None:
    """``inputs`` as ``None``, a tuple of site names, or a callable; a ``TypeError`` naming it otherwise."""
    if inputs is None or callable(inputs):
        return inputs
    if isinstance(inputs, str):
        inputs = (inputs,)
    if isinstance(inputs, Sequence) and inputs and all(isinstance(s, str) and s for s in inputs):
        if len(set(inputs)) != len(inputs):
            raise ValueError(f"inputs names a site twice: {list(inputs)!r}")
        return tuple(inputs)
    raise TypeError(f"inputs must be {INPUTS_FORMS}; got {inputs!r}")


def check_hidden(hidden: Any) -> tuple[int, ...]:
    """``hidden`` as a tuple of positive ints (``()`` allowed: an affine encoder)."""
    if isinstance(hidden, numbers.Integral) and not isinstance(hidden, bool):
        hidden = (hidden,)
    try:
        widths = tuple(hidden)
    except TypeError:
        raise ValueError(f"hidden must be a tuple of positive integers (hidden widths), got {hidden!r}") from None
    if not all(isinstance(w, numbers.Integral) and not isinstance(w, bool) and w > 0 for w in widths):
        raise ValueError(f"hidden must be a tuple of positive integers (hidden widths), got {hidden!r}")
    return tuple(int(w) for w in widths)


def softplus_inverse(y: float) -> float:
    """``x`` with ``log(1 + exp(x)) = y`` for ``y > 0``, without overflow for large ``y``."""
    return y + math.log(-math.expm1(-y))


class EncoderLayout(NamedTuple):
    """Where each local latent's per-datum location and raw scale sit in the encoder's output.

    ``names``: local sites in model order; ``shapes``: each one's per-datum unconstrained shape (the
    plate's axis removed); ``sizes``: their products; ``offsets``: each one's first column.  The
    output has ``2 * latent_size`` columns: locations ``[:latent_size]``, raw scales after.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    sizes: tuple[int, ...]
    offsets: tuple[int, ...]

    @property
    def latent_size(self) -> int:
        """``D``: the per-datum size of all local latents together."""
        return sum(self.sizes)

    @property
    def output_size(self) -> int:
        """``2 D``: the width the encoder must output."""
        return 2 * self.latent_size


def encoder_layout(site_shapes: dict[str, tuple[int, ...]]) -> EncoderLayout:
    """The :class:`EncoderLayout` of the local sites ``{name: per-datum unconstrained shape}`` (model order)."""
    names = tuple(site_shapes)
    shapes = tuple(tuple(int(d) for d in site_shapes[k]) for k in names)
    sizes = tuple(math.prod(s) for s in shapes)
    offsets = tuple(sum(sizes[:i]) for i in range(len(sizes)))
    return EncoderLayout(names, shapes, sizes, offsets)


def check_plate_found(plate: str, plates: Sequence[str]) -> None:
    """A ``ValueError`` naming ``plate`` when the model has no plate of that name."""
    if plate in plates:
        return
    known = f"its plates are {sorted(plates)}" if plates else "it has no plate"
    raise ValueError(
        f"plate: the model has no plate named {plate!r} ({known}); AutoAmortizedNormal amortizes the latent "
        "sample sites inside the named plate, so pass plate=<the name given to the model's plate>"
    )


def no_local_latent_message(plate: str) -> str:
    """The error for a plate that holds no latent sample site (nothing to amortize)."""
    return (
        f"plate: plate {plate!r} holds no latent sample site, so there is nothing to amortize; name the plate "
        "over the data whose per-datum latents the encoder should predict, or use AutoNormal"
    )


def check_local_batch_shape(site: str, batch_shape: tuple[int, ...], plate: str, dim: int, size: int) -> None:
    """A ``ValueError`` when local site ``site``'s batch shape has no axis of the plate's size at its ``dim``."""
    if len(batch_shape) >= -dim and batch_shape[dim] == size:
        return
    raise ValueError(
        f"plate: the local latent {site!r} inside plate {plate!r} has batch shape {tuple(batch_shape)}, which has "
        f"no axis of the plate's size {size} at the plate's dim {dim}; the encoder predicts one Normal per datum "
        "along that axis, so the site's distribution must be batched over the plate (not .to_event over it)"
    )


def check_unplated_local(
    site: str, batch_shape: tuple[int, ...], plated_dims: Sequence[int], plate: str, dim: int, full_size: int
) -> None:
    """A ``ValueError`` for a latent outside the plate batched over the plate's full size at the plate's dim
    with no plate of its own there: a local latent that was left out of the plate."""
    if full_size <= 1 or dim in plated_dims or len(batch_shape) < -dim or batch_shape[dim] != full_size:
        return
    raise ValueError(
        f"plate: the latent {site!r} lies outside plate {plate!r} but is batched over its size {full_size} at the "
        f"plate's dim {dim}: a local latent left out of the plate. Sample it inside `plate({plate!r}, ...)` to "
        "amortize it, or inside a plate of its own to keep one free Gaussian per element"
    )


def check_local_nested_plate(site: str, plate: str, other: str) -> None:
    """A ``ValueError`` for a local latent that also lies in a subsampled plate (its per-datum size would vary)."""
    raise ValueError(
        f"plate: the local latent {site!r} in plate {plate!r} also lies in the subsampled plate {other!r}; the "
        "encoder's output width is fixed, so another plate around a local latent must not be subsampled"
    )


def check_encoder_output(shape: tuple[int, ...], num_data: int, layout: EncoderLayout) -> None:
    """A ``ValueError`` naming ``encoder`` when its output for ``num_data`` data is not ``(num_data, 2 D)``."""
    expected = (num_data, layout.output_size)
    if tuple(shape) == expected:
        return
    parts = ", ".join(f"{n!r}: {s}" for n, s in zip(layout.names, layout.shapes, strict=True))
    raise ValueError(
        f"encoder: for a batch of {num_data} inputs it returned shape {tuple(shape)}, expected {expected}: one "
        f"location and one raw scale per unconstrained local latent coordinate (D = {layout.latent_size}; "
        f"per-datum shapes {{{parts}}})"
    )


def check_input_sites(names: Sequence[str], observed: Sequence[str], latent: Sequence[str], plate: str) -> None:
    """A ``ValueError`` naming ``inputs`` for a name that is not an observed sample site inside the plate."""
    for name in names:
        if name in observed:
            continue
        if name in latent:
            why = f"{name!r} is a latent site in this call (pass its observed value to the model)"
        else:
            why = f"the model has no observed sample site {name!r} inside plate {plate!r}"
        raise ValueError(f"inputs: {why}; observed sites inside the plate: {sorted(observed)}")
    if not names:
        raise ValueError(
            f"inputs: plate {plate!r} holds no observed sample site, so there is nothing for the encoder to read; "
            f"pass inputs= {INPUTS_FORMS}"
        )


def check_callable_inputs(shape: tuple[int, ...], full_size: int, plate: str) -> None:
    """A ``ValueError`` naming ``inputs`` when a callable's array does not run over the plate's full size."""
    if len(shape) >= 1 and shape[0] == full_size:
        return
    raise ValueError(
        f"inputs: the callable returned an array of shape {tuple(shape)}; its leading axis must run over all "
        f"{full_size} elements of plate {plate!r} (the guide indexes it with the plate's subsample). For new "
        "data, build their encoder inputs yourself and call guide.encode(...) on them"
    )


# ----------------------------------------------------------------------------- the amortization gap


@dataclass
class GapFit:
    """One fitted guide of an amortization-gap study (Margossian & Blei, Sec. 3).

    ``name``: ``"F-VI"`` or ``"A-VI hidden=(64,) window=0"``; ``hidden``/``window``: the encoder's (``None``
    for F-VI).  ``elbo``, ``elbo_se``: the full-data ELBO and its Monte Carlo standard error (global draws).
    ``per_datum_elbo``: ``(n,)``, datum ``i``'s expected ``log p(x_i, z_i | beta) - log q(z_i)`` (Eq. (1) of
    :mod:`numpyro_ext.infer.amortized.local_elbo`); ``elbo = global term + sum_i per_datum_elbo``.
    ``num_guide_params``: numbers in the guide's parameters (A-VI's does not grow with ``n``).
    ``wall_s``: training seconds (compilation included); ``losses``: ``(num_steps,)`` training losses.
    ``posterior``: draws ``{site: (draws, *site shape)}`` (numpy) from the fitted guide, for ArviZ.
    ``params``: the fitted guide's parameters (numpy), e.g. for ``guide.median(params, ...)``.
    """

    name: str
    hidden: tuple[int, ...] | None
    window: int | None
    elbo: float
    elbo_se: float
    per_datum_elbo: np.ndarray
    num_guide_params: int
    wall_s: float
    losses: np.ndarray
    posterior: dict[str, np.ndarray]
    params: Any = None


@dataclass
class AmortizationGap:
    """F-VI and A-VI fitted to the same model and data: the amortization gap and its trend with the encoder.

    The gap of an A-VI fit is ``ELBO(F-VI) - ELBO(A-VI)``: positive when the encoder cannot represent the
    F-VI optimum (too narrow, or no ideal inference function of ``x_i`` alone, Margossian & Blei Sec. 4),
    about zero when it can.  Both ELBOs are Monte Carlo estimates: ``gap_se`` is their joint standard error.
    """

    fvi: GapFit
    avi: list[GapFit]
    num_data: int

    def gap(self, fit: GapFit) -> float:
        """``ELBO(F-VI) - ELBO(fit)`` in nats."""
        return self.fvi.elbo - fit.elbo

    def gap_se(self, fit: GapFit) -> float:
        """The Monte Carlo standard error of :meth:`gap`."""
        return math.hypot(self.fvi.elbo_se, fit.elbo_se)

    def per_datum_gap(self, fit: GapFit) -> np.ndarray:
        """``(n,)``: datum by datum, F-VI's expected local ELBO term minus ``fit``'s (where the gap sits).

        Its sum differs from :meth:`gap` by the difference of the global latents' terms (``log p(beta) - log
        q(beta)`` and any site outside the plate), which belong to no datum."""
        return self.fvi.per_datum_elbo - fit.per_datum_elbo

    def rows(self) -> list[dict[str, Any]]:
        """One dict per fit (F-VI first): ELBO, gap, gap per datum, relative gap, parameters, seconds."""
        out = []
        for fit in (self.fvi, *self.avi):
            gap = self.gap(fit)
            out.append(
                {
                    "guide": fit.name,
                    "elbo": fit.elbo,
                    "elbo_se": fit.elbo_se,
                    "gap": gap,
                    "gap_se": self.gap_se(fit) if fit is not self.fvi else 0.0,
                    "gap_per_datum": gap / self.num_data,
                    "relative_gap": gap / abs(self.fvi.elbo),
                    "num_guide_params": fit.num_guide_params,
                    "wall_s": fit.wall_s,
                }
            )
        return out

    def table(self) -> str:
        """The rows as a plain-text table (gaps in nats; per datum; relative to ``|ELBO(F-VI)|``), with a note
        when an A-VI fit beats F-VI by more than 4 standard errors: the gap is defined at both optima, so F-VI
        has not converged (the usual case with a subsampled plate and few steps: each free Gaussian moves only
        when its datum is drawn)."""
        head = f"{'guide':<32} {'ELBO':>12} {'gap':>16} {'gap/datum':>10} {'gap/|ELBO|':>10} {'params':>9} {'s':>7}"
        lines = [head, "-" * len(head)]
        for r in self.rows():
            gap = f"{r['gap']:.2f} ± {r['gap_se']:.2f}"
            lines.append(
                f"{r['guide']:<32} {r['elbo']:>12.2f} {gap:>16} {r['gap_per_datum']:>10.4f} "
                f"{r['relative_gap']:>10.2%} {r['num_guide_params']:>9d} {r['wall_s']:>7.1f}"
            )
        if any(self.gap(fit) < -4 * self.gap_se(fit) for fit in self.avi):
            lines.append(
                "note: a negative gap means F-VI has not reached its optimum (train longer); the amortization gap "
                "is the difference of the two optima"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_arviz(self) -> dict[str, Any]:
        """``{guide name: arviz.InferenceData}`` of each fit's posterior draws (one chain), with the ELBO, its
        standard error and the gap in the posterior group's attributes (``az.summary``, ``az.plot_forest``)."""
        from adapters.inference_data import from_samples

        out = {}
        for fit in (self.fvi, *self.avi):
            idata = from_samples({k: v[None] for k, v in fit.posterior.items()})
            idata.posterior.attrs.update(
                {"guide": fit.name, "elbo": fit.elbo, "elbo_se": fit.elbo_se, "amortization_gap": self.gap(fit)}
            )
            out[fit.name] = idata
        return out


def gap_fit_name(hidden: tuple[int, ...] | None, window: int | None) -> str:
    """``"F-VI"`` or ``"A-VI hidden=(64,) window=0"``."""
    return "F-VI" if hidden is None else f"A-VI hidden={tuple(hidden)} window={window}"
