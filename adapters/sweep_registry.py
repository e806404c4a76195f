"""The sweep's algorithm registry: Python entry points, loaded only when a sweep needs them.

An algorithm is an :class:`Algorithm` object (a name, a backend, a ``run(target, config,
seed) -> RunOutput`` function and its config defaults).  Packages declare theirs as entry
points of the group :data:`ENTRY_POINT_GROUP` in their ``pyproject.toml``; this library's
own are

.. code-block:: toml

   [project.entry-points."ppl_ext.sweep_algorithms"]
   nuts = "numpyro_ext.infer.sweep_runs:NUTS_SWEEP"
   pyro-nuts = "pyro_ext.infer.sweep_runs:NUTS_SWEEP"

The entry point's name is the algorithm's name; its object is an :class:`Algorithm` (made
with :func:`define_algorithm`).  Listing the names (:func:`algorithm_names`) reads the
installed packages' metadata and imports nothing; :func:`get_algorithm` imports only the
module of the algorithm asked for, and an entry point that fails to load (its backend is
not installed, its module raises, its object is not an :class:`Algorithm` of that name)
raises an :class:`AlgorithmLoadError` naming the entry point and the error, never drops
the algorithm silently.  :func:`register_algorithm` adds one in this process only (tests,
notebooks); such a registration wins over an entry point of the same name.

Nothing here imports a backend or an algorithm at module import time, so importing a
sampler (``numpyro_ext.infer``) never imports the sweep, and importing the sweep never
imports a sampler.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import numbers
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from adapters.validation import check_choice, check_positive_int

ENTRY_POINT_GROUP = "ppl_ext.sweep_algorithms"
BACKENDS = ("numpyro", "pyro")
COMMON_DEFAULTS = {"num_warmup": 1000, "num_samples": 1000, "num_chains": 4}


class RunOutput(NamedTuple):
    """What an algorithm's run returns.

    * ``draws``: constrained draws ``{site: array (chains, draws, *shape)}`` (as
      ``MCMC.get_samples(group_by_chain=True)``), scored against the reference draws;
    * ``grad_evals``: gradient evaluations of the sampling phase (warmup excluded);
    * ``divergences``: divergent transitions of the sampling phase;
    * ``sample_stats``: optional per-draw statistics ``{name: array (chains, draws)}`` by the
      library's names (the library's algorithms give ``diverging`` and ``num_grad_evals``,
      which sum to ``divergences`` and ``grad_evals``).
    """

    draws: Mapping[str, Any]
    grad_evals: int
    divergences: int
    sample_stats: Mapping[str, Any] | None = None

    def to_arviz(self):
        """ArviZ ``InferenceData``: ``posterior`` from ``draws``, ``sample_stats`` (ArviZ's names) if any.

        The totals ``grad_evals`` and ``divergences`` are attributes of the ``posterior`` group.
        """
        from adapters.inference_data import from_samples

        idata = from_samples(self.draws, self.sample_stats)
        idata.posterior.attrs.update(grad_evals=int(self.grad_evals), divergences=int(self.divergences))
        return idata


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """A sweepable algorithm: ``run(target, config, seed) -> RunOutput``.

    ``defaults`` lists the config keys every run's config holds (the common ``num_warmup``,
    ``num_samples``, ``num_chains`` included) with their default values; ``optional`` the
    keys a run's config holds only when they are set (with the value the run function uses
    otherwise), so that an option added later leaves the stored runs' keys as they were;
    ``setup`` runs in the worker before the posterior's target is built (e.g. to switch JAX
    to float64).
    """

    name: str
    backend: str
    run: Callable[[Any, Mapping[str, Any], int], RunOutput]
    defaults: Mapping[str, Any]
    description: str = ""
    setup: Callable[[], None] | None = None
    optional: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def resolve(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The full config: ``defaults`` updated by ``overrides``.

        Unknown keys are refused, and so is a value of another kind than the key's default
        (a string or a bool where the default is a number, ...); the common ``num_warmup``
        must be an integer >= 0, ``num_samples`` and ``num_chains`` integers >= 1.  Ranges of
        an algorithm's own options are its run function's to check.
        """
        if overrides is not None and not isinstance(overrides, Mapping):
            raise TypeError(f"config of algorithm {self.name!r} must be a dict of options, got {overrides!r}")
        overrides = dict(overrides or {})
        known = {*self.defaults, *self.optional}
        unknown = sorted(set(overrides) - known)
        if unknown:
            known_text = f"known keys: {sorted(known)}"
            raise ValueError(f"config of algorithm {self.name!r}: unknown key(s) {unknown}; {known_text}")
        config = {**self.defaults, **overrides}
        for key, value in overrides.items():
            _check_option(f"config of algorithm {self.name!r}: {key}", value, {**self.defaults, **self.optional}[key])
        for key in COMMON_DEFAULTS:
            check_positive_int(f"config of algorithm {self.name!r}: {key}", config[key], allow_zero=key == "num_warmup")
        return config


