"""posteriordb: find a database, list and load posteriors, and look up their model ports.

A posteriordb database is a folder ``posterior_database/`` read through the
``posteriordb`` PyPI package.  It is found, in order, at

1. the ``path`` argument of each function,
2. the environment variable ``POSTERIOR_DB_PATH``,
3. the small subset shipped inside this package (six posteriors with their data and
   reference draws, BSD-3, © Stan Developers: see ``adapters/_embedded/README.md``).

A name the database lacks raises a ``KeyError`` that names the database in use, lists its
posteriors when it is the embedded subset, and says how to point at a full posteriordb.

Ports of posteriordb models live one module per Stan model, in
``numpyro_ext/models/posteriordb/<model_name>.py`` and
``pyro_ext/models/posteriordb/<model_name>.py``; each defines ``model(**data)`` whose
keyword arguments are the Stan program's data names.  Adding a port is adding that module.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from adapters.validation import check_choice, check_name

EMBEDDED_PATH = Path(__file__).parent / "_embedded" / "posterior_database"
ENV_VAR = "POSTERIOR_DB_PATH"
_PORT_PACKAGES = {"numpyro": "numpyro_ext.models.posteriordb", "pyro": "pyro_ext.models.posteriordb"}
_BACKEND_MODULES = {"numpyro": "jax", "pyro": "torch"}
FULL_DATABASE_HINT = (
    "To use a full posteriordb, clone https://github.com/stan-dev/posteriordb and pass its posterior_database "
    f"folder as path=... (--path on the command line of python -m numpyro_ext / python -m pyro_ext) or set the "
    f"environment variable {ENV_VAR}."
)


def _check_path(path) -> None:
    if path is not None and not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike naming a posteriordb folder, or None, got {path!r}")


def find_database(path: str | os.PathLike | None = None) -> Path:
    """The folder of the posteriordb database to use (see the module docstring for the order).

    A given ``path`` may point at ``posterior_database/`` itself or at a clone that holds it.
    Raises ``FileNotFoundError`` saying where it looked.
    """
    _check_path(path)
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
        + f". Pass path=... (--path on the command line), set {ENV_VAR}, or unset it to use the embedded subset."
    )


def _check_posterior(name: str, folder: Path, known: list[str]) -> str:
    """``name`` if the database at ``folder`` (whose posteriors are ``known``) holds it.

    Otherwise a ``KeyError`` with the close names, the database in use and, for the
    embedded subset, what it holds and how to point at a full posteriordb; a non-string
    ``name`` is a ``TypeError``.
    """
    if not isinstance(name, str):
        raise TypeError(
            f"name must be a posterior name (str) such as 'eight_schools-eight_schools_noncentered', got {name!r}"
        )
    try:
        return check_name("posterior", name, known)
    except KeyError as err:
        if Path(folder).resolve() == EMBEDDED_PATH.resolve():
            where = (
                f" The database in use is the embedded subset of posteriordb that ships with ppl-ext: the "
                f"{len(known)} posteriors listed, no others ({EMBEDDED_PATH})."
            )
        else:
            where = f" The database in use is {folder} ({len(known)} posteriors)."
        raise KeyError(err.args[0] + where + " " + FULL_DATABASE_HINT) from None


def _database(path):
    from posteriordb import PosteriorDatabase

    return PosteriorDatabase(str(find_database(path)))


def list_posteriors(path: str | os.PathLike | None = None, keyword: str | None = None) -> list[str]:
    """Sorted names of the database's posteriors, optionally only those with ``keyword``."""
    if keyword is not None and not isinstance(keyword, str):
        raise TypeError(
            f"keyword must be a str (a posteriordb keyword such as 'stan benchmark') or None, got {keyword!r}"
        )
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

    @functools.cached_property
    def positive(self) -> tuple[str, ...]:
        """The parameters (names of :attr:`dimensions`) constrained positive: lower bound >= 0.

        Read from the Stan program's declarations (``<lower=0>``, ``positive_ordered``,
        ``simplex``) when the database holds it, otherwise from the supports of the port's
        sample sites (the port of the backend already imported, NumPyro's when both or
        neither are, as installed) and the port
        module's ``POSITIVE_DETERMINISTIC`` (a deterministic site carries no support);
        ``()`` when neither is available.  :func:`adapters.metrics.reference_score` scores
        these, and only these, on the log scale too.
        """
        if self.stan_code is not None:
            found = stan_positive_parameters(self.stan_code)
        else:
            found = ()
            # a backend the program has already imported first (a Pyro run stays in torch), else NumPyro
            for backend in sorted(_BACKEND_MODULES, key=lambda b: _BACKEND_MODULES[b] not in sys.modules):
                module_name = _BACKEND_MODULES[backend]
                if importlib.util.find_spec(module_name) is None or self.model_name not in ported_models(backend):
                    continue
                port = importlib.import_module(f"{_PORT_PACKAGES[backend]}.{self.model_name}")
                util = importlib.import_module(f"{_PORT_PACKAGES[backend]}._util")
                sites = util.positive_sites(port.model, **_model_data(port.model, self.data))
                found = (*sites, *getattr(port, "POSITIVE_DETERMINISTIC", ()))
                break
        return tuple(sorted(k for k in set(found) if k in self.dimensions))


