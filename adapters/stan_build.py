"""Compiling Stan programs in process: stanc, the C++ build, the on-disk cache, the model interfaces.

A program is translated to C++ by the stanc that ships with httpstan (pystan 3) and
compiled once, with the system g++, together with a small pybind11 module of this file
(``_WRAPPER_CPP``) that builds the model from its data once and keeps it.  The compiled
module is cached on disk (:func:`cache_directory`), keyed by a hash of the program, the
wrapper, the httpstan version and the Python executable.  Calls answer in about a
microsecond for a small model and work from any thread (JAX runs ``pure_callback`` on its
own threads; httpstan's own services module crashes there and rebuilds the model at every
call).  If this module cannot be built from httpstan's files, :class:`PublicInterface`
falls back to pystan's public API (``stan.build(...).log_prob`` and friends, milliseconds a
call).  :class:`adapters.stan.StanTarget` wraps either interface as a ``Target``; this module
knows nothing of ``Target``.  pystan is an optional extra (``pip install ppl-ext[stan]``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "PPL_EXT_STAN_CACHE"
_STANC_TIMEOUT = 120.0  # seconds; stanc takes well under a second even for large programs
_LOADED: dict[str, ModuleType] = {}  # compiled modules imported in this process


# ---- availability ------------------------------------------------------------------------
def require_httpstan():
    """The ``httpstan`` package, or an ``ImportError`` saying which extra to install."""
    try:
        import httpstan
    except ImportError as err:
        raise ImportError(
            "the `stan` route (Target.from_stan, Target.from_posteriordb(..., backend='stan')) needs pystan "
            f"and httpstan: pip install ppl-ext[stan] ({err})"
        ) from err
    return httpstan


def find_compiler() -> str | None:
    """Path of the C++ compiler that building a Stan model will call (``$CXX`` or Python's ``CXX``), or ``None``."""
    cxx = os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "g++"
    words = shlex.split(cxx)
    return shutil.which(words[0]) if words else None


def _compiler_label() -> str:
    return os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "g++"


def cache_directory() -> Path:
    """The folder of compiled Stan models: ``$PPL_EXT_STAN_CACHE``, else ``$XDG_CACHE_HOME/ppl-ext/stan``.

    (``~/.cache/ppl-ext/stan`` when ``XDG_CACHE_HOME`` is unset.)  One subfolder per program
    hash; delete a subfolder (or the whole folder) to force a rebuild.
    """
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ppl-ext" / "stan"


def _httpstan_dir() -> Path:
    return Path(require_httpstan().__file__).parent


# ---- compiling -----------------------------------------------------------------------------
def clean_message(message: str, name: str) -> str:
    """Replace the temporary file names stanc and Stan print with the program's name."""
    return re.sub(r"'?[^\s'\"]*/(?:stanprog_|httpstan_)[^\s'\"/]*/[^\s'\"]*\.stan'?", f"'{name}.stan'", message).strip()


def _run_stanc(stan_code: str, name: str, args: list[str]) -> str:
    stanc = _httpstan_dir() / "stanc"
    if not stanc.is_file():
        raise FileNotFoundError(f"the Stan compiler stanc is not at {stanc}: reinstall httpstan (pip install pystan)")
    with tempfile.TemporaryDirectory(prefix="stanprog_") as tmp:
        path = Path(tmp) / f"{re.sub(r'[^A-Za-z0-9_]', '_', name) or 'model'}.stan"
        path.write_text(stan_code)
        done = subprocess.run(
            [str(stanc), *args, str(path)], capture_output=True, text=True, timeout=_STANC_TIMEOUT, check=False
        )
    if done.returncode != 0:
        message = clean_message(done.stderr or done.stdout, name)
        raise ValueError(f"Stan program {name!r} does not compile; stanc says:\n{message}")
    return done.stdout


def stanc_info(stan_code: str, name: str = "model") -> dict[str, Any]:
    """Run ``stanc --info`` on a program: its data, parameters, transformed parameters, generated quantities.

    Raises a ``ValueError`` with stanc's message and the program's ``name`` if the program
    does not parse or type-check.
    """
    return json.loads(_run_stanc(stan_code, name, ["--info"]))


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock on ``path`` across processes (no-op where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _program_key(stan_code: str) -> str:
    httpstan = require_httpstan()
    digest = hashlib.blake2b(digest_size=10)
    for part in (stan_code, _WRAPPER_CPP, httpstan.__version__, sys.version, sys.executable, sys.platform):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _find_built(folder: Path) -> Path | None:
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    built = [p for p in folder.glob("*") if p.name.endswith(suffixes)] if folder.is_dir() else []
    return built[0] if built else None


def _import_built(path: Path, module_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compile_model(stan_code: str, name: str = "model") -> ModuleType:
    """Compile a Stan program (once; then from the on-disk cache) and return its extension module.

    The module's ``Model(data...)`` holds the program bound to its data.  ``name`` labels
    error messages.  Raises a ``ValueError`` with stanc's message when the program does not
    compile, and a ``RuntimeError`` when no C++ compiler is found or the C++ build fails
    (with the compiler's output).
    """
    key = _program_key(stan_code)
    module_name = f"_ppl_stan_{key}"
    if module_name in _LOADED:
        return _LOADED[module_name]
    folder = cache_directory() / key
    built = _find_built(folder)
    if built is None:
        cpp = _run_stanc(stan_code, name, ["--name", f"model_{key}", "--print-cpp"])
        if find_compiler() is None:
            raise RuntimeError(
                f"the `stan` route needs a C++ compiler (g++) to build Stan program {name!r}, and none was found "
                f"(looked for {_compiler_label()!r} on PATH): install g++ (e.g. `apt-get install g++`) or set CXX"
            )
        with _file_lock(cache_directory() / f"{key}.lock"):
            built = _find_built(folder)  # another process may have built it while we waited
            if built is None:
                built = _build(cpp, folder, module_name, name)
    _LOADED[module_name] = _import_built(built, module_name)
    return _LOADED[module_name]


def _build(cpp: str, folder: Path, module_name: str, name: str) -> Path:
    include = _httpstan_dir() / "include"
    lib = _httpstan_dir() / "lib"
    if not (include / "stan" / "model" / "model_base.hpp").is_file():
        raise FileNotFoundError(f"httpstan ships no Stan headers at {include}")
    shutil.rmtree(folder, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix="build_", dir=folder.parent))
    (tmp / "stan_model.hpp").write_text(cpp)
    (tmp / "wrapper.cpp").write_text(_WRAPPER_CPP)
    config = {
        "name": module_name,
        "source": str(tmp / "wrapper.cpp"),
        "include_dirs": [str(tmp), str(include)],
        "define_macros": [
            ["PPL_STAN_MODULE", module_name],
            ["BOOST_DISABLE_ASSERTS", None],
            ["BOOST_PHOENIX_NO_VARIADIC_EXPRESSION", None],
            ["STAN_THREADS", None],
            ["_REENTRANT", None],
            ["_GLIBCXX_USE_CXX11_ABI", "0"],  # httpstan's bundled TBB and SUNDIALS use the old ABI
        ],
        "library_dirs": [str(lib)],
        "libraries": ["sundials_cvodes", "sundials_idas", "sundials_nvecserial", "tbb"],
        "extra_compile_args": ["-O3", "-std=c++14", "-Wno-sign-compare"],
        "extra_link_args": [f"-Wl,-rpath,{lib}"],
        "build_lib": str(tmp),
        "build_temp": str(tmp / "tmp"),
    }
    logger.info("compiling Stan program %r; this takes 30-60 s of g++ once", name)
    done = subprocess.run(
        [sys.executable, "-c", _BUILD_SCRIPT, json.dumps(config)], capture_output=True, text=True, check=False
    )
    built = _find_built(tmp)
    if done.returncode != 0 or built is None:
        output = (done.stderr or done.stdout).strip()
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(
            f"building Stan program {name!r} with the C++ compiler {find_compiler()} failed; the `stan` route "
            f"needs a working g++ toolchain (g++ and the Python headers). Compiler output (last 3000 characters):\n"
            f"{output[-3000:]}"
        )
    shutil.rmtree(tmp / "tmp", ignore_errors=True)
    tmp.rename(folder)
    return _find_built(folder)


_BUILD_SCRIPT = """
import json, sys
from setuptools import Distribution, Extension
from setuptools.command.build_ext import build_ext
c = json.loads(sys.argv[1])
ext = Extension(c["name"], sources=[c["source"]], language="c++", include_dirs=c["include_dirs"],
                define_macros=[tuple(m) for m in c["define_macros"]], library_dirs=c["library_dirs"],
                libraries=c["libraries"], extra_compile_args=c["extra_compile_args"],
                extra_link_args=c["extra_link_args"])
cmd = build_ext(Distribution({"ext_modules": [ext]}))
cmd.build_lib, cmd.build_temp = c["build_lib"], c["build_temp"]
cmd.finalize_options()
cmd.run()
"""

# The extension module: the model is built from its data once and kept; every call makes
# sure the calling thread has a Stan autodiff tape (JAX runs callbacks on its own threads).
_WRAPPER_CPP = r"""
#include "stan_model.hpp"
#include <stan/io/array_var_context.hpp>
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

namespace py = pybind11;
using dims_t = std::vector<std::vector<size_t>>;

static void ensure_tape() { static thread_local stan::math::ChainableStack tape; }

// one new autodiff variable per coordinate (emplace_back: each element gets its own vari)
static std::vector<stan::math::var> to_vars(const double* x, size_t n) {
  std::vector<stan::math::var> ad;
  ad.reserve(n);
  for (size_t i = 0; i < n; ++i) ad.emplace_back(x[i]);
  return ad;
}

class PplStanModel {
 public:
  PplStanModel(std::vector<std::string> names_r, std::vector<double> values_r, dims_t dims_r,
               std::vector<std::string> names_i, std::vector<int> values_i, dims_t dims_i, unsigned int seed) {
    ensure_tape();
    stan::io::array_var_context context(names_r, values_r, dims_r, names_i, values_i, dims_i);
    model_ = &new_model(context, seed, &std::cout);
  }
  ~PplStanModel() { delete model_; }
  size_t dim() const { return model_->num_params_r(); }
  std::vector<std::string> param_names() const {
    std::vector<std::string> out;
    model_->get_param_names(out, true, true);
    return out;
  }
  dims_t dims() const {
    dims_t out;
    model_->get_dims(out, true, true);
    return out;
  }
  std::vector<std::string> constrained_names(bool tparams, bool gqs) const {
    std::vector<std::string> out;
    model_->constrained_param_names(out, tparams, gqs);
    return out;
  }
  std::vector<std::string> unconstrained_names() const {
    std::vector<std::string> out;
    model_->unconstrained_param_names(out, false, false);
    return out;
  }
  // log density with the Jacobian, dropping only terms constant in the parameters (as Stan's samplers)
  double log_density(py::array_t<double, py::array::c_style | py::array::forcecast> x) const {
    ensure_tape();
    size_t n = check(x);
    std::vector<int> params_i;
    try {
      std::vector<stan::math::var> ad = to_vars(x.data(), n);
      double lp = model_->log_prob_propto_jacobian(ad, params_i, nullptr).val();
      stan::math::recover_memory();
      return lp;
    } catch (...) {
      stan::math::recover_memory();
      throw;
    }
  }
  py::tuple log_density_grad(py::array_t<double, py::array::c_style | py::array::forcecast> x) const {
    ensure_tape();
    size_t n = check(x);
    std::vector<int> params_i;
    std::vector<double> g(n);
    double lp;
    try {
      std::vector<stan::math::var> ad = to_vars(x.data(), n);
      stan::math::var value = model_->log_prob_propto_jacobian(ad, params_i, nullptr);
      value.grad();
      lp = value.val();
      for (size_t i = 0; i < n; ++i) g[i] = ad[i].adj();
      stan::math::recover_memory();
    } catch (...) {
      stan::math::recover_memory();
      throw;
    }
    py::ssize_t size = static_cast<py::ssize_t>(n), stride = sizeof(double);
    return py::make_tuple(lp, py::array_t<double>({size}, {stride}, g.data()));  // copies g
  }
  std::vector<double> write_array(py::array_t<double, py::array::c_style | py::array::forcecast> x,
                                  bool tparams, bool gqs, unsigned int seed) const {
    ensure_tape();
    std::vector<double> params(x.data(), x.data() + check(x));
    std::vector<int> params_i;
    std::vector<double> out;
    stan::rng_t rng(seed);
    model_->write_array(rng, params, params_i, out, tparams, gqs, nullptr);
    return out;
  }
  std::vector<double> transform_inits(std::vector<std::string> names, std::vector<double> values,
                                      dims_t dims) const {
    ensure_tape();
    stan::io::array_var_context context(names, values, dims);
    std::vector<int> params_i;
    std::vector<double> out;
    model_->transform_inits(context, params_i, out, nullptr);
    return out;
  }

 private:
  size_t check(const py::array_t<double, py::array::c_style | py::array::forcecast>& x) const {
    if (x.ndim() != 1 || static_cast<size_t>(x.shape(0)) != model_->num_params_r())
      throw std::invalid_argument("x must be a vector of length " + std::to_string(model_->num_params_r()));
    return model_->num_params_r();
  }
  stan::model::model_base* model_;
};

// built with -std=c++14 as httpstan builds its models
PYBIND11_MODULE(PPL_STAN_MODULE, m) {
  py::class_<PplStanModel>(m, "Model", py::module_local())  // one per program, so not registered globally
      .def(py::init<std::vector<std::string>, std::vector<double>, dims_t, std::vector<std::string>,
                    std::vector<int>, dims_t, unsigned int>())
      .def("dim", &PplStanModel::dim)
      .def("param_names", &PplStanModel::param_names)
      .def("dims", &PplStanModel::dims)
      .def("constrained_names", &PplStanModel::constrained_names)
      .def("unconstrained_names", &PplStanModel::unconstrained_names)
      .def("log_density", &PplStanModel::log_density)
      .def("log_density_grad", &PplStanModel::log_density_grad)
      .def("write_array", &PplStanModel::write_array)
      .def("transform_inits", &PplStanModel::transform_inits);
}
"""


def _split(values: Mapping[str, Any], reals_only: bool = False) -> tuple[list, ...]:
    """A mapping of arrays as ``array_var_context`` arguments (values flattened column-major, as Stan reads them)."""
    names_r, values_r, dims_r, names_i, values_i, dims_i = [], [], [], [], [], []
    for key, value in values.items():
        arr = np.asarray(value)
        flat = arr.ravel(order="F")
        if arr.dtype.kind == "f" or reals_only:
            names_r.append(key)
            values_r.extend(flat.astype(np.float64).tolist())
            dims_r.append(list(arr.shape))
        else:
            names_i.append(key)
            values_i.extend(flat.astype(np.int64).tolist())
            dims_i.append(list(arr.shape))
    if reals_only:
        return names_r, values_r, dims_r
    return names_r, values_r, dims_r, names_i, values_i, dims_i


# ---- the two interfaces (what StanTarget calls) ---------------------------------------------------------------------
class CompiledInterface:
    """The program's own compiled extension module: the model is built from the data once (fast)."""

    kind = "compiled"

    def __init__(self, stan_code: str, data: dict[str, Any], name: str):
        module = compile_model(stan_code, name)
        self._model = module.Model(*_split(data), 0)

    def param_names(self):
        return list(self._model.param_names())

    def dims(self):
        return [list(d) for d in self._model.dims()]

    def constrained_names(self):
        return list(self._model.constrained_names(True, True))

    def unconstrained_names(self):
        return list(self._model.unconstrained_names())

    def dim(self):
        return int(self._model.dim())

    def log_density(self, x):
        return self._model.log_density(x)

    def log_density_grad(self, x):
        return self._model.log_density_grad(x)

    def write_array(self, x, include_tparams, include_gqs):
        return self._model.write_array(x, include_tparams, include_gqs, 0)

    def transform_inits(self, params):
        return self._model.transform_inits(*_split(params, reals_only=True))


class PublicInterface:
    """pystan's public ``stan.build`` model (slow: every call goes through httpstan's HTTP layer)."""

    kind = "public"

    def __init__(self, stan_code: str, data: dict[str, Any], name: str):
        import stan

        self._model = stan.build(stan_code, data={k: np.asarray(v).tolist() for k, v in data.items()})

    def param_names(self):
        return list(self._model.param_names)

    def dims(self):
        return [list(d) for d in self._model.dims]

    def constrained_names(self):
        return [n.replace("[", ".").replace(",", ".").rstrip("]") for n in self._model.constrained_param_names]

    def unconstrained_names(self):
        return None  # not exposed: found by probing

    def dim(self):
        return None

    def log_density(self, x):
        return self._model.log_prob(np.asarray(x, dtype=np.float64).tolist(), adjust_transform=True)

    def log_density_grad(self, x):
        xs = np.asarray(x, dtype=np.float64).tolist()
        return self._model.log_prob(xs, adjust_transform=True), np.asarray(self._model.grad_log_prob(xs))

    def write_array(self, x, include_tparams, include_gqs):
        xs = np.asarray(x, dtype=np.float64).tolist()
        return self._model.constrain_pars(xs, include_tparams=include_tparams, include_gqs=include_gqs)

    def transform_inits(self, params):
        return self._model.unconstrain_pars({k: np.asarray(v).tolist() for k, v in params.items()})


def prepare_data(data: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise TypeError(f"data must be a mapping from the Stan program's data names to values, got {type(data)}")
    out = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise TypeError(f"data keys must be the Stan data names as strings, got {key!r}")
        arr = np.asarray(value)
        if arr.dtype.kind == "b":
            arr = arr.astype(np.int64)
        if arr.dtype.kind not in "iuf":
            raise ValueError(f"data[{key!r}] must hold integers or reals, got dtype {arr.dtype}")
        out[key] = arr
    return out
