"""Study ``amortized-vi``: F-VI (``AutoNormal``) against A-VI (``AutoAmortizedNormal``) as ``n`` grows.

Margossian & Blei, "Amortized Variational Inference: When and Why?" (UAI 2024, arXiv:2307.11018), Sec. 5.
Problems (each a NumPyro model with a subsampled plate ``"data"`` whose latents are local):

* ``linear``: ``z_i ~ N(0, 1)``, ``x_i ~ N(theta + tau z_i, sigma^2)``, ``tau = 1.155``, ``sigma = 2.43``, theta
  known: every ``z_i``'s posterior is affine in ``x_i``, so A-VI can reach F-VI's optimum (no gap);
* ``nonlinear``: ``z_i ~ N(0, 5^2)``, ``x_i ~ N(theta + z_i sin z_i + z_i, exp(cos z_i)^2)`` (M&B's nonlinear
  example): the posterior of ``z_i`` is multimodal in places, so a Gaussian family has an approximation gap;
* ``bnn-latent``: a Bayesian decoder, ``z_i ~ N(0, I_2)``, ``x_i ~ N(f_W(z_i), 0.3^2 I_8)`` with ``f_W`` a
  2-16-8 tanh network whose weights ``W ~ N(0, 1)`` are global latents (a BNN whose inputs are latent);
* ``ode``: the hierarchical ODE model of :mod:`numpyro_ext.models.hierarchical_ode` (VI-HDS style: population,
  10 groups, ``n`` individuals each with a 24-point two-species series), data drawn from the model at the true
  population values; A-VI's encoder is conditional (series and group one-hot), both guides start at the prior
  median (``init_to_median``).

For each problem, ``n`` and method, the same Adam (``--learning-rate``), subsample size (``--batch-size``) and
steps; every ``--eval-every`` steps the full-data ELBO is estimated on a fixed random evaluation set of
``--eval-size`` data (scaled by ``n / eval-size``; the same set for both methods, ``--eval-draws`` global draws) and
recorded against the training wall time (compilation and evaluation excluded).  A step whose loss or gradient is
not finite is skipped (``optax.apply_if_finite``) and counted (``skipped_steps``).  At the end, the full-data ELBO of
each fit by :func:`numpyro_ext.infer.amortized.per_datum_elbo` (every datum, chunked).  Reported: final ELBOs, the
A-VI gap relative to ``|ELBO(F-VI)|``, the guide's parameter memory, and ``fvi_over_avi_seconds``: the wall time
F-VI needs to first reach the worse of the two best checkpoint ELBOs (less 0.1% of it), over A-VI's (``inf`` when
F-VI never gets there within the steps).

Goal (issue 23): on ``linear``, A-VI within 1% of F-VI's ELBO with guide memory independent of ``n``; A-VI
faster than F-VI in wall time to the same ELBO at ``n >= 1e4``.  Rows are written as they finish and a rerun of
the same day skips finished (problem, n, method) rows.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._harness import RESULTS_DIR, ResultFile, table

PROBLEMS = ("linear", "nonlinear", "bnn-latent", "ode")
ODE_GROUPS = 10
METHODS = ("fvi", "avi")
SIZES = (1_000, 10_000, 100_000)
TAU, SIGMA, THETA = 1.155, 2.43, 0.7
DECODER = (2, 16, 8)
DECODER_NOISE = 0.3


def _models():
    """The problems' NumPyro models and data generators (imported lazily: the module loads without JAX)."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    def linear(x, batch):
        with numpyro.plate("data", x.shape[0], subsample_size=batch) as idx:
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))
            numpyro.sample("x", dist.Normal(THETA + TAU * z, SIGMA), obs=x[idx])

    def nonlinear(x, batch):
        with numpyro.plate("data", x.shape[0], subsample_size=batch) as idx:
            z = numpyro.sample("z", dist.Normal(0.0, 5.0))
            numpyro.sample("x", dist.Normal(THETA + z * jnp.sin(z) + z, jnp.exp(jnp.cos(z))), obs=x[idx])

    def decoder(weights, z):
        (w1, b1), (w2, b2) = weights
        return jnp.tanh(z @ w1 + b1) @ w2 + b2

    def bnn_latent(x, batch):
        d_in, d_hidden, d_out = DECODER
        weights = []
        for name, (a, b) in (("layer1", (d_in, d_hidden)), ("layer2", (d_hidden, d_out))):
            w = numpyro.sample(f"{name}_w", dist.Normal(0.0, 1.0).expand([a, b]).to_event(2))
            bias = numpyro.sample(f"{name}_b", dist.Normal(0.0, 1.0).expand([b]).to_event(1))
            weights.append((w, bias))
        with numpyro.plate("data", x.shape[0], subsample_size=batch) as idx:
            z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([d_in]).to_event(1))
            numpyro.sample("x", dist.Normal(decoder(weights, z), DECODER_NOISE).to_event(1), obs=x[idx])

    def data(problem: str, n: int, seed: int) -> Any:
        key_z, key_x, key_w = jax.random.split(jax.random.PRNGKey(seed), 3)
        if problem == "linear":
            return THETA + TAU * jax.random.normal(key_z, (n,)) + SIGMA * jax.random.normal(key_x, (n,))
        if problem == "nonlinear":
            z = 5.0 * jax.random.normal(key_z, (n,))
            return THETA + z * jnp.sin(z) + z + jnp.exp(jnp.cos(z)) * jax.random.normal(key_x, (n,))
        d_in, d_hidden, d_out = DECODER
        k1, k2, k3, k4 = jax.random.split(key_w, 4)
        weights = [
            (jax.random.normal(k1, (d_in, d_hidden)), jax.random.normal(k2, (d_hidden,))),
            (jax.random.normal(k3, (d_hidden, d_out)), jax.random.normal(k4, (d_out,))),
        ]
        z = jax.random.normal(key_z, (n, d_in))
        return decoder(weights, z) + DECODER_NOISE * jax.random.normal(key_x, (n, d_out))

    return {"linear": linear, "nonlinear": nonlinear, "bnn-latent": bnn_latent}, data


