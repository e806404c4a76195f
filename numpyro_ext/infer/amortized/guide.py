"""``AutoAmortizedNormal``: NumPyro's AutoNormal with the local latents of one plate predicted by an encoder.

Margossian & Blei, "Amortized Variational Inference: When and Why?" (UAI 2024, arXiv:2307.11018), Eq. (3):
for every latent sample site inside plate ``plate`` (a *local* latent ``z_i`` of datum ``i``),

    q(z_i) = N(mu_phi(x_i), diag sigma_phi(x_i)^2)   (in the site's unconstrained space),

one encoder ``phi`` for all data (A-VI); every other latent (a *global*) gets a free Normal as in
``AutoNormal`` (F-VI).  ``window=k`` reads ``x_{i-k}, ..., x_{i+k}`` instead of ``x_i`` (Roeder et al., ICML
2019, Sec. 3.2; Margossian & Blei Sec. 4: models whose posterior of ``z_i`` depends on neighbours).  The
guide's parameters are the encoder's and the globals', so with a subsampled plate its memory does not grow
with ``n``: each step encodes only the subsample.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions import biject_to, constraints
from numpyro.distributions.util import periodic_repeat
from numpyro.infer.autoguide import AutoGuide
from numpyro.infer.initialization import init_to_uniform

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
from numpyro_ext.infer.amortized.encoders import Encoder, as_encoder


def _is_real(support: constraints.Constraint) -> bool:
    return support is constraints.real or (
        isinstance(support, constraints.independent) and support.base_constraint is constraints.real
    )


def _failing_site(err: BaseException) -> str | None:
    """The name of the innermost ``numpyro.sample`` call in ``err``'s traceback: the site that failed."""
    name, tb = None, err.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "sample" and frame.f_globals.get("__name__") == "numpyro.primitives":
            name = frame.f_locals.get("name", name)
        tb = tb.tb_next
    return name


def _per_datum(value: jax.Array, axis: int) -> jax.Array:
    """``value`` with its plate axis first and everything else flattened: ``(size, features)``."""
    return jnp.reshape(jnp.moveaxis(value, axis, 0), (value.shape[axis], -1))


