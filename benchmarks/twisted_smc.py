"""Study ``twisted-smc``: bootstrap SMC, SIS and twisted SMC (CTL, SIXO twists) side by side.

Targets with exact answers: linear-Gaussian state-space models (d = 4, m = 2, T = 50 and
100; Kalman-filter log Z, exact posterior paths by FFBS) and a Markov "toy language model"
(V = 8 tokens, T = 8, additive potential; exact log Z and exact samples).  Methods, all
:class:`numpyro_ext.infer.TwistedSMC` unless named otherwise:

* ``bootstrap``  no twist; the model's transition (state-space) or ``p0`` (tokens) proposes;
* ``sis``        the same without resampling;
* ``ctl``        twists learned by contrastive twist learning from the filter's own particles
  (no exact samples), ``QuadraticTwist`` / ``TabularTwist``, trained once at 128 particles;
* ``sixo``       the same twists learned by SIXO;
* ``pyro-smcfilter``  Pyro's ``SMCFilter`` (bootstrap guide), the peer, state-space only (a
  slow Python loop: ``runs / 8`` runs, at least 4).

Per (target, method, particles N): over ``--runs`` independent runs, the bias and variance
of log Z_hat, the variance ratio to ``bootstrap`` at the same N, the bound gap (conditional
SMC upper bound from exact paths minus the SMC lower bound), and wall time per
particle-step.  Goals: CTL variance >= 10x lower than bootstrap at equal N, and a gap that
closes as N grows.  Writes the JSON result and ``twisted-smc-gap.png`` (gap vs particles).
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np

from benchmarks._harness import RESULTS_DIR, ResultFile, table

TARGETS = ("lgssm-50", "lgssm-100", "toy-lm")
METHODS = ("bootstrap", "sis", "ctl", "sixo", "pyro-smcfilter")


def _lgssm_problem(T: int, seed: int = 0) -> dict[str, Any]:
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    from adapters import smc_reference as ref
    from numpyro_ext.infer.twisted_smc import QuadraticTwist

    rng = np.random.default_rng(seed)
    model = ref.random_lgssm(rng, 4, 2)
    _, ys = model.simulate(rng, T)
    A, Q, C, R, m0, P0 = (jnp.asarray(v) for v in (model.A, model.Q, model.C, model.R, model.m0, model.P0))

    class LinearGaussian:
        def init(self, state):
            state["x"] = numpyro.sample("x0", dist.MultivariateNormal(m0, P0))

        def step(self, state, y):
            state["x"] = numpyro.sample("x", dist.MultivariateNormal(A @ state["x"], Q))
            numpyro.sample("y", dist.MultivariateNormal(C @ state["x"], R), obs=y)

    paths = ref.sample_posterior(model, ys, rng, 256)
    return {
        "model": LinearGaussian(),
        "args": (jnp.asarray(ys),),
        "log_Z": ref.kalman_filter(model, ys).log_Z,
        "twist": QuadraticTwist("x", 4, T),
        "exact": {"init": {"x0": jnp.asarray(paths[:, 0])}, "step": {"x": jnp.asarray(paths[:, 1:])}},
        "bootstrap_proposal": None,
        "steps": T + 1,
        "reference": model,
        "ys": ys,
    }


def _toy_lm_problem(seed: int = 0, V: int = 8, T: int = 8) -> dict[str, Any]:
    import jax.numpy as jnp

    from adapters import smc_reference as ref
    from numpyro_ext.infer.twisted_smc import TabularTwist, TokenModel

    rng = np.random.default_rng(seed)
    hmm = ref.random_token_hmm(rng, V)
    g = 1.5 * rng.normal(size=(T, V))
    log_pi, log_M, G = jnp.asarray(hmm.log_pi), jnp.asarray(hmm.log_M), jnp.asarray(g)

    def next_token_log_probs(tokens, position):
        return jnp.where(position == 0, log_pi, log_M[tokens[jnp.maximum(position - 1, 0)]])

    def log_potential(tokens):
        return jnp.sum(G[jnp.arange(T), tokens])

    exact = ref.sample_exact_additive(hmm, g, rng, 256)
    return {
        "model": TokenModel(next_token_log_probs, log_potential, V, T),
        "args": (),
        "log_Z": ref.exact_log_Z_additive(hmm, g),
        "twist": TabularTwist(V, T),
        "exact": {"init": {}, "step": {"token": jnp.asarray(exact)}},
        "bootstrap_proposal": "prior",
        "steps": T,
    }


def _pyro_smcfilter_log_Z(problem: dict[str, Any], num_particles: int, runs: int, seed: int):
    """log Z_hat of Pyro's SMCFilter (bootstrap guide) over ``runs`` runs, and seconds per run.

    SMCFilter normalises its weights after every step and exposes no log Z; a subclass
    reads the increment ``logsumexp(w_new) - logsumexp(w_old)`` of every weight update.
    """
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.infer import SMCFilter

    ref = problem["reference"]
    A, Q, C, R, m0, P0 = (torch.as_tensor(v) for v in (ref.A, ref.Q, ref.C, ref.R, ref.m0, ref.P0))

    class Model:
        def init(self, state):
            state["x"] = pyro.sample("x0", dist.MultivariateNormal(m0, P0))

        def step(self, state, y):
            state["x"] = pyro.sample("x", dist.MultivariateNormal(state["x"] @ A.T, Q))
            pyro.sample("y", dist.MultivariateNormal(state["x"] @ C.T, R), obs=y)

    class Guide:
        def init(self, state):
            pyro.sample("x0", dist.MultivariateNormal(m0, P0))

        def step(self, state, y):
            pyro.sample("x", dist.MultivariateNormal(state["x"] @ A.T, Q))

    class CountingFilter(SMCFilter):
        log_Z = 0.0

        def _update_weights(self, model_trace, guide_trace):
            before = torch.logsumexp(self.state._log_weights, -1)
            log_w = self.state._log_weights.clone()
            super()._update_weights(model_trace, guide_trace)
            for name, site in model_trace.nodes.items():
                if site["type"] == "sample" and not site["is_observed"]:
                    log_w = (
                        log_w
                        + site["fn"].log_prob(site["value"])
                        - guide_trace.nodes[name]["fn"].log_prob(site["value"])
                    )
                elif site["type"] == "sample":
                    log_w = log_w + site["fn"].log_prob(site["value"])
            self.log_Z += float(torch.logsumexp(log_w, -1) - before)

    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        A, Q, C, R, m0, P0 = (v.double() for v in (A, Q, C, R, m0, P0))
        ys = torch.as_tensor(problem["ys"])
        out = np.empty(runs)
        start = time.perf_counter()
        for r in range(runs):
            pyro.set_rng_seed(seed * 1000 + r)
            smc = CountingFilter(Model(), Guide(), num_particles=num_particles, max_plate_nesting=0)
            smc.log_Z = 0.0  # init's weight update adds log mean exp of the initial weights
            smc.init()
            for y in ys:
                smc.step(y)
            out[r] = smc.log_Z
        return out, (time.perf_counter() - start) / runs
    finally:
        torch.set_default_dtype(default)


def run_target(name: str, methods: list[str], particles: list[int], runs: int, twist_steps: int, seed: int):
    import jax
    import optax

    from numpyro_ext.infer import TwistedSMC

    problem = _toy_lm_problem(seed) if name == "toy-lm" else _lgssm_problem(int(name.split("-")[1]), seed)
    model, args, log_Z = problem["model"], problem["args"], problem["log_Z"]
    key = jax.random.PRNGKey(seed)
    learned = {}
    for method in ("ctl", "sixo"):
        if method in methods:
            smc = TwistedSMC(model, num_particles=128, twist=problem["twist"])
            start = time.perf_counter()
            smc.fit_twists(key, *args, method=method, num_steps=twist_steps, optimizer=optax.adam(3e-2))
            learned[method] = (smc.twist_params, time.perf_counter() - start)
    rows = []
    for n in particles:
        for method in methods:
            if method == "pyro-smcfilter":
                if name == "toy-lm":
                    continue
                log_Z_hat, seconds = _pyro_smcfilter_log_Z(problem, n, max(4, runs // 8), seed)
                gap = math.nan
            else:
                kwargs = {"num_particles": n}
                if method in learned:
                    kwargs.update(twist=problem["twist"], twist_params=learned[method][0])
                else:
                    kwargs.update(proposal=problem["bootstrap_proposal"])
                smc = TwistedSMC(model, **kwargs)
                threshold = 0.0 if method == "sis" else None
                smc.log_Z_samples(key, *args, num_runs=runs, ess_threshold=threshold).block_until_ready()  # compile
                start = time.perf_counter()
                log_Z_hat = np.asarray(
                    smc.log_Z_samples(jax.random.fold_in(key, n), *args, num_runs=runs, ess_threshold=threshold)
                )
                seconds = (time.perf_counter() - start) / runs
                upper = smc.log_Z_samples(
                    jax.random.fold_in(key, n + 1),
                    *args,
                    num_runs=min(runs, 256),
                    ess_threshold=threshold,
                    exact_samples=problem["exact"],
                )
                gap = float(np.mean(np.asarray(upper)) - np.mean(log_Z_hat))
            finite = log_Z_hat[np.isfinite(log_Z_hat)]
            rows.append(
                {
                    "target": name,
                    "method": method,
                    "particles": n,
                    "runs": len(log_Z_hat),
                    "bias": float(np.mean(log_Z_hat) - log_Z),
                    "variance": float(np.var(finite, ddof=1)) if len(finite) > 1 else math.nan,
                    "bound_gap": gap,
                    "us_per_particle_step": 1e6 * seconds / (n * problem["steps"]),
                    "twist_fit_s": learned[method][1] if method in learned else None,
                }
            )
    boot = {r["particles"]: r["variance"] for r in rows if r["method"] == "bootstrap"}
    for r in rows:
        r["variance_ratio_to_bootstrap"] = boot[r["particles"]] / r["variance"] if r["variance"] else math.nan
    return rows


def plot_gaps(rows: list[dict[str, Any]], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = sorted({r["target"] for r in rows})
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.4), squeeze=False)
    for ax, target in zip(axes[0], targets, strict=True):
        for method in METHODS:
            pts = [(r["particles"], r["bound_gap"]) for r in rows if r["target"] == target and r["method"] == method]
            pts = [(n, g) for n, g in pts if g is not None and math.isfinite(g)]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=method)
        ax.set_xscale("log", base=2)
        ax.set_yscale("symlog", linthresh=1e-2)  # a tight gap's estimate can be slightly negative
        ax.set_xlabel("particles")
        ax.set_ylabel("CSMC upper - SMC lower (nats)")
        ax.set_title(target)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None, out_dir=None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks twisted-smc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--particles", default="16,64,256,1024")
    parser.add_argument("--runs", type=int, default=64)
    parser.add_argument("--twist-steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    targets, methods = args.targets.split(","), args.methods.split(",")
    for t in targets:
        if t not in TARGETS:
            raise SystemExit(f"--targets: unknown {t!r}; known: {list(TARGETS)}")
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"--methods: unknown {m!r}; known: {list(METHODS)}")
    import jax

    jax.config.update("jax_enable_x64", True)
    particles = [int(p) for p in args.particles.split(",")]
    out = ResultFile("twisted-smc", vars(args), out_dir)
    from tqdm.auto import tqdm

    try:
        for target in tqdm(targets, desc="twisted-smc", unit="target"):
            for row in run_target(target, methods, particles, args.runs, args.twist_steps, args.seed):
                out.add(row)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {len(out.data['runs'])} finished rows kept in {out.path}")
        raise
    out.finish()
    rows = out.data["runs"]
    columns = ["target", "method", "particles", "bias", "variance", "variance_ratio_to_bootstrap", "bound_gap",
               "us_per_particle_step"]  # fmt: skip
    print(table(rows, columns))
    figure = (RESULTS_DIR if out_dir is None else out_dir) / "twisted-smc-gap.png"
    plot_gaps(rows, figure)
    print(f"\nwritten: {out.path} and {figure}")
    return out.data
