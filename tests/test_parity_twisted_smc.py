"""The two ``TwistedSMC`` twins refuse the same bad inputs with the same error type and message.

Each case runs through ``numpyro_ext.infer.TwistedSMC`` and ``pyro_ext.infer.TwistedSMC`` on the
same scalar state-space model; a case is skipped when a backend is not installed.  Also: a
proposal whose latent site names match the model's is replayed BY NAME in both backends (its
sites may come in another order), and both give the same ``log Z_hat`` for the optimal
proposal of a model with two latent sites.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

T = 3
YS = np.array([0.3, -0.2, 0.5])


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

    def token_model(**kw):
        model = TokenModel(lambda tokens, position: jnp.log(jnp.full(2, 0.5)), lambda tokens: jnp.zeros(()), 2, T)
        return TwistedSMC(model, **kw) if kw else model

    return {
        "make": lambda **kw: TwistedSMC(Model(), **kw),
        "run": lambda smc, **kw: smc.run(jax.random.PRNGKey(0), jnp.asarray(YS), **kw),
        "log_Z_samples": lambda smc, **kw: smc.log_Z_samples(jax.random.PRNGKey(0), jnp.asarray(YS), **kw),
        "fit": lambda smc, **kw: smc.fit_twists(jax.random.PRNGKey(0), jnp.asarray(YS), num_steps=1, **kw),
        "twist": lambda: QuadraticTwist("x", 1, T),
        "renamed": Renamed,
        "token_model": token_model,
        "token_log_Z_samples": lambda exact: TwistedSMC(token_model(), num_particles=4).log_Z_samples(
            jax.random.PRNGKey(0), num_runs=2, exact_samples=exact
        ),
        "array": jnp.asarray,
    }


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

    def token_model(**kw):
        model = TokenModel(
            lambda tokens, position: torch.full((tokens.shape[0], 2), 0.5).log(),
            lambda tokens: torch.zeros(tokens.shape[0]),
            2,
            T,
        )
        return TwistedSMC(model, **kw) if kw else model

    def seeded(fn):
        def call(smc, **kw):
            pyro.set_rng_seed(0)
            return fn(smc, **kw)

        return call

    ys = torch.as_tensor(YS, dtype=torch.float32)
    return {
        "make": lambda **kw: TwistedSMC(Model(), **kw),
        "run": seeded(lambda smc, **kw: smc.run(ys, **kw)),
        "log_Z_samples": seeded(lambda smc, **kw: smc.log_Z_samples(ys, **kw)),
        "fit": seeded(lambda smc, **kw: smc.fit_twists(ys, num_steps=1, **kw)),
        "twist": lambda: QuadraticTwist("x", 1, T),
        "renamed": Renamed,
        "token_model": token_model,
        "token_log_Z_samples": lambda exact: TwistedSMC(token_model(), num_particles=4).log_Z_samples(
            num_runs=2, exact_samples=exact
        ),
        "array": lambda v: torch.as_tensor(np.asarray(v, dtype=np.float32)),
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