class AutoAmortizedNormal(AutoGuide):
    """Amortized mean-field Normal guide: an encoder predicts each datum's local latents' Normal.

    Usage::

        def model(x):
            with numpyro.plate("data", x.shape[0], subsample_size=256) as idx:
                z = numpyro.sample("z", dist.Normal(0.0, 1.0))
                numpyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])

        guide = AutoAmortizedNormal(model, plate="data", hidden=(64,))
        svi = SVI(model, guide, optax.adam(1e-2), Trace_ELBO())

    :param model: a NumPyro model.
    :param plate: the name of the plate whose latent sample sites are amortized (the *local* latents).  Each
        must be batched over the plate (shape ``(..., b, ...)`` with ``b`` at the plate's dim).
    :param encoder: ``None`` (an MLP with ``hidden`` widths, :func:`~.encoders.mlp_encoder`), a pure pair
        ``(init(key, input_shape) -> params, apply(params, x) -> out)``, an object with ``.init(key, x)``
        and ``.apply(params, x)`` (flax linen, haiku without apply rng), or an equinox Module applied per
        datum.  It maps ``(b, F)`` inputs to ``(b, 2 D)``: locations then raw scales of the ``D``
        unconstrained local coordinates per datum (sites in model order; ``guide.layout`` after the first
        call).  ``sigma = softplus(raw + softplus^-1(init_scale))``.
    :param inputs: what the encoder reads for datum ``i``.  ``None``: every observed sample site inside the
        plate; a site name or sequence of names: those observed sites; either way each site's value is taken
        along the plate's axis and flattened per datum, sites concatenated.  With a subsampled plate the model
        must index its data by the plate's indices (``obs=x[idx]``, ``numpyro.subsample``): the guide reruns
        the model, blocked, at the indices it needs.  A callable ``inputs(*args, **kwargs)``: an array whose
        leading axis runs over the plate's full size ``n`` (covariates, whole time series), indexed by the
        guide, no model rerun.
    :param hidden: the default MLP's hidden widths; ``()`` is affine.
    :param window: ``k >= 0``: datum ``i`` reads the inputs of ``i - k, ..., i + k`` (clipped to ``[0, n-1]``).
    :param init_scale: the initial scale of every Normal (unconstrained space).
    :param prefix, init_loc_fn, create_plates, forward_mode_differentiation: as in ``AutoNormal`` (the
        initial locations apply to the global latents).

    Parameters: ``"{prefix}_{plate}_encoder"`` (the encoder's pytree) and, per global site ``s``,
    ``"{s}_{prefix}_loc"`` and ``"{s}_{prefix}_scale"`` as in ``AutoNormal``.  ``median``, ``quantiles``
    and ``sample_posterior`` encode all ``n`` data; they take the model's arguments (default: those of the
    guide's first call).
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
        prefix: str = "auto",
        init_loc_fn: Callable[..., Any] = init_to_uniform,
        create_plates: Callable[..., Any] | None = None,
        forward_mode_differentiation: bool = False,
    ) -> None:
        self.config = AmortizedConfig(plate=plate, inputs=inputs, hidden=hidden, window=window, init_scale=init_scale)
        as_encoder(encoder, output_size=1, hidden=self.config.hidden)  # a TypeError for an unknown form, now
        self._encoder_arg = encoder
        self.encoder: Encoder | None = None
        self.layout = None
        super().__init__(
            model,
            prefix=prefix,
            init_loc_fn=init_loc_fn,
            create_plates=create_plates,
            forward_mode_differentiation=forward_mode_differentiation,
        )

    @property
    def encoder_param_name(self) -> str:
        """The name of the encoder's parameter site."""
        return f"{self.prefix}_{self.config.plate}_encoder"

    # ----------------------------------------------------------------------------------------- set-up

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        try:
            super()._setup_prototype(*args, **kwargs)
        except RuntimeError:
            # NumPyro finds no finite initial density: non-finite data are the likely cause, named here
            self._check_finite_data(args, kwargs)
            raise
        except ValueError as err:
            if "Incompatible shapes for broadcasting" not in str(err):
                raise
            raise ValueError(
                f"plate: the model's sample site {_failing_site(err)!r} has a batch shape that does not broadcast "
                f"against its plates ({err}); a local latent inside plate {self.config.plate!r} must be batched "
                "over the plate (its subsample size when the plate is subsampled), e.g. dist.Normal(0.0, 1.0) "
                "inside the plate rather than dist.Normal(jnp.zeros(n), 1.0)"
            ) from err
        self._setup_args = (args, kwargs)
        cfg = self.config
        trace = self.prototype_trace
        check_plate_found(cfg.plate, [k for k, s in trace.items() if s["type"] == "plate"])
        self._full_size = int(self._prototype_frame_full_sizes[cfg.plate])
        self._event_dims, self._local_axes, self._locals, self._globals = {}, {}, [], []
        frame = None
        shapes = {}
        for name, site in trace.items():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            unconstrained = jnp.shape(self._init_locs[name])
            event_dim = site["fn"].event_dim + len(unconstrained) - jnp.ndim(site["value"])
            self._event_dims[name] = event_dim
            stack = site["cond_indep_stack"]
            mine = [f for f in stack if f.name == cfg.plate]
            if not mine:
                self._check_global(name, site, [f.dim for f in stack])
                self._globals.append(name)
                for f in stack:  # a global inside another subsampled plate: one free Normal per element of it
                    full = self._prototype_frame_full_sizes[f.name]
                    if full != f.size:
                        self._init_locs[name] = periodic_repeat(self._init_locs[name], full, f.dim - event_dim)
                continue
            frame = mine[0]
            check_local_batch_shape(name, tuple(site["fn"].batch_shape), cfg.plate, frame.dim, frame.size)
            for other in stack:
                if other.name != cfg.plate and other.size != self._prototype_frame_full_sizes[other.name]:
                    check_local_nested_plate(name, cfg.plate, other.name)
            axis = len(unconstrained) - event_dim + frame.dim
            self._local_axes[name] = axis
            shapes[name] = unconstrained[:axis] + unconstrained[axis + 1 :]
            self._locals.append(name)
        if frame is None:
            raise ValueError(no_local_latent_message(cfg.plate))
        self._frame = frame
        self._subsampled = frame.size != self._full_size
        self.layout = encoder_layout(shapes)
        self._setup_inputs()
        indices = trace[cfg.plate]["value"]
        features = self._features(args, kwargs, indices)
        if not isinstance(features, jax.core.Tracer):
            # every datum once, now: inside SVI's jitted steps a NaN in a later subsample could not be named
            every = self._features(args, kwargs, jnp.arange(self._full_size)) if self._subsampled else features
            check_finite_array("inputs", every, hint=" (the encoder's inputs: the data it reads per datum)")
        self._example = jnp.zeros((1, features.shape[1]), features.dtype)
        self.encoder = as_encoder(self._encoder_arg, output_size=self.layout.output_size, hidden=cfg.hidden)
        self._check_encoder(features)

    def _check_finite_data(self, args: tuple, kwargs: dict) -> None:
        """A ``ValueError`` naming ``inputs`` when the data the encoder reads are not finite."""
        if callable(self.config.inputs):
            check_finite_array("inputs", self.config.inputs(*args, **kwargs))
            return
        trace = self._trace_model(args, kwargs, None)
        for name, site in trace.items():
            if site["type"] == "sample" and site["is_observed"]:
                if self.config.inputs is None or name in self.config.inputs:
                    check_finite_array("inputs", site["value"], hint=f" (observed site {name!r})")

    def _check_global(self, name: str, site: dict, plated: list[int]) -> None:
        dim = self._plate_dim()
        if dim is not None:
            check_unplated_local(name, tuple(site["fn"].batch_shape), plated, self.config.plate, dim, self._full_size)

    def _plate_dim(self) -> int | None:
        for site in self.prototype_trace.values():
            for f in site.get("cond_indep_stack", ()):
                if f.name == self.config.plate:
                    return f.dim
        return None

    def _setup_inputs(self) -> None:
        cfg = self.config
        if callable(cfg.inputs):
            self._input_sites = ()
            return
        trace = self.prototype_trace
        in_plate = [
            k
            for k, s in trace.items()
            if s["type"] == "sample"
            and any(f.name == cfg.plate for f in s["cond_indep_stack"])
            and not isinstance(s["fn"], dist.Unit)
        ]
        observed = [k for k in in_plate if trace[k]["is_observed"]]
        names = observed if cfg.inputs is None else list(cfg.inputs)
        check_input_sites(names, observed, [k for k in in_plate if k not in observed], cfg.plate)
        self._input_sites = tuple(names)

    def _check_encoder(self, features: jax.Array) -> None:
        def shape_of(key: jax.Array, x: jax.Array) -> jax.Array:
            return self.encoder.apply(self.encoder.init(key, self._example), x)

        try:
            out = jax.eval_shape(shape_of, jax.random.PRNGKey(0), features)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"encoder: applying it to a batch of inputs of shape {tuple(features.shape)} (data, features) "
                f"failed: {err}"
            ) from err
        check_encoder_output(tuple(out.shape), features.shape[0], self.layout)

    # ------------------------------------------------------------------------------------ the inputs

    def _trace_model(self, args: tuple, kwargs: dict, indices: jax.Array | None) -> dict:
        """The model's trace with the plate at ``indices`` (``None``: as the model draws it), hidden from
        every handler around the guide (its own draws are prior draws from a fixed seed: only data are read)."""
        model = self.model
        if indices is not None:
            model = handlers.substitute(model, data={self.config.plate: indices})
        with handlers.block(), warnings.catch_warnings():
            # the substituted index set need not have the model's subsample_size: NumPyro warns, harmlessly
            warnings.filterwarnings("ignore", message="subsample_size does not match")
            return handlers.trace(handlers.seed(model, rng_seed=0)).get_trace(*args, **kwargs)

    def _site_features(self, trace: dict, size: int) -> jax.Array:
        columns = []
        observed = [k for k, s in trace.items() if s["type"] == "sample" and s["is_observed"]]
        latent = [k for k, s in trace.items() if s["type"] == "sample" and not s["is_observed"]]
        check_input_sites(self._input_sites, observed, latent, self.config.plate)
        for name in self._input_sites:
            site = trace[name]
            fn = site["fn"]
            # an observed value may be larger than its distribution's shape (log_prob broadcasts): read the value
            value = site["value"]
            value = jnp.broadcast_to(value, jnp.broadcast_shapes(jnp.shape(value), fn.batch_shape + fn.event_shape))
            axis = value.ndim - fn.event_dim + self._frame.dim
            if axis < 0 or value.shape[axis] != size:
                raise ValueError(
                    f"inputs: site {name!r} has shape {value.shape} with no axis of size {size} at plate "
                    f"{self.config.plate!r}'s dim {self._frame.dim}"
                )
            columns.append(_per_datum(value, axis))
        return jnp.concatenate(columns, axis=1).astype(jnp.result_type(float))

    def _features(self, args: tuple, kwargs: dict, indices: jax.Array) -> jax.Array:
        """The encoder's inputs ``(m, F)`` for the data at ``indices`` (``(m,)``): each datum's window of
        ``2 k + 1`` neighbours (clipped at the ends), their per-datum inputs concatenated in offset order."""
        cfg = self.config
        n = self._full_size
        indices = jnp.asarray(indices)
        rows = jnp.clip(indices[:, None] + jnp.asarray(cfg.window_offsets)[None, :], 0, n - 1)  # (m, K)
        m, k = rows.shape
        if callable(cfg.inputs):
            full = jnp.asarray(cfg.inputs(*args, **kwargs))
            check_callable_inputs(tuple(full.shape), n, cfg.plate)
            full = jnp.reshape(full, (n, -1)).astype(jnp.result_type(float))
            return jnp.reshape(full[rows], (m, -1))
        if not self._subsampled:
            # the model sees all n data: read them once, then gather the windows
            full = self._site_features(self._trace_model(args, kwargs, None), n)
            return jnp.reshape(full[rows], (m, -1))
        # a subsampled model indexes its data by the plate's indices: run it at every index a window needs
        flat = jnp.reshape(rows, (-1,))
        values = self._site_features(self._trace_model(args, kwargs, flat), flat.shape[0])
        return jnp.reshape(values, (m, -1))

    def local_inputs(self, *args: Any, **kwargs: Any) -> jax.Array:
        """The encoder's inputs for all ``n`` data, ``(n, F)`` (model arguments default to the first call's)."""
        args, kwargs = self._model_args(args, kwargs)
        return self._features(args, kwargs, jnp.arange(self._full_size))

    def _model_args(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if self.prototype_trace is None:
            raise RuntimeError("AutoAmortizedNormal: call the guide (e.g. svi.init) before asking for its posterior")
        return (args, kwargs) if args or kwargs else self._setup_args

    # ---------------------------------------------------------------------------------- the encoder

    def encode(self, params: dict, features: jax.Array) -> dict[str, tuple[jax.Array, jax.Array]]:
        """Each local site's unconstrained ``(loc, scale)``, shape ``(m, *per-datum shape)``, for encoder
        inputs ``features`` ``(m, F)`` (e.g. :meth:`local_inputs`, or new data's inputs)."""
        out = self.encoder.apply(params[self.encoder_param_name], features)
        check_encoder_output(tuple(out.shape), features.shape[0], self.layout)
        d = self.layout.latent_size
        bias = self.config.scale_bias
        result = {}
        for name, shape, size, start in zip(*self.layout, strict=True):
            loc = jnp.reshape(out[:, start : start + size], (-1, *shape))
            raw = jnp.reshape(out[:, d + start : d + start + size], (-1, *shape))
            result[name] = (loc, jax.nn.softplus(raw + bias))
        return result

    def _placed(self, name: str, x: jax.Array) -> jax.Array:
        """A per-datum array ``(m, *per-datum shape)`` with its data axis moved to the site's plate axis."""
        return jnp.moveaxis(x, 0, self._local_axes[name])

    # --------------------------------------------------------------------------------------- the guide

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, jax.Array]:
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        encoder_params = numpyro.param(self.encoder_param_name, lambda key: self.encoder.init(key, self._example))
        result = {}
        for name in self._globals:
            site = self.prototype_trace[name]
            event_dim = self._event_dims[name]
            init_loc = self._init_locs[name]
            with ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    stack.enter_context(plates[frame.name])
                loc = numpyro.param(f"{name}_{self.prefix}_loc", init_loc, event_dim=event_dim)
                scale = numpyro.param(
                    f"{name}_{self.prefix}_scale",
                    jnp.full(jnp.shape(init_loc), self.config.init_scale),
                    constraint=self.scale_constraint,
                    event_dim=event_dim,
                )
                result[name] = self._sample(name, site, loc, scale)
        with plates[self.config.plate] as indices:
            features = self._features(args, kwargs, indices)
            encoded = self.encode({self.encoder_param_name: encoder_params}, features)
            for name in self._locals:
                site = self.prototype_trace[name]
                loc, scale = encoded[name]
                with ExitStack() as stack:
                    for frame in site["cond_indep_stack"]:
                        if frame.name != self.config.plate:
                            stack.enter_context(plates[frame.name])
                    result[name] = self._sample(name, site, self._placed(name, loc), self._placed(name, scale))
        return result

    def _sample(self, name: str, site: dict, loc: jax.Array, scale: jax.Array) -> jax.Array:
        base = dist.Normal(loc, scale).to_event(self._event_dims[name])
        if _is_real(site["fn"].support):
            return numpyro.sample(name, base)
        return numpyro.sample(name, dist.TransformedDistribution(base, biject_to(site["fn"].support)))

    # ------------------------------------------------------------------------------- the posterior

    def _unconstrained(self, params: dict, args: tuple, kwargs: dict) -> dict[str, tuple[jax.Array, jax.Array]]:
        """Every latent's unconstrained ``(loc, scale)``; locals for all ``n`` data."""
        args, kwargs = self._model_args(args, kwargs)
        out = {
            name: (params[f"{name}_{self.prefix}_loc"], params[f"{name}_{self.prefix}_scale"]) for name in self._globals
        }
        encoded = self.encode(params, self._features(args, kwargs, jnp.arange(self._full_size)))
        for name in self._locals:
            loc, scale = encoded[name]
            out[name] = (self._placed(name, loc), self._placed(name, scale))
        return out

    def _constrain(self, name: str, x: jax.Array) -> jax.Array:
        return biject_to(self.prototype_trace[name]["fn"].support)(x)

    def sample_posterior(
        self, rng_key: jax.Array, params: dict, *args: Any, sample_shape: tuple[int, ...] = (), **kwargs: Any
    ) -> dict[str, jax.Array]:
        """Draws ``sample_shape + site shape`` of every latent (constrained), locals for all ``n`` data."""
        moments = self._unconstrained(params, args, kwargs)
        keys = jax.random.split(rng_key, len(moments))
        return {
            name: self._constrain(name, dist.Normal(loc, scale).sample(key, tuple(sample_shape)))
            for key, (name, (loc, scale)) in zip(keys, moments.items(), strict=True)
        }

    def median(self, params: dict, *args: Any, **kwargs: Any) -> dict[str, jax.Array]:
        """Each latent's posterior median (its Normal's location, constrained), locals for all ``n`` data."""
        moments = self._unconstrained(params, args, kwargs)
        return {name: self._constrain(name, loc) for name, (loc, _) in moments.items()}

    def quantiles(self, params: dict, quantiles: Any, *args: Any, **kwargs: Any) -> dict[str, jax.Array]:
        """Each latent's posterior quantiles ``(len(quantiles), *site shape)`` (constrained)."""
        q = jnp.asarray(quantiles)
        if q.ndim != 1 or not bool(np.all((np.asarray(q) > 0) & (np.asarray(q) < 1))):
            raise ValueError(f"quantiles must be a 1-d sequence of numbers in (0, 1), got {quantiles!r}")
        result = {}
        for name, (loc, scale) in self._unconstrained(params, args, kwargs).items():
            levels = jnp.reshape(q, (-1,) + (1,) * jnp.ndim(loc))
            result[name] = self._constrain(name, dist.Normal(loc, scale).icdf(levels))
        return result