def _check_option(name: str, value: Any, default: Any) -> None:
    """``value`` of the kind of ``default``: a bool for a bool, a number for a number, a str for a str, ...

    A number's default does not fix int or float (``reduction_factor`` defaults to ``4`` and
    takes ``2.5``); whether a number is in range is the run function's to say.
    """
    if default is None:
        return
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "a bool (true/false)"
    elif isinstance(default, numbers.Real):
        ok, kind = isinstance(value, numbers.Real) and not isinstance(value, bool), "a number"
    else:
        ok, kind = isinstance(value, type(default)), f"a {type(default).__name__}"
    if not ok:
        raise TypeError(f"{name} must be {kind}, as its default {default!r}; got {value!r}")


class AlgorithmLoadError(ImportError):
    """A sweep algorithm's entry point could not be loaded; the message names it and says why."""


def define_algorithm(
    name: str,
    backend: str,
    run: Callable[[Any, Mapping[str, Any], int], RunOutput],
    defaults: Mapping[str, Any] | None = None,
    description: str = "",
    setup: Callable[[], None] | None = None,
    optional: Mapping[str, Any] | None = None,
) -> Algorithm:
    """An :class:`Algorithm` whose ``defaults`` hold :data:`COMMON_DEFAULTS` too (the object an entry point names).

    ``run(target, config, seed)`` gets an :class:`~adapters.target.Target` of the posterior
    (native to ``backend``, ``"numpyro"`` or ``"pyro"``, when the posterior has a port
    there), the resolved config and the seed, and returns a :class:`RunOutput`.
    """
    check_choice("backend", backend, BACKENDS)
    defaults = {**COMMON_DEFAULTS, **(defaults or {})}
    return Algorithm(name, backend, run, defaults, description, setup, dict(optional or {}))


_REGISTERED: dict[str, Algorithm] = {}  # register_algorithm's, in this process
_LOADED: dict[str, Algorithm] = {}  # entry points loaded so far


def register_algorithm(
    name: str,
    backend: str,
    run: Callable[[Any, Mapping[str, Any], int], RunOutput],
    defaults: Mapping[str, Any] | None = None,
    description: str = "",
    setup: Callable[[], None] | None = None,
    optional: Mapping[str, Any] | None = None,
) -> Algorithm:
    """Make ``run`` sweepable under ``name`` in this process (arguments as :func:`define_algorithm`).

    For a package's algorithms prefer an entry point (see the module's docstring): it also
    reaches the child processes and Dask workers that run the sweep.  Registering a name
    twice replaces it; a registration wins over an entry point of the same name.
    """
    algorithm = define_algorithm(name, backend, run, defaults, description, setup, optional)
    _REGISTERED[name] = algorithm
    return algorithm


def entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """The installed entry points of :data:`ENTRY_POINT_GROUP`, by name (nothing is imported)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def algorithm_names() -> list[str]:
    """The names of every algorithm, registered or declared by an entry point, without loading any."""
    return sorted({*entry_points(), *_REGISTERED})


def load_entry_point(entry_point: importlib.metadata.EntryPoint) -> Algorithm:
    """The :class:`Algorithm` an entry point names; an :class:`AlgorithmLoadError` naming it otherwise."""
    where = f"sweep algorithm {entry_point.name!r} (entry point {entry_point.name} = {entry_point.value!r})"
    try:
        algorithm = entry_point.load()
    except Exception as err:  # ImportError of a missing backend, or the module's own error
        raise AlgorithmLoadError(f"{where} failed to load: {type(err).__name__}: {err}") from err
    if not isinstance(algorithm, Algorithm) or algorithm.name != entry_point.name:
        raise AlgorithmLoadError(
            f"{where} is {algorithm!r}, not an adapters.sweep_registry.Algorithm named {entry_point.name!r}"
        )
    return algorithm


def get_algorithm(name: str) -> Algorithm:
    """The algorithm ``name``, loading its entry point if need be.

    An unknown name is a ``ValueError`` listing the valid ones; an entry point that fails to
    load an :class:`AlgorithmLoadError` naming it and its error.
    """
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name not in _LOADED:
        declared = entry_points()
        if name not in declared:
            hint = "" if declared else f" (no entry point of group {ENTRY_POINT_GROUP!r}: is ppl-ext installed?)"
            raise ValueError(f"unknown algorithm {name!r}; registered algorithms: {algorithm_names()}{hint}")
        _LOADED[name] = load_entry_point(declared[name])
    return _LOADED[name]


def algorithms() -> dict[str, Algorithm]:
    """Every algorithm, each entry point loaded; an :class:`AlgorithmLoadError` lists those that fail."""
    found: dict[str, Algorithm] = {}
    failures: list[str] = []
    for name in algorithm_names():
        try:
            found[name] = get_algorithm(name)
        except AlgorithmLoadError as err:
            failures.append(str(err))
    if failures:
        raise AlgorithmLoadError("; ".join(failures))
    return found
