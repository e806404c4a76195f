"""The two ``TwistedSMC`` twins refuse the same bad inputs with the same error type and message.

Each case runs through ``numpyro_ext.infer.TwistedSMC`` and ``pyro_ext.infer.TwistedSMC`` on the
same scalar state-space model; a case is skipped when a backend is not installed.  Data are
checked at the door (time axis, the observed sites' shapes, numeric types) and both accept the
same input types.  Both warn alike (``ReliabilityWarning``) when the weights degenerate, and
convert a run to ArviZ alike.  Also: a proposal whose latent site names match the model's is
replayed BY NAME in both backends (its sites may come in another order), and both give the
same ``log Z_hat`` for the optimal proposal of a model with two latent sites.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pytest

from adapters import smc_reference as ref
from adapters.diagnostics import ReliabilityWarning

T = 3
YS = np.array([0.3, -0.2, 0.5])


@functools.cache  # one set of models and one shared filter per backend, so each compiles once
def _numpyro():
    pytest.importorskip("jax", reason="the numpyro extra is not installed")
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    from numpyro_ext.infer import TwistedSMC
    from numpyro_ext.infer.twisted_smc import QuadraticTwist, TokenModel

    class Model:
        def init(self, state):
            state["x"] = numpyro.sample("x", dist.Normal(0.0, 1.0))

        def step(self, state, y):
            state["x"] = numpyro.sample("x", dist.Normal(state["x"], 1.0))
            numpyro.sample("y", dist.Normal(state["x"], 1.0), obs=y)

    class Renamed:
        def init(self, state):
            numpyro.sample("z", dist.Normal(0.0, 1.0))

        def step(self, state, y):
            numpyro.sample("z", dist.Normal(state["x"], 1.0))

    class Sharp(Model):
        """Observations 100 times sharper than the prior predictive: the bootstrap weights degenerate."""

        def step(self, state, y):
            state["x"] = numpyro.sample("x", dist.Normal(state["x"], 1.0))
            numpyro.sample("y", dist.Normal(state["x"], 0.01), obs=y)

    class Impossible(Model):
        def step(self, state, y):
            state["x"] = numpyro.sample("x", dist.Normal(state["x"], 1.0))
            numpyro.sample("y", dist.Uniform(10.0, 11.0), obs=y)

    def token_model(**kw):
        model = TokenModel(lambda tokens, position: jnp.log(jnp.full(2, 0.5)), lambda tokens: jnp.zeros(()), 2, T)
        return TwistedSMC(model, **kw) if kw else model

    return {
        "make": lambda model=None, **kw: TwistedSMC(model or Model(), **kw),
        "run": lambda smc, *data, **kw: smc.run(jax.random.PRNGKey(0), *(data or (jnp.asarray(YS),)), **kw),
        "log_Z_samples": lambda smc, **kw: smc.log_Z_samples(jax.random.PRNGKey(0), jnp.asarray(YS), **kw),
        "fit": lambda smc, **kw: smc.fit_twists(jax.random.PRNGKey(0), jnp.asarray(YS), **{"num_steps": 1, **kw}),
        "twist": lambda site="x", dim=1, steps=T: QuadraticTwist(site, dim, steps),
        "two_per_particle": lambda t, state: jnp.zeros(2),
        "sharp": Sharp,
        "impossible": Impossible,
        "shared": functools.cache(lambda: TwistedSMC(Model(), num_particles=2000)),
        "renamed": Renamed,
        "token_model": token_model,
        "token_log_Z_samples": lambda exact: TwistedSMC(token_model(), num_particles=4).log_Z_samples(
            jax.random.PRNGKey(0), num_runs=2, exact_samples=exact
        ),
        "array": jnp.asarray,
        "native": jnp.asarray,
    }


@functools.cache
def _pyro():
    pytest.importorskip("torch", reason="the pyro extra is not installed")
    import pyro
    import pyro.distributions as dist
    import torch

    from pyro_ext.infer import TwistedSMC
    from pyro_ext.infer.twisted_smc import QuadraticTwist, TokenModel

    class Model:
        def init(self, state):
            state["x"] = pyro.sample("x", dist.Normal(0.0, 1.0))

        def step(self, state, y):
            state["x"] = pyro.sample("x", dist.Normal(state["x"], 1.0))
            pyro.sample("y", dist.Normal(state["x"], 1.0), obs=y)

    class Renamed:
        def init(self, state):
            pyro.sample("z", dist.Normal(0.0, 1.0))

        def step(self, state, y):
            pyro.sample("z", dist.Normal(state["x"], 1.0))

    class Sharp(Model):
        """Observations 100 times sharper than the prior predictive: the bootstrap weights degenerate."""

        def step(self, state, y):
            state["x"] = pyro.sample("x", dist.Normal(state["x"], 1.0))
            pyro.sample("y", dist.Normal(state["x"], 0.01), obs=y)

    class Impossible(Model):
        def step(self, state, y):
            state["x"] = pyro.sample("x", dist.Normal(state["x"], 1.0))
            pyro.sample("y", dist.Uniform(10.0, 11.0), obs=y)

    def token_model(**kw):
        model = TokenModel(
            lambda tokens, position: torch.full((tokens.shape[0], 2), 0.5).log(),
            lambda tokens: torch.zeros(tokens.shape[0]),
            2,
            T,
        )
        return TwistedSMC(model, **kw) if kw else model

    def seeded(fn):
        def call(smc, *data, **kw):
            pyro.set_rng_seed(0)
            return fn(smc, *data, **kw)

        return call

    ys = torch.as_tensor(YS, dtype=torch.float32)
    return {
        "make": lambda model=None, **kw: TwistedSMC(model or Model(), **kw),
        "run": seeded(lambda smc, *data, **kw: smc.run(*(data or (ys,)), **kw)),
        "log_Z_samples": seeded(lambda smc, **kw: smc.log_Z_samples(ys, **kw)),
        "fit": seeded(lambda smc, **kw: smc.fit_twists(ys, **{"num_steps": 1, **kw})),
        "twist": lambda site="x", dim=1, steps=T: QuadraticTwist(site, dim, steps),
        "two_per_particle": lambda t, state: torch.zeros(state["x"].shape[0], 2),
        "sharp": Sharp,
        "impossible": Impossible,
        "shared": functools.cache(lambda: TwistedSMC(Model(), num_particles=2000)),
        "renamed": Renamed,
        "token_model": token_model,
        "token_log_Z_samples": lambda exact: TwistedSMC(token_model(), num_particles=4).log_Z_samples(
            num_runs=2, exact_samples=exact
        ),
        "array": lambda v: torch.as_tensor(np.asarray(v, dtype=np.float32)),
        "native": torch.tensor,
    }


BACKENDS = {"numpyro": _numpyro, "pyro": _pyro}


def _paths(b, init_shape=(4,), step_shape=(4, T)):
    return {"init": {"x": b["array"](np.zeros(init_shape))}, "step": {"x": b["array"](np.zeros(step_shape))}}


CASES = {
    "num_particles 0": lambda b: b["make"](num_particles=0),
    "num_particles 1.5": lambda b: b["make"](num_particles=1.5),
    "ess_threshold 0": lambda b: b["make"](ess_threshold=0.0),
    "ess_threshold 1.5": lambda b: b["make"](ess_threshold=1.5),
    "ess_threshold bool": lambda b: b["make"](ess_threshold=True),
    "ess_threshold str": lambda b: b["make"](ess_threshold="0.5"),
    "ess_threshold nan": lambda b: b["make"](ess_threshold=math.nan),
    "unknown resampling": lambda b: b["make"](resampling="residual"),
    "twist not callable": lambda b: b["make"](twist=3),
    "model without init/step": lambda b: type(b["make"]())(lambda: None),
    "proposal without init/step": lambda b: b["make"](proposal=object()),
    "token proposal": lambda b: b["token_model"](proposal="guide"),
    "bad twist method": lambda b: b["fit"](b["make"](num_particles=4, twist=b["twist"]()), method="ctx"),
    "proposal site name mismatch": lambda b: b["run"](b["make"](num_particles=4, proposal=b["renamed"]())),
    "exact_samples not a mapping": lambda b: b["log_Z_samples"](b["make"](num_particles=4), exact_samples=[1, 2]),
    "exact_samples missing step": lambda b: b["log_Z_samples"](b["make"](num_particles=4), exact_samples={"init": {}}),
    "exact_samples too few paths": lambda b: b["log_Z_samples"](
        b["make"](num_particles=4), num_runs=8, exact_samples=_paths(b)
    ),
    "exact_samples uneven path axes": lambda b: b["log_Z_samples"](
        b["make"](num_particles=4), num_runs=2, exact_samples=_paths(b, (4,), (3, T))
    ),
    "exact_samples wrong site shape": lambda b: b["log_Z_samples"](
        b["make"](num_particles=4), num_runs=2, exact_samples=_paths(b, (4, 2), (4, T))
    ),
    "token exact_samples wrong length": lambda b: b["token_log_Z_samples"](
        {"init": {}, "step": {"token": np.zeros((2, T + 1), dtype=np.int32)}}
    ),
    "token exact_samples out of range": lambda b: b["token_log_Z_samples"](
        {"init": {}, "step": {"token": np.full((2, T), 5, dtype=np.int32)}}
    ),
    "token exact_samples two sites": lambda b: b["token_log_Z_samples"](
        {"init": {}, "step": {"token": np.zeros((2, T), dtype=np.int32), "other": np.zeros((2, T), dtype=np.int32)}}
    ),
    # data checked at the door: time axis, the observed site's shape, numeric types
    "ys (T, 3) for a scalar site": lambda b: b["run"](b["make"](num_particles=4), np.zeros((20, 3))),
    "ys scalar": lambda b: b["run"](b["make"](num_particles=4), np.float64(0.3)),
    "ys string": lambda b: b["run"](b["make"](num_particles=4), "0.3 0.2"),
    "ys ragged list": lambda b: b["run"](b["make"](num_particles=4), [0.3, [0.2, 0.1]]),
    "ys object array": lambda b: b["run"](b["make"](num_particles=4), np.array([0.3, None])),
    "ys empty time axis": lambda b: b["run"](b["make"](num_particles=4), np.zeros(0)),
    "step_args uneven time axes": lambda b: b["run"](b["make"](num_particles=4), np.zeros(3), np.zeros(4)),
    "init_args a string": lambda b: b["run"](b["make"](num_particles=4), init_args="ab"),
    "init_args[0] a string": lambda b: b["run"](b["make"](num_particles=4), init_args=("a",)),
    "exact_samples site a string": lambda b: b["log_Z_samples"](
        b["make"](num_particles=4), num_runs=2, exact_samples={"init": {"x": "zeros"}, "step": {"x": np.zeros((4, T))}}
    ),
    "exact_samples wrong time axis": lambda b: b["log_Z_samples"](
        b["make"](num_particles=4), num_runs=2, exact_samples=_paths(b, (4,), (4, T + 2))
    ),
    "exact_samples other site names": lambda b: b["log_Z_samples"](
        b["make"](num_particles=4),
        num_runs=2,
        exact_samples={"init": {"x0": np.zeros(4)}, "step": {"x": np.zeros((4, T))}},
    ),
    # the other public arguments
    "log_Z_samples ess_threshold str": lambda b: b["log_Z_samples"](b["make"](num_particles=4), ess_threshold="0.5"),
    "log_Z_samples ess_threshold 2": lambda b: b["log_Z_samples"](b["make"](num_particles=4), ess_threshold=2.0),
    "log_Z_samples num_particles 0": lambda b: b["log_Z_samples"](b["make"](num_particles=4), num_particles=0),
    "log_Z_samples num_runs str": lambda b: b["log_Z_samples"](b["make"](num_particles=4), num_runs="8"),
    "get_samples num_samples 0": lambda b: b["run"](b["shared"]()).get_samples(0, num_samples=0),
    "fit_twists num_steps 0": lambda b: b["fit"](b["make"](num_particles=4, twist=b["twist"]()), num_steps=0),
    "fit_twists num_particles str": lambda b: b["fit"](b["make"](twist=b["twist"]()), num_particles="4"),
    # twists of the wrong shape
    "twist two values per particle": lambda b: b["run"](b["make"](num_particles=4, twist=b["two_per_particle"])),
    "QuadraticTwist wrong dim": lambda b: b["fit"](b["make"](num_particles=4, twist=b["twist"](dim=2))),
    "QuadraticTwist too few steps": lambda b: b["fit"](b["make"](num_particles=4, twist=b["twist"](steps=T - 1))),
    "QuadraticTwist missing site": lambda b: b["fit"](b["make"](num_particles=4, twist=b["twist"](site="z"))),
}


def _error(backend: str, case: str) -> tuple[type, str]:
    b = BACKENDS[backend]()
    with pytest.raises(Exception) as info:  # noqa: B017 - the type is what the test compares
        CASES[case](b)
    # Pyro's trace handler appends the trace's shapes after the message: compare the message itself
    return info.type, str(info.value).split("\nTrace Shapes:")[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_both_backends_refuse_bad_input_alike(case):
    numpyro_error = _error("numpyro", case)
    pyro_error = _error("pyro", case)
    assert numpyro_error == pyro_error
    assert issubclass(numpyro_error[0], ValueError | TypeError)


def test_data_of_the_wrong_shape_is_refused_naming_the_argument():
    """``ys`` of shape (20, 3) for a scalar observation: NumPyro returned log Z = -53.67 silently and Pyro
    failed with the particle count in a broadcasting error; both now name the argument and the shapes."""
    for backend in BACKENDS:
        kind, message = _error(backend, "ys (T, 3) for a scalar site")
        assert kind is ValueError
        assert message == (
            "step_args[0]: of shape (20, 3), it gives the observed site 'y' a value of shape (3,) per step, but the "
            "site has shape () per particle; expected shape (20,) (a leading time axis of 20 steps, then the site's "
            "shape)"
        )


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_lists_numpy_and_backend_arrays_give_the_same_run(backend):
    """A Python list, a NumPy array and the backend's array are the same data (same key, same run)."""
    b = BACKENDS[backend]()
    smc = b["shared"]()
    as_list = b["run"](smc, YS.tolist()).log_Z
    as_numpy = b["run"](smc, YS).log_Z
    as_backend = b["run"](smc, b["native"](YS.tolist())).log_Z  # the backend's default dtype (float64 in tests)
    assert as_list == as_numpy == as_backend
    assert math.isfinite(as_list)


