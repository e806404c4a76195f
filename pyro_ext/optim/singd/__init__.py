"""SINGD: structured inverse-free natural gradient descent (a KFAC without inverses), in torch/Pyro.

Lin, Dangel, Eschenhagen, Neklyudov, Kristiadi, Turner & Makhzani, "Structured Inverse-Free
Natural Gradient Descent: Memory-Efficient & Numerically-Stable KFAC", ICML 2024
(arXiv:2312.05705).  The update is the paper's Figure 4 (INGD on the left, SINGD on the
right); the authors' package ``singd`` is the oracle the tests compare against step for step.

For a layer with weight ``W`` of shape ``(d_o, d_i)`` (a bias is appended as the last
column, so the input side has ``d_K = d_i + 1``), KFAC approximates the (empirical) Fisher
by ``U ⊗ G`` with ``U = E[a aᵀ]`` (layer inputs, ``d_K × d_K``) and ``G = Σ g gᵀ`` (output
gradients, ``d_o × d_o``).  SINGD keeps factors ``K`` (``d_K × d_K``) and ``C``
(``d_o × d_o``) with ``K Kᵀ ≈ (U + λ…)⁻¹`` and ``C Cᵀ ≈ (G + λ…)⁻¹`` and never inverts
anything.  Every ``T`` steps (Fig. 4, right), with ``Π̂`` the projection onto the factor's
structure (taking the (block) diagonal, etc.):

    H_K = Π̂(Kᵀ U K),   H_C = Π̂(Cᵀ G C),   c² = λ Tr(Cᵀ C),   κ² = λ Tr(Kᵀ K)
    m_K ← α₁ m_K + 1/(2 d_o) · (Tr(H_C) H_K + c² Π̂(Kᵀ K) − d_o I)
    m_C ← α₁ m_C + 1/(2 d_K) · (Tr(H_K) H_C + κ² Π̂(Cᵀ C) − d_K I)
    K ← K (I − β₁ m_K),   C ← C (I − β₁ m_C)

and every step the weights move along the structured natural gradient

    m_W ← α₂ m_W + C Cᵀ ∇_W K Kᵀ + γ W,    W ← W − β₂ m_W.

Names: ``lr`` = β₂, ``momentum`` = α₂, ``damping`` = λ, ``alpha1`` = α₁, ``lr_cov`` = β₁,
``weight_decay`` = γ, ``T`` = update interval (the ``singd`` package's names).  The
products ``K(I − β₁ m)`` stay in the structure because every structure here is a matrix
group (closed under multiplication); the factors are stored compactly (a diagonal as a
vector, a Toeplitz factor as its first column, ...), so a ``d × d`` factor costs ``d``
numbers for the diagonal and Toeplitz structures.

``kfac_like=True`` is the paper's IKFAC (the INGD update without Riemannian momentum and
adaptive damping, ``m_K ← ½(H_K + λ Π̂(KᵀK) − I)``), which tracks KFAC's ``(U + λI)⁻¹``.

Loss scale (SINGD is not invariant to it).  The hooks see ``g = ∂L/∂(layer output)``.
If the loss is ``L = s · Σ_n ℓ_n`` over the per-example terms the layer sees, the Fisher of
``L`` is ``s Σ_n ĝ_n ĝ_nᵀ = (1/s) Σ_n g_n g_nᵀ``, so ``G`` is built from ``g / √s`` with
``s = loss_scale`` (``loss_average=None``) or ``s = loss_scale / n`` (``loss_average="batch"``,
``n`` the batch size, ``"batch+sequence"``: batch × sequence positions) — ``singd``'s option,
with ``loss_scale=1``.  Pyro's ELBO is a *sum* over data (scaled by ``N / B`` under
subsampling, averaged over ``num_particles = P``), so ``loss_scale`` is the factor in front
of the sum of per-datum log-likelihood terms in the loss: ``N / (B P)`` for the raw ELBO.
Because the factors start at ``K = C = I``, the first steps are SGD steps on whatever
scale the loss has; with the raw (``N``-times larger) ELBO they blow up unless ``lr`` is tiny.
Recommended: scale model and guide by ``1 / N`` (``poutine.scale(model, scale=1/N)``) so
the loss is a per-datum mean and pass ``loss_scale = 1 / (B P)`` with ``loss_average=None``
(for one particle this is ``loss_average="batch"``, the default), plus
``normalize_lr_cov=True`` (the curvature of a likelihood with a learned noise scale
changes by orders of magnitude during training).

Several forward/backward passes before one step (gradient accumulation, non-vectorised
ELBO particles) add their ``G`` terms and *average* their ``U`` terms, so the statistics
equal those of one pass over all the data under the matching ``loss_scale``.  ``singd``
sums both; the two agree whenever one pass is made per step.

Shapes: ``a`` ``(n, d_K)``, ``g`` ``(n, d_o)`` after flattening weight-sharing axes
(``kfac_approx="expand"``; ``"reduce"`` averages inputs and sums output gradients over them).
"""

from pyro_ext.optim.singd.factors import (
    SINGDFactors,
    init_factors,
    layer_inputs,
    layer_output_grads,
    natural_gradient,
    supports,
    update_factors,
)
from pyro_ext.optim.singd.optimizer import FALLBACKS, KFAC_APPROX, LOSS_AVERAGE, SINGDOptimizer
from pyro_ext.optim.singd.structures import (
    STRUCTURES,
    BlockDiagonal,
    Dense,
    Diagonal,
    Hierarchical,
    Structure,
    TriangularToeplitz,
    get_structure,
)
from pyro_ext.optim.singd.wrapper import SINGD

__all__ = [
    "FALLBACKS",
    "KFAC_APPROX",
    "LOSS_AVERAGE",
    "SINGD",
    "STRUCTURES",
    "BlockDiagonal",
    "Dense",
    "Diagonal",
    "Hierarchical",
    "SINGDFactors",
    "SINGDOptimizer",
    "Structure",
    "TriangularToeplitz",
    "get_structure",
    "init_factors",
    "layer_inputs",
    "layer_output_grads",
    "natural_gradient",
    "supports",
    "update_factors",
]
