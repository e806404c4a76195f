"""The training tasks of the ``optimizers`` study, each a fresh run built from a seed.

* :class:`CharLM` -- (a) a small pre-LayerNorm causal transformer on the character corpus of
  :mod:`adapters.char_corpus` (``V = 30``), next-token cross-entropy averaged over the
  ``batch x context`` tokens of a step; the last 10% of the corpus is the validation text.
* :class:`PyroBNN` -- (b) Pyro SVI for a Bayesian MLP classifier (``64 -> hidden -> 10``, tanh,
  standard-normal priors on every weight and bias) of scikit-learn's bundled digits
  (1797 images of 8 x 8 pixels, ``x / 16``), full batch, ``AutoNormal`` guide: its
  ``locs``/``scales`` keep the sites' shapes, so the weight matrices are matrix parameters.
* :class:`PyroVAE` -- (b) a VAE of the binarised digits (pixel > 7), MLP encoder and decoder
  registered with ``pyro.module``, Bernoulli likelihood, mini-batches through a subsampled
  plate (Pyro rescales the batch's terms to the data set).
* :class:`NumPyroBNN` -- the model of :class:`PyroBNN` in NumPyro, for the optax transforms.

Every run reports the quantity the study compares -- the validation loss (nats per token) for
(a), the negative ELBO per data point for (b) -- from :meth:`evaluate`, which draws its Monte
Carlo noise from a fixed seed (common random numbers: every optimizer and every evaluation see
the same noise), and without touching the training's random stream.  Everything is float32.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

LM_VAL_FRACTION = 0.1


@functools.lru_cache(maxsize=1)
def _corpus_tokens() -> np.ndarray:
    from adapters.char_corpus import corpus, encode

    return encode(corpus())


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.data.astype(np.float32), data.target.astype(np.int64)


def is_matrix(param: Any) -> bool:
    """Matrix methods act on parameters with at least two non-trivial axes (the library's rule)."""
    shape = tuple(param.shape)
    return len(shape) >= 2 and shape[0] > 1 and math.prod(shape[1:]) > 1


# --------------------------------------------------------------------------------------------
# (a) character-level transformer language model
# --------------------------------------------------------------------------------------------


def _transformer_classes():
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        """Pre-LayerNorm block: causal multi-head self-attention, then a GELU MLP (4 x width)."""

        def __init__(self, d_model: int, n_heads: int):
            super().__init__()
            self.n_heads = n_heads
            self.ln1 = nn.LayerNorm(d_model)
            self.qkv = nn.Linear(d_model, 3 * d_model)
            self.proj = nn.Linear(d_model, d_model)
            self.ln2 = nn.LayerNorm(d_model)
            self.fc = nn.Linear(d_model, 4 * d_model)
            self.out = nn.Linear(4 * d_model, d_model)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            B, T, D = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(D, dim=-1)
            heads = [t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v)]
            att = F.scaled_dot_product_attention(*heads, is_causal=True)
            x = x + self.proj(att.transpose(1, 2).reshape(B, T, D))
            return x + self.out(F.gelu(self.fc(self.ln2(x))))

    class CharTransformer(nn.Module):
        """Token + learned position embeddings, ``n_layers`` blocks, final LayerNorm, linear head."""

        def __init__(self, vocab: int, d_model: int, n_layers: int, n_heads: int, context: int):
            super().__init__()
            self.embed = nn.Embedding(vocab, d_model)
            self.pos = nn.Parameter(torch.zeros(context, d_model))
            self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
            self.ln_f = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, vocab)
            nn.init.normal_(self.pos, std=0.02)
            nn.init.normal_(self.embed.weight, std=0.02)
            for block in self.blocks:  # residual branches start small (GPT-2's 1/sqrt(2 L) scaling)
                for layer in (block.proj, block.out):
                    nn.init.normal_(layer.weight, std=0.02 / math.sqrt(2 * n_layers))
                    nn.init.zeros_(layer.bias)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            x = self.embed(tokens) + self.pos[: tokens.shape[1]]
            for block in self.blocks:
                x = block(x)
            return self.head(self.ln_f(x))

    return CharTransformer


