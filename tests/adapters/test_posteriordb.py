import zipfile

import numpy as np
import pytest

from adapters import posteriordb
from adapters.posteriordb import EMBEDDED_PATH

EMBEDDED = [
    "arK-arK",
    "eight_schools-eight_schools_centered",
    "eight_schools-eight_schools_noncentered",
    "garch-garch11",
    "kidiq-kidscore_momiq",
    "sblrc-blr",
]


def test_search_order(monkeypatch, shared_db, tmp_path):
    monkeypatch.delenv("POSTERIOR_DB_PATH", raising=False)
    assert posteriordb.find_database() == EMBEDDED_PATH.resolve()
    monkeypatch.setenv("POSTERIOR_DB_PATH", str(shared_db))
    assert posteriordb.find_database() == shared_db.resolve()
    # an explicit path wins over the environment; a clone's root is accepted too
    assert posteriordb.find_database(EMBEDDED_PATH.parent) == EMBEDDED_PATH.resolve()


def test_missing_database_says_where_it_looked(monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"path argument: {tmp_path}"):
        posteriordb.find_database(tmp_path)
    monkeypatch.setenv("POSTERIOR_DB_PATH", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"\$POSTERIOR_DB_PATH: .*nowhere"):
        posteriordb.list_posteriors()


def test_embedded_subset_lists_its_posteriors():
    assert posteriordb.list_posteriors(EMBEDDED_PATH) == EMBEDDED


def test_embedded_files_are_the_databases_own(shared_db):
    """The shipped subset is byte-identical to posteriordb's files (data and reference draws)."""
    for name in EMBEDDED:
        a = posteriordb.load(name, EMBEDDED_PATH)
        b = posteriordb.load(name, shared_db)
        assert a.data.keys() == b.data.keys()
        for k in a.data:
            np.testing.assert_array_equal(a.data[k], b.data[k])
        for k in b.reference_draws:
            np.testing.assert_array_equal(a.reference_draws[k], b.reference_draws[k])
    for f in EMBEDDED_PATH.rglob("*.zip"):
        rel = f.relative_to(EMBEDDED_PATH)
        with zipfile.ZipFile(f) as za, zipfile.ZipFile(shared_db / rel) as zb:
            assert za.read(za.namelist()[0]) == zb.read(zb.namelist()[0])


def test_shared_database_has_27_posteriors_with_reference_draws(shared_db):
    names = posteriordb.list_posteriors()
    assert len(names) == 27
    for name in names:
        post = posteriordb.load(name)
        assert post.reference_draws, name
        shapes = {v.shape for v in post.reference_draws.values()}
        assert shapes == {(10, 1000)}, (name, shapes)


def test_load_returns_data_draws_dimensions_keywords():
    post = posteriordb.load("eight_schools-eight_schools_noncentered", EMBEDDED_PATH)
    assert post.model_name == "eight_schools_noncentered" and post.data_name == "eight_schools"
    assert post.data["J"] == 8
    np.testing.assert_array_equal(post.data["y"], [28, 8, -3, 7, -1, 1, 18, 12])
    assert post.dimensions == {"theta": 8, "mu": 1, "tau": 1}
    assert "stan benchmark" in post.keywords
    assert post.stan_code is None  # the subset holds no Stan programs
    assert set(post.reference_names) == {f"theta[{i}]" for i in range(1, 9)} | {"mu", "tau"}
    # the centred posterior shares the non-centred reference draws
    centered = posteriordb.load("eight_schools-eight_schools_centered", EMBEDDED_PATH)
    np.testing.assert_array_equal(centered.reference_draws["tau"], post.reference_draws["tau"])


def test_keyword_filter(shared_db):
    names = posteriordb.list_posteriors(keyword="stan benchmark")
    assert "eight_schools-eight_schools_noncentered" in names and len(names) < 27


def test_unknown_posterior_lists_close_names():
    with pytest.raises(KeyError, match="unknown posterior 'eight_school'.*eight_schools-eight_schools_centered"):
        posteriordb.load("eight_school", EMBEDDED_PATH)


def test_port_registry():
    first = {"arK", "blr", "eight_schools_centered", "eight_schools_noncentered", "garch11", "kidscore_momiq"}
    numpyro_ports = posteriordb.ported_models("numpyro")
    assert numpyro_ports == sorted(numpyro_ports) and first <= set(numpyro_ports)
    assert set(posteriordb.ported_models("pyro")) <= set(numpyro_ports)
    assert not [m for m in numpyro_ports if m.startswith("_")]  # helpers are not ports
    assert posteriordb.ported_posteriors("numpyro", EMBEDDED_PATH) == EMBEDDED
    port = posteriordb.numpyro_model("kidiq-kidscore_momiq", EMBEDDED_PATH)
    # data are filtered to the model's signature (the data set also holds mom_hs, ...)
    assert set(port.data) == {"N", "kid_score", "mom_iq"}
    model, data = port  # unpacks like a pair
    assert model is port.model


def test_missing_port_and_bad_backend(shared_db):
    unported = sorted(set(posteriordb.list_posteriors()) - set(posteriordb.ported_posteriors("numpyro")))
    if unported:  # every posterior may be ported one day; then only the backend check is left
        with pytest.raises(KeyError, match="has no numpyro port yet"):
            posteriordb.numpyro_model(unported[0])
    with pytest.raises(ValueError, match="backend must be one of"):
        posteriordb.ported_models("stan2")
