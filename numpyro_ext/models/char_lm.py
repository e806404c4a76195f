"""A character-level GRU language model in JAX, and twisted SMC for constrained generation with it.

The example the twisted-SMC guide refers to (``python -m numpyro_ext.models.char_lm``):

1. a corpus that needs no download -- the docstrings of 29 standard-library modules of the
   running Python, lower-cased, letters, space, ``.``, ``,`` and newline (30 symbols; the
   text differs a little between Python versions);
2. a one-layer GRU (:func:`gru_log_probs`) trained on it with optax (:func:`train`);
3. the task "sequences of ``length`` characters that end with ``suffix``": ``p0`` is the
   GRU, ``phi(x) = 1[x ends with suffix]``, ``Z = P_{p0}(suffix)``, and the target is ``p0``
   conditioned on the ending;
4. twisted SMC (:class:`~numpyro_ext.infer.twisted_smc.TwistedSMC` on a
   :class:`~numpyro_ext.infer.twisted_smc.TokenModel`) without twists and with a learned
   twist head (:class:`TwistHead`, an MLP on the frozen GRU's hidden state, trained by CTL),
   reporting the log-Z sandwich: SMC lower and conditional-SMC upper bounds.  Exact target
   samples for the upper bound come from rejection sampling ``p0`` (exact, since ``phi`` is
   an indicator), whose acceptance rate is also an independent estimate of ``Z``.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adapters.char_corpus import ALPHABET, BOS, CORPUS_MODULES, corpus, decode, encode  # noqa: F401 (re-exported)
from adapters.validation import check_positive_int


# ---------------------------------------------------------------------------------------
# The GRU
# ---------------------------------------------------------------------------------------
def init_gru(rng_key: jax.Array, vocab_size: int, embed: int = 32, hidden: int = 128) -> dict[str, jax.Array]:
    """Parameters of a one-layer GRU language model (Glorot-scaled normals, zero biases)."""
    keys = jax.random.split(rng_key, 4)

    def normal(key, shape):
        return jax.random.normal(key, shape) * math.sqrt(2.0 / sum(shape))

    return {
        "embed": normal(keys[0], (vocab_size, embed)),
        "W": normal(keys[1], (embed, 3 * hidden)),
        "U": normal(keys[2], (hidden, 3 * hidden)),
        "b": jnp.zeros(3 * hidden),
        "out": normal(keys[3], (hidden, vocab_size)),
        "out_b": jnp.zeros(vocab_size),
    }


def gru_hidden(params: dict[str, jax.Array], tokens: jax.Array) -> jax.Array:
    """Hidden states ``(T, H)``: ``h[t]`` has read ``BOS, tokens[0], ..., tokens[t-1]`` (causal)."""
    inputs = jnp.concatenate([jnp.array([BOS], dtype=tokens.dtype), tokens[:-1]])
    hidden = params["U"].shape[0]

    def cell(h, token):
        x = params["embed"][token]
        gx = x @ params["W"] + params["b"]
        gh = h @ params["U"]
        z = jax.nn.sigmoid(gx[:hidden] + gh[:hidden])
        r = jax.nn.sigmoid(gx[hidden : 2 * hidden] + gh[hidden : 2 * hidden])
        n = jnp.tanh(gx[2 * hidden :] + r * gh[2 * hidden :])
        h = (1.0 - z) * n + z * h
        return h, h

    _, states = jax.lax.scan(cell, jnp.zeros(hidden), inputs)
    return states


def gru_log_probs(params: dict[str, jax.Array], tokens: jax.Array) -> jax.Array:
    """``(T, V)``: row ``t`` is ``log p0(x_{t+1} = v | tokens[:t])``."""
    return jax.nn.log_softmax(gru_hidden(params, tokens) @ params["out"] + params["out_b"])


def train(
    rng_key: jax.Array,
    text_tokens: np.ndarray,
    num_steps: int = 1500,
    seq_len: int = 32,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    hidden: int = 128,
) -> tuple[dict[str, jax.Array], np.ndarray]:
    """Teacher-forced cross-entropy on random windows of the corpus; returns ``(params, losses)``."""
    import optax

    params = init_gru(rng_key, len(ALPHABET), hidden=hidden)
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(params)
    data = jnp.asarray(text_tokens)

    def loss_fn(params, batch):
        log_probs = jax.vmap(gru_log_probs, in_axes=(None, 0))(params, batch)
        return -jnp.mean(jnp.take_along_axis(log_probs, batch[..., None], axis=-1))

    @jax.jit
    def update(params, opt_state, key):
        starts = jax.random.randint(key, (batch_size,), 0, data.shape[0] - seq_len)
        batch = jax.vmap(lambda s: jax.lax.dynamic_slice(data, (s,), (seq_len,)))(starts)
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = np.empty(num_steps)
    for i in range(num_steps):
        rng_key, key = jax.random.split(rng_key)
        params, opt_state, loss = update(params, opt_state, key)
        losses[i] = float(loss)
    return params, losses


def sample_sequences(rng_key: jax.Array, params: dict[str, jax.Array], num: int, length: int) -> jax.Array:
    """``(num, length)`` ancestral samples from the GRU (incremental: one cell per character)."""
    hidden = params["U"].shape[0]

    def step(carry, key):
        h, token = carry
        x = params["embed"][token]
        gx, gh = x @ params["W"] + params["b"], h @ params["U"]
        z = jax.nn.sigmoid(gx[..., :hidden] + gh[..., :hidden])
        r = jax.nn.sigmoid(gx[..., hidden : 2 * hidden] + gh[..., hidden : 2 * hidden])
        n = jnp.tanh(gx[..., 2 * hidden :] + r * gh[..., 2 * hidden :])
        h = (1.0 - z) * n + z * h
        token = jax.random.categorical(key, h @ params["out"] + params["out_b"], axis=-1).astype(jnp.int32)
        return (h, token), token

    start = (jnp.zeros((num, hidden)), jnp.full((num,), BOS, dtype=jnp.int32))
    _, tokens = jax.lax.scan(step, start, jax.random.split(rng_key, length))
    return tokens.T


# ---------------------------------------------------------------------------------------
# The constrained-generation task
# ---------------------------------------------------------------------------------------
def suffix_model(params: dict[str, jax.Array], length: int, suffix: str):
    """The :class:`TokenModel` of "``length`` characters ending with ``suffix``" under the GRU."""
    from numpyro_ext.infer.twisted_smc import TokenModel

    ending = jnp.asarray(encode(suffix))

    def next_token_log_probs(tokens, position):
        return gru_log_probs(params, tokens)[position]

    def log_potential(tokens):
        return jnp.where(jnp.all(tokens[length - len(suffix) :] == ending), 0.0, -jnp.inf)

    return TokenModel(next_token_log_probs, log_potential, len(ALPHABET), length)


class TwistHead:
    """A learnable twist on the frozen GRU: ``log psi(prefix, v) = MLP([h_t, e_t])_v`` (``(V,)`` per position).

    ``h_t`` is the base model's hidden state after the prefix and ``e_t`` a learned position
    embedding; the output layer starts at zero (``psi = 1``).
    """

    def __init__(self, base_params: dict[str, jax.Array], length: int, width: int = 64):
        self.base_params = base_params
        self.length = check_positive_int("length", length)
        self.width = check_positive_int("width", width)

    def init(self, rng_key: jax.Array) -> dict[str, jax.Array]:
        hidden = self.base_params["U"].shape[0]
        k1, k2 = jax.random.split(rng_key)
        return {
            "W1": jax.random.normal(k1, (hidden, self.width)) / math.sqrt(hidden),
            "pos": 0.1 * jax.random.normal(k2, (self.length, self.width)),
            "W2": jnp.zeros((self.width, len(ALPHABET))),
            "b2": jnp.zeros(len(ALPHABET)),
        }

    def __call__(self, params: dict[str, jax.Array], tokens: jax.Array, position: jax.Array) -> jax.Array:
        h = jax.lax.stop_gradient(gru_hidden(self.base_params, tokens)[position])
        features = jnp.tanh(h @ params["W1"] + params["pos"][position])
        return features @ params["W2"] + params["b2"]


def rejection_samples(
    rng_key: jax.Array, params: dict[str, jax.Array], length: int, suffix: str, num_proposals: int
) -> tuple[np.ndarray, float, float]:
    """Exact target draws by rejection from ``p0``, and ``Z``'s estimate (acceptance rate) with its SE."""
    draws = np.asarray(sample_sequences(rng_key, params, num_proposals, length))
    accepted = np.all(draws[:, length - len(suffix) :] == encode(suffix), axis=1)
    rate = accepted.mean()
    return draws[accepted], float(rate), float(math.sqrt(rate * (1 - rate) / num_proposals))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import optax

    from numpyro_ext.infer import TwistedSMC

    parser = argparse.ArgumentParser(prog="python -m numpyro_ext.models.char_lm", description=__doc__.split("\n")[0])
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
    keys = jax.random.split(jax.random.PRNGKey(args.seed), 6)
    start = time.perf_counter()
    text = encode(corpus())
    params, losses = train(keys[0], text, num_steps=args.train_steps)
    print(
        f"GRU: {len(text)} characters, {args.train_steps} steps, final loss {losses[-50:].mean():.3f} nats/char "
        f"({time.perf_counter() - start:.0f} s)"
    )
    exact, rate, rate_se = rejection_samples(keys[1], params, args.length, args.suffix, 200_000)
    if len(exact) < args.runs:
        raise SystemExit(
            f"--suffix {args.suffix!r}: only {len(exact)} of 200000 samples end with it; pick a likelier one"
        )
    print(f"rejection sampling: P(suffix) = {rate:.3e} +- {rate_se:.1e}, log Z = {math.log(rate):.3f}")
    exact_paths = {"init": {}, "step": {"token": jnp.asarray(exact)}}
    model = suffix_model(params, args.length, args.suffix)
    head = TwistHead(params, args.length)
    learned = TwistedSMC(model, num_particles=64, twist=head)
    learned.fit_twists(keys[2], method="ctl", num_steps=args.twist_steps, optimizer=optax.adam(1e-2))
    rows = []
    for n in (int(p) for p in args.particles.split(",")):
        for name, smc in (
            ("no twist", TwistedSMC(model, num_particles=n)),
            ("CTL twist", TwistedSMC(model, num_particles=n, twist=head, twist_params=learned.twist_params)),
        ):
            b = smc.log_Z_bounds(keys[3], exact_samples=exact_paths, num_runs=args.runs)
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
    samples = TwistedSMC(model, num_particles=8, twist=head, twist_params=learned.twist_params).run(keys[4])
    print("samples:", [decode(s) for s in samples.get_samples(keys[5])["step"]["token"]])
    return {"log_Z_rejection": math.log(rate), "log_Z_rejection_se": rate_se / rate, "rows": rows}


if __name__ == "__main__":
    main()
