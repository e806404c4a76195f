"""A character-level GRU language model in torch, and twisted SMC for constrained generation with it.

The torch twin of :mod:`numpyro_ext.models.char_lm` (``python -m pyro_ext.models.char_lm``):

1. a corpus that needs no download -- the docstrings of 29 standard-library modules of the
   running Python, lower-cased, letters, space, ``.``, ``,`` and newline (``V = 30`` symbols;
   :mod:`adapters.char_corpus`, shared with the JAX twin; importing this module never imports JAX);
2. a one-layer :class:`torch.nn.GRU` language model (:class:`CharGRU`) trained on it by
   teacher-forced cross-entropy with :class:`torch.optim.Adam` (:func:`train`);
3. the task "sequences of ``length`` characters that end with ``suffix``": ``p0`` is the GRU,
   ``phi(x) = 1[x ends with suffix]``, ``Z = P_{p0}(suffix)``, and the target
   ``sigma(x) = p0(x) phi(x) / Z`` is ``p0`` conditioned on the ending (:func:`suffix_model`);
4. twisted SMC (:class:`~pyro_ext.infer.twisted_smc.TwistedSMC` on a
   :class:`~pyro_ext.infer.twisted_smc.TokenModel`) without twists and with a learned twist
   head (:class:`TwistHead`, an MLP on the frozen GRU's hidden state, trained by CTL),
   reporting the log-Z sandwich: SMC lower and conditional-SMC upper bounds.  Exact target
   samples for the upper bound come from rejection sampling ``p0`` (exact, since ``phi`` is
   an indicator), whose acceptance rate is also an independent estimate of ``Z``
   (:func:`rejection_samples`).

Shapes: ``N`` sequences (particles), ``T`` characters, ``V`` symbols, ``H`` hidden units.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np
import torch

from adapters.char_corpus import ALPHABET, BOS, CORPUS_MODULES, corpus, decode, encode
from adapters.validation import check_positive_int

__all__ = [
    "ALPHABET",
    "BOS",
    "CORPUS_MODULES",
    "CharGRU",
    "TwistHead",
    "corpus",
    "decode",
    "encode",
    "gru_hidden",
    "gru_log_probs",
    "main",
    "prefix_hidden",
    "rejection_samples",
    "sample_sequences",
    "suffix_model",
    "train",
]


# ---------------------------------------------------------------------------------------
# The GRU
# ---------------------------------------------------------------------------------------
class CharGRU(torch.nn.Module):
    """A one-layer GRU language model: embedding ``(V, E)`` -> ``torch.nn.GRU(E, H)`` -> linear ``(H -> V)``.

    ``p0(x_{t+1} = v | x_{1:t}) = softmax(out(h_t))_v`` with ``h_t`` the GRU state after
    reading ``BOS, x_1, ..., x_t`` (torch's default initialisation).
    """

    def __init__(self, vocab_size: int = len(ALPHABET), embed: int = 32, hidden: int = 128):
        super().__init__()
        self.vocab_size = check_positive_int("vocab_size", vocab_size)
        self.hidden_size = check_positive_int("hidden", hidden)
        self.embed = torch.nn.Embedding(self.vocab_size, check_positive_int("embed", embed))
        self.gru = torch.nn.GRU(embed, self.hidden_size, batch_first=True)
        self.out = torch.nn.Linear(self.hidden_size, self.vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(N, T, V)`` log probabilities: row ``t`` is ``log p0(x_{t+1} = v | tokens[:, :t])`` (teacher forcing)."""
        return gru_log_probs(self, tokens)


def _with_bos(tokens: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.full((tokens.shape[0], 1), BOS, dtype=torch.long, device=tokens.device), tokens], dim=1)


def gru_hidden(model: CharGRU, tokens: torch.Tensor) -> torch.Tensor:
    """Hidden states ``(N, T, H)``: ``h[:, t]`` has read ``BOS, tokens[:, 0], ..., tokens[:, t-1]`` (causal)."""
    inputs = _with_bos(torch.as_tensor(tokens, dtype=torch.long)[:, :-1])
    states, _ = model.gru(model.embed(inputs))
    return states


def gru_log_probs(model: CharGRU, tokens: torch.Tensor) -> torch.Tensor:
    """``(N, T, V)``: row ``t`` is ``log p0(x_{t+1} = v | tokens[:, :t])``."""
    return torch.log_softmax(model.out(gru_hidden(model, tokens)), dim=-1)


def prefix_hidden(model: CharGRU, tokens: torch.Tensor, position: int) -> torch.Tensor:
    """``(N, H)``: the state after ``BOS, tokens[:, :position]`` (only the prefix is read; the rest is padding)."""
    inputs = _with_bos(torch.as_tensor(tokens, dtype=torch.long)[:, : int(position)])
    states, _ = model.gru(model.embed(inputs))
    return states[:, -1]


