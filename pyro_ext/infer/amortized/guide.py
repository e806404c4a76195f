"""``AutoAmortizedNormal``: Pyro's AutoNormal with the local latents of one plate predicted by an encoder.

Margossian & Blei, "Amortized Variational Inference: When and Why?" (UAI 2024, arXiv:2307.11018), Eq. (3):
for every latent sample site inside plate ``plate`` (a *local* latent ``z_i`` of datum ``i``),

    q(z_i) = N(mu_phi(x_i), diag sigma_phi(x_i)^2)   (in the site's unconstrained space),

one encoder ``phi`` for all data (A-VI); every other latent (a *global*) gets a free Normal as in Pyro's
``AutoNormal`` (F-VI).  ``window=k`` reads ``x_{i-k}, ..., x_{i+k}`` instead of ``x_i`` (Roeder et al., ICML
2019, Sec. 3.2; Margossian & Blei Sec. 4).  The twin of :class:`numpyro_ext.infer.amortized.AutoAmortizedNormal`:
the same configuration, encoder output layout and error messages (:mod:`adapters.amortized`).

Subsampling: the guide's plate draws the subsample (Pyro's ``_create_plates``) and the model replays it from
the guide's trace.  The encoder needs the data at those indices (and at their window neighbours), which only
the model knows how to index: the guide reruns the model, blocked from every handler around it and with
torch's generator state restored afterwards, with the plate's subsample site conditioned on the indices it
needs, in chunks of the plate's subsample size (Pyro checks that a given subsample has that size).  So each
step reads ``(2 k + 1) b`` data, never ``n``: memory does not grow with ``n``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import ExitStack
from operator import attrgetter
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.distributions.transforms import biject_to
from pyro.distributions.util import broadcast_shape
from pyro.infer.autoguide import AutoGuide
from pyro.infer.autoguide.initialization import InitMessenger, init_to_feasible
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn import PyroModule, PyroParam, pyro_method
from pyro.ops.tensor_utils import periodic_repeat

from adapters.amortized import (
    AmortizedConfig,
    check_callable_inputs,
    check_encoder_output,
    check_input_sites,
    check_local_batch_shape,
    check_local_nested_plate,
    check_plate_found,
    check_unplated_local,
    encoder_layout,
    no_local_latent_message,
)
from adapters.validation import check_finite_array
from pyro_ext.infer.amortized.encoders import MLPEncoder, check_encoder_form, parameter_dtype

Tensor = torch.Tensor

_SHAPE_MISMATCH = re.compile(r"Shape mismatch inside plate\('[^']*'\) at site (\S+) dim")


def _is_real(support: constraints.Constraint) -> bool:
    return support is constraints.real or (
        isinstance(support, constraints.independent) and support.base_constraint is constraints.real
    )


def _is_subsample(site: dict) -> bool:
    return type(site["fn"]).__name__ == "_Subsample"


class AutoAmortizedNormal(AutoGuide):
    """Amortized mean-field Normal guide: an encoder predicts each datum's local latents' Normal.

    Usage::

        def model(x):
            with pyro.plate("data", len(x), subsample_size=256) as idx:
                z = pyro.sample("z", dist.Normal(0.0, 1.0))
                pyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])

        guide = AutoAmortizedNormal(model, plate="data", hidden=(64,))
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())

    :param model: a Pyro model.
    :param plate: the name of the plate whose latent sample sites are amortized (the *local* latents).  Each
        must be batched over the plate (shape ``(..., b, ...)`` with ``b`` at the plate's dim).
    :param encoder: ``None`` (an :class:`~.encoders.MLPEncoder` with ``hidden`` widths, built at the first
        call) or a ``torch.nn.Module`` mapping ``(b, F)`` inputs to ``(b, 2 D)``: locations then raw scales of
        the ``D`` unconstrained local coordinates per datum (sites in model order; ``guide.layout`` after the
        first call).  ``sigma = softplus(raw + softplus^-1(init_scale))``.  A plain module is made a
        ``PyroModule`` in place, so its parameters are in Pyro's parameter store and ``SVI`` trains them.
    :param inputs: what the encoder reads for datum ``i``.  ``None``: every observed sample site inside the
        plate; a site name or sequence of names: those observed sites; either way each site's value is taken
        along the plate's axis and flattened per datum, sites concatenated.  With a subsampled plate the model
        must index its data by the plate's indices (``obs=x[idx]``, ``pyro.subsample``): the guide reruns the
        model, blocked, at the indices it needs.  A callable ``inputs(*args, **kwargs)``: an array whose
        leading axis runs over the plate's full size ``n`` (covariates, whole time series), indexed by the
        guide, no model rerun.
    :param hidden: the default MLP's hidden widths; ``()`` is affine.
    :param window: ``k >= 0``: datum ``i`` reads the inputs of ``i - k, ..., i + k`` (clipped to ``[0, n-1]``).
    :param init_scale: the initial scale of every Normal (unconstrained space).
    :param init_loc_fn, create_plates: as in Pyro's ``AutoNormal`` (the initial locations apply to the
        global latents).

    Parameters (Pyro's parameter store): the encoder's, ``"AutoAmortizedNormal.encoder.<path>"``, and per
    global site ``s``, ``"AutoAmortizedNormal.locs.s"`` and ``"AutoAmortizedNormal.scales.s"`` as in
    ``AutoNormal``.  :meth:`median` and :meth:`quantiles` encode all ``n`` data; they take the model's
    arguments (default: those of the guide's first call).  :meth:`numpyro_params` and
    :meth:`load_numpyro_params` move the parameters to and from the NumPyro guide's.
    """

    scale_constraint = constraints.softplus_positive

    def __init__(
        self,
        model: Callable[..., Any],
        plate: str = "data",
        encoder: Any = None,
        inputs: Any = None,
        *,
        hidden: tuple[int, ...] = (64,),
        window: int = 0,
        init_scale: float = 0.1,
        init_loc_fn: Callable[..., Any] = init_to_feasible,
        create_plates: Callable[..., Any] | None = None,
    ) -> None:
        config = AmortizedConfig(plate=plate, inputs=inputs, hidden=hidden, window=window, init_scale=init_scale)
        encoder = check_encoder_form(encoder)
        self.init_loc_fn = init_loc_fn
        super().__init__(InitMessenger(init_loc_fn)(model), create_plates=create_plates)
        self.config = config
        self._raw_model = (model,)  # a tuple: a PyroModule model must not become a submodule
        self._default_encoder = encoder is None
        self.encoder = encoder
        self.layout = None

    # ----------------------------------------------------------------------------------------- set-up

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        cfg = self.config
        try:
            super()._setup_prototype(*args, **kwargs)
        except ValueError as err:
            found = _SHAPE_MISMATCH.search(str(err))
            if found is None:
                raise
            raise ValueError(
                f"plate: the model's sample site {found.group(1)!r} has a batch shape that does not broadcast "
                f"against its plates ({err}); a local latent inside plate {cfg.plate!r} must be batched over the "
                "plate (its subsample size when the plate is subsampled), e.g. dist.Normal(0.0, 1.0) inside the "
                "plate rather than dist.Normal(torch.zeros(n), 1.0)"
            ) from err
        try:
            self._setup_amortized(args, kwargs)
        except Exception:
            self.prototype_trace = None  # a failed set-up is redone (and fails the same way) at the next call
            raise

    def _setup_amortized(self, args: tuple, kwargs: dict) -> None:
        """Split the latents into locals and globals, check them, read the inputs once, build the encoder."""
        cfg = self.config
        self._setup_args = (args, kwargs)
        full_trace = self._trace_model(args, kwargs, None)
        frames = {f.name: f for s in full_trace.nodes.values() if s["type"] == "sample" for f in s["cond_indep_stack"]}
        check_plate_found(cfg.plate, list(frames))
        plate_frame = frames[cfg.plate]
        self._full_size = int(plate_frame.full_size or plate_frame.size)
        self._event_dims, self._local_axes, self._locals, self._globals = {}, {}, [], []
        self.locs = PyroModule()
        self.scales = PyroModule()
        frame, shapes = None, {}
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            init_loc = biject_to(site["fn"].support).inv(site["value"].detach()).detach()
            event_dim = site["fn"].event_dim + init_loc.dim() - site["value"].dim()
            self._event_dims[name] = event_dim
            stack = site["cond_indep_stack"]
            mine = [f for f in stack if f.name == cfg.plate]
            if not mine:
                check_unplated_local(
                    name,
                    tuple(site["fn"].batch_shape),
                    [f.dim for f in stack],
                    cfg.plate,
                    plate_frame.dim,
                    self._full_size,
                )
                self._add_global(name, site, init_loc, event_dim)
                continue
            frame = mine[0]
            check_local_batch_shape(name, tuple(site["fn"].batch_shape), cfg.plate, frame.dim, frame.size)
            for other in stack:
                if other.name != cfg.plate and other.size != (other.full_size or other.size):
                    check_local_nested_plate(name, cfg.plate, other.name)
            axis = init_loc.dim() - event_dim + frame.dim
            self._local_axes[name] = axis
            shapes[name] = tuple(init_loc.shape[:axis]) + tuple(init_loc.shape[axis + 1 :])
            self._locals.append(name)
        if frame is None:
            raise ValueError(no_local_latent_message(cfg.plate))
        self._frame = frame
        self._subsampled = frame.size != self._full_size
        self.layout = encoder_layout(shapes)
        self._setup_inputs(full_trace)
        self._dtype = None
        features = self._features(args, kwargs, torch.arange(frame.size))
        if self._default_encoder:
            self.encoder = MLPEncoder(
                features.shape[1], self.layout.output_size, cfg.hidden, dtype=features.dtype, device=features.device
            )
        self._dtype = parameter_dtype(self.encoder) or features.dtype
        self._check_encoder(features.to(self._dtype))

    def _add_global(self, name: str, site: dict, init_loc: Tensor, event_dim: int) -> None:
        """A free Normal for global ``name`` (AutoNormal's parameters, full size along subsampled plates)."""
        for f in site["cond_indep_stack"]:
            full = f.full_size or f.size
            if full != f.size:
                init_loc = periodic_repeat(init_loc, full, f.dim - event_dim).contiguous()
        deep_setattr(self.locs, name, PyroParam(init_loc, constraints.real, event_dim))
        scale = torch.full_like(init_loc, self.config.init_scale)
        deep_setattr(self.scales, name, PyroParam(scale, self.scale_constraint, event_dim))
        self._globals.append(name)

    def _setup_inputs(self, trace: Any) -> None:
        cfg = self.config
        if callable(cfg.inputs):
            self._input_sites = ()
            return
        in_plate = [
            k
            for k, s in trace.nodes.items()
            if s["type"] == "sample"
            and any(f.name == cfg.plate for f in s["cond_indep_stack"])
            and not isinstance(s["fn"], dist.Unit)
        ]
        observed = [k for k in in_plate if trace.nodes[k]["is_observed"]]
        names = observed if cfg.inputs is None else list(cfg.inputs)
        check_input_sites(names, observed, [k for k in in_plate if k not in observed], cfg.plate)
        self._input_sites = tuple(names)

    def _check_encoder(self, features: Tensor) -> None:
        try:
            with torch.no_grad():
                out = self.encoder(features)
        except (RuntimeError, TypeError, ValueError) as err:
            raise ValueError(
                f"encoder: applying it to a batch of inputs of shape {tuple(features.shape)} (data, features) "
                f"failed: {err}"
            ) from err
        check_encoder_output(tuple(getattr(out, "shape", ())), features.shape[0], self.layout)

    # ------------------------------------------------------------------------------------ the inputs

    def _trace_model(self, args: tuple, kwargs: dict, indices: Tensor | None) -> Any:
        """The model's trace with the plate at ``indices`` (``None``: as the model draws it), hidden from every
        handler around the guide; its latent draws are prior draws from a forked generator (only data are read),
        so the guide's own draws are those it would make without the rerun."""
        model = self._raw_model[0]
        if indices is not None:
            model = poutine.condition(model, data={self.config.plate: indices})
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            return poutine.block(poutine.trace(model).get_trace)(*args, **kwargs)

    def _site_features(self, trace: Any, size: int) -> Tensor:
        """The input sites' values at the plate's ``size`` data, ``(size, F)``."""
        nodes = trace.nodes
        samples = [k for k, s in nodes.items() if s["type"] == "sample" and not _is_subsample(s)]
        observed = [k for k in samples if nodes[k]["is_observed"]]
        check_input_sites(self._input_sites, observed, [k for k in samples if k not in observed], self.config.plate)
        columns = []
        for name in self._input_sites:
            fn, value = nodes[name]["fn"], torch.as_tensor(nodes[name]["value"])
            # an observed value may be larger than its distribution's shape (log_prob broadcasts): read the value
            value = value.expand(broadcast_shape(value.shape, fn.batch_shape + fn.event_shape))
            axis = value.dim() - fn.event_dim + self._frame.dim
            if axis < 0 or value.shape[axis] != size:
                raise ValueError(
                    f"inputs: site {name!r} has shape {tuple(value.shape)} with no axis of size {size} at plate "
                    f"{self.config.plate!r}'s dim {self._frame.dim}"
                )
            columns.append(value.movedim(axis, 0).reshape(size, -1))
        return torch.cat([_floating(c) for c in columns], dim=1)

    def _read_subsampled(self, args: tuple, kwargs: dict, rows: Tensor) -> Tensor:
        """The input sites' values at data ``rows`` of a subsampled plate: the model rerun at chunks of the
        plate's subsample size (the last chunk padded with its last index)."""
        size = self._frame.size
        parts = []
        for start in range(0, rows.shape[0], size):
            chunk = rows[start : start + size]
            pad = size - chunk.shape[0]
            if pad:
                chunk = torch.cat([chunk, chunk[-1:].expand(pad)])
            parts.append(self._site_features(self._trace_model(args, kwargs, chunk), size)[: size - pad])
        return torch.cat(parts)

    def _features(self, args: tuple, kwargs: dict, indices: Tensor) -> Tensor:
        """The encoder's inputs ``(m, F)`` for the data at ``indices`` (``(m,)``): each datum's window of
        ``2 k + 1`` neighbours (clipped at the ends), their per-datum inputs concatenated in offset order."""
        cfg = self.config
        n = self._full_size
        indices = torch.as_tensor(indices, dtype=torch.long)
        m = indices.shape[0]
        offsets = torch.arange(-cfg.window, cfg.window + 1, device=indices.device)
        rows = (offsets[:, None] + indices[None, :]).clamp(0, n - 1).reshape(-1)  # offset-major, (K m,)
        if callable(cfg.inputs):
            full = torch.as_tensor(cfg.inputs(*args, **kwargs))
            check_callable_inputs(tuple(full.shape), n, cfg.plate)
            values = _floating(full.reshape(n, -1))[rows.to(full.device)]
        elif not self._subsampled:  # the model sees all n data: read them once, then gather the windows
            values = self._site_features(self._trace_model(args, kwargs, None), n)[rows]
        else:  # a subsampled model indexes its data by the plate's indices: run it at the indices needed
            values = self._read_subsampled(args, kwargs, rows)
        features = values.reshape(cfg.num_window, m, -1).transpose(0, 1).reshape(m, -1)
        if not bool(torch.isfinite(features).all()):
            check_finite_array("inputs", features.detach().cpu(), hint=" (the encoder's inputs: the data it reads)")
        return features if self._dtype is None else features.to(self._dtype)

    @torch.no_grad()
    def local_inputs(self, *args: Any, **kwargs: Any) -> Tensor:
        """The encoder's inputs for all ``n`` data, ``(n, F)`` (model arguments default to the first call's)."""
        args, kwargs = self._model_args(args, kwargs)
        return self._features(args, kwargs, torch.arange(self._full_size))

    def _model_args(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if self.prototype_trace is None:
            raise RuntimeError("AutoAmortizedNormal: call the guide (e.g. svi.step) before asking for its posterior")
        return (args, kwargs) if args or kwargs else self._setup_args

    # ---------------------------------------------------------------------------------- the encoder

    @pyro_method
    def encode(self, features: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """Each local site's unconstrained ``(loc, scale)``, shape ``(m, *per-datum shape)``, for encoder
        inputs ``features`` ``(m, F)`` (e.g. :meth:`local_inputs`, or new data's inputs)."""
        if self.layout is None:
            raise RuntimeError("AutoAmortizedNormal: call the guide (e.g. svi.step) before encoding")
        features = torch.as_tensor(features, dtype=self._dtype)
        out = self.encoder(features)
        check_encoder_output(tuple(out.shape), features.shape[0], self.layout)
        d, bias = self.layout.latent_size, self.config.scale_bias
        result = {}
        for name, shape, size, start in zip(*self.layout, strict=True):
            loc = out[:, start : start + size].reshape(-1, *shape)
            raw = out[:, d + start : d + start + size].reshape(-1, *shape)
            result[name] = (loc, torch.nn.functional.softplus(raw + bias))
        return result

    def _placed(self, name: str, x: Tensor) -> Tensor:
        """A per-datum array ``(m, *per-datum shape)`` with its data axis moved to the site's plate axis."""
        return x.movedim(0, self._local_axes[name])

    # --------------------------------------------------------------------------------------- the guide

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Draw every latent (constrained) for the model's ``*args, **kwargs``; locals for the plate's subsample."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        data_plate = plates[self.config.plate]
        encoded = self.encode(self._features(args, kwargs, data_plate.indices))
        result = {}
        for name, site in self.prototype_trace.iter_stochastic_nodes():  # model order (TraceMeanField_ELBO's)
            with ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    stack.enter_context(plates[frame.name])
                if name in self._local_axes:
                    loc, scale = (self._placed(name, t) for t in encoded[name])
                else:
                    loc, scale = attrgetter(name)(self.locs), attrgetter(name)(self.scales)
                base = dist.Normal(loc, scale).to_event(self._event_dims[name])
                support = site["fn"].support
                if not _is_real(support):
                    base = dist.TransformedDistribution(base, biject_to(support))
                result[name] = pyro.sample(name, base)
        return result

    # ------------------------------------------------------------------------------- the posterior

    def _unconstrained(self, args: tuple, kwargs: dict) -> dict[str, tuple[Tensor, Tensor]]:
        """Every latent's unconstrained ``(loc, scale)`` (model order); locals for all ``n`` data."""
        args, kwargs = self._model_args(args, kwargs)
        encoded = self.encode(self._features(args, kwargs, torch.arange(self._full_size)))
        out = {}
        for name, _ in self.prototype_trace.iter_stochastic_nodes():
            if name in self._local_axes:
                out[name] = tuple(self._placed(name, t) for t in encoded[name])
            else:
                out[name] = (attrgetter(name)(self.locs), attrgetter(name)(self.scales))
        return out

    def _constrain(self, name: str, x: Tensor) -> Tensor:
        return biject_to(self.prototype_trace.nodes[name]["fn"].support)(x)

    @torch.no_grad()
    @pyro_method
    def median(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Each latent's posterior median (its Normal's location, constrained), locals for all ``n`` data."""
        return {
            name: self._constrain(name, loc).clone() for name, (loc, _) in self._unconstrained(args, kwargs).items()
        }

    @torch.no_grad()
    @pyro_method
    def quantiles(self, quantiles: Any, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Each latent's posterior quantiles ``(len(quantiles), *site shape)`` (constrained), as ``AutoNormal``."""
        q = np.asarray(quantiles, dtype=float)
        if q.ndim != 1 or not bool(np.all((q > 0) & (q < 1))):
            raise ValueError(f"quantiles must be a 1-d sequence of numbers in (0, 1), got {quantiles!r}")
        result = {}
        for name, (loc, scale) in self._unconstrained(args, kwargs).items():
            levels = torch.as_tensor(q, dtype=loc.dtype, device=loc.device).reshape((-1,) + (1,) * loc.dim())
            result[name] = self._constrain(name, dist.Normal(loc, scale).icdf(levels))
        return result

    # ----------------------------------------------------------------------- NumPyro's parameters

    def _numpyro_names(self, prefix: str) -> tuple[str, Callable[[str], str], Callable[[str], str]]:
        if self.layout is None:
            raise RuntimeError("AutoAmortizedNormal: call the guide (e.g. svi.step) before moving its parameters")
        if not self._default_encoder:
            raise TypeError(
                "encoder: NumPyro's parameter layout is the default MLP's; a user encoder's weights are its own "
                "module's (move them with its state_dict)"
            )
        return (
            f"{prefix}_{self.config.plate}_encoder",
            (lambda s: f"{s}_{prefix}_loc"),
            (lambda s: f"{s}_{prefix}_scale"),
        )

    @pyro_method
    def numpyro_params(self, prefix: str = "auto") -> dict[str, Any]:
        """The parameters in the NumPyro guide's names and layout (numpy arrays; NumPyro's ``prefix``).

        ``{"{prefix}_{plate}_encoder": [(W (d_in, d_out), b), ...], "{s}_{prefix}_loc": ..., "{s}_{prefix}_scale":
        ...}`` for each global ``s``: pass it as ``params`` to the NumPyro guide's ``median``, ``encode``,
        ``Predictive`` (default MLP only; a ``TypeError`` naming ``encoder`` otherwise).  The NumPyro guide must be
        set up first (``svi.init`` or one call of it under ``handlers.seed``): its layout comes from the model.
        """
        enc, loc, scale = self._numpyro_names(prefix)
        params: dict[str, Any] = {enc: self.encoder.numpyro_params()}
        for name in self._globals:
            params[loc(name)] = attrgetter(name)(self.locs).detach().cpu().numpy().copy()
            params[scale(name)] = attrgetter(name)(self.scales).detach().cpu().numpy().copy()
        return params

    @pyro_method
    def load_numpyro_params(self, params: dict[str, Any], prefix: str = "auto") -> None:
        """Set the parameters (in place, in Pyro's parameter store) from the NumPyro guide's ``params`` (e.g.
        ``svi.get_params(state)``): the default MLP's ``"{prefix}_{plate}_encoder"`` and each global's
        ``"{s}_{prefix}_loc"`` / ``"{s}_{prefix}_scale"`` when present.  Call the guide once first (the
        encoder is built then); a ``ValueError`` naming ``params`` for a missing encoder or a wrong shape."""
        enc, loc, scale = self._numpyro_names(prefix)
        if not isinstance(params, dict) or enc not in params:
            raise ValueError(f"params must be a dict holding the encoder's parameters {enc!r}, got {params!r}")
        self.encoder.load_numpyro_params(params[enc])
        for name in self._globals:
            for key, module in ((loc(name), self.locs), (scale(name), self.scales)):
                if key not in params:
                    continue
                current = attrgetter(name)(module)
                value = torch.as_tensor(np.asarray(params[key]), dtype=current.dtype, device=current.device)
                if value.shape != current.shape:
                    raise ValueError(f"params: {key!r} has shape {tuple(value.shape)}, expected {tuple(current.shape)}")
                *path, leaf = name.split(".")
                setattr(attrgetter(".".join(path))(module) if path else module, leaf, value)


def _floating(x: Tensor) -> Tensor:
    """``x`` as a floating-point tensor (integer data in torch's default dtype)."""
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())