def test_rng_key_and_optimizer_are_checked():
    pytest.importorskip("jax", reason="the numpyro extra is not installed")
    b = BACKENDS["numpyro"]()
    with pytest.raises(TypeError, match=r"rng_key: expected one JAX PRNG key .* got 'abc'"):
        b["make"](num_particles=4).run("abc", YS)
    with pytest.raises(TypeError, match=r"optimizer: expected an optax.GradientTransformation"):
        b["fit"](b["make"](num_particles=4, twist=b["twist"]()), optimizer="adam")


def test_proposal_site_name_mismatch_names_the_site():
    kind, message = _error("numpyro", "proposal site name mismatch")
    assert kind is ValueError
    assert message == "proposal: it samples site 'z', which is not a latent sample site of the model"


def _two_site_log_Z(backend: str) -> float:
    """log Z_hat of one step ``a, b ~ N(0, 1)``, ``y ~ N(a + b, 1)`` with the exact posterior as the proposal,
    which samples ``b`` BEFORE ``a``: replayed by name, every weight is ``p(y)``."""
    y = 0.7
    if backend == "numpyro":
        pytest.importorskip("jax", reason="the numpyro extra is not installed")
        import jax
        import jax.numpy as jnp
        import numpyro as ppl
        import numpyro.distributions as dist

        from numpyro_ext.infer import TwistedSMC
    else:
        torch = pytest.importorskip("torch", reason="the pyro extra is not installed")
        import pyro as ppl
        import pyro.distributions as dist

        from pyro_ext.infer import TwistedSMC

    class Model:
        def init(self, state):
            state["s"] = ppl.sample("s0", dist.Normal(0.0, 1.0))

        def step(self, state, y):
            a = ppl.sample("a", dist.Normal(0.0, 1.0))
            b = ppl.sample("b", dist.Normal(0.0, 1.0))
            state["s"] = a + b
            ppl.sample("y", dist.Normal(a + b, 1.0), obs=y)

    class Posterior:
        def init(self, state):
            ppl.sample("s0", dist.Normal(0.0, 1.0))

        def step(self, state, y):
            b = ppl.sample("b", dist.Normal(y / 3.0, math.sqrt(2.0 / 3.0)))
            ppl.sample("a", dist.Normal((y - b) / 2.0, math.sqrt(0.5)))

    smc = TwistedSMC(Model(), num_particles=16, proposal=Posterior())
    if backend == "numpyro":
        return smc.run(jax.random.PRNGKey(0), jnp.array([y])).log_Z
    ppl.set_rng_seed(0)
    return smc.run(torch.tensor([y])).log_Z


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_proposal_sites_are_replayed_by_name_in_any_order(backend):
    exact = -0.5 * math.log(2 * math.pi * 3.0) - 0.7**2 / 6.0  # log N(y; 0, 3)
    assert _two_site_log_Z(backend) == pytest.approx(exact, abs=1e-5)


