"""Study ``mi-bounds``: mutual-information estimators against the truth, from 2 to 100 nats.

Brekelmans, Huang, Ghassemi, Ver Steeg, Grosse & Makhzani, "Improving Mutual Information
Estimation with Annealed and Energy-Based Bounds", ICLR 2022 -- the paper's comparison, with the
estimators of :mod:`numpyro_ext.infer.ais_mi` and :mod:`numpyro_ext.infer.mi_bounds`.

Problems with a known joint ``p(z) p(x|z)``:

* ``lg-<I>`` -- linear-Gaussian ``z ~ N(0, I_d)``, ``x = W z + eps``, ``eps ~ N(0, I_d)`` with
  ``W = Q diag(s)`` (``Q`` a random rotation), ``d = max(2, I)`` and the per-coordinate
  informations ``0.5 log(1 + s_j^2)`` spread linearly over ``[0.5, 1.5]`` times their mean, so
  that ``I(x; z) = 0.5 log det(I + W^T W)`` is exactly ``I`` nats, and ``log p(x)`` is known in
  closed form (:func:`adapters.mi.linear_gaussian_log_marginal`);
* ``vae-digits`` -- a VAE (``d_z = 8``, MLP decoder with a sigmoid mean, Gaussian likelihood of
  scale 0.1) trained on scikit-learn's bundled 8x8 digits; data are simulated from the trained
  decoder, so ``p(x|z)`` is known but ``I`` is not: its reference is the multi-sample AIS
  sandwich itself (lower and upper bound on the same draws), whose width says how well it is known.

Estimators, each an independent estimate on fresh draws with its Monte Carlo standard error:

* ``ais-lower`` / ``ais-upper`` -- Multi-Sample AIS (``K = 8`` chains, ``T`` HMC temperatures
  growing with ``I``) on the same ``N`` outer draws, so ``upper - lower`` is the sandwich's
  width, and, where ``log p(x)`` is exact, the paired error ``mean_i (u_i - I_i)`` with
  ``I_i = log p(x_i|z_i) - log p(x_i)`` (the estimator's bias, free of the outer draws' noise);
* ``iwae-lower`` / ``iwae-upper`` -- the ``T = 1`` case with the prior as proposal, ``K = 64``;
* ``ba``, ``infonce``, ``nwj``, ``mine-dv``, ``giwae``, ``mine-ais`` -- trained critics (Adam, each
  on the same batches), ``K = 64`` for the contrastive ones, evaluated on 4096 fresh draws
  (``mine-ais`` with Multi-Sample AIS on the first ``N``); ``dv_of_this_critic`` is the DV value of
  the MINE-AIS critic (the paper's claim: MINE-AIS >= MINE-DV).

Goals (issue 8): the AIS sandwich within 0.1 nat of the truth at >= 10 nats, where InfoNCE and the
IWAE lower bound saturate at ``log K``; GIWAE >= max(BA, InfoNCE); MINE-AIS >= MINE-DV.  Writes
``benchmarks/results/mi-bounds-<date>.json``, a table, and ``docs/_static/mi_bounds.png``
(estimate vs true MI).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._harness import RESULTS_DIR, ResultFile, table

DOCS_STATIC = Path(__file__).resolve().parents[1] / "docs" / "_static"
FIGURE = "mi_bounds.png"
LEVELS = (2, 5, 10, 20, 50, 100)
PROBLEMS = tuple(f"lg-{i}" for i in LEVELS) + ("vae-digits",)
ESTIMATORS = ("ais-lower", "ais-upper", "iwae-lower", "iwae-upper", "ba", "infonce", "nwj", "mine-dv", "giwae",
              "mine-ais")  # fmt: skip
KIND = {"ais-lower": "lower", "ais-upper": "upper", "iwae-lower": "lower", "iwae-upper": "upper"}


# ---------------------------------------------------------------------------------------
# Problems
# ---------------------------------------------------------------------------------------
def linear_gaussian_problem(information: float, seed: int = 0) -> dict[str, Any]:
    """The ``lg-<I>`` joint (module docstring): functions of one sample, a sampler, the exact answers."""
    import jax
    import jax.numpy as jnp
    import numpyro.distributions as dist

    from adapters.mi import linear_gaussian_log_marginal, linear_gaussian_mi

    d = max(2, int(round(information)))
    shares = np.linspace(0.5, 1.5, d)
    shares *= information / shares.sum()
    scales = np.sqrt(np.expm1(2.0 * shares))
    rotation, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    weight = rotation * scales
    w = jnp.asarray(weight)
    const = -0.5 * d * math.log(2.0 * math.pi)

    def sample_joint(key, n):
        kz, ke = jax.random.split(key)
        z = jax.random.normal(kz, (n, d))
        return z @ w.T + jax.random.normal(ke, (n, d)), z

    return {
        "x_dim": d,
        "z_dim": d,
        "truth": linear_gaussian_mi(weight, 1.0),
        "sample_joint": sample_joint,
        "log_prior": lambda z: const - 0.5 * jnp.sum(z**2),
        "log_likelihood": lambda x, z: const - 0.5 * jnp.sum((x - w @ z) ** 2),
        "prior": dist.Normal(jnp.zeros(d), 1.0).to_event(1),
        "exact_log_marginal": lambda x: linear_gaussian_log_marginal(x, weight, 1.0),
        "linear": True,
    }


def train_digits_vae(z_dim: int = 8, noise_scale: float = 0.1, steps: int = 3000, seed: int = 0) -> tuple[Any, dict]:
    """A Gaussian VAE of the digits (pixels / 16), trained by the reparameterised ELBO with Adam.

    Encoder ``64 -> 128 -> 2 z_dim`` and decoder ``z_dim -> 128 -> 64`` (softplus, sigmoid mean),
    likelihood ``N(x; decoder(z), noise_scale^2 I)``, full batch.  Returns the decoder's
    parameters and a summary (final negative ELBO per image).
    """
    import jax
    import jax.numpy as jnp
    import optax
    from sklearn.datasets import load_digits

    from numpyro_ext.infer.mi_bounds import mlp_apply, mlp_init

    data = jnp.asarray(load_digits().data / 16.0)
    k_enc, k_dec, k_train = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = {"enc": mlp_init(k_enc, (64, 128, 2 * z_dim)), "dec": mlp_init(k_dec, (z_dim, 128, 64))}
    log_norm = -64 * (math.log(noise_scale) + 0.5 * math.log(2 * math.pi))

    def negative_elbo(params, key):
        out = mlp_apply(params["enc"], data)
        mean, log_scale = out[:, :z_dim], out[:, z_dim:] - 1.0
        z = mean + jnp.exp(log_scale) * jax.random.normal(key, mean.shape)
        recon = jax.nn.sigmoid(mlp_apply(params["dec"], z))
        log_lik = log_norm - 0.5 * jnp.sum((data - recon) ** 2, axis=-1) / noise_scale**2
        kl = 0.5 * jnp.sum(mean**2 + jnp.exp(2 * log_scale) - 1.0 - 2 * log_scale, axis=-1)
        return -jnp.mean(log_lik - kl)

    optimizer = optax.adam(3e-3)

    @jax.jit
    def train(params, key):
        def step(carry, k):
            p, s = carry
            loss, grads = jax.value_and_grad(negative_elbo)(p, k)
            updates, s = optimizer.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), loss

        (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(key, steps))
        return params, losses

    params, losses = train(params, k_train)
    return params["dec"], {"negative_elbo_per_image": float(np.mean(np.asarray(losses)[-100:])), "steps": steps}


def vae_problem(z_dim: int = 8, noise_scale: float = 0.1, steps: int = 3000) -> dict[str, Any]:
    """The ``vae-digits`` joint: ``z ~ N(0, I)``, ``x ~ N(decoder(z), noise_scale^2 I_64)``."""
    import jax
    import jax.numpy as jnp
    import numpyro.distributions as dist

    from numpyro_ext.infer.mi_bounds import mlp_apply

    decoder, summary = train_digits_vae(z_dim, noise_scale, steps)
    const_z = -0.5 * z_dim * math.log(2 * math.pi)
    const_x = -64 * (math.log(noise_scale) + 0.5 * math.log(2 * math.pi))

    def mean(z):
        return jax.nn.sigmoid(mlp_apply(decoder, z))

    def sample_joint(key, n):
        kz, ke = jax.random.split(key)
        z = jax.random.normal(kz, (n, z_dim))
        return mean(z) + noise_scale * jax.random.normal(ke, (n, 64)), z

    return {
        "x_dim": 64,
        "z_dim": z_dim,
        "truth": None,
        "sample_joint": sample_joint,
        "log_prior": lambda z: const_z - 0.5 * jnp.sum(z**2),
        "log_likelihood": lambda x, z: const_x - 0.5 * jnp.sum((x - mean(z)) ** 2) / noise_scale**2,
        "prior": dist.Normal(jnp.zeros(z_dim), 1.0).to_event(1),
        "exact_log_marginal": None,
        "linear": False,
        "vae": summary,
    }


def make_problem(name: str, quick: bool) -> dict[str, Any]:
    if name == "vae-digits":
        return vae_problem(steps=200 if quick else 3000)
    return linear_gaussian_problem(float(name.split("-", 1)[1]))


def ais_steps(information: float, scale: float) -> int:
    """Annealing steps: ``150 I`` within ``[3000, 10000]`` (probe runs: the sandwich's width is ~1/T)."""
    return max(1, int(round(scale * min(10_000, max(3_000, 150 * information)))))


# ---------------------------------------------------------------------------------------
# Estimators
# ---------------------------------------------------------------------------------------
def _row(name: str, estimate: Any, seconds: float, **extra: Any) -> dict[str, Any]:
    return {"estimator": name, "value": float(estimate.value), "stderr": float(estimate.stderr),
            "kind": estimate.kind, "num_samples": int(estimate.num_samples), "seconds": seconds,
            "warnings": list(estimate.warnings), **extra}  # fmt: skip


def run_sampling_bounds(problem: dict, args: argparse.Namespace, key: Any, steps: int) -> list[dict]:
    """Multi-sample AIS and IWAE bounds; each pair on the same outer draws (one key)."""
    import jax

    from numpyro_ext.infer import ais_mi_lower, ais_mi_upper, iwae_mi_lower, iwae_mi_upper

    fns = (problem["sample_joint"], problem["log_prior"], problem["log_likelihood"])
    rows = []
    key_ais, key_iwae = jax.random.split(key)
    pairs = [
        ("ais", ais_mi_lower, ais_mi_upper, key_ais,
         {"num_samples": args.outer, "num_chains": args.ais_chains, "num_steps": steps}),
        ("iwae", iwae_mi_lower, iwae_mi_upper, key_iwae,
         {"num_samples": args.critic_eval, "num_importance": args.k}),
    ]  # fmt: skip
    for family, lower_fn, upper_fn, k, kwargs in pairs:
        per_sample = {}
        for side, fn in (("lower", lower_fn), ("upper", upper_fn)):
            start = time.perf_counter()
            estimate, details = fn(k, *fns, **kwargs, return_details=True)
            seconds = time.perf_counter() - start
            extra: dict[str, Any] = {"K": kwargs.get("num_chains", kwargs.get("num_importance"))}
            if family == "ais":
                extra["T"] = steps
                extra["acceptance_rate"] = float(np.mean(details["acceptance_rate"]))
            if problem["exact_log_marginal"] is not None:
                exact = problem["exact_log_marginal"](np.asarray(details["x"]))
                errors = np.asarray(details["log_px_given_z"]) - np.asarray(details["log_px_bound"])
                errors = errors - (np.asarray(details["log_px_given_z"]) - exact)  # minus the pointwise MI
                extra["paired_error"] = float(errors.mean())
                extra["paired_error_stderr"] = float(errors.std(ddof=1) / math.sqrt(errors.size))
            per_sample[side] = np.asarray(details["per_sample"])
            rows.append(_row(f"{family}-{side}", estimate, seconds, **extra))
        width = per_sample["upper"] - per_sample["lower"]
        for row in rows[-2:]:
            row["sandwich_width"] = float(width.mean())
            row["sandwich_width_stderr"] = float(width.std(ddof=1) / math.sqrt(width.size))
    return rows


def _critic_estimators(problem: dict, args: argparse.Namespace) -> dict[str, Any]:
    from numpyro_ext.infer import mi_bounds as mb

    dx, dz, prior = problem["x_dim"], problem["z_dim"], problem["prior"]
    width = args.hidden if args.hidden else max(64, 2 * max(dx, dz))
    # a separable critic g(x).h(z) with an embedding wider than d holds a(x) + b(z) + x^T A z,
    # the log density ratio of a linear-Gaussian joint
    separable = mb.SeparableCritic(dx, dz, embed_dim=max(16, min(dx, dz) + 8), hidden=(width,))
    # the linear-Gaussian posterior is Gaussian with an affine mean and a diagonal covariance
    # (W^T W is diagonal): an affine proposal contains it
    proposal = mb.GaussianProposal(dx, dz, hidden=() if problem["linear"] else (width,))
    estimators = {
        "ba": mb.BarberAgakov(proposal, prior),
        "infonce": mb.InfoNCE(separable, num_samples=args.k),
        "nwj": mb.NWJ(separable, num_samples=args.k),
        "mine-dv": mb.MINEDV(separable, num_samples=args.k),
        # separable here too: a concatenated critic costs K N network calls a step (hours at d = 100)
        "giwae": mb.GIWAE(proposal, separable, prior, num_samples=args.k),
        "mine-ais": mb.MINEAIS(separable, prior, num_mcmc_steps=10, step_size=0.1, num_leapfrog=5),
    }
    return {name: estimators[name] for name in args.estimators if name in estimators}


def run_critic_bounds(problem: dict, args: argparse.Namespace, key: Any, steps: int) -> list[dict]:
    """Train each critic-based estimator (same key, hence the same batches), then evaluate it on the same draws.

    Each is trained in its own compiled program, so its ``seconds`` (training, compilation included,
    plus evaluation) are its own.  MINE-AIS is evaluated with ``min(T, 1000)`` temperatures: a
    lower bound at any ``T``.
    """
    import jax
    import optax

    from numpyro_ext.infer import mi_bounds as mb

    estimators = _critic_estimators(problem, args)
    key_init, key_fit, key_eval, key_draws, key_pilot = jax.random.split(key, 5)
    # the networks see x standardised coordinate-wise (an invertible map: I(x; z) is unchanged);
    # raw x of the high-information problems has coordinates of sd up to ~20, which saturates the
    # untrained critics' exponentials
    x_pilot, _ = problem["sample_joint"](key_pilot, 4096)
    centre, spread = x_pilot.mean(axis=0), x_pilot.std(axis=0)

    def sample_joint(k, n):
        x, z = problem["sample_joint"](k, n)
        return (x - centre) / spread, z

    x, z = sample_joint(key_draws, args.critic_eval)
    rows = []
    for name, estimator in estimators.items():
        start = time.perf_counter()
        fit = mb.fit_critic(key_fit, estimator, estimator.init(key_init), sample_joint, args.train_steps,
                            2 * args.k, optax.adam(args.lr))  # fmt: skip
        train_seconds = time.perf_counter() - start
        extra: dict[str, Any] = {"train_seconds": train_seconds, "train_steps": args.train_steps,
                                 "final_train_bound": float(np.mean(fit.bounds[-50:]))}  # fmt: skip
        if name == "mine-ais":
            n, mine_steps = args.outer, min(steps, 1000)
            estimate = estimator.estimate(fit.params, key_eval, x[:n], z[:n], num_chains=args.ais_chains,
                                          num_steps=mine_steps)  # fmt: skip
            extra.update(K=args.ais_chains, T=mine_steps)
            dv = mb.mine_dv(mb.score_matrix(estimator.critic, fit.params, x[: 4 * args.k], z[: 4 * args.k]))
            extra["dv_of_this_critic"] = float(dv.value)
        else:
            estimate = estimator.estimate(fit.params, key_eval, x, z)
            if name != "ba":
                extra["K"] = args.k
        rows.append(_row(name, estimate, time.perf_counter() - start, **extra))
    return rows


def run_problem(name: str, args: argparse.Namespace) -> list[dict]:
    import jax

    start = time.perf_counter()
    problem = make_problem(name, args.quick)
    setup_seconds = time.perf_counter() - start
    key = jax.random.PRNGKey(args.seed)
    k_sampling, k_critic = jax.random.split(key)
    steps = ais_steps(problem["truth"] if problem["truth"] is not None else 50.0, args.ais_scale)
    rows = []
    if any(e in args.estimators for e in KIND):
        rows += [r for r in run_sampling_bounds(problem, args, k_sampling, steps) if r["estimator"] in args.estimators]
    rows += run_critic_bounds(problem, args, k_critic, steps)
    truth = problem["truth"]
    if truth is None:  # the VAE: the AIS sandwich is the reference
        ais = {r["estimator"]: r["value"] for r in rows if r["estimator"].startswith("ais-")}
        if len(ais) == 2:
            truth = 0.5 * (ais["ais-lower"] + ais["ais-upper"])
    for row in rows:
        row.update(problem=name, truth=truth, truth_exact=problem["truth"] is not None,
                   x_dim=problem["x_dim"], z_dim=problem["z_dim"])  # fmt: skip
        if truth is not None:
            row["error"] = row["value"] - truth
    if "vae" in problem:
        for row in rows:
            row["vae"] = {**problem["vae"], "setup_seconds": setup_seconds}
    return rows


# ---------------------------------------------------------------------------------------
# Claims, figure, entry point
# ---------------------------------------------------------------------------------------
def _compare(a: dict, b: dict) -> str:
    """``>=``, ``~>=`` (below, but within 2 combined standard errors) or ``<``."""
    if a["value"] >= b["value"]:
        return ">="
    return "~>=" if a["value"] >= b["value"] - 2 * math.hypot(a["stderr"], b["stderr"]) else "<"


def claims(rows: list[dict]) -> list[str]:
    """The issue's goals, checked on the rows (``~>=``: below by less than 2 combined standard errors)."""
    out = []
    for problem in dict.fromkeys(r["problem"] for r in rows):
        got = {r["estimator"]: r for r in rows if r["problem"] == problem}
        truth = next(iter(got.values()))["truth"]
        if {"ais-lower", "ais-upper"} <= set(got) and truth is not None and truth >= 10:
            lo, up = got["ais-lower"], got["ais-upper"]
            if "paired_error" in lo:
                worst = max(abs(lo["paired_error"]), abs(up["paired_error"]))
                out.append(f"{problem}: AIS sandwich width {lo['sandwich_width']:.3f} nats, paired errors "
                           f"{lo['paired_error']:+.3f} / {up['paired_error']:+.3f} -> "
                           f"{'within' if worst <= 0.1 else 'NOT within'} 0.1 nat")  # fmt: skip
            else:
                out.append(f"{problem}: AIS sandwich [{lo['value']:.2f}, {up['value']:.2f}], width "
                           f"{lo['sandwich_width']:.3f} +- {lo['sandwich_width_stderr']:.3f} nats")  # fmt: skip
        if {"giwae", "ba", "infonce"} <= set(got):
            g, other = got["giwae"], max(got["ba"], got["infonce"], key=lambda r: r["value"])
            out.append(f"{problem}: GIWAE {g['value']:.3f} {_compare(g, other)} max(BA, InfoNCE) = "
                       f"{other['value']:.3f} ({other['estimator']})")  # fmt: skip
        if {"mine-ais", "mine-dv"} <= set(got):
            a, dv = got["mine-ais"], got["mine-dv"]
            line = (f"{problem}: MINE-AIS {a['value']:.3f} {_compare(a, dv)} MINE-DV {dv['value']:.3f} "
                    f"(DV of the MINE-AIS critic {a['dv_of_this_critic']:.3f})")  # fmt: skip
            if truth is not None and dv["value"] > truth + 2 * dv["stderr"]:
                line += f"; MINE-DV is above the true {truth:.3f}: its plug-in log-mean-exp is no bound here"
            out.append(line)
    return out


def plot(rows: list[dict], path: Path, k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    markers = dict(zip(ESTIMATORS, "v^<>sodpPX", strict=True))
    for name, color in zip(ESTIMATORS, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 2, strict=False):
        mine = [r for r in rows if r["estimator"] == name and r["truth"] is not None and math.isfinite(r["value"])]
        # the linear-Gaussian ladder is one curve; other problems (the VAE) are lone hollow markers
        ladder = sorted((r["truth"], r["value"]) for r in mine if r["problem"].startswith("lg-"))
        if ladder:
            ax.plot(*zip(*ladder, strict=True), marker=markers[name], color=color, label=name, lw=1)
        for r in mine:
            if not r["problem"].startswith("lg-"):
                ax.plot(r["truth"], r["value"], marker=markers[name], color=color, mfc="none", ls="none")
    top = max((r["truth"] for r in rows if r["truth"] is not None), default=100.0)
    ax.plot([1, top * 1.2], [1, top * 1.2], color="k", lw=0.8, ls=":", label="truth")
    ax.axhline(math.log(k), color="grey", lw=0.8, ls="--", label=f"log K = log {k}")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("true I(x; z), nats (lines: linear-Gaussian; hollow: VAE, AIS sandwich midpoint)")
    ax.set_ylabel("estimate (nats)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


COLUMNS = ["problem", "truth", "estimator", "kind", "value", "stderr", "error", "paired_error", "sandwich_width",
           "K", "T", "seconds"]  # fmt: skip


def main(argv: list[str] | None = None, out_dir: Path | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks mi-bounds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--estimators", default=",".join(ESTIMATORS))
    parser.add_argument("--outer", type=int, default=32, help="outer draws of the AIS bounds and MINE-AIS")
    parser.add_argument("--ais-chains", type=int, default=8, help="K of the multi-sample AIS bounds")
    parser.add_argument("--ais-scale", type=float, default=1.0, help="multiplies the annealing steps")
    parser.add_argument("--k", type=int, default=64, help="K of IWAE and the contrastive critics")
    parser.add_argument("--train-steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=0, help="critic width (0: max(64, 2 max(dx, dz)))")
    parser.add_argument("--critic-eval", type=int, default=4096, help="fresh draws the critics are evaluated on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny runs (the plumbing test)")
    parser.add_argument("--figure", default=None, help=f"PNG (default docs/_static/{FIGURE})")
    parser.add_argument("--tag", default=None, help="result file mi-bounds-<tag>-<date>.json (a side study)")
    args = parser.parse_args(argv)
    problems = args.problems.split(",")
    args.estimators = args.estimators.split(",")
    for p in problems:
        if p not in PROBLEMS and not (p.startswith("lg-") and p[3:].replace(".", "", 1).isdigit()):
            raise SystemExit(f"--problems: unknown {p!r}; known: {list(PROBLEMS)} (or lg-<nats>)")
    for e in args.estimators:
        if e not in ESTIMATORS:
            raise SystemExit(f"--estimators: unknown {e!r}; known: {list(ESTIMATORS)}")
    for name in ("outer", "ais_chains", "k", "train_steps", "critic_eval"):
        if getattr(args, name) < 2:
            raise SystemExit(f"--{name.replace('_', '-')}: expected an integer >= 2, got {getattr(args, name)}")
    if args.quick:
        args.outer, args.train_steps, args.critic_eval = min(args.outer, 8), min(args.train_steps, 20), 256
        args.ais_scale = min(args.ais_scale, 0.005)
        args.k = min(args.k, 8)
    import jax

    jax.config.update("jax_enable_x64", True)  # sums of 10^4 AIS increments
    out = ResultFile("mi-bounds", vars(args), out_dir, tag="quick" if args.quick else args.tag)
    from tqdm.auto import tqdm

    try:
        for name in tqdm(problems, desc="mi-bounds", unit="problem"):
            for row in run_problem(name, args):
                out.add(row)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {len(out.data['runs'])} finished rows kept in {out.path}")
        raise
    rows = out.data["runs"]
    verdicts = claims(rows)
    out.finish({"claims": verdicts})
    print(table(rows, COLUMNS))
    print("\n".join(f"* {line}" for line in verdicts))
    if args.figure is not None:
        figure = Path(args.figure)
    elif out_dir is not None:
        figure = Path(out_dir) / FIGURE
    else:
        figure = RESULTS_DIR / f"mi-bounds-quick-{FIGURE}" if args.quick else DOCS_STATIC / FIGURE
    plot(rows, figure, args.k)
    print(f"\nwritten: {out.path} and {figure}")
    return out.data