class CharLM:
    """(a) One training run of the character transformer: ``loss()`` on the next random batch, ``evaluate()``.

    Batches are ``(batch, context + 1)`` windows at uniformly random offsets of the training text,
    drawn from a generator seeded by ``seed`` (the same batches for every optimizer); the
    validation set is ``eval_batches`` fixed windows of the held-out text.  ``matrix_params`` are
    the blocks' weight matrices (what Muon and the matrix methods act on); the embeddings, the
    head, LayerNorms and biases are the rest (AdamW), as Muon's documentation recommends.
    """

    name = "char-lm"
    backend = "torch"

    def __init__(
        self,
        seed: int,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        context: int = 64,
        batch: int = 32,
        eval_batches: int = 8,
    ):
        import torch

        from adapters.char_corpus import ALPHABET

        tokens = torch.as_tensor(_corpus_tokens(), dtype=torch.long)
        split = int(len(tokens) * (1 - LM_VAL_FRACTION))
        self.train_text, val_text = tokens[:split], tokens[split:]
        self.context, self.batch = context, batch
        stride = (len(val_text) - context - 1) // eval_batches // batch
        starts = torch.arange(eval_batches * batch) * stride
        self.val = torch.stack([val_text[s : s + context + 1] for s in starts]).view(eval_batches, batch, -1)
        torch.manual_seed(seed)
        self.model = _transformer_classes()(len(ALPHABET), d_model, n_layers, n_heads, context).float()
        self.generator = torch.Generator().manual_seed(10_000 + seed)
        self.loss_scale = 1.0
        self.batch_size = batch * context  # the loss averages this many next-token terms

    def named_params(self) -> list[tuple[str, Any]]:
        return list(self.model.named_parameters())

    def matrix_names(self) -> set[str]:
        return {n for n, p in self.model.named_parameters() if n.startswith("blocks.") and is_matrix(p)}

    def layers(self) -> list[Any]:
        import torch

        return [m for b in self.model.blocks for m in b.modules() if isinstance(m, torch.nn.Linear)]

    def _loss(self, window):
        from torch.nn import functional as F

        logits = self.model(window[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1))

    def loss(self):
        import torch

        starts = torch.randint(len(self.train_text) - self.context - 1, (self.batch,), generator=self.generator)
        window = torch.stack([self.train_text[s : s + self.context + 1] for s in starts.tolist()])
        return self._loss(window)

    def evaluate(self) -> float:
        import torch

        with torch.no_grad():
            return float(torch.stack([self._loss(w) for w in self.val]).mean())


# --------------------------------------------------------------------------------------------
# (b) Pyro SVI: Bayesian MLP and VAE on the digits
# --------------------------------------------------------------------------------------------


class PyroBNN:
    """(b) SVI for a Bayesian MLP classifier of the digits; ``AutoNormal`` guide, full batch, one particle."""

    name = "bnn"
    backend = "pyro"

    def __init__(self, seed: int, hidden: int = 64, eval_particles: int = 8):
        import pyro
        import pyro.distributions as dist
        import torch
        from pyro.infer.autoguide import AutoNormal

        x, y = _digits()
        self.x, self.y = torch.as_tensor(x / 16.0), torch.as_tensor(y)
        self.N = len(y)
        self.hidden = hidden
        shapes = {"w1": (64, hidden), "b1": (hidden,), "w2": (hidden, 10), "b2": (10,)}

        def model(x, y):
            w = {
                name: pyro.sample(name, dist.Normal(torch.zeros(shape, dtype=torch.float32), 1.0).to_event(len(shape)))
                for name, shape in shapes.items()
            }
            logits = torch.tanh(x @ w["w1"] + w["b1"].unsqueeze(-2)) @ w["w2"] + w["b2"].unsqueeze(-2)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("obs", dist.Categorical(logits=logits), obs=y)

        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        self.model, self.guide = model, AutoNormal(model)
        self.guide(self.x, self.y)  # creates the guide's parameters (seeded init)
        self.loss_scale, self.batch_size = float(self.N), float(self.N)
        self.eval_particles = eval_particles

    def step_args(self) -> tuple:
        return (self.x, self.y)

    def named_params(self) -> list[tuple[str, Any]]:
        import pyro

        return list(pyro.get_param_store().named_parameters())

    def matrix_names(self) -> set[str]:
        return {n for n, p in self.named_params() if is_matrix(p)}

    def layers(self) -> list[Any]:
        return []  # the weights are latent variables; the guide has no layers

    def evaluate(self) -> float:
        import torch
        from pyro.infer import Trace_ELBO

        elbo = Trace_ELBO(num_particles=self.eval_particles)
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(12345)
            return float(elbo.loss(self.model, self.guide, self.x, self.y)) / self.N


