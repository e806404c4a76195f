import json
import re
import shutil
import subprocess
import sys
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


def test_search_order(monkeypatch, tmp_path):
    monkeypatch.delenv("POSTERIOR_DB_PATH", raising=False)
    assert posteriordb.find_database() == EMBEDDED_PATH.resolve()
    other = tmp_path / "clone" / "posterior_database"
    (other / "posteriors").mkdir(parents=True)
    monkeypatch.setenv("POSTERIOR_DB_PATH", str(other))
    assert posteriordb.find_database() == other.resolve()
    # an explicit path wins over the environment; a clone's root is accepted too
    assert posteriordb.find_database(EMBEDDED_PATH.parent) == EMBEDDED_PATH.resolve()
    assert posteriordb.find_database(other.parent) == other.resolve()


def test_missing_database_says_where_it_looked(monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"path argument: {tmp_path}"):
        posteriordb.find_database(tmp_path)
    monkeypatch.setenv("POSTERIOR_DB_PATH", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"\$POSTERIOR_DB_PATH: .*nowhere"):
        posteriordb.list_posteriors()


def test_embedded_subset_lists_its_posteriors():
    assert posteriordb.list_posteriors(EMBEDDED_PATH) == EMBEDDED


def test_embedded_files_are_the_databases_own(posterior_db):
    """The shipped subset is byte-identical to posteriordb's files (data and reference draws)."""
    if posterior_db.path == EMBEDDED_PATH.resolve():
        pytest.skip(
            "the test database is the embedded subset itself: set POSTERIOR_DB_PATH to a posteriordb to compare"
        )
    posterior_db.require(*EMBEDDED)
    shared_db = posterior_db.path
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
    names = posteriordb.list_posteriors(shared_db)
    assert len(names) == 27
    for name in names:
        post = posteriordb.load(name, shared_db)
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


def test_keyword_filter():
    names = posteriordb.list_posteriors(EMBEDDED_PATH, keyword="stan benchmark")
    assert names == [
        "arK-arK",
        "eight_schools-eight_schools_centered",
        "eight_schools-eight_schools_noncentered",
        "garch-garch11",
    ]


def test_unknown_posterior_lists_close_names():
    with pytest.raises(KeyError, match="unknown posterior 'eight_school'.*eight_schools-eight_schools_centered"):
        posteriordb.load("eight_school", EMBEDDED_PATH)


def test_posterior_missing_from_the_embedded_subset_says_where_to_go_next(tmp_path):
    with pytest.raises(KeyError) as err:
        posteriordb.load("radon_all-radon_hierarchical_intercept_centered", EMBEDDED_PATH)
    message = err.value.args[0]
    assert "The database in use is the embedded subset of posteriordb that ships with ppl-ext" in message
    assert f"(6 known; the full list: {EMBEDDED})" in message
    for hint in ("https://github.com/stan-dev/posteriordb", "path=", "--path", "POSTERIOR_DB_PATH"):
        assert hint in message
    # the same through every entry point that takes a posterior name
    for call in (posteriordb.numpyro_model, posteriordb.pyro_model):
        with pytest.raises(KeyError, match="embedded subset of posteriordb"):
            call("radon", EMBEDDED_PATH)
    # another database is named by its folder
    other = tmp_path / "posterior_database"
    shutil.copytree(EMBEDDED_PATH, other)
    with pytest.raises(KeyError, match=rf"The database in use is {re.escape(str(other.resolve()))} \(6 posteriors\)"):
        posteriordb.load("radon", other)


def test_bad_arguments_name_the_argument():
    with pytest.raises(TypeError, match="name must be a posterior name"):
        posteriordb.load(3, EMBEDDED_PATH)
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        posteriordb.load("arK-arK", 3)
    with pytest.raises(TypeError, match="keyword must be a str"):
        posteriordb.list_posteriors(EMBEDDED_PATH, keyword=["stan benchmark"])
    with pytest.raises(ValueError, match="backend must be one of"):
        posteriordb.ported_posteriors("jax", EMBEDDED_PATH)


# what each embedded posterior's Stan program declares positive (<lower=0>); beta1_unit, the
# garch ports' own coordinate, is no parameter of the posterior
POSITIVE = {
    "arK-arK": ("sigma",),
    "eight_schools-eight_schools_centered": ("tau",),
    "eight_schools-eight_schools_noncentered": ("tau",),
    "garch-garch11": ("alpha0", "alpha1", "beta1"),
    "kidiq-kidscore_momiq": ("sigma",),
    "sblrc-blr": ("sigma",),
}