def _to_arrays(data: dict[str, Any]) -> dict[str, Any]:
    return {k: np.asarray(v) if isinstance(v, list) else v for k, v in data.items()}


def load(name: str, path: str | os.PathLike | None = None) -> Posterior:
    """Load posterior ``name``.

    A name the database lacks raises a ``KeyError`` with the close names and the database in
    use (for the embedded subset: what it holds and how to point at a full posteriordb).
    """
    folder = find_database(path)
    if not isinstance(name, str):  # before the cache, which needs a hashable name
        _check_posterior(name, folder, [])
    return _load_cached(name, folder)


# ---- constraints of a Stan program ------------------------------------------------------
_STAN_TYPES = (
    "real|vector|row_vector|matrix|positive_ordered|simplex|ordered|unit_vector|sum_to_zero_vector|int|complex"
    "|cov_matrix|corr_matrix|cholesky_factor_cov|cholesky_factor_corr"
)
_STAN_DECLARATION = re.compile(
    rf"^(?:array\s*\[[^\]]*\]\s*)?(?P<type>{_STAN_TYPES})\b\s*(?P<bounds><[^>]*>)?\s*(?:\[[^\]]*\])?\s*(?P<name>\w+)"
)
_STAN_BLOCK = re.compile(r"(?<![\w])(?:transformed\s+)?parameters\s*\{")


def stan_positive_parameters(stan_code: str) -> tuple[str, ...]:
    """Names of the parameters and transformed parameters a Stan program declares positive.

    Positive: a numeric lower bound >= 0 (``real<lower=0>``, ``vector<lower=0, upper=1>[K]``,
    ``array[N] real<lower=0>``), or the types ``positive_ordered`` and ``simplex``.  A bound
    that is an expression (``<lower=L>``) is not known to be positive and does not count.
    """
    code = re.sub(r"/\*.*?\*/|//[^\n]*|#[^\n]*", "", stan_code, flags=re.S)
    found = []
    for block in _STAN_BLOCK.finditer(code):
        depth, start, statement = 1, block.end(), []
        for i in range(start, len(code)):  # the block's top-level statements, up to its closing brace
            char = code[i]
            depth += (char == "{") - (char == "}")
            if depth == 0:
                break
            if depth == 1 and char == ";":
                match = _STAN_DECLARATION.match("".join(statement).strip())
                if match and _declared_positive(match["type"], match["bounds"]):
                    found.append(match["name"])
                statement = []
            elif depth == 1 and char != "}":
                statement.append(char)
            elif char == "}":
                statement = []
    return tuple(dict.fromkeys(found))


def _declared_positive(stan_type: str, bounds: str | None) -> bool:
    if stan_type in ("positive_ordered", "simplex"):
        return True
    lower = re.search(r"lower\s*=\s*([^,>]+)", bounds or "")
    if lower is None:
        return False
    try:
        return float(lower.group(1).strip().strip("()")) >= 0
    except ValueError:  # an expression: its sign is not known here
        return False


@functools.lru_cache(maxsize=64)
def _load_cached(name: str, folder: Path) -> Posterior:
    from posteriordb import PosteriorDatabase

    db = PosteriorDatabase(str(folder))
    _check_posterior(name, folder, sorted(db.posterior_names()))
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
    return ModelPort(module.model, _model_data(module.model, posterior.data))


def _model_data(model: Callable, data: dict[str, Any]) -> dict[str, Any]:
    params = inspect.signature(model).parameters
    return {k: v for k, v in data.items() if k in params}


def numpyro_model(name: str, path: str | os.PathLike | None = None) -> ModelPort:
    """The NumPyro port of posterior ``name`` and its data: ``MCMC(NUTS(port.model)).run(key, **port.data)``."""
    return _port(name, "numpyro", path)


def pyro_model(name: str, path: str | os.PathLike | None = None) -> ModelPort:
    """The Pyro port of posterior ``name`` and its data: ``MCMC(NUTS(port.model)).run(**port.data)``."""
    return _port(name, "pyro", path)