class PyroVAE:
    """(b) VAE of the binarised digits: ``64 -> hidden -> 2 x latent`` encoder, ``latent -> hidden -> 64`` decoder."""

    name = "vae"
    backend = "pyro"

    def __init__(self, seed: int, hidden: int = 128, latent: int = 8, batch: int = 128, eval_particles: int = 4):
        import pyro
        import pyro.distributions as dist
        import torch
        from torch import nn

        x, _ = _digits()
        self.x = torch.as_tensor((x > 7).astype(np.float32))
        self.N, self.batch = len(x), batch
        pyro.clear_param_store()
        torch.manual_seed(seed)
        self.encoder = nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent)).float()
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, 64)).float()
        enc, dec = self.encoder, self.decoder

        def model(x, idx):
            pyro.module("decoder", dec)
            with pyro.plate("data", self.N, subsample=idx):
                z = pyro.sample("z", dist.Normal(torch.zeros(len(idx), latent, dtype=torch.float32), 1.0).to_event(1))
                pyro.sample("x", dist.Bernoulli(logits=dec(z)).to_event(1), obs=x[idx])

        def guide(x, idx):
            pyro.module("encoder", enc)
            with pyro.plate("data", self.N, subsample=idx):
                loc, log_scale = enc(x[idx]).chunk(2, dim=-1)
                pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

        self.model, self.guide = model, guide
        pyro.module("decoder", dec)
        pyro.module("encoder", enc)
        self.generator = torch.Generator().manual_seed(20_000 + seed)
        self.loss_scale = float(self.N)
        self.batch_size = float(batch)
        self.eval_particles = eval_particles

    def step_args(self) -> tuple:
        import torch

        return (self.x, torch.randperm(self.N, generator=self.generator)[: self.batch])

    def named_params(self) -> list[tuple[str, Any]]:
        import pyro

        return list(pyro.get_param_store().named_parameters())

    def matrix_names(self) -> set[str]:
        return {n for n, p in self.named_params() if is_matrix(p)}

    def layers(self) -> list[Any]:
        return [self.encoder, self.decoder]

    def evaluate(self) -> float:
        import torch
        from pyro.infer import Trace_ELBO

        elbo = Trace_ELBO(num_particles=self.eval_particles)
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(12345)
            return float(elbo.loss(self.model, self.guide, self.x, torch.arange(self.N))) / self.N


class NumPyroBNN:
    """The Bayesian MLP of :class:`PyroBNN` in NumPyro (``AutoNormal``, full batch); runs in float32."""

    name = "numpyro-bnn"
    backend = "numpyro"

    def __init__(self, hidden: int = 64, eval_particles: int = 16):
        import jax.numpy as jnp
        import numpyro
        import numpyro.distributions as dist
        from numpyro.infer.autoguide import AutoNormal

        x, y = _digits()
        self.x, self.y = jnp.asarray(x / 16.0, dtype=jnp.float32), jnp.asarray(y, dtype=jnp.int32)
        self.N = len(y)
        shapes = {"w1": (64, hidden), "b1": (hidden,), "w2": (hidden, 10), "b2": (10,)}

        def model(x, y):
            w = {
                name: numpyro.sample(name, dist.Normal(jnp.zeros(shape, jnp.float32), 1.0).to_event(len(shape)))
                for name, shape in shapes.items()
            }
            logits = jnp.tanh(x @ w["w1"] + w["b1"]) @ w["w2"] + w["b2"]
            with numpyro.plate("data", x.shape[0]):
                numpyro.sample("obs", dist.Categorical(logits=logits), obs=y)

        self.model, self.guide = model, AutoNormal(model)
        self.loss_scale, self.batch_size = float(self.N), float(self.N)
        self.eval_particles = eval_particles
        self._evaluate = None

    def evaluate(self, params: dict[str, Any]) -> float:
        """Negative ELBO per image at the guide's (constrained) ``params``, fixed-seed particles; jitted once."""
        import jax
        from numpyro.infer import Trace_ELBO

        if self._evaluate is None:
            elbo, key = Trace_ELBO(num_particles=self.eval_particles), jax.random.PRNGKey(12345)
            self._evaluate = jax.jit(lambda p: elbo.loss(key, p, self.model, self.guide, self.x, self.y))
        return float(self._evaluate(params)) / self.N
