"""``SINGD``: the ``pyro.optim``-compatible wrapper of ONE :class:`SINGDOptimizer` over a module, for ``SVI``."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import pyro
from pyro.optim import PyroOptim
from torch import Tensor, nn

from pyro_ext.optim.singd.optimizer import SINGDOptimizer


class SINGD(PyroOptim):
    """``pyro.optim``-compatible SINGD for ``pyro.infer.SVI``: ONE :class:`SINGDOptimizer` over ``module``.

    Pyro's ``PyroOptim`` builds one torch optimizer per parameter, which cannot
    precondition a layer (SINGD needs the whole weight and the layer's inputs and output
    gradients).  This wrapper builds one optimizer over ``module`` at construction (so
    the hooks are in place before SVI's first forward pass); when ``SVI.step`` calls it
    with the parameters of the step, the ones it has not seen (a guide's, ``pyro.param``
    sites) join the fallback group (Adam by default), and it steps those parameters.

    Args:
        module: the network (``PyroModule`` or an ``nn.Module`` registered with
            ``pyro.module``); build the wrapper after loading a saved param store, since
            the optimizer holds the module's parameter objects.
        optim_args: keyword arguments of :class:`SINGDOptimizer` (one dict; per-parameter
            callables make no sense for layer-wise SINGD).  ``loss_scale`` is the factor in
            front of the sum over data of the loss SVI differentiates (module docstring).
        clip_args: ``clip_norm`` / ``clip_value`` applied to each parameter's gradient, as
            in ``PyroOptim`` (the curvature statistics are not clipped).

    Example (per-datum ELBO, one particle, full batch, so ``loss_average="batch"``)::

        net = PyroModule[nn.Sequential](PyroModule[nn.Linear](1, 16), nn.Tanh(), PyroModule[nn.Linear](16, 1))

        def model(x, y=None):
            sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
            with pyro.plate("data", len(x)):
                pyro.sample("y", dist.Normal(net(x).squeeze(-1), sigma), obs=y)

        guide = AutoNormal(poutine.block(model, hide=["y"]))
        optim = SINGD(net, {"lr": 0.05, "lr_cov": 0.1, "T": 5, "normalize_lr_cov": True, "loss_average": "batch"})
        N = len(x)
        svi = SVI(poutine.scale(model, scale=1 / N), poutine.scale(guide, scale=1 / N), optim, Trace_ELBO())

    The guide's parameters are not in ``net``: they join the fallback (AdamW) on SVI's
    first step.

    Checkpoints: :meth:`get_state` keys each parameter's state by the module's parameter
    name (``"module"``) or by its param-store name (``"param_store"``); :meth:`set_state`
    applies it now where the parameter is known and when it first shows up otherwise.
    """

    def __init__(self, module: nn.Module, optim_args: dict[str, Any], clip_args: dict[str, Any] | None = None):
        if not isinstance(optim_args, Mapping):
            raise ValueError(f"optim_args must be a dict of SINGDOptimizer arguments, got {optim_args!r}")
        if clip_args is not None and not isinstance(clip_args, Mapping):
            raise ValueError(f"clip_args must be a dict with clip_norm and/or clip_value, got {clip_args!r}")
        super().__init__(SINGDOptimizer, dict(optim_args), dict(clip_args or {}))
        self.module = module
        self.optimizer = SINGDOptimizer(module, **optim_args)
        self._module_params = dict(module.named_parameters())
        self._module_names = {id(p): name for name, p in self._module_params.items()}
        self._warned_stale = False
        self._waiting: dict[str, dict[str, Any]] = {"module": {}, "param_store": {}}

    def _known(self) -> set[int]:
        return {id(p) for group in self.optimizer.param_groups for p in group["params"]}

    def __call__(self, params: Iterable[Tensor], *args, **kwargs) -> None:
        params = list(params)
        known = self._known()
        new = [p for p in params if id(p) not in known]
        if new:
            self.optimizer.add_fallback_params(new)
            self._consume_waiting(new)
        if self.pt_clip_args:
            for p in params:
                self._clip_grad(p, **self.pt_clip_args)
        self._warn_if_stale({id(p) for p in params})
        self.optimizer.step(params=params)

    def _warn_if_stale(self, active: set[int]) -> None:
        # A module computes with its own parameters but its pyro.param site reports the
        # param store's tensor of that name; when they differ, SVI never passes the former.
        if self._warned_stale:
            return
        stale = [
            n
            for n, p in self._module_params.items()
            if id(p) not in active and p.grad is not None and bool(p.grad.any())
        ]
        if stale:
            warnings.warn(
                f"module parameters {stale} have gradients but SVI did not pass them: the param store holds other "
                "tensors under their names (build SINGD after loading the param store, or clear it)",
                stacklevel=3,
            )
            self._warned_stale = True

    def _name(self, p: Tensor) -> tuple[str, str] | None:
        if id(p) in self._module_names:
            return "module", self._module_names[id(p)]
        name = pyro.get_param_store().param_name(p)
        return None if name is None else ("param_store", name)

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"module": {}, "param_store": {}}
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                key = self._name(p)
                if key is not None and self.optimizer.state.get(p):
                    state[key[0]][key[1]] = {k: v for k, v in self.optimizer.state[p].items()}
        return state

    def set_state(self, state_dict: dict[str, Any]) -> None:
        for kind in ("module", "param_store"):
            self._waiting[kind].update(state_dict.get(kind, {}))
        self._consume_waiting([p for group in self.optimizer.param_groups for p in group["params"]])

    def _consume_waiting(self, params: Iterable[Tensor]) -> None:
        for p in params:
            key = self._name(p)
            if key is not None and key[1] in self._waiting[key[0]]:
                self.optimizer._load_param_state(p, self._waiting[key[0]].pop(key[1]))
