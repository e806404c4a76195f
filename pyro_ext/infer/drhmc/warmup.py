"""DR-HMC's warmup pieces in Pyro, from Pyro's public API only.

* :class:`NUTSWarmup` - Pyro's own NUTS warmup (step-size dual averaging, windowed mass
  matrix, Stan's schedule), an internal :class:`pyro.infer.NUTS` driven through its public
  methods, reporting each transition's integration time, which the DR-HMC kernel averages
  into its trajectory length;
* :func:`find_reasonable_step_size` - the step-size search Pyro's ``HMC`` runs when step-size
  adaptation (re)starts (Hoffman & Gelman 2014, Algorithm 4), for the DR-HMC warmup that
  adapts without NUTS;
* :func:`is_numerical_failure` - whether Pyro's HMC counts an exception raised by a potential
  as a NaN energy (a rejection) rather than an error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import pyro.distributions as dist
import torch
from pyro.infer import NUTS
from pyro.infer.mcmc.adaptation import BlockMassMatrix
from pyro.ops.integrator import potential_grad, velocity_verlet

__all__ = ["NUTSStep", "NUTSWarmup", "find_reasonable_step_size", "is_numerical_failure"]

# Pyro's HMC defaults for the step-size search (Stan's direction threshold log 0.8)
_DIRECTION_THRESHOLD = math.log(0.8)
_MIN_STEP_SIZE, _MAX_STEP_SIZE = 1e-10, 1e10


def is_numerical_failure(exception: Exception) -> bool:
    """Whether Pyro treats ``exception`` from a potential as a numerical failure (a NaN energy).

    Asked through Pyro's public :func:`pyro.ops.integrator.potential_grad`, which consults the
    handlers registered with ``pyro.ops.integrator.register_exception_handler`` (by default:
    a singular or non-positive-definite matrix): it returns a NaN potential for a handled
    exception and re-raises any other.
    """

    def raise_(_):
        raise exception

    try:
        potential_grad(raise_, {"z": torch.zeros(())})
    except Exception as error:
        if error is exception:
            return False
        raise
    return True


def _kinetic_energy(r_unscaled: Mapping[Any, torch.Tensor]) -> torch.Tensor:
    """``sum_blocks |r_unscaled|^2 / 2``: the kinetic energy of a momentum in Pyro's whitened blocks."""
    energy = 0.0
    for value in r_unscaled.values():
        energy = energy + value.dot(value)
    return 0.5 * energy


def _sample_momentum(mass_matrix_adapter: BlockMassMatrix, like: torch.Tensor, prototype: Mapping[str, torch.Tensor]):
    """``(r, r_unscaled)``: one ``N(0, 1)`` draw per mass-matrix block (Pyro's HMC order), scaled by ``M^{1/2}``."""
    options = {"dtype": like.dtype, "device": like.device}
    r_unscaled = {
        sites: dist.Normal(torch.zeros(size, **options), torch.ones(size, **options)).sample()
        for sites, size in mass_matrix_adapter.mass_matrix_size.items()
    }
    return mass_matrix_adapter.scale(r_unscaled, r_prototype=prototype), r_unscaled


def find_reasonable_step_size(
    potential_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    mass_matrix_adapter: BlockMassMatrix,
    z: dict[str, torch.Tensor],
    step_size: float,
    prototype: Mapping[str, torch.Tensor],
) -> float:
    """Pyro's ``HMC`` step-size search from ``z``, with the same arithmetic and random numbers.

    One leapfrog step with a fresh momentum; while the sign of ``log 0.8 + delta_energy``
    keeps its first value, double (acceptance above 0.8) or halve the step size and try again
    (Hoffman & Gelman 2014, Algorithm 4, with Stan's threshold), within ``[1e-10, 1e10]``.
    Momenta are drawn like Pyro's (one ``Normal(0, 1).sample()`` per mass-matrix block), from
    torch's global generator. A potential raising a numerical failure keeps ``step_size``.
    """
    try:
        potential_energy = potential_fn(z)
    except Exception as e:
        if is_numerical_failure(e):
            return step_size
        raise
    z = {k: v.clone() for k, v in z.items()}  # as Pyro: transforms with cache_size > 0 (pyro issue 2292)

    def delta_energy(step_size: float) -> torch.Tensor:
        r, r_unscaled = _sample_momentum(mass_matrix_adapter, potential_energy, prototype)
        energy_current = _kinetic_energy(r_unscaled) + potential_energy
        _, r_new, _, potential_energy_new = velocity_verlet(
            z, r, potential_fn, mass_matrix_adapter.kinetic_grad, step_size
        )
        energy_new = _kinetic_energy(mass_matrix_adapter.unscale(r_new)) + potential_energy_new
        return energy_new - energy_current

    # direction 1: keep increasing the step size; NaN (a diverging step) gives -1
    direction = 1 if _DIRECTION_THRESHOLD < -delta_energy(step_size) else -1
    direction_new = direction
    while direction_new == direction and _MIN_STEP_SIZE < step_size < _MAX_STEP_SIZE:
        step_size = 2**direction * step_size
        direction_new = 1 if _DIRECTION_THRESHOLD < -delta_energy(step_size) else -1
    return min(max(step_size, _MIN_STEP_SIZE), _MAX_STEP_SIZE)