def test_positive_parameters_come_from_the_ports_supports():
    pytest.importorskip("jax", reason="the numpyro extra is not installed")
    pytest.importorskip("torch", reason="the pyro extra is not installed")
    from numpyro_ext.models.posteriordb import _util as numpyro_util
    from pyro_ext.models.posteriordb import _util as pyro_util

    for name, expected in POSITIVE.items():
        assert posteriordb.load(name, EMBEDDED_PATH).positive == expected, name
        # both backends' ports declare the same supports
        ports = [posteriordb.numpyro_model(name, EMBEDDED_PATH), posteriordb.pyro_model(name, EMBEDDED_PATH)]
        sites = [
            set(util.positive_sites(p.model, **p.data))
            for util, p in zip((numpyro_util, pyro_util), ports, strict=True)
        ]
        assert sites[0] == sites[1], name
        assert sites[0] - {"beta1_unit"} == set(expected) - {"beta1"}, name  # beta1 is deterministic there


def test_positive_parameters_of_a_pyro_program_come_from_the_pyro_port():
    """A program that runs Pyro reads the Pyro port's supports: it never imports JAX for them."""
    pytest.importorskip("torch", reason="the pyro extra is not installed")
    code = (
        "import sys, torch\n"
        "from adapters import posteriordb\n"
        f"print(posteriordb.load('garch-garch11', {str(EMBEDDED_PATH)!r}).positive, 'jax' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "('alpha0', 'alpha1', 'beta1') False"


GARCH11 = """
data {
  int<lower=0> T;
  real y[T];
  real<lower=0> sigma1;
}
parameters {
  real mu;
  real<lower=0> alpha0;
  real<lower=0, upper=1> alpha1;  // real<lower=0> not_a_parameter;
  real<lower=0, upper=(1 - alpha1)> beta1;
}
model {
  array[T] real sigma;
  sigma[1] = sigma1;
  for (t in 2:T) {
    sigma[t] = sqrt(alpha0 + alpha1 * pow(y[t - 1] - mu, 2) + beta1 * pow(sigma[t - 1], 2));
  }
  y ~ normal(mu, sigma);
}
"""


def test_positive_parameters_come_from_the_stan_program(tmp_path):
    """With a Stan program in the database its declarations decide, and agree with the port."""
    db = tmp_path / "posterior_database"
    shutil.copytree(EMBEDDED_PATH, db)
    (db / "models" / "stan").mkdir(exist_ok=True)
    (db / "models" / "stan" / "garch11.stan").write_text(GARCH11)
    post = posteriordb.load("garch-garch11", db)
    assert post.stan_code == GARCH11 and post.positive == POSITIVE["garch-garch11"]
    program = """
    parameters {
      real mu;                                 /* real<lower=0> commented_out; */
      vector<lower=0>[3] sd_vec;
      array[2] real<lower=0.5> shifted;
      real<lower=-1> negative_bound;
      real<lower=L> expression_bound;
      positive_ordered[2] rates;
      simplex[3] weights;
      ordered[2] cuts;
      real<lower=0> old_style[3];
    }
    transformed parameters {
      real<lower=0> tau2 = sd_vec[1] ^ 2;
      vector[3] theta;
      int intercept;
      for (i in 1:3) { real<lower=0> local = 1; theta[i] = i; }
    }
    model { real<lower=0> in_model; }
    generated quantities { real<lower=0> generated = 1; }
    """
    assert posteriordb.stan_positive_parameters(program) == (
        "sd_vec",
        "shifted",
        "rates",
        "weights",
        "old_style",
        "tau2",
    )


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


def test_missing_port_and_bad_backend(tmp_path):
    # a database whose posterior names a Stan model with no port
    db = tmp_path / "posterior_database"
    shutil.copytree(EMBEDDED_PATH, db)
    info = json.loads((db / "posteriors" / "arK-arK.json").read_text())
    info.update(name="arK-unported", model_name="unported_model")
    (db / "posteriors" / "arK-unported.json").write_text(json.dumps(info))
    shutil.copy(db / "models" / "info" / "arK.info.json", db / "models" / "info" / "unported_model.info.json")
    with pytest.raises(KeyError, match=r"'arK-unported' \(Stan model 'unported_model'\) has no numpyro port yet"):
        posteriordb.numpyro_model("arK-unported", db)
    with pytest.raises(ValueError, match="backend must be one of"):
        posteriordb.ported_models("stan2")