def problem_setup(problem: str, n: int, args: argparse.Namespace) -> tuple[tuple, Any, Any, dict[str, Any]]:
    """``(arrays, build_args, model, guide_options)``: the data as a tuple of arrays (jit arguments),
    ``build_args(arrays)`` -> the model's positional arguments (Python ints closed over), the model, and the
    guides' extra options (the ODE's conditional encoder inputs and median initialisation)."""
    import jax.numpy as jnp

    batch = min(args.batch_size, n)
    if problem != "ode":
        models, make_data = _models()
        return (make_data(problem, n, args.seed),), lambda arrays: (arrays[0], batch), models[problem], {}
    from numpyro import handlers
    from numpyro.infer.initialization import init_to_median

    from adapters.hierarchical_ode import HierarchicalODEConfig
    from numpyro_ext.models.hierarchical_ode import encoder_inputs, hierarchical_ode_model

    config = HierarchicalODEConfig(num_groups=ODE_GROUPS, individuals_per_group=max(1, n // ODE_GROUPS))
    times, group = jnp.asarray(config.times), jnp.asarray(config.group)
    truth = {
        "log_theta_pop": jnp.asarray(config.log_theta_pop),
        "tau_group": config.tau_group,
        "tau_ind": config.tau_ind,
        "sigma": config.sigma,
    }
    # the data: the model's own draw at the true population-level values (diffrax, vmapped: fast at 1e5)
    generator = handlers.seed(handlers.condition(hierarchical_ode_model, data=truth), rng_seed=args.seed)
    obs = handlers.trace(generator).get_trace(times, group, ODE_GROUPS)["obs"]["value"]
    if not bool(jnp.all(jnp.isfinite(obs))):
        raise RuntimeError("ode: the generator produced non-finite observations")
    options = {"init_loc_fn": init_to_median, "inputs": encoder_inputs}
    return (
        (times, group, obs),
        lambda arrays: (arrays[0], arrays[1], ODE_GROUPS, arrays[2], batch),
        hierarchical_ode_model,
        options,
    )


def run_one(problem: str, n: int, method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train one method on one problem at one ``n``; the row holds the ELBO trace and the final numbers."""
    import jax
    import jax.numpy as jnp
    import optax
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal

    from numpyro_ext.infer.amortized import AutoAmortizedNormal, per_datum_elbo, per_datum_log_weights

    arrays, build_args, model, guide_options = problem_setup(problem, n, args)
    if method == "fvi":
        guide = AutoNormal(model, **{k: v for k, v in guide_options.items() if k == "init_loc_fn"})
    else:
        guide = AutoAmortizedNormal(model, hidden=tuple(args.hidden), **guide_options)
    # a step with a non-finite loss or gradient is skipped, always (optax applies it after max_consecutive_errors
    # in a row: the nonlinear problem's A-VI at n = 1e3 met 100 in a row and its parameters became NaN)
    optimizer = optax.apply_if_finite(optax.adam(args.learning_rate), max_consecutive_errors=2**30)
    svi = SVI(model, guide, optimizer, Trace_ELBO())
    state = svi.init(jax.random.PRNGKey(args.seed + 1), *build_args(arrays))

    def chunk(state, arrays):
        model_args = build_args(arrays)
        return jax.lax.scan(lambda s, _: svi.update(s, *model_args), state, None, length=args.eval_every)

    eval_size = min(args.eval_size, n)
    # sorted: NumPyro reads an index set of all n data as the whole plate in its natural order
    eval_indices = jnp.asarray(np.sort(np.random.default_rng(args.seed + 2).choice(n, eval_size, replace=False)))

    def estimate(params, key, arrays):
        model_args = build_args(arrays)

        def one(key):
            terms = per_datum_log_weights(model, guide, params, model_args, {}, key, "data", 1, indices=eval_indices)
            return terms.global_term + n / eval_size * jnp.sum(terms.local[0])

        return jnp.mean(jax.vmap(one)(jax.random.split(key, args.eval_draws)))

    chunk = jax.jit(chunk).lower(state, arrays).compile()
    estimate = jax.jit(estimate).lower(svi.get_params(state), jax.random.PRNGKey(0), arrays).compile()
    trace, wall, eval_key = [], 0.0, jax.random.PRNGKey(args.seed + 3)
    for step in range(args.eval_every, args.steps + 1, args.eval_every):
        start = time.perf_counter()
        state, losses = chunk(state, arrays)
        jax.block_until_ready(state)
        wall += time.perf_counter() - start
        eval_key, key = jax.random.split(eval_key)
        elbo = float(estimate(svi.get_params(state), key, arrays))
        trace.append({"step": step, "wall_s": wall, "elbo": elbo, "loss": float(jnp.mean(losses))})
    params = svi.get_params(state)
    finite_states = jax.tree_util.tree_leaves(
        state.optim_state, is_leaf=lambda node: isinstance(node, optax.ApplyIfFiniteState)
    )
    skipped = sum(int(s.total_notfinite) for s in finite_states if isinstance(s, optax.ApplyIfFiniteState))
    final = per_datum_elbo(
        model, guide, params, *build_args(arrays), num_particles=args.final_draws,
        rng_key=jax.random.PRNGKey(args.seed + 4), batch_size=max(min(args.batch_size, n), 4096),
    )  # fmt: skip
    num_params = int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))
    return {
        "problem": problem,
        "n": n,
        "method": method,
        "elbo": final.elbo,
        "elbo_se": final.elbo_se,
        "elbo_per_datum": final.elbo / n,
        "guide_params": num_params,
        "guide_bytes": int(sum(np.asarray(leaf).nbytes for leaf in jax.tree_util.tree_leaves(params))),
        "train_wall_s": wall,
        "skipped_steps": skipped,
        "seconds_per_step": wall / args.steps,
        "trace": trace,
    }


def time_to(trace: list[dict[str, Any]], target: float) -> float:
    """The training wall time of the first checkpoint whose ELBO reaches ``target`` (``inf``: none does)."""
    return next((c["wall_s"] for c in trace if c["elbo"] >= target), math.inf)


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (problem, n): both methods' ELBOs, the relative gap, memory and the time ratio."""
    by = {(r["problem"], r["n"], r["method"]): r for r in rows if r.get("status", "ok") == "ok"}
    out = []
    for problem, n in sorted({(r["problem"], r["n"]) for r in rows}, key=lambda k: (PROBLEMS.index(k[0]), k[1])):
        fvi, avi = by.get((problem, n, "fvi")), by.get((problem, n, "avi"))
        if fvi is None or avi is None:
            continue
        best_f = max(c["elbo"] for c in fvi["trace"])
        best_a = max(c["elbo"] for c in avi["trace"])
        target = min(best_f, best_a) - 1e-3 * abs(min(best_f, best_a))
        t_f, t_a = time_to(fvi["trace"], target), time_to(avi["trace"], target)
        out.append(
            {
                "problem": problem,
                "n": n,
                "fvi_elbo": fvi["elbo"],
                "avi_elbo": avi["elbo"],
                "gap": fvi["elbo"] - avi["elbo"],
                "relative_gap": (fvi["elbo"] - avi["elbo"]) / abs(fvi["elbo"]),
                "fvi_bytes": fvi["guide_bytes"],
                "avi_bytes": avi["guide_bytes"],
                "fvi_s_per_step": fvi["seconds_per_step"],
                "avi_s_per_step": avi["seconds_per_step"],
                "fvi_over_avi_seconds": t_f / t_a if math.isfinite(t_a) else math.nan,
            }
        )
    return out


def goals(summary: list[dict[str, Any]]) -> dict[str, Any]:
    linear = [s for s in summary if s["problem"] == "linear"]
    large = [s for s in summary if s["n"] >= 10_000]
    return {
        "linear_gap_below_1pct": {s["n"]: s["relative_gap"] < 0.01 for s in linear},
        "linear_avi_bytes_by_n": {s["n"]: s["avi_bytes"] for s in linear},
        "avi_faster_at_n_ge_1e4": {f"{s['problem']}@{s['n']}": s["fvi_over_avi_seconds"] > 1 for s in large},
    }


def main(argv: list[str] | None = None, out_dir: Any = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks amortized-vi", description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", default=",".join(PROBLEMS), help=f"any of {list(PROBLEMS)}")
    parser.add_argument("--sizes", default=",".join(str(n) for n in SIZES), help="numbers of data n")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"any of {list(METHODS)}")
    parser.add_argument("--steps", type=int, default=20_000, help="Adam steps per run (both methods)")
    parser.add_argument("--eval-every", type=int, default=500, help="steps between ELBO checkpoints")
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--batch-size", type=int, default=256, help="the plate's subsample size")
    parser.add_argument("--hidden", default="64", help="A-VI's encoder hidden widths, comma-separated ('' affine)")
    parser.add_argument("--eval-size", type=int, default=4096, help="data in the checkpoints' evaluation set")
    parser.add_argument("--eval-draws", type=int, default=4, help="global draws per checkpoint ELBO")
    parser.add_argument("--final-draws", type=int, default=16, help="global draws of the final full-data ELBO")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default=None, help="write amortized-vi-<tag>-<date>.json")
    args = parser.parse_args(argv)
    problems = [p for p in args.problems.split(",") if p]
    methods = [m for m in args.methods.split(",") if m]
    unknown = [p for p in problems if p not in PROBLEMS] + [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"--problems/--methods: unknown {unknown}; problems {list(PROBLEMS)}, methods {list(METHODS)}")
    try:
        sizes = [int(float(s)) for s in args.sizes.split(",") if s]
        args.hidden = [int(h) for h in args.hidden.split(",") if h]
    except ValueError as err:
        raise SystemExit(f"--sizes and --hidden take comma-separated integers: {err}") from None
    if not sizes or min(sizes) < 2 or args.steps < args.eval_every or args.eval_every < 1 or args.eval_draws < 1:
        raise SystemExit("--sizes must be >= 2, --steps >= --eval-every >= 1, --eval-draws >= 1")
    names = ("steps", "eval_every", "learning_rate", "batch_size", "hidden", "eval_size", "eval_draws", "seed")
    settings = {k: getattr(args, k) for k in names}
    stem = "amortized-vi" if not args.tag else f"amortized-vi-{args.tag}"
    today = (Path(out_dir) if out_dir is not None else RESULTS_DIR) / f"{stem}-{_dt.date.today().isoformat()}.json"
    previous = json.loads(today.read_text())["runs"] if today.exists() else []
    kept = [r for r in previous if r.get("settings") == settings]
    out = ResultFile("amortized-vi", {"problems": problems, "sizes": sizes, **settings}, out_dir, tag=args.tag)
    out.extend(kept)  # on disk before any new work: an interrupted resume loses nothing
    done = {(r["problem"], r["n"], r["method"]) for r in kept}
    todo = [(p, n, m) for p in problems for n in sizes for m in methods if (p, n, m) not in done]
    print(f"{len(done)} runs already in {out.path}; {len(todo)} to go")
    from tqdm.auto import tqdm

    try:
        for problem, n, method in tqdm(todo, desc="amortized-vi", unit="run"):
            try:
                row = {**run_one(problem, n, method, args), "status": "ok"}
            except (ValueError, FloatingPointError) as err:  # a fit that collapsed: recorded, the grid goes on
                row = {"problem": problem, "n": n, "method": method, "status": "failed", "error": str(err)[:300]}
            out.add({**row, "settings": settings})
    except KeyboardInterrupt:
        print(f"\ninterrupted: {len(out.data['runs'])} finished rows kept in {out.path}")
        raise
    summary = summarise(out.data["runs"])
    out.finish({"by_problem": summary, "goals": goals(summary)})
    columns = ["problem", "n", "fvi_elbo", "avi_elbo", "relative_gap", "fvi_bytes", "avi_bytes",
               "fvi_s_per_step", "avi_s_per_step", "fvi_over_avi_seconds"]  # fmt: skip
    print(table(summary, columns))
    print(json.dumps(out.data["summary"]["goals"], indent=1, default=str))
    for r in out.data["runs"]:
        if r.get("status", "ok") != "ok":
            print(f"failed: {r['problem']} n={r['n']} {r['method']}: {r['error']}")
    print(f"\nwritten: {out.path}")
    return out.data