def test_config_validates_every_argument_once():
    from adapters.smc import TwistedSMCConfig, exact_sample_paths, smc_summary

    class Model:
        def init(self, state):
            pass

        def step(self, state):
            pass

    config = TwistedSMCConfig(Model(), 8, resampling="stratified", ess_threshold=1)
    assert (config.num_particles, config.resampling, config.ess_threshold) == (8, "stratified", 1.0)
    with pytest.raises(ValueError, match="max_plate_nesting"):
        TwistedSMCConfig(Model(), max_plate_nesting=-1)
    init, steps = exact_sample_paths({"init": {"a": np.zeros((5, 2))}, "step": {"b": np.ones((5, 3))}}, 4, np.asarray)
    assert init[0].shape == (4, 2) and steps[0].shape == (4, 3)
    summary = smc_summary(-1.5, np.zeros(4), np.array([4.0, 2.0, 3.0]), np.array([False, True]))
    assert summary == {
        "log_Z": -1.5,
        "num_particles": 4.0,
        "final_ess": 3.0,
        "final_ess_fraction": 0.75,
        "min_ess": 2.0,
        "num_steps": 2.0,
        "num_resampled": 1.0,
    }


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_results_summarise_alike(backend, capsys):
    b = BACKENDS[backend]()
    result = b["run"](b["make"](num_particles=8))
    summary = result.summary()
    assert summary["log_Z"] == result.log_Z and summary["num_particles"] == 8 and summary["num_steps"] == T
    assert 0 < summary["final_ess"] <= 8
    result.print_summary()
    assert capsys.readouterr().out.splitlines()[0].startswith("log_Z")
    idata = result.to_arviz()
    assert idata.posterior["x"].shape[:2] == (1, 8) and idata.attrs["log_Z"] == result.log_Z


