"""posteriordb: find a database, list and load posteriors, and look up their model ports.

A posteriordb database is a folder ``posterior_database/`` read through the
``posteriordb`` PyPI package.  It is found, in order, at

1. the ``path`` argument of each function,
2. the environment variable ``POSTERIOR_DB_PATH``,
3. the small subset shipped inside this package (six posteriors with their data and
   reference draws, BSD-3, © Stan Developers: see ``adapters/_embedded/README.md``).

Ports of posteriordb models live one module per Stan model, in
``numpyro_ext/models/posteriordb/<model_name>.py`` and
``pyro_ext/models/posteriordb/<model_name>.py``; each defines ``model(**data)`` whose
keyword arguments are the Stan program's data names.  Adding a port is adding that module.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from adapters.validation import check_choice, check_name

EMBEDDED_PATH = Path(__file__).parent / "_embedded" / "posterior_database"
ENV_VAR = "POSTERIOR_DB_PATH"
_PORT_PACKAGES = {"numpyro": "numpyro_ext.models.posteriordb", "pyro": "pyro_ext.models.posteriordb"}


def find_database(path: str | os.PathLike | None = None) -> Path:
    """The folder of the posteriordb database to use (see the module docstring for the order).

    A given ``path`` may point at ``posterior_database/`` itself or at a clone that holds it.
    Raises ``FileNotFoundError`` saying where it looked.
    """
    looked = []
    candidates = []
    if path is not None:
        candidates.append(("path argument", Path(path)))
    elif os.environ.get(ENV_VAR):
        candidates.append((f"${ENV_VAR}", Path(os.environ[ENV_VAR])))
    else:
        candidates.append(("embedded subset", EMBEDDED_PATH))
    for origin, candidate in candidates:
        for folder in (candidate, candidate / "posterior_database"):
            if (folder / "posteriors").is_dir():
                return folder.resolve()
        looked.append(f"{origin}: {candidate}")
    raise FileNotFoundError(
        "no posteriordb database found (a folder with a 'posteriors/' subfolder); looked at "
        + "; ".join(looked)
        + f". Pass path=..., set {ENV_VAR}, or unset it to use the embedded subset."
    )


def _database(path):
    from posteriordb import PosteriorDatabase

    return PosteriorDatabase(str(find_database(path)))


def list_posteriors(path: str | os.PathLike | None = None, keyword: str | None = None) -> list[str]:
    """Sorted names of the database's posteriors, optionally only those with ``keyword``."""
    db = _database(path)
    names = sorted(db.posterior_names())
    if keyword is not None:
        names = [n for n in names if keyword in db.get_posterior_info(n).get("keywords", [])]
    return names


@dataclass(frozen=True)
class Posterior:
    """One posteriordb posterior: model, data and reference draws.

    Attributes:
        name: ``<data_name>-<model_name>``.
        data: the Stan data, lists turned into numpy arrays, scalars kept as Python numbers.
        reference_draws: ``{Stan name: array (chains, draws)}``, or ``None`` if the database
            has no reference posterior for it.
        dimensions: ``{parameter: size}`` as posteriordb lists them.
        keywords: posteriordb's keywords of the posterior.
        stan_code: the Stan program, or ``None`` when the database does not hold it.
        reference_info: posteriordb's description of how the reference draws were made.
    """

    name: str
    model_name: str
    data_name: str
    data: dict[str, Any]
    reference_draws: dict[str, np.ndarray] | None
    dimensions: dict[str, int]
    keywords: list[str]
    stan_code: str | None
    reference_info: dict[str, Any] | None = field(default=None, repr=False)
    database: Path | None = None

    @property
    def reference_names(self) -> list[str]:
        return list(self.reference_draws) if self.reference_draws else []


def _to_arrays(data: dict[str, Any]) -> dict[str, Any]:
    return {k: np.asarray(v) if isinstance(v, list) else v for k, v in data.items()}


def load(name: str, path: str | os.PathLike | None = None) -> Posterior:
    """Load posterior ``name``; an unknown name raises a ``KeyError`` listing close names."""
    return _load_cached(name, find_database(path))


@functools.lru_cache(maxsize=64)
def _load_cached(name: str, folder: Path) -> Posterior:
    from posteriordb import PosteriorDatabase

    db = PosteriorDatabase(str(folder))
    check_name("posterior", name, sorted(db.posterior_names()))
    post = db.posterior(name)
    reference = info = None
    if post.posterior_info.get("reference_posterior_name"):
        chains = post.reference_draws()
        reference = {k: np.array([c[k] for c in chains], dtype=np.float64) for k in chains[0]}
        info = post.reference_draws_info()
    try:
        stan_code = post.model.stan_code()
    except (OSError, KeyError):  # this subset holds no Stan programs
        stan_code = None
    return Posterior(
        name=name,
        model_name=post.posterior_info["model_name"],
        data_name=post.posterior_info["data_name"],
        data=_to_arrays(post.data.values()),
        reference_draws=reference,
        dimensions=dict(post.posterior_info.get("dimensions", {})),
        keywords=list(post.posterior_info.get("keywords", [])),
        stan_code=stan_code,
        reference_info=info,
        database=folder,
    )


# ---- model ports ----------------------------------------------------------------------
class ModelPort(NamedTuple):
    """A port of a posteriordb model with the posterior's data bound: ``model(**data)``."""

    model: Callable
    data: dict[str, Any]


def ported_models(backend: str) -> list[str]:
    """Names of the Stan models that have a port in ``backend`` (``"numpyro"`` or ``"pyro"``)."""
    check_choice("backend", backend, _PORT_PACKAGES)
    package = importlib.import_module(_PORT_PACKAGES[backend])
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))


def ported_posteriors(backend: str, path: str | os.PathLike | None = None) -> list[str]:
    """Posteriors of the database whose model has a port in ``backend``."""
    ports = set(ported_models(backend))
    db = _database(path)
    return sorted(n for n in db.posterior_names() if db.get_posterior_info(n)["model_name"] in ports)


def _port(name: str, backend: str, path) -> ModelPort:
    posterior = load(name, path)
    ports = ported_models(backend)
    if posterior.model_name not in ports:
        raise KeyError(
            f"posterior {name!r} (Stan model {posterior.model_name!r}) has no {backend} port yet; "
            f"ported models: {ports}"
        )
    module = importlib.import_module(f"{_PORT_PACKAGES[backend]}.{posterior.model_name}")
    params = inspect.signature(module.model).parameters
    data = {k: v for k, v in posterior.data.items() if k in params}
    return ModelPort(module.model, data)


def numpyro_model(name: str, path: str | os.PathLike | None = None) -> ModelPort:
    """The NumPyro port of posterior ``name`` and its data: ``MCMC(NUTS(port.model)).run(key, **port.data)``."""
    return _port(name, "numpyro", path)


def pyro_model(name: str, path: str | os.PathLike | None = None) -> ModelPort:
    """The Pyro port of posterior ``name`` and its data: ``MCMC(NUTS(port.model)).run(**port.data)``."""
    return _port(name, "pyro", path)