def train(
    text_tokens: Any,
    num_steps: int = 1500,
    seq_len: int = 32,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    hidden: int = 128,
    seed: int = 0,
) -> tuple[CharGRU, np.ndarray]:
    """Teacher-forced cross-entropy on random windows of the corpus; returns ``(model, losses (num_steps,))``.

    ``loss = -mean_{b, t} log p0(x_{b,t+1} | x_{b,1:t})`` over ``batch_size`` windows of
    ``seq_len`` characters.  Seeded by ``seed`` (initialisation and windows; torch's global
    generator is left untouched).
    """
    num_steps = check_positive_int("num_steps", num_steps)
    seq_len = check_positive_int("seq_len", seq_len)
    batch_size = check_positive_int("batch_size", batch_size)
    data = torch.as_tensor(np.asarray(text_tokens), dtype=torch.long).reshape(-1)
    if data.shape[0] <= seq_len:
        raise ValueError(f"text_tokens: need more than seq_len = {seq_len} tokens, got {data.shape[0]}")
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CharGRU(len(ALPHABET), hidden=hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    window = torch.arange(seq_len)
    losses = np.empty(num_steps)
    for i in range(num_steps):
        starts = torch.randint(0, data.shape[0] - seq_len, (batch_size,), generator=generator)
        batch = data[starts[:, None] + window]
        loss = -torch.gather(gru_log_probs(model, batch), -1, batch[..., None]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses[i] = float(loss.detach())
    model.zero_grad(set_to_none=True)
    return model, losses


@torch.no_grad()
def sample_sequences(
    model: CharGRU, num: int, length: int, generator: torch.Generator | None = None, chunk: int = 50_000
) -> torch.Tensor:
    """``(num, length)`` ancestral samples from the GRU (incremental: one cell per character, ``chunk`` at a time)."""
    num, length = check_positive_int("num", num), check_positive_int("length", length)
    out = []
    for start in range(0, num, chunk):
        size = min(chunk, num - start)
        token = torch.full((size,), BOS, dtype=torch.long)
        state = None
        tokens = []
        for _ in range(length):
            step, state = model.gru(model.embed(token)[:, None], state)
            probs = torch.softmax(model.out(step[:, 0]), dim=-1)
            token = torch.multinomial(probs, 1, generator=generator)[:, 0]
            tokens.append(token)
        out.append(torch.stack(tokens, dim=1))
    return torch.cat(out)


# ---------------------------------------------------------------------------------------
# The constrained-generation task
# ---------------------------------------------------------------------------------------
def _check_suffix(suffix: str, length: int) -> torch.Tensor:
    if not isinstance(suffix, str) or any(c not in ALPHABET for c in suffix) or not 0 < len(suffix) <= length:
        raise ValueError(f"suffix: expected 1..{length} characters of {ALPHABET!r}, got {suffix!r}")
    return torch.as_tensor(encode(suffix), dtype=torch.long)


def suffix_model(model: CharGRU, length: int, suffix: str):
    """The Pyro :class:`~pyro_ext.infer.twisted_smc.TokenModel` of "``length`` characters ending with ``suffix``".

    ``next_token_log_probs(tokens (N, T), position) -> (N, V)`` runs the GRU over the prefix
    only (no gradient); ``log_potential(tokens (N, T)) -> (N,)`` is ``0`` where the last
    ``len(suffix)`` characters are ``suffix`` and ``-inf`` elsewhere.
    """
    from pyro_ext.infer.twisted_smc import TokenModel

    length = check_positive_int("length", length)
    ending = _check_suffix(suffix, length)
    start = length - len(suffix)

    @torch.no_grad()
    def next_token_log_probs(tokens: torch.Tensor, position: int) -> torch.Tensor:
        return torch.log_softmax(model.out(prefix_hidden(model, tokens, position)), dim=-1)

    def log_potential(tokens: torch.Tensor) -> torch.Tensor:
        match = torch.all(tokens[:, start:] == ending, dim=-1)
        return torch.where(match, 0.0, -math.inf)

    return TokenModel(next_token_log_probs, log_potential, len(ALPHABET), length)


class TwistHead(torch.nn.Module):
    """A learnable twist on the frozen GRU: ``log psi_{t+1}(x_{1:t}, v) = (tanh(h_t W1 + e_t) W2 + b2)_v``.

    ``h_t`` ``(N, H)`` is the base model's state after the prefix (no gradient into the base,
    which is not a submodule, so its weights are not the twist's parameters) and ``e_t`` a
    learned position embedding.  Parameters: ``W1`` ``(H, width)``, ``pos`` ``(length, width)``
    (small normals from ``seed``), ``W2`` ``(width, V)`` and ``b2`` ``(V,)`` starting at zero
    (``psi = 1``).  Called as ``twist(tokens (N, T), position) -> (N, V)``.
    """

    def __init__(self, base: CharGRU, length: int, width: int = 64, seed: int = 0):
        super().__init__()
        if not isinstance(base, CharGRU):
            raise TypeError(f"base: expected a CharGRU, got {type(base).__name__}")
        object.__setattr__(self, "base", base)  # frozen and outside the module's parameters
        self.length = check_positive_int("length", length)
        self.width = check_positive_int("width", width)
        generator = torch.Generator().manual_seed(seed)
        hidden = base.hidden_size
        self.W1 = torch.nn.Parameter(torch.randn(hidden, self.width, generator=generator) / math.sqrt(hidden))
        self.pos = torch.nn.Parameter(0.1 * torch.randn(self.length, self.width, generator=generator))
        self.W2 = torch.nn.Parameter(torch.zeros(self.width, base.vocab_size))
        self.b2 = torch.nn.Parameter(torch.zeros(base.vocab_size))

    def forward(self, tokens: torch.Tensor, position: int) -> torch.Tensor:
        with torch.no_grad():
            h = prefix_hidden(self.base, tokens, position).to(self.W1.dtype)
        features = torch.tanh(h @ self.W1 + self.pos[int(position)])
        return features @ self.W2 + self.b2


def rejection_samples(
    model: CharGRU, length: int, suffix: str, num_proposals: int, seed: int = 0
) -> tuple[torch.Tensor, float, float]:
    """Exact target draws by rejection from ``p0``, and ``Z``'s estimate with its standard error.

    Returns the accepted sequences ``(M, length)`` (``long``), the acceptance rate
    ``Z_hat = M / num_proposals`` and ``sqrt(Z_hat (1 - Z_hat) / num_proposals)``.
    """
    ending = _check_suffix(suffix, check_positive_int("length", length))
    num_proposals = check_positive_int("num_proposals", num_proposals)
    draws = sample_sequences(model, num_proposals, length, torch.Generator().manual_seed(seed))
    accepted = torch.all(draws[:, length - len(suffix) :] == ending, dim=1)
    rate = float(accepted.double().mean())
    return draws[accepted], rate, math.sqrt(rate * (1 - rate) / num_proposals)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train the GRU, estimate ``Z`` by rejection, and print twisted SMC's sandwich table (see the module doc)."""
    import pyro

    from pyro_ext.infer import TwistedSMC

    parser = argparse.ArgumentParser(prog="python -m pyro_ext.models.char_lm", description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=12)
    parser.add_argument("--suffix", default=" the")
    parser.add_argument("--train-steps", type=int, default=1500)
    parser.add_argument("--twist-steps", type=int, default=300)
    parser.add_argument("--particles", default="16,64")
    parser.add_argument("--runs", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if any(c not in ALPHABET for c in args.suffix) or not 0 < len(args.suffix) <= args.length:
        raise SystemExit(f"--suffix: expected 1..{args.length} characters of {ALPHABET!r}, got {args.suffix!r}")
    pyro.set_rng_seed(args.seed)
    start = time.perf_counter()
    text = encode(corpus())
    params, losses = train(text, num_steps=args.train_steps, seed=args.seed)
    print(
        f"GRU: {len(text)} characters, {args.train_steps} steps, final loss {losses[-50:].mean():.3f} nats/char "
        f"({time.perf_counter() - start:.0f} s)"
    )
    exact, rate, rate_se = rejection_samples(params, args.length, args.suffix, 200_000, seed=args.seed + 1)
    if len(exact) < args.runs:
        raise SystemExit(
            f"--suffix {args.suffix!r}: only {len(exact)} of 200000 samples end with it; pick a likelier one"
        )
    print(f"rejection sampling: P(suffix) = {rate:.3e} +- {rate_se:.1e}, log Z = {math.log(rate):.3f}")
    exact_paths = {"init": {}, "step": {"token": exact}}
    model = suffix_model(params, args.length, args.suffix)
    head = TwistHead(params, args.length, seed=args.seed)
    learned = TwistedSMC(model, num_particles=64, twist=head)
    learned.fit_twists(method="ctl", num_steps=args.twist_steps, optimizer=torch.optim.Adam(head.parameters(), lr=1e-2))
    rows = []
    for n in (int(p) for p in args.particles.split(",")):
        for name, smc in (
            ("no twist", TwistedSMC(model, num_particles=n)),
            ("CTL twist", TwistedSMC(model, num_particles=n, twist=head)),
        ):
            b = smc.log_Z_bounds(exact_samples=exact_paths, num_runs=args.runs)
            rows.append(
                {
                    "twist": name,
                    "particles": n,
                    "smc_lower": b.smc_lower,
                    "smc_lower_se": b.smc_lower_se,
                    "csmc_upper": b.csmc_upper,
                    "csmc_upper_se": b.csmc_upper_se,
                    "gap": b.csmc_upper - b.smc_lower,
                }
            )
    print("| twist | particles | SMC lower | CSMC upper | gap |\n|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['twist']} | {r['particles']} | {r['smc_lower']:.3f} ± {r['smc_lower_se']:.3f} | "
            f"{r['csmc_upper']:.3f} ± {r['csmc_upper_se']:.3f} | {r['gap']:.3f} |"
        )
    samples = TwistedSMC(model, num_particles=8, twist=head).run()
    print("samples:", [decode(s) for s in samples.get_samples(args.seed)["step"]["token"]])
    return {"log_Z_rejection": math.log(rate), "log_Z_rejection_se": rate_se / rate, "rows": rows}


if __name__ == "__main__":
    main()