# ---------------------------------------------------------------------------------------
# Reliability warnings and ArviZ
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_degenerate_weights_warn_with_the_count(backend):
    """Bootstrap SMC with an observation noise of 0.01 against a prior predictive sd of ~1.4:
    each step's weights sit on about one of the 16 particles."""
    b = BACKENDS[backend]()
    with pytest.warns(ReliabilityWarning) as record:
        result = b["run"](b["make"](b["sharp"](), num_particles=16))
    messages = [str(w.message) for w in record if issubclass(w.category, ReliabilityWarning)]
    assert len(messages) == 1 and result.warnings == messages
    assert messages[0].startswith(f"TwistedSMC: the weights at {T} of {T + 1} steps are degenerate: effective ")
    assert "of 16 (below 9%)" in messages[0]


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_lost_particles_warn_in_run_and_log_Z_samples(backend):
    b = BACKENDS[backend]()
    smc = b["make"](b["impossible"](), num_particles=4)
    with pytest.warns(ReliabilityWarning, match="every particle has zero weight") as record:
        result = b["run"](smc)
    assert result.log_Z == -math.inf and len(result.warnings) == 1
    assert str(record[0].message) == result.warnings[0]
    with pytest.warns(ReliabilityWarning, match=r"TwistedSMC: 3 of 3 runs lost every particle"):
        b["log_Z_samples"](smc, num_runs=3)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_a_healthy_run_does_not_warn(backend):
    b = BACKENDS[backend]()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReliabilityWarning)
        result = b["run"](b["shared"]())
        b["log_Z_samples"](b["shared"](), num_runs=2)
    assert result.warnings == []


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_to_arviz_draws_match_the_kalman_filter(backend):
    """The model is the scalar LGSSM x_t = x_{t-1} + N(0, 1), y_t = x_t + N(0, 1): the resampled
    draws of x_T have the Kalman filter's mean within 4 Monte Carlo standard errors (variance
    P_T (1 / ESS + 1 / N): the weighted estimate, plus the resampling); each draw's ``particle``
    and ``log_weight`` point at the particle it copies; the summary is in ``attrs``."""
    b = BACKENDS[backend]()
    num = 2000
    result = b["run"](b["shared"]())
    idata = result.to_arviz()
    kalman = ref.kalman_filter(ref.scalar_lgssm(a=1.0), YS[:, None])
    mean, var = kalman.filter_means[-1, 0], kalman.filter_covs[-1, 0, 0]
    draws = idata.posterior["x"].values
    assert draws.shape == (1, num, T)
    ess = result.summary()["final_ess"]
    assert abs(draws[0, :, -1].mean() - mean) < 4 * math.sqrt(var * (1 / ess + 1 / num))
    particle = idata.sample_stats["particle"].values[0]
    log_weights = np.asarray(result.log_weights)
    np.testing.assert_array_equal(idata.sample_stats["log_weight"].values[0], log_weights[particle])
    np.testing.assert_array_equal(draws[0], np.asarray(result.get_samples()["step"]["x"])[particle])
    assert idata.attrs["log_Z"] == result.log_Z and idata.attrs["final_ess"] == ess
    assert idata.posterior["x_init"].shape == (1, num) and result.to_arviz(num_samples=7).posterior["x"].shape == (
        1,
        7,
        T,
    )