class _CountingPotential:
    """A potential that counts its calls (one per leapfrog step in Pyro's integrator) until frozen."""

    def __init__(self, potential_fn: Callable):
        self.potential_fn = potential_fn
        self.calls = 0
        self.frozen = False

    def __call__(self, params):
        if not self.frozen:
            self.calls += 1
        return self.potential_fn(params)


class _WindowEndMassMatrix(BlockMassMatrix):
    """Pyro's block mass matrix, freezing a counter when a mass-matrix window ends.

    Pyro's warmup adapter ends a window (``end_adaptation``) as the last act of a transition
    and then, when it adapts the step size too, restarts it with a step-size search whose
    potential evaluations are not leapfrog steps of that transition.
    """

    def __init__(self, counter: _CountingPotential):
        super().__init__()
        self.counter = counter

    def end_adaptation(self) -> None:
        super().end_adaptation()
        self.counter.frozen = True


class NUTSStep(NamedTuple):
    """One NUTS warmup transition: the new ``z``, its ``potential_energy`` (float), the
    ``step_size`` it integrated with and its leapfrog ``num_steps``."""

    z: dict[str, torch.Tensor]
    potential_energy: float
    step_size: float
    num_steps: int


class NUTSWarmup:
    """Pyro's NUTS warmup of a potential, one transition at a time (public NUTS API only).

    Args:
        potential_fn: the potential energy of a dict of unconstrained tensors.
        initial_params: the start, a dict of unconstrained tensors.
        warmup_steps: the warmup length (the adaptation schedule's).
        config: an :class:`adapters.configs.DRHMCConfig` (step size, adaptation flags, target,
            dense mass, tree depth). The tree's divergence threshold is Pyro's (1000).

    Building it runs NUTS's ``setup``: Pyro's step-size search from ``initial_params`` (torch's
    global generator), exactly as a plain ``NUTS`` kernel would.
    """

    def __init__(self, potential_fn: Callable, initial_params: dict[str, torch.Tensor], warmup_steps: int, config):
        self.potential_fn = potential_fn
        self.counter = _CountingPotential(potential_fn)
        same_names = ("step_size", "adapt_step_size", "adapt_mass_matrix", "target_accept_prob", "max_tree_depth")
        settings = {name: getattr(config, name) for name in same_names}
        self.nuts = NUTS(potential_fn=self.counter, full_mass=config.dense_mass, **settings)
        self.nuts.mass_matrix_adapter = _WindowEndMassMatrix(self.counter)
        self.nuts.initial_params = initial_params
        self.nuts.setup(warmup_steps)

    @property
    def step_size(self) -> float:
        return self.nuts.step_size

    @property
    def inverse_mass_matrix(self) -> dict[tuple[str, ...], torch.Tensor]:
        return self.nuts.inverse_mass_matrix

    @property
    def mass_matrix_adapter(self) -> BlockMassMatrix:
        return self.nuts.mass_matrix_adapter

    def sample(self, params: dict[str, torch.Tensor]) -> NUTSStep:
        """One NUTS transition from ``params`` (NUTS itself starts from its own last draw).

        ``step_size`` is read before the adapter moves it; ``num_steps`` counts the tree's
        potential evaluations (one per leapfrog step), not those of the step-size search at a
        mass-matrix window's end; ``potential_energy`` is one more evaluation without gradient
        (not counted), as Pyro's NUTS keeps its own to itself.
        """
        step_size = float(self.nuts.step_size)
        self.counter.calls, self.counter.frozen = 0, False
        z = self.nuts.sample(params)
        self.counter.frozen = True
        try:
            with torch.no_grad():
                potential_energy = float(self.potential_fn(z))
        except Exception as e:
            if not is_numerical_failure(e):
                raise
            potential_energy = math.nan
        return NUTSStep(z, potential_energy, step_size, self.counter.calls)

    def logging(self) -> dict[str, str]:
        return self.nuts.logging()

    def cleanup(self) -> None:
        self.nuts.cleanup()
