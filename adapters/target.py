"""``Target``: a log density on an unconstrained R^d, whatever wrote it.

Every algorithm of the library samples, anneals or optimises over an unconstrained
vector ``x`` of length ``dim``.  A ``Target`` gives that vector's log density (up to an
additive constant) and its gradient, maps ``x`` to the model's constrained parameters and
back, and hands each backend a native, differentiable view:

* ``as_jax()``   a jax-traceable ``logdensity(x) -> scalar`` (jit/vmap/grad-able),
* ``as_torch()`` a torch ``logdensity(x) -> scalar`` that autograd can differentiate.

A NumPyro model's JAX view is its own potential energy, negated; a Pyro model's torch view
is Pyro's.  Crossing backends (a Pyro model inside a JAX sampler, a numpy function in
either) goes through ``jax.pure_callback`` with a custom JVP, or a
``torch.autograd.Function``, both built on the source's own gradient, so no finite
differences are ever taken.

The module imports no backend at import time.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from adapters.validation import check_choice, check_positive_int, check_vector

_INIT_RADIUS = 2.0  # NumPyro's and Pyro's init_to_uniform draw from U(-2, 2) unconstrained
_INIT_TRIES = 100


def stan_names(name: str, shape: tuple[int, ...]) -> list[str]:
    """Flat Stan-style names of an array parameter: ``theta[1]``, ``L[2,1]`` (1-based, row-major)."""
    if len(shape) == 0:
        return [name]
    return [f"{name}[{','.join(str(i + 1) for i in idx)}]" for idx in np.ndindex(*shape)]


class Target(ABC):
    """A log density on unconstrained R^d.

    Build one with :meth:`from_numpyro`, :meth:`from_pyro`, :meth:`from_logdensity` or
    :meth:`from_posteriordb`; do not instantiate this base class.

    Attributes:
        dim: length of the unconstrained vector ``x``.
        names: Stan-style name of each coordinate of ``x`` (``tau`` for the coordinate
            that holds ``log(tau)``), length ``dim``.
        name: a label used in error messages and benchmark tables.
        model, model_args, model_kwargs: the NumPyro or Pyro model and the arguments it is
            bound to (``None``, ``()``, ``{}`` for a plain function), so a sampler of the
            model's own backend can run the model natively.
    """

    dim: int
    names: list[str]
    name: str
    backend: str  # "numpyro", "pyro" or "function": which view is native
    model: Callable | None = None
    model_args: tuple = ()
    model_kwargs: dict = {}  # class-level default, never mutated

    # ---- the part a source implements -------------------------------------------------
    @abstractmethod
    def _log_density_and_grad_1d(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Value and gradient at one point ``x`` of shape ``(dim,)`` (float64 numpy)."""

    def _log_density_1d(self, x: np.ndarray) -> float:
        return self._log_density_and_grad_1d(x)[0]

    @abstractmethod
    def constrain(self, x: Any) -> dict[str, np.ndarray]:
        """Constrained parameters (and deterministic sites) of the model at ``x`` of shape ``(..., dim)``."""

    @abstractmethod
    def unconstrain(self, params: Mapping[str, Any]) -> np.ndarray:
        """The unconstrained vector ``x`` for a dict of constrained (unbatched) parameters."""

    # ---- numpy interface ---------------------------------------------------------------
    def log_density(self, x: Any) -> np.ndarray:
        """Log density at ``x`` of shape ``(dim,)`` or ``(..., dim)``; a float array of the batch shape."""
        x = check_vector("x", x, self.dim)
        flat = x.reshape(-1, self.dim)
        out = np.array([self._log_density_1d(row) for row in flat], dtype=np.float64)
        return out.reshape(x.shape[:-1])

    def log_density_and_grad(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        """Log density and its gradient at ``x``: shapes ``batch`` and ``batch + (dim,)``."""
        x = check_vector("x", x, self.dim)
        flat = x.reshape(-1, self.dim)
        vals = np.empty(len(flat))
        grads = np.empty(flat.shape)
        for i, row in enumerate(flat):
            v, g = self._log_density_and_grad_1d(row)
            vals[i], grads[i] = v, g
        return vals.reshape(x.shape[:-1]), grads.reshape(x.shape)

    def initial_position(self, seed: int = 0) -> np.ndarray:
        """A point with finite log density and gradient, drawn like ``init_to_uniform``.

        Draws ``x ~ U(-2, 2)^dim`` until the log density and its gradient are finite (at
        most 100 tries) and raises a ``ValueError`` naming the model otherwise.
        """
        rng = np.random.default_rng(seed)
        value = np.nan
        for _ in range(_INIT_TRIES):
            x = rng.uniform(-_INIT_RADIUS, _INIT_RADIUS, size=self.dim)
            value, grad = self._log_density_and_grad_1d(x)
            if np.isfinite(value) and np.all(np.isfinite(grad)):
                return x
        raise ValueError(
            f"target {self.name!r}: the log density (or its gradient) is not finite at any of "
            f"{_INIT_TRIES} initial points drawn uniformly from (-{_INIT_RADIUS}, {_INIT_RADIUS})^{self.dim} "
            f"in unconstrained space (last value: {value}). Check the model's supports, priors and data."
        )

    # ---- native views ------------------------------------------------------------------
    def as_jax(self) -> Callable:
        """A jax-traceable ``logdensity(x)`` for ``x`` of shape ``(dim,)``.

        For a non-JAX source the value and gradient come from the source through
        ``jax.pure_callback`` with a custom JVP, so the view works under ``jit``, ``vmap`` and
        ``grad`` (first order only).  Under ``vmap`` (vectorized chains) one callback receives
        the whole batch ``(..., dim)`` (``vmap_method="expand_dims"``) and evaluates its rows in
        turn: the round trip into Python, not the source, is what such a gradient costs.
        """
        import jax
        import jax.numpy as jnp

        value_and_grad = self._log_density_and_grad_1d
        value_only = self._log_density_1d

        def _rows(x):
            x = np.asarray(x, dtype=np.float64)
            return x.shape[:-1], x.reshape(-1, x.shape[-1])

        def _value(x):
            batch, rows = _rows(x)
            values = np.array([value_only(row) for row in rows], dtype=np.float64)
            return values.reshape(batch).astype(x.dtype)

        def _value_and_grad(x):
            batch, rows = _rows(x)
            pairs = [value_and_grad(row) for row in rows]
            values = np.array([v for v, _ in pairs], dtype=np.float64).reshape(batch)
            grads = np.stack([np.asarray(g, dtype=np.float64) for _, g in pairs]).reshape(x.shape)
            return values.astype(x.dtype), grads.astype(x.dtype)

        @jax.custom_jvp
        def logdensity(x):
            return jax.pure_callback(_value, jax.ShapeDtypeStruct((), x.dtype), x, vmap_method="expand_dims")

        @logdensity.defjvp
        def _logdensity_jvp(primals, tangents):
            (x,), (t,) = primals, tangents
            shapes = (jax.ShapeDtypeStruct((), x.dtype), jax.ShapeDtypeStruct(x.shape, x.dtype))
            v, g = jax.pure_callback(_value_and_grad, shapes, x, vmap_method="expand_dims")
            return v, jnp.dot(g, t)

        return logdensity

    def as_torch(self) -> Callable:
        """A torch ``logdensity(x)`` for ``x`` of shape ``(dim,)`` or ``(batch, dim)``.

        For a non-torch source the value and gradient come from the source through a
        ``torch.autograd.Function`` (first order only); the result keeps ``x``'s dtype and device.
        """
        import torch

        target = self

        class _LogDensity(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                v, g = target.log_density_and_grad(x.detach().cpu().numpy())
                ctx.save_for_backward(torch.as_tensor(g, dtype=x.dtype, device=x.device))
                return torch.as_tensor(v, dtype=x.dtype, device=x.device)

            @staticmethod
            def backward(ctx, grad_output):
                (g,) = ctx.saved_tensors
                return grad_output.unsqueeze(-1) * g

        return _LogDensity.apply

    def __repr__(self) -> str:
        shown = ", ".join(self.names[:6]) + (", ..." if self.dim > 6 else "")
        return f"{type(self).__name__}(name={self.name!r}, backend={self.backend!r}, dim={self.dim}, names=[{shown}])"

    # ---- constructors ------------------------------------------------------------------
    @staticmethod
    def from_numpyro(model: Callable, *args: Any, name: str | None = None, **kwargs: Any) -> Target:
        """The posterior of a NumPyro model given its arguments (observed data included).

        ``x`` ravels the unconstrained latent sites in sorted site order (as
        ``jax.flatten_util.ravel_pytree`` does); ``constrain`` also returns the model's
        ``numpyro.deterministic`` sites.  Discrete latent sites raise a ``ValueError``.
        """
        _check_callable("model", model, "a NumPyro model (a function that calls numpyro.sample)")
        _check_label(name)
        return _NumPyroTarget(model, args, kwargs, name)

    @staticmethod
    def from_pyro(model: Callable, *args: Any, name: str | None = None, **kwargs: Any) -> Target:
        """The posterior of a Pyro model given its arguments (observed data included).

        Uses Pyro's own ``initialize_model`` potential, so the density matches what Pyro's
        ``HMC``/``NUTS`` sample; like those, it fixes each site's bijection at the model's
        prototype trace, so a support that depends on another latent is not followed (write
        such a site as a fixed-support draw and a ``pyro.factor`` for the Jacobian, as the
        garch11 port does).  Discrete latent sites raise a ``ValueError``.
        """
        _check_callable("model", model, "a Pyro model (a function that calls pyro.sample)")
        _check_label(name)
        return _PyroTarget(model, args, kwargs, name)

    @staticmethod
    def from_logdensity(
        fn: Callable,
        dim: int,
        grad: Callable | None = None,
        names: list[str] | None = None,
        name: str | None = None,
    ) -> Target:
        """A target from a log-density function of an unconstrained vector of length ``dim``.

        ``fn`` may be written in JAX (``jax.numpy``), in torch, or in numpy.  With
        ``grad=None`` the gradient comes from JAX autodiff when ``fn`` traces under JAX,
        otherwise from torch autograd when ``fn`` maps a tensor to a tensor with a graph; a
        numpy-only ``fn`` needs ``grad`` (a function returning the gradient vector).
        """
        _check_callable("fn", fn, "a function of a vector of length dim returning the log density")
        if grad is not None:
            _check_callable("grad", grad, "None or a function returning the gradient of fn")
        if names is not None and (isinstance(names, str) or not all(isinstance(n, str) for n in names)):
            raise TypeError(f"names must be a list of str (one per coordinate) or None, got {names!r}")
        _check_label(name)
        return _FunctionTarget(fn, dim, grad, names, name)

    @staticmethod
    def from_stan(stan_code: str, data: Mapping[str, Any] | None = None, name: str | None = None) -> Target:
        """The posterior of a Stan program given its data (a mapping from the data block's names to values).

        The program is translated by httpstan's stanc and compiled once with g++ into a small
        in-process module (30-60 s; cached on disk, see ``docs/stan.rst``).  The
        log density is Stan's ``log_prob`` with the Jacobian of the constraining transforms;
        ``x`` is Stan's unconstrained vector (parameters in declaration order, column-major),
        ``constrain`` returns the parameters, transformed parameters and generated quantities.

        A program that does not compile raises a ``ValueError`` with stanc's message, data
        that do not match the data block a ``ValueError`` with Stan's message, a missing C++
        compiler a ``RuntimeError``, and a missing pystan an ``ImportError``
        (``pip install ppl-ext[stan]``).
        """
        from adapters.stan import StanTarget

        return StanTarget(stan_code, {} if data is None else data, name)

    @staticmethod
    def from_posteriordb(name: str, backend: str = "numpyro", path: str | None = None) -> Target:
        """The posterior ``name`` of a posteriordb database through its port in ``backend``.

        ``backend`` is ``"numpyro"``, ``"pyro"`` or ``"stan"``; the database is found as in
        :func:`adapters.posteriordb.find_database`.  ``"stan"`` compiles the database's own
        Stan program (``models/stan/<model>.stan``, held by a full clone of
        stan-dev/posteriordb) with :meth:`from_stan`, so it needs no port.
        """
        from adapters import posteriordb

        check_choice("backend", backend, ("numpyro", "pyro", "stan"))
        if backend == "stan":
            posterior = posteriordb.load(name, path)
            if posterior.stan_code is None:
                folder = posterior.database or posteriordb.find_database(path)
                raise FileNotFoundError(
                    f"the posteriordb database at {folder} has no Stan program for model {posterior.model_name!r} "
                    f"(expected {folder / 'models' / 'stan' / (posterior.model_name + '.stan')}): use a full clone "
                    "of stan-dev/posteriordb (path=... or $POSTERIOR_DB_PATH), or pass the program to "
                    "Target.from_stan(stan_code, data)"
                )
            return Target.from_stan(posterior.stan_code, posterior.data, name=name)
        port = posteriordb.numpyro_model(name, path) if backend == "numpyro" else posteriordb.pyro_model(name, path)
        factory = Target.from_numpyro if backend == "numpyro" else Target.from_pyro
        return factory(port.model, name=name, **port.data)


def _model_name(model: Callable, name: str | None) -> str:
    return name or getattr(model, "__name__", None) or type(model).__name__


def _check_callable(arg: str, value: Any, expected: str) -> None:
    if not callable(value):
        raise TypeError(f"{arg} must be {expected}, got {type(value).__name__} {value!r:.80}")


def _check_label(name: Any) -> None:
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str (a label for messages and tables) or None, got {name!r}")


def _raise_on_discrete(latent_discrete: list[str], model_name: str) -> None:
    if latent_discrete:
        raise ValueError(
            f"model {model_name!r} has discrete latent sites {latent_discrete}: a gradient-based Target "
            "needs every latent site continuous. Marginalise them out (e.g. with logsumexp over their values) "
            "or observe them."
        )


class _NumPyroTarget(Target):
    backend = "numpyro"

    def __init__(self, model, args, kwargs, name):
        import jax
        from jax.flatten_util import ravel_pytree
        from numpyro import handlers
        from numpyro.infer.initialization import init_to_uniform
        from numpyro.infer.util import constrain_fn, initialize_model, unconstrain_fn

        self.name = _model_name(model, name)
        self.model, self.model_args, self.model_kwargs = model, tuple(args), dict(kwargs)
        # substitute like NumPyro's own initialisation, so improper sites need no sampler
        seeded = handlers.substitute(handlers.seed(model, 0), substitute_fn=init_to_uniform)
        try:
            trace = handlers.trace(seeded).get_trace(*args, **kwargs)
        except ValueError as err:  # e.g. a distribution's argument check
            raise ValueError(f"target {self.name!r}: the model fails at an initial point: {err}") from err
        _raise_on_discrete(
            [
                k
                for k, s in trace.items()
                if s["type"] == "sample" and not s["is_observed"] and s["fn"].support.is_discrete
            ],
            self.name,
        )
        try:
            info = initialize_model(jax.random.PRNGKey(0), model, model_args=args, model_kwargs=kwargs)
        except RuntimeError as err:  # NumPyro's "Cannot find valid initial parameters"
            raise ValueError(
                f"target {self.name!r}: the log density is NaN/inf at every initial point NumPyro tried ({err})"
            ) from err
        flat, self._unravel = ravel_pytree(info.param_info.z)
        self.dim = int(flat.shape[0])
        self.names = [n for site, value in sorted(info.param_info.z.items()) for n in stan_names(site, np.shape(value))]
        potential = info.potential_fn
        unravel = self._unravel

        def logdensity(x):
            return -potential(unravel(x))

        self._logdensity = logdensity
        self._jit_value = jax.jit(logdensity)
        self._jit_value_and_grad = jax.jit(jax.value_and_grad(logdensity))
        # constrain_fn replays the model at every call; initialize_model's postprocess_fn does
        # not re-derive a support that depends on another latent (garch11's beta1)
        self._jit_constrain = jax.jit(
            lambda x: constrain_fn(model, args, kwargs, unravel(x), return_deterministic=True)
        )
        self._unconstrain = functools.partial(unconstrain_fn, model, args, kwargs)
        self._dtype = flat.dtype
        self.initial_position(0)

    def _log_density_1d(self, x):
        return float(self._jit_value(np.asarray(x, dtype=self._dtype)))

    def _log_density_and_grad_1d(self, x):
        v, g = self._jit_value_and_grad(np.asarray(x, dtype=self._dtype))
        return float(v), np.asarray(g, dtype=np.float64)

    def constrain(self, x):
        import jax

        x = check_vector("x", x, self.dim).astype(self._dtype)
        fn = self._jit_constrain
        for _ in range(x.ndim - 1):
            fn = jax.vmap(fn)
        return {k: np.asarray(v) for k, v in fn(x).items()}

    def unconstrain(self, params):
        from jax.flatten_util import ravel_pytree

        latent = {k: params[k] for k in self._unravel(np.zeros(self.dim, self._dtype))}
        flat, _ = ravel_pytree(self._unconstrain(latent))
        return np.asarray(flat, dtype=np.float64)

    def as_jax(self):
        return self._logdensity


class _PyroTarget(Target):
    backend = "pyro"

    def __init__(self, model, args, kwargs, name):
        import pyro
        import torch
        from pyro import poutine
        from pyro.infer.autoguide.initialization import InitMessenger
        from pyro.infer.mcmc.util import initialize_model
        from pyro.poutine.util import site_is_subsample

        self.name = _model_name(model, name)
        self.model, self.model_args, self.model_kwargs = model, tuple(args), dict(kwargs)
        with torch.random.fork_rng():
            pyro.set_rng_seed(0)
            try:
                trace = poutine.trace(InitMessenger(_init_or_sample)(model)).get_trace(*args, **kwargs)
            except ValueError as err:  # e.g. a distribution's argument check
                raise ValueError(f"target {self.name!r}: the model fails at an initial point: {err}") from err
        _raise_on_discrete(
            [
                k
                for k, s in trace.nodes.items()
                if s["type"] == "sample"
                and not s["is_observed"]
                and not site_is_subsample(s)
                and s["fn"].support.is_discrete
            ],
            self.name,
        )
        with torch.random.fork_rng():
            pyro.set_rng_seed(0)
            try:
                init, potential_fn, transforms, _ = initialize_model(model, model_args=args, model_kwargs=kwargs)
            except ValueError as err:  # Pyro's "cannot find valid initial params"
                raise ValueError(
                    f"target {self.name!r}: the log density is NaN/inf at every initial point Pyro tried ({err})"
                ) from err
        self._sites = sorted(init)
        self._shapes = [tuple(init[k].shape) for k in self._sites]
        self._sizes = [int(np.prod(s)) for s in self._shapes]
        self._dtype = init[self._sites[0]].dtype
        self._transforms = transforms
        self._potential = potential_fn
        self._model, self._args, self._kwargs = model, args, kwargs
        self.dim = sum(self._sizes)
        self.names = [n for k, s in zip(self._sites, self._shapes, strict=True) for n in stan_names(k, s)]
        self.initial_position(0)

    def _unravel(self, x):
        parts = x.split(self._sizes, dim=-1)
        return {k: p.reshape(x.shape[:-1] + s) for k, p, s in zip(self._sites, parts, self._shapes, strict=True)}

    def _torch_logdensity(self, x):
        return -self._potential(self._unravel(x))

    def _log_density_and_grad_1d(self, x):
        import torch

        xt = torch.tensor(np.asarray(x), dtype=self._dtype, requires_grad=True)
        value = self._torch_logdensity(xt)
        (grad,) = torch.autograd.grad(value, xt)
        return float(value.detach()), grad.detach().cpu().numpy().astype(np.float64)

    def _log_density_1d(self, x):
        import torch

        with torch.no_grad():
            return float(self._torch_logdensity(torch.tensor(np.asarray(x), dtype=self._dtype)))

    def constrain(self, x):
        import torch
        from pyro import poutine

        x = check_vector("x", x, self.dim)
        out = []
        for row in x.reshape(-1, self.dim):
            with torch.no_grad():
                z = self._unravel(torch.as_tensor(row, dtype=self._dtype))
                # Pyro's transforms map constrained -> unconstrained
                values = {k: self._transforms[k].inv(v) if k in self._transforms else v for k, v in z.items()}
                trace = poutine.trace(poutine.condition(self._model, values)).get_trace(*self._args, **self._kwargs)
            for k, site in trace.nodes.items():
                if site["type"] == "sample" and site["infer"].get("_deterministic"):
                    values[k] = site["value"]
            out.append({k: v.detach().cpu().numpy() for k, v in values.items()})
        return {k: np.stack([o[k] for o in out]).reshape(x.shape[:-1] + out[0][k].shape) for k in out[0]}

    def unconstrain(self, params):
        import torch

        parts = []
        for k in self._sites:
            value = torch.as_tensor(np.asarray(params[k]), dtype=self._dtype)
            if k in self._transforms:
                value = self._transforms[k](value)
            parts.append(value.reshape(-1))
        return torch.cat(parts).cpu().numpy().astype(np.float64)

    def as_torch(self):
        return self._torch_logdensity


def _init_or_sample(site):
    """Pyro's ``init_to_uniform`` for continuous sites; a prior draw for discrete ones (to report them)."""
    from pyro.infer.autoguide.initialization import init_to_uniform

    if site["fn"].support.is_discrete:
        return site["fn"].sample().detach()
    return init_to_uniform(site)


class _FunctionTarget(Target):
    backend = "function"

    def __init__(self, fn, dim, grad, names, name):
        self.dim = check_positive_int("dim", dim)
        self.names = list(names) if names is not None else [f"x[{i + 1}]" for i in range(self.dim)]
        if len(self.names) != self.dim:
            raise ValueError(f"names must have length dim={self.dim}, got {len(self.names)} names")
        self.name = _model_name(fn, name)
        self._fn, self._grad = fn, grad
        self._jax_fn = self._torch_fn = None
        if grad is None:
            self._jax_fn = _as_jax_function(fn, dim)
            if self._jax_fn is None:
                self._torch_fn = _as_torch_function(fn, dim)
            if self._jax_fn is None and self._torch_fn is None:
                raise ValueError(
                    f"grad is None, but fn {self.name!r} is neither JAX-traceable nor a torch function with "
                    "autograd: pass grad=<function returning the gradient of fn> for a numpy log density"
                )
        if self._jax_fn is not None:
            import jax

            self._jit_value = jax.jit(self._jax_fn)
            self._jit_value_and_grad = jax.jit(jax.value_and_grad(self._jax_fn))
        self.initial_position(0)

    def _log_density_1d(self, x):
        if self._jax_fn is not None:
            return float(self._jit_value(x))
        if self._torch_fn is not None:
            import torch

            with torch.no_grad():
                return float(self._torch_fn(torch.as_tensor(x)))
        return float(self._fn(x))

    def _log_density_and_grad_1d(self, x):
        if self._jax_fn is not None:
            v, g = self._jit_value_and_grad(x)
            return float(v), np.asarray(g, dtype=np.float64)
        if self._torch_fn is not None:
            import torch

            xt = torch.as_tensor(x).requires_grad_(True)
            v = self._torch_fn(xt)
            (g,) = torch.autograd.grad(v, xt)
            return float(v.detach()), g.numpy().astype(np.float64)
        return float(self._fn(x)), np.asarray(self._grad(x), dtype=np.float64).reshape(self.dim)

    def constrain(self, x):
        x = check_vector("x", x, self.dim)
        return {self.names[i]: x[..., i] for i in range(self.dim)}

    def unconstrain(self, params):
        return np.stack([np.asarray(params[n], dtype=np.float64) for n in self.names], axis=-1)

    def as_jax(self):
        return self._jax_fn if self._jax_fn is not None else super().as_jax()

    def as_torch(self):
        return self._torch_fn if self._torch_fn is not None else super().as_torch()


def _as_jax_function(fn: Callable, dim: int) -> Callable | None:
    """``fn`` if it traces under JAX to a scalar, else ``None`` (also when JAX is not installed)."""
    try:
        import jax
    except ImportError:
        return None
    try:
        out = jax.eval_shape(fn, jax.ShapeDtypeStruct((dim,), np.float32))
    except Exception:  # any tracing failure means fn is not JAX code
        return None
    return fn if getattr(out, "shape", None) == () else None


def _as_torch_function(fn: Callable, dim: int) -> Callable | None:
    """``fn`` if it maps a torch vector to a differentiable torch scalar, else ``None``."""
    try:
        import torch
    except ImportError:
        return None
    try:
        out = fn(torch.zeros(dim, dtype=torch.float64, requires_grad=True))
    except Exception:  # any failure on a tensor means fn is not torch code
        return None
    if isinstance(out, torch.Tensor) and out.shape == () and out.requires_grad:
        return fn
    return None
