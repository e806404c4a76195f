"""Study ``optimizers``: the library's optimizers against Adam, AdamW, SGD-momentum and Muon, same runs, same seeds.

Tasks (:mod:`benchmarks.optimizer_tasks`, all float32 on CPU, torch pinned to one thread):

* ``char-lm``      (a) a 2-layer causal transformer (width 64, context 64, 108k parameters) on
  the standard library's docstrings (:mod:`adapters.char_corpus`); loss: validation
  cross-entropy (nats per character) on fixed held-out windows;
* ``bnn``          (b) Pyro SVI, Bayesian MLP classifier of scikit-learn's digits, ``AutoNormal``
  guide, full batch; loss: negative ELBO per image (8 fixed-seed particles);
* ``vae``          (b) Pyro SVI, VAE of the binarised digits, mini-batches of 128; loss: negative
  ELBO per image on all 1797 images (4 fixed-seed particles);
* ``numpyro-bnn``  the ``bnn`` model in NumPyro with the optax transforms (``numpyro_ext.optim``,
  ``optax``, ``optax.contrib.muon``), each at the rate selected on ``bnn`` (its own grid when
  ``bnn`` is not in the study); jitted in chunks between evaluations, compilation not timed.

Optimizers (:data:`REGISTRY`, looked up by name and imported lazily: a module that is missing
gives the row "skipped: not available"): ``adam``, ``adamw``, ``sgd-momentum``, ``muon`` and the
library's ``swan``, ``sinkgd``, ``racs``, ``alice``, ``singd`` (torch only), ``rootfree-rmsprop``,
``rootfree-adamw``, ``ifshampoo``.  Parameters: elementwise methods (and IF-Shampoo, which
preconditions every axis itself) act on every parameter; Muon and the matrix methods act on the
matrix parameters (``char-lm``: the blocks' weight matrices; ``bnn``/``vae``: every parameter with
two non-trivial axes) and SINGD on the layers, and every other parameter (embeddings, head,
LayerNorms, biases; the guide's vectors) takes AdamW at Adam's selected learning rate with weight
decay 0.01, as Muon's documentation recommends -- one rule for all, so the comparison is between
the matrix updates.  Loss-scale-dependent methods get the task's ``loss_scale`` (``N`` for Pyro's
summed ELBO) and ``batch_size`` (data points, or tokens, that one step's loss averages); SGD's and
SINGD's learning rates are per data point (divided by ``loss_scale``), and SINGD's curvature
statistics are those of the per-datum loss (``loss_scale = N^2 / B`` on Pyro's ELBO).

Learning rates: each optimizer's grid (:class:`Spec`, three values a factor ~3 apart) is run for
``--grid-fraction`` of the steps on seed 0; the lowest final loss wins, a winner at an edge
extends the grid by a factor 3 that way, and a grid where every rate diverged extends it a factor
3 below its lowest (at most twice).  Then the full run at that rate for every seed.  Per (task,
optimizer), from the full runs: the final loss (mean over seeds), the steps and
training seconds until the seed-mean loss curve first reaches Adam's seed-mean final loss ("not
reached" otherwise), optimizer-state bytes per parameter measured from the optimizer's state at
the end of the run (the tensors in ``optimizer.state`` -- of every optimizer, for PyroOptim its
per-parameter ones -- or the optax state's leaves, over the number of trained parameters; also over
the parameters the method itself acts on), and milliseconds per training step (wall clock, and
process CPU time, which a busy machine inflates less).  Evaluations are not timed.  The JSON file
is rewritten after each run; the table is printed and the loss curves are plotted.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import optimizer_tasks
from benchmarks._harness import RESULTS_DIR, ResultFile, table

DOCS_STATIC = Path(__file__).resolve().parent.parent / "docs" / "_static"
FIGURE = "optimizers_loss_curves.png"
REST_WEIGHT_DECAY = 0.01  # AdamW on the parameters a matrix method does not act on, and AdamW's/Muon's own
TASKS = ("char-lm", "bnn", "vae", "numpyro-bnn")
LOSS_LABEL = {
    "char-lm": "validation loss (nats / char)",
    "bnn": "-ELBO / image",
    "vae": "-ELBO / image",
    "numpyro-bnn": "-ELBO / image",
}


@dataclass(frozen=True)
class Spec:
    """One optimizer of the study.

    ``torch`` / ``optax``: ``"module:attribute"`` of the ``torch.optim.Optimizer`` class and of the
    optax constructor (``None``: not on that backend).  ``scope``: ``"all"`` parameters, the
    ``"matrix"`` parameters, or the ``"layers"`` (SINGD); see the module docstring.  ``grid_lm`` /
    ``grid_svi``: learning-rate grids for ``char-lm`` and for the SVI tasks.
    """

    name: str
    torch: str | None
    optax: str | None
    scope: str
    grid_lm: tuple[float, ...]
    grid_svi: tuple[float, ...]
    torch_kwargs: dict[str, Any] = field(default_factory=dict)
    optax_kwargs: dict[str, Any] = field(default_factory=dict)
    lr_per_datum: bool = False
    note: str = ""


_ADAM_LM, _ADAM_SVI = (1e-3, 3e-3, 1e-2), (1e-2, 3e-2, 1e-1)
REGISTRY: dict[str, Spec] = {
    s.name: s
    for s in (
        Spec("adam", "torch.optim:Adam", "optax:adam", "all", _ADAM_LM, _ADAM_SVI, note="betas (0.9, 0.999)"),
        Spec("adamw", "torch.optim:AdamW", "optax:adamw", "all", _ADAM_LM, _ADAM_SVI,
             {"weight_decay": REST_WEIGHT_DECAY}, {"weight_decay": REST_WEIGHT_DECAY}, note="weight decay 0.01"),
        Spec("sgd-momentum", "torch.optim:SGD", "optax:sgd", "all", (3e-3, 1e-2, 3e-2), (0.1, 0.3, 1.0),
             {"momentum": 0.9}, {"momentum": 0.9}, lr_per_datum=True, note="heavy ball 0.9; SVI lr per datum"),
        Spec("muon", "torch.optim:Muon", "optax.contrib:muon", "matrix", _ADAM_LM, (0.1, 0.3, 1.0),
             {"weight_decay": REST_WEIGHT_DECAY, "adjust_lr_fn": "match_rms_adamw"},
             {"weight_decay": REST_WEIGHT_DECAY, "consistent_rms": 0.2},
             note="momentum 0.95 Nesterov, 5 Newton-Schulz steps, update RMS matched to AdamW's (0.2 sqrt(max(m, n)))"),
        Spec("swan", "pyro_ext.optim.swan:SWANOptimizer", "numpyro_ext.optim.swan:swan", "matrix", _ADAM_LM,
             _ADAM_SVI, note="GradNorm + GradWhitening, 10 Newton-Schulz steps; no state"),
        Spec("sinkgd", "pyro_ext.optim.sinkgd:SinkGDOptimizer", "numpyro_ext.optim.sinkgd:sinkgd", "matrix",
             _ADAM_LM, _ADAM_SVI, note="5 SR-Sinkhorn rounds; no state"),
        Spec("racs", "pyro_ext.optim.racs:RACSOptimizer", "numpyro_ext.optim.racs:racs", "matrix",
             (0.006, 0.02, 0.06), (0.1, 0.3, 1.0), note="paper defaults: alpha 0.05, beta 0.9, limiter 1.01"),
        Spec("alice", "pyro_ext.optim.alice:AliceOptimizer", "numpyro_ext.optim.alice:alice", "matrix",
             (0.006, 0.02, 0.06), (0.1, 0.3, 1.0), {"rank": 16, "clip_rank": True},
             {"rank": 16, "clip_rank": True},
             note="rank 16 (clipped to min(m, n)), paper defaults: alpha 0.3, alpha_c 0.4, interval 200"),
        Spec("singd", "pyro_ext.optim.singd:SINGDOptimizer", None, "layers", (1e-3, 3e-3, 1e-2),
             (0.01, 0.03, 0.1), lr_per_datum=True,
             note="dense K, C factors, T 10, lr_cov 0.01, damping 1e-3 (package defaults); per-datum loss"),
        Spec("rootfree-rmsprop", "pyro_ext.optim.rootfree:RootFreeRMSPropOptimizer",
             "numpyro_ext.optim.rootfree:rootfree_rmsprop", "all", (3e-3, 1e-2, 3e-2), (0.1, 0.3, 1.0),
             note="beta2 0.01, momentum 0.9, damping 1e-3; loss scale and batch size of the task"),
        Spec("rootfree-adamw", "pyro_ext.optim.rootfree:RootFreeAdamWOptimizer",
             "numpyro_ext.optim.rootfree:rootfree_adamw", "all", (0.03, 0.1, 0.3), (0.3, 1.0, 3.0),
             note="betas (0.9, 0.999), damping 1e-3; loss scale and batch size of the task"),
        Spec("ifshampoo", "pyro_ext.optim.ifshampoo:IFShampooOptimizer", "numpyro_ext.optim.ifshampoo:ifshampoo",
             "all", (3e-3, 1e-2, 3e-2), (0.1, 0.3, 1.0),
             note="dense factors, T 1, alpha2 0.5, damping 1e-3; loss scale and batch size of the task"),
    )
}  # fmt: skip


class NotAvailable(LookupError):
    """The optimizer has no implementation on this backend, or its module is not there (yet)."""


def resolve(path: str | None) -> Any:
    """The object named ``"module:attribute"``, imported now; :class:`NotAvailable` if it is missing."""
    if path is None:
        raise NotAvailable("not available on this backend")
    module, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise NotAvailable(f"not available ({type(err).__name__}: {err})") from err


_NUMPYRO_TASKS: dict[bool, Any] = {}


def _task(name: str, seed: int, quick: bool) -> Any:
    tiny = {"d_model": 32, "n_layers": 1, "n_heads": 2, "context": 32, "batch": 8, "eval_batches": 2}
    if name == "char-lm":
        return optimizer_tasks.CharLM(seed, **(tiny if quick else {}))
    if name == "bnn":
        return optimizer_tasks.PyroBNN(seed, **({"hidden": 16, "eval_particles": 2} if quick else {}))
    if name == "vae":
        return optimizer_tasks.PyroVAE(seed, **({"hidden": 32, "eval_particles": 1} if quick else {}))
    if name == "numpyro-bnn":  # one instance per configuration: its jitted evaluation compiles once
        if quick not in _NUMPYRO_TASKS:
            _NUMPYRO_TASKS[quick] = optimizer_tasks.NumPyroBNN(**({"hidden": 16, "eval_particles": 2} if quick else {}))
        return _NUMPYRO_TASKS[quick]
    raise ValueError(f"unknown task {name!r}")


# --------------------------------------------------------------------------------------------
# building the optimizers
# --------------------------------------------------------------------------------------------


def _scale_hints(fn: Callable, task: Any) -> dict[str, Any]:
    """``loss_scale`` / ``batch_size`` for the constructors that take them (the root-free family), and
    ``matrix_params="all"`` for the library's matrix methods: the benchmark picks the parameters each method
    takes (the task's matrices, a BNN's or VAE's guide locations and scales included), so the method's own
    default, which leaves a guide's parameters to AdamW, must not pick again."""
    names = inspect.signature(fn).parameters
    hints: dict[str, Any] = {k: getattr(task, k) for k in ("loss_scale", "batch_size") if k in names}
    if "matrix_params" in names:
        hints["matrix_params"] = "all"
    return hints


def _method_lr(spec: Spec, lr: float, task: Any) -> float:
    return lr / task.loss_scale if spec.lr_per_datum else lr


def _torch_method(spec: Spec, lr: float, task: Any, adam_lr: float) -> tuple[Callable, set[int]]:
    """``(constructor(params) -> optimizer, ids of the parameters the method acts on)``."""
    import torch

    cls = resolve(spec.torch)
    named = task.named_params()
    if spec.scope == "all":
        ids = {id(p) for _, p in named}
    else:
        ids = {id(p) for n, p in named if n in task.matrix_names()}
    kwargs = {**spec.torch_kwargs, **_scale_hints(cls, task)}

    def construct(params):
        params = list(params)
        if all(id(p) in ids for p in params):
            return cls(params, lr=_method_lr(spec, lr, task), **kwargs)
        return torch.optim.AdamW(params, lr=adam_lr, weight_decay=REST_WEIGHT_DECAY)

    return construct, ids


def _singd(task: Any, lr: float, adam_lr: float, pyro: bool) -> Any:
    cls = resolve(REGISTRY["singd"].torch)
    layers = task.layers()
    if not layers:
        raise NotAvailable("not applicable: SINGD preconditions layers, and this task's trained parameters are none")
    if pyro:
        # SINGD sees the per-datum loss L / N, as the paper's hyperparameters (damping, lr_cov) expect:
        # Pyro's L = (N / B) sum_batch l_n, so its statistics take s = N^2 / B and the rate is per datum
        # (with the summed loss's s = N / B the first curvature update overflows the factors on the VAE)
        scale = {"loss_average": None, "loss_scale": task.loss_scale**2 / task.batch_size}
    else:
        scale = {"loss_average": "batch+sequence", "loss_scale": 1.0}
    args = {"lr": _method_lr(REGISTRY["singd"], lr, task), "fallback": "adam", "fallback_lr": adam_lr, **scale}
    if pyro:
        from torch import nn

        return resolve("pyro_ext.optim.singd:SINGD")(nn.ModuleList(layers), args)
    return cls(layers, **args)


def _torch_state(optimizers: list[Any], method_ids: set[int]) -> tuple[int, int]:
    """Bytes of the tensors in the optimizers' state: ``(all, of the method's parameters)``."""

    def nbytes(obj: Any) -> int:
        import torch

        if isinstance(obj, torch.Tensor):
            return obj.nbytes
        if isinstance(obj, dict):
            return sum(nbytes(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(nbytes(v) for v in obj)
        return 0

    total = method = 0
    for opt in optimizers:
        for p, state in opt.state.items():
            b = nbytes(state)
            total += b
            method += b if id(p) in method_ids else 0
    return total, method


class _Curve:
    def __init__(self, steps: int, eval_points: int):
        every = max(1, steps // max(1, eval_points))
        self.eval_at = sorted({*range(every, steps + 1, every), steps})
        self.step, self.loss, self.seconds, self.train_loss = [], [], [], []
        self._train = []

    def record(self, step: int, loss: float, seconds: float) -> None:
        self.step.append(step)
        self.loss.append(float(loss) if math.isfinite(loss) else None)  # JSON has no NaN
        self.seconds.append(float(seconds))
        self.train_loss.append(float(np.mean(self._train)) if self._train else None)
        self._train = []

    def as_dict(self) -> dict[str, list[float]]:
        return {"step": self.step, "loss": self.loss, "seconds": self.seconds, "train_loss": self.train_loss}


def _evaluate(task: Any) -> float:
    try:
        return task.evaluate()
    except ValueError:  # a distribution's parameter left its support: the run diverged
        return math.nan


def _run_torch_task(task: Any, spec: Spec, lr: float, steps: int, eval_points: int, adam_lr: float) -> dict:
    """One run on ``char-lm`` (plain torch) or a Pyro SVI task; returns the row's measured fields."""
    import torch

    curve = _Curve(steps, eval_points)
    pyro_task = task.backend == "pyro"
    named = task.named_params()
    if spec.scope == "layers":
        holder = _singd(task, lr, adam_lr, pyro_task)
        opt = holder.optimizer if pyro_task else holder
        optimizers = [opt]
        method_ids = {id(p) for g in opt.param_groups if g.get("kind") == "singd" for p in g["params"]}
        if not pyro_task:
            rest = [p for _, p in named if id(p) not in method_ids]
            optimizers.append(torch.optim.AdamW(rest, lr=adam_lr, weight_decay=REST_WEIGHT_DECAY))
    else:
        construct, method_ids = _torch_method(spec, lr, task, adam_lr)
        if pyro_task:
            from pyro.optim import PyroOptim

            holder = PyroOptim(construct, {})
        else:
            by_scope = [[p for _, p in named if (id(p) in method_ids) == inside] for inside in (True, False)]
            optimizers = [construct(ps) for ps in by_scope if ps]
    if pyro_task:
        from pyro.infer import SVI, Trace_ELBO

        svi = SVI(task.model, task.guide, holder, Trace_ELBO())
    curve.record(0, task.evaluate(), 0.0)
    seconds, cpu, status = 0.0, 0.0, "ok"
    for step in range(1, steps + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        try:
            if pyro_task:
                loss = svi.step(*task.step_args()) / task.N
            else:
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                out = task.loss()
                out.backward()
                for opt in optimizers:
                    opt.step()
                loss = float(out.detach())
        except (FloatingPointError, ValueError, RuntimeError) as err:  # non-finite gradients or parameters
            status = f"diverged at step {step}: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
            break
        seconds += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
        curve._train.append(loss)
        if not math.isfinite(loss):
            status = f"diverged at step {step}: loss {loss}"
            break
        if step in curve.eval_at:
            value = _evaluate(task)
            curve.record(step, value, seconds)
            if not math.isfinite(value):
                status = f"diverged at step {step}: evaluation {value}"
                break
    if pyro_task and spec.scope != "layers":
        optimizers = list(holder.optim_objs.values())
    params = [p for _, p in task.named_params()]
    total, method = _torch_state(optimizers, method_ids)
    n_method = sum(p.numel() for p in params if id(p) in method_ids)
    return _measured(curve, status, seconds, cpu, total, method, sum(p.numel() for p in params), n_method)


def _measured(
    curve: _Curve, status: str, seconds: float, cpu: float, total: int, method: int, n: int, n_method: int
) -> dict:
    done = curve.step[-1] if curve.step else 0
    return {
        "status": status,
        "final_loss": curve.loss[-1] if status == "ok" else None,
        "curve": curve.as_dict(),
        "train_seconds": seconds,
        "ms_per_step": 1e3 * seconds / max(done, 1),
        "cpu_ms_per_step": 1e3 * cpu / max(done, 1),  # process CPU time: what the step costs on a busy machine
        "params": int(n),
        "method_params": int(n_method),
        "state_bytes": int(total),
        "method_state_bytes": int(method),
        "state_bytes_per_param": total / n,
        "method_state_bytes_per_param": method / n_method if n_method else None,
    }


# --------------------------------------------------------------------------------------------
# NumPyro / optax
# --------------------------------------------------------------------------------------------


def _optax(spec: Spec, lr: float, task: Any, adam_lr: float) -> tuple[Any, bool]:
    """The optax transform of ``spec`` and whether it is split (matrix leaves / AdamW on the rest)."""
    import optax

    fn = resolve(spec.optax)
    method = fn(_method_lr(spec, lr, task), **spec.optax_kwargs, **_scale_hints(fn, task))
    if spec.scope == "all":
        return method, False
    labels = lambda params: __import__("jax").tree_util.tree_map(  # noqa: E731
        lambda leaf: "matrix" if optimizer_tasks.is_matrix(leaf) else "rest", params
    )
    rest = optax.adamw(adam_lr, weight_decay=REST_WEIGHT_DECAY)
    return optax.multi_transform({"matrix": method, "rest": rest}, labels), True


_NUMPYRO_SVI: dict[tuple, tuple[Any, bool, dict[int, Any]]] = {}


def _run_numpyro_task(task: Any, spec: Spec, lr: float, seed: int, steps: int, eval_points: int, adam_lr: float):
    import jax
    import jax.numpy as jnp
    from numpyro.infer import SVI, Trace_ELBO

    if spec.scope == "layers":
        raise NotAvailable("not available on this backend")
    key = (id(task), spec.name, lr, adam_lr)
    if key not in _NUMPYRO_SVI:  # the seeds of one (optimizer, rate) share the SVI object and its compiled chunks
        tx, split = _optax(spec, lr, task, adam_lr)
        _NUMPYRO_SVI[key] = (SVI(task.model, task.guide, tx, Trace_ELBO()), split, {})
    svi, split, chunks = _NUMPYRO_SVI[key]
    state = svi.init(jax.random.PRNGKey(seed), task.x, task.y)
    evaluate = lambda s: task.evaluate(svi.get_params(s))  # noqa: E731

    def advance(s, n):
        def body(_, carry):
            s, total = carry
            s, loss = svi.update(s, task.x, task.y)
            return s, total + loss

        s, total = jax.lax.fori_loop(0, n, body, (s, jnp.zeros((), jnp.float32)))
        return s, total / n

    curve = _Curve(steps, eval_points)
    curve.record(0, float(evaluate(state)), 0.0)
    seconds, cpu, status, done = 0.0, 0.0, "ok", 0
    compile_s = 0.0
    for stop in curve.eval_at:
        n = stop - done
        if n not in chunks:
            start = time.perf_counter()
            chunks[n] = jax.jit(advance, static_argnums=1).lower(state, n).compile()
            compile_s += time.perf_counter() - start
        start, start_cpu = time.perf_counter(), time.process_time()
        state, mean_loss = chunks[n](state)
        mean_loss = float(mean_loss) / task.N  # blocks until the chunk is done
        seconds += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
        curve._train.append(mean_loss)
        done = stop
        value = float(evaluate(state))
        curve.record(stop, value, seconds)
        if not (math.isfinite(value) and math.isfinite(mean_loss)):
            status = f"diverged before step {stop}: loss {mean_loss}, evaluation {value}"
            break
    params, opt_state = state.optim_state[1]
    leaves = jax.tree_util.tree_leaves
    total = sum(leaf.nbytes for leaf in leaves(opt_state))
    n = sum(leaf.size for leaf in leaves(params))
    if split:
        method = sum(leaf.nbytes for leaf in leaves(opt_state.inner_states["matrix"]))
        n_method = sum(leaf.size for leaf in leaves(params) if optimizer_tasks.is_matrix(leaf))
    else:
        method, n_method = total, n
    row = _measured(curve, status, seconds, cpu, total, method, n, n_method)
    row["compile_seconds"] = compile_s
    return row


# --------------------------------------------------------------------------------------------
# the study
# --------------------------------------------------------------------------------------------


def run_one(task_name: str, spec: Spec, lr: float, seed: int, steps: int, eval_points: int, adam_lr: float,
            quick: bool) -> dict:  # fmt: skip
    """One (task, optimizer, lr, seed) run: the measured fields, or ``status`` "skipped: ..."."""
    import torch

    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # the training tasks run in float32 (tests default to float64)
    try:
        if task_name == "numpyro-bnn":
            import jax

            with jax.enable_x64(False):
                return _run_numpyro_task(_task(task_name, seed, quick), spec, lr, seed, steps, eval_points, adam_lr)
        resolve(spec.torch)
        return _run_torch_task(_task(task_name, seed, quick), spec, lr, steps, eval_points, adam_lr)
    except NotAvailable as err:
        return {"status": f"skipped: {err}"}
    finally:
        torch.set_default_dtype(default)


def _grid_lrs(spec: Spec, task_name: str) -> list[float]:
    return list(spec.grid_lm if task_name == "char-lm" else spec.grid_svi)


def select_lr(grid_rows: list[dict]) -> float | None:
    """The grid's learning rate with the lowest final loss (``None`` when every one diverged)."""
    finite = [r for r in grid_rows if r.get("status") == "ok" and math.isfinite(r["final_loss"])]  # ok: never None
    return min(finite, key=lambda r: r["final_loss"])["lr"] if finite else None


def summarise(rows: list[dict], task_names: list[str], optimizer_names: list[str]) -> list[dict]:
    """Per (task, optimizer), from the full runs: final loss, steps/seconds to Adam's final loss, state bytes."""
    out = []
    for task in task_names:
        full = {o: [r for r in rows if r["task"] == task and r["optimizer"] == o and r["kind"] == "full"]
                for o in optimizer_names}  # fmt: skip
        adam = [r for r in full.get("adam", []) if r["status"] == "ok"]
        adam_final = float(np.mean([r["final_loss"] for r in adam])) if adam else math.nan
        for name in optimizer_names:
            skipped = [r for r in rows if r["task"] == task and r["optimizer"] == name and r["kind"] == "skip"]
            if skipped:
                out.append({"task": task, "optimizer": name, "status": skipped[0]["status"]})
                continue
            runs = full[name]
            if not runs:
                continue
            row = {"task": task, "optimizer": name, "lr": runs[0]["lr"], "seeds": len(runs)}
            ok = [r for r in runs if r["status"] == "ok"]
            row["status"] = "ok" if len(ok) == len(runs) else "; ".join(r["status"] for r in runs if r not in ok)
            for key in ("state_bytes_per_param", "method_state_bytes_per_param", "ms_per_step", "cpu_ms_per_step"):
                values = [r[key] for r in runs if r[key] is not None]
                row[key] = float(np.mean(values)) if values else None
            if len(ok) < len(runs):
                row.update(final_loss="diverged", steps_to_adam="not reached", seconds_to_adam="not reached")
                out.append(row)
                continue
            losses = np.mean([r["curve"]["loss"] for r in ok], axis=0)
            seconds = np.mean([r["curve"]["seconds"] for r in ok], axis=0)
            finals = [r["final_loss"] for r in ok]
            row["final_loss"] = float(np.mean(finals))
            row["final_loss_sd"] = float(np.std(finals, ddof=1)) if len(finals) > 1 else None
            row["adam_final_loss"] = adam_final
            hit = np.nonzero(losses <= adam_final)[0] if math.isfinite(adam_final) else []
            if len(hit):
                row["steps_to_adam"] = int(ok[0]["curve"]["step"][hit[0]])
                row["seconds_to_adam"] = float(seconds[hit[0]])
            else:
                row["steps_to_adam"] = row["seconds_to_adam"] = "not reached"
            out.append(row)
    return out


CLAIMED = ("swan", "sinkgd", "racs")


def claims(rows: list[dict]) -> list[str]:
    """One plain sentence per (task, claimed method): did it reach Adam's final loss within Adam's steps?"""
    out = []
    for r in rows:
        if r["optimizer"] not in CLAIMED or "steps_to_adam" not in r:
            continue
        adam = next((a for a in rows if a["task"] == r["task"] and a["optimizer"] == "adam"), {})
        if not isinstance(adam.get("steps_to_adam"), int):
            continue
        where = f"{r['optimizer']} on {r['task']}"
        if r["steps_to_adam"] == "not reached":
            final = r["final_loss"] if isinstance(r["final_loss"], str) else f"{r['final_loss']:.4g}"
            out.append(f"{where}: NOT reached -- final loss {final} against Adam's {adam['final_loss']:.4g}")
        else:
            verdict = "yes" if r["steps_to_adam"] <= adam["steps_to_adam"] else "reached, but later than Adam"
            out.append(f"{where}: {verdict} -- Adam's final loss {adam['final_loss']:.4g} at step "
                       f"{r['steps_to_adam']} (Adam: step {adam['steps_to_adam']})")  # fmt: skip
    return out


def plot_curves(rows: list[dict], task_names: list[str], optimizer_names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(task_names), figsize=(4.6 * len(task_names), 3.8), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, task in zip(axes[0], task_names, strict=True):
        lows, adam_final = [], None
        for i, name in enumerate(optimizer_names):
            runs = [r for r in rows if r["task"] == task and r["optimizer"] == name and r["kind"] == "full"]
            runs = [r for r in runs if r["status"] == "ok"]
            if not runs:
                continue
            loss = np.mean([r["curve"]["loss"] for r in runs], axis=0)
            style = {"color": "black", "lw": 2.0} if name == "adam" else {"color": cmap(i), "lw": 1.2}
            ax.plot(runs[0]["curve"]["step"], loss, label=name, **style)
            lows.append(float(np.min(loss)))
            if name == "adam":
                adam_final = float(loss[-1])
                start = float(loss[min(1, len(loss) - 1)])
        if adam_final is not None:
            ax.axhline(adam_final, color="black", ls=":", lw=0.8)
            low = min(lows)
            ax.set_ylim(low - 0.05 * (start - low), start)  # from Adam's first evaluation down
        ax.set_xlabel("step")
        ax.set_ylabel(LOSS_LABEL[task])
        ax.set_title(task)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _study_optimizer(out: ResultFile, progress: Any, task: str, spec: Spec, seeds: list[int], steps: int,
                     grid_steps: int, adam_lr: float, args: argparse.Namespace, fixed_lr: float | None = None,
                     ) -> float | None:  # fmt: skip
    """The lr grid (short runs, first seed) and the full runs at the selected rate; returns that rate.

    ``fixed_lr`` (the rate selected for the same model on the other backend) or ``--no-grid`` (the
    grid's middle value) skip the grid.
    """
    lrs = _grid_lrs(spec, task)
    grid_rows: list[dict] = []
    tried: list[float] = []
    extensions = 0
    best = fixed_lr if fixed_lr is not None else lrs[len(lrs) // 2] if args.no_grid else None
    while best is None and lrs:
        lr = lrs.pop(0)
        # the grid only needs the final loss: a few evaluations (they cost forward passes, untimed)
        row = run_one(task, spec, lr, seeds[0], grid_steps, max(2, args.eval_points // 4), adam_lr, args.quick)
        progress.update()
        if row["status"].startswith("skipped"):
            out.add({"task": task, "optimizer": spec.name, "kind": "skip", "status": row["status"]})
            return None
        row = {"task": task, "optimizer": spec.name, "kind": "grid", "lr": lr, "seed": seeds[0], "steps": grid_steps,
               **row}  # fmt: skip
        out.add(row)
        grid_rows.append(row)
        tried.append(lr)
        if not lrs:
            winner = select_lr(grid_rows)
            # a winner at an edge of the grid: one more rate a factor 3 beyond it; every rate diverged:
            # one a factor 3 below the lowest (at most twice either way)
            if winner is None and extensions < 2:
                lrs.append(min(tried) / 3)
                extensions += 1
            elif winner is not None and winner in (min(tried), max(tried)) and extensions < 2:
                lrs.append(winner / 3 if winner == min(tried) else winner * 3)
                extensions += 1
            elif winner is None:
                out.add({"task": task, "optimizer": spec.name, "kind": "skip",
                         "status": f"diverged at every lr of the grid {sorted(tried)}"})  # fmt: skip
                return None
            else:
                best = winner
    for seed in seeds:
        row = run_one(task, spec, best, seed, steps, args.eval_points, adam_lr, args.quick)
        progress.update()
        if row["status"].startswith("skipped"):
            out.add({"task": task, "optimizer": spec.name, "kind": "skip", "status": row["status"]})
            return None
        out.add({"task": task, "optimizer": spec.name, "kind": "full", "lr": best, "seed": seed, "steps": steps,
                 "grid": sorted(tried), **row})  # fmt: skip
    return best


COLUMNS = ["task", "optimizer", "lr", "final_loss", "final_loss_sd", "steps_to_adam", "seconds_to_adam",
           "state_bytes_per_param", "method_state_bytes_per_param", "ms_per_step", "cpu_ms_per_step",
           "status"]  # fmt: skip


def main(argv: list[str] | None = None, out_dir: Path | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks optimizers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--optimizers", default=",".join(REGISTRY), help="adam is always run (the reference)")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--lm-steps", type=int, default=400)
    parser.add_argument("--svi-steps", type=int, default=1000)
    parser.add_argument("--grid-fraction", type=float, default=0.25, help="steps of the lr-grid runs / full steps")
    parser.add_argument("--eval-points", type=int, default=20, help="evaluations along a run")
    parser.add_argument("--no-grid", action="store_true", help="skip the lr grid: each grid's middle value")
    parser.add_argument("--quick", action="store_true", help="tiny models and runs (the plumbing test)")
    parser.add_argument("--figure", default=None, help=f"loss-curve PNG (default docs/_static/{FIGURE})")
    parser.add_argument("--tag", default=None, help="result file optimizers-<tag>-<date>.json (--quick: quick)")
    args = parser.parse_args(argv)
    task_names = args.tasks.split(",")
    names = args.optimizers.split(",")
    for t in task_names:
        if t not in TASKS:
            raise SystemExit(f"--tasks: unknown {t!r}; known: {list(TASKS)}")
    for o in names:
        if o not in REGISTRY:
            raise SystemExit(f"--optimizers: unknown {o!r}; known: {list(REGISTRY)}")
    names = ["adam"] + [o for o in names if o != "adam"]
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.quick:
        args.lm_steps, args.svi_steps = min(args.lm_steps, 12), min(args.svi_steps, 12)
        args.eval_points = min(args.eval_points, 3)
    if not 0 < args.grid_fraction <= 1:
        raise SystemExit(f"--grid-fraction: expected a number in (0, 1], got {args.grid_fraction}")

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reproducible timing: one core
    config = {**vars(args), "optimizers": names, "device": "cpu (no GPU was lent this session)",
              "torch_threads": 1, "dtype": "float32",
              "registry": {n: {k: v for k, v in vars(REGISTRY[n]).items()} for n in names}}  # fmt: skip
    out = ResultFile("optimizers", config, out_dir, tag=args.tag or ("quick" if args.quick else None))
    from tqdm.auto import tqdm

    progress = tqdm(desc="optimizers", unit="run")
    selected: dict[tuple[str, str], float | None] = {}
    try:
        for task in task_names:
            steps = args.lm_steps if task == "char-lm" else args.svi_steps
            grid_steps = max(1, round(args.grid_fraction * steps))
            adam_lr = _grid_lrs(REGISTRY["adam"], task)[1]  # replaced by Adam's selected rate
            for name in names:
                progress.set_postfix_str(f"{task} {name}")
                fixed = selected.get(("bnn", name)) if task == "numpyro-bnn" else None  # the same model in Pyro
                best = _study_optimizer(out, progress, task, REGISTRY[name], seeds, steps, grid_steps, adam_lr, args,
                                        fixed)  # fmt: skip
                selected[(task, name)] = best
                if name == "adam" and best is not None:
                    adam_lr = best
    except KeyboardInterrupt:
        print(f"\ninterrupted: {len(out.data['runs'])} finished runs kept in {out.path}")
        raise
    finally:
        progress.close()
        torch.set_num_threads(threads)
    rows = summarise(out.data["runs"], task_names, names)
    verdicts = claims(rows)
    out.finish({"table": rows, "claims": verdicts})
    print(table([{k: v for k, v in r.items() if v is not None} for r in rows], COLUMNS))
    if verdicts:
        print("\nThe papers' claim (SWAN/SinkGD with no state, RACS with m + n, reach Adam's loss in <= Adam's steps):")
        print("\n".join(f"* {line}" for line in verdicts))
    if args.figure is not None:
        figure = Path(args.figure)
    elif out_dir is not None:
        figure = Path(out_dir) / FIGURE
    else:
        figure = (RESULTS_DIR / f"optimizers-quick-{FIGURE}") if args.quick else DOCS_STATIC / FIGURE
    plot_curves(out.data["runs"], task_names, names, figure)
    print(f"\nwritten: {out.path} and {figure}")
    return out.data
