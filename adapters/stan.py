"""Stan programs as :class:`~adapters.target.Target` objects (``Target.from_stan``).

:class:`StanTarget` wraps a Stan program bound to its data; the compiling (stanc, g++, the
on-disk cache) and the two model interfaces it calls (the program's own compiled module,
or pystan's public API as a fallback) live in :mod:`adapters.stan_build`, whose public
functions this module re-exports.

The log density is Stan's ``log_prob`` on the unconstrained space with the Jacobian of the
constraining transforms, dropping terms constant in the parameters, as for every other
``Target`` defined up to an additive constant.  ``import adapters`` does not import this
module; pystan is an optional extra (``pip install ppl-ext[stan]``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from adapters.stan_build import (
    CACHE_ENV_VAR,
    CompiledInterface,
    PublicInterface,
    cache_directory,
    clean_message,
    compile_model,
    find_compiler,
    prepare_data,
    require_httpstan,
    stanc_info,
)
from adapters.target import Target
from adapters.validation import check_choice, check_vector

__all__ = ["CACHE_ENV_VAR", "StanTarget", "cache_directory", "compile_model", "find_compiler", "stanc_info"]

logger = logging.getLogger(__name__)


def _bracket(name: str) -> str:
    """``theta.1.2`` (Stan C++ naming) as ``theta[1,2]``."""
    head, *idx = name.split(".")
    return f"{head}[{','.join(idx)}]" if idx else head


class StanTarget(Target):
    """A Stan program's posterior given its data; see :meth:`Target.from_stan`."""

    backend = "stan"

    def __init__(self, stan_code: str, data: Mapping[str, Any], name: str | None = None, interface: str = "auto"):
        if not isinstance(stan_code, str) or not stan_code.strip():
            raise ValueError(f"stan_code must be the text of a Stan program, got {stan_code!r:.80}")
        check_choice("interface", interface, ("auto", "compiled", "public"))
        require_httpstan()
        self.name = name or "stan_model"
        self.stan_code = stan_code
        self.data = prepare_data(data)
        info = stanc_info(stan_code, self.name)  # a clear message for a program that does not compile
        self.parameter_names = list(info.get("parameters", {}))
        self._gq_names = set(info.get("generated quantities", {}))
        self._impl = self._open(interface)
        self.interface = self._impl.kind
        self.names = self._coordinate_names()
        self.initial_position(0)

    def _open(self, interface: str):
        if interface in ("auto", "compiled"):
            try:
                return CompiledInterface(self.stan_code, self.data, self.name)
            except (RuntimeError, ValueError) as err:
                if "does not compile" in str(err) or "C++ compiler" in str(err) or "build" in str(err):
                    raise
                raise ValueError(self._stan_message("the data do not match its data block", err)) from err
            except (FileNotFoundError, ImportError, AttributeError, TypeError) as err:
                if interface == "compiled":
                    raise
                logger.warning("Stan program %r: falling back to pystan's public API (slow): %s", self.name, err)
        if find_compiler() is None:
            raise RuntimeError(f"the `stan` route needs a C++ compiler (g++) to build Stan program {self.name!r}")
        try:
            return PublicInterface(self.stan_code, self.data, self.name)
        except RuntimeError as err:
            raise ValueError(self._stan_message("the data do not match its data block", err)) from err

    # ---- set-up -------------------------------------------------------------------------
    def _stan_message(self, what: str, err: Exception) -> str:
        return f"Stan program {self.name!r}: {what}; Stan says: {clean_message(str(err), self.name)}"

    def _coordinate_names(self) -> list[str]:
        impl = self._impl
        names = impl.param_names()
        dims = [tuple(int(n) for n in d) for d in impl.dims()]
        self.variables = dict(zip(names, dims, strict=True))  # params, transformed params, generated quantities
        self._sizes = {k: int(np.prod(d, dtype=np.int64)) for k, d in self.variables.items()}
        n_params = sum(self._sizes[k] for k in self.parameter_names)
        dim = impl.dim()
        self.dim = self._find_dim(n_params) if dim is None else dim
        flat = [_bracket(n) for n in impl.constrained_names()]
        if self.dim == n_params:
            return flat[:n_params]
        unconstrained = impl.unconstrained_names()
        if unconstrained is not None:
            return [_bracket(n) for n in unconstrained]
        return [f"x[{i + 1}]" for i in range(self.dim)]

    def _find_dim(self, upper: int) -> int:
        """The unconstrained dimension: Stan's transforms never add coordinates, so scan down from ``upper``."""
        for d in range(upper, -1, -1):
            try:
                self._impl.log_density(np.zeros(d))
            except (RuntimeError, ValueError) as err:
                if "number of parameters does not match" in str(err):
                    continue
            return d
        raise RuntimeError(f"Stan program {self.name!r}: could not find the number of unconstrained parameters")

    # ---- the Target interface -----------------------------------------------------------
    def _log_density_1d(self, x: np.ndarray) -> float:
        try:
            return float(self._impl.log_density(x))
        except (RuntimeError, ValueError):  # Stan rejects the point (out of support, reject(), ...)
            return -np.inf

    def _log_density_and_grad_1d(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        try:
            value, grad = self._impl.log_density_grad(x)
        except (RuntimeError, ValueError):
            return -np.inf, np.full(self.dim, np.nan)
        return float(value), np.asarray(grad, dtype=np.float64)

    def constrain(self, x: Any, include_tparams: bool = True, include_gqs: bool = True) -> dict[str, np.ndarray]:
        """Parameters, transformed parameters and generated quantities at ``x`` of shape ``(..., dim)``.

        Arrays are shaped ``batch + dims`` as declared in Stan (numpy order: ``theta[i, j]``
        is ``out["theta"][..., i - 1, j - 1]``).  Generated quantities that draw random
        numbers use Stan's RNG with the same seed at every call.
        """
        x = check_vector("x", x, self.dim)
        keys = [
            k
            for k in self.variables
            if k in self.parameter_names
            or (include_gqs if k in self._gq_names else include_tparams and k not in self.parameter_names)
        ]
        rows = []
        for row in x.reshape(-1, self.dim):
            try:
                rows.append(np.asarray(self._impl.write_array(row, include_tparams, include_gqs), dtype=np.float64))
            except (RuntimeError, ValueError) as err:
                raise ValueError(self._stan_message("write_array failed at x", err)) from err
        flat = np.stack(rows)
        out, start = {}, 0
        for k in keys:
            size, dims = self._sizes[k], self.variables[k]
            block = flat[:, start : start + size].reshape((-1, *dims[::-1]))  # Stan writes column-major
            block = np.transpose(block, (0, *range(len(dims), 0, -1)))
            out[k] = block.reshape(x.shape[:-1] + dims)
            start += size
        return out

    def unconstrain(self, params: Mapping[str, Any]) -> np.ndarray:
        """The unconstrained ``x`` for a dict of constrained values of the parameters block's variables."""
        missing = [k for k in self.parameter_names if k not in params]
        if missing:
            raise KeyError(f"params lacks the Stan parameters {missing}; expected keys {self.parameter_names}")
        values = {}
        for k in self.parameter_names:
            v = np.asarray(params[k], dtype=np.float64)
            if v.shape != self.variables[k]:
                raise ValueError(f"params[{k!r}] must have shape {self.variables[k]}, got {v.shape}")
            values[k] = v
        try:
            return np.asarray(self._impl.transform_inits(values), dtype=np.float64)
        except (RuntimeError, ValueError) as err:
            raise ValueError(self._stan_message("the parameter values are outside their constraints", err)) from err

    def __reduce__(self):
        # the compiled module does not pickle; a copy re-imports it from the on-disk cache
        return (StanTarget, (self.stan_code, self.data, self.name, self.interface))
