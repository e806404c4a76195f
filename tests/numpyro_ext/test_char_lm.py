"""The character-level LM example: a trained GRU, and twisted SMC's log-Z sandwich around an
independent estimate of Z (rejection sampling of p0)."""

import math

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the numpyro extra is not installed")
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from numpyro_ext.infer import TwistedSMC  # noqa: E402
from numpyro_ext.models import char_lm  # noqa: E402

LENGTH, SUFFIX = 8, "he"


@pytest.fixture(scope="module")
def trained():
    text = char_lm.encode(char_lm.corpus())
    params, losses = char_lm.train(jax.random.PRNGKey(0), text, num_steps=300, hidden=64)
    return text, params, losses


def test_corpus_and_training(trained):
    text, _, losses = trained
    assert len(text) > 100_000 and set(np.unique(text)) <= set(range(len(char_lm.ALPHABET)))
    assert char_lm.decode(char_lm.encode("a, b.\n")) == "a, b.\n"
    # better than the unigram entropy of the corpus (about 2.9 nats), and it went down
    unigram = np.bincount(text) / len(text)
    entropy = -np.sum(unigram[unigram > 0] * np.log(unigram[unigram > 0]))
    assert losses[-30:].mean() < entropy - 0.3 < losses[:5].mean()


@pytest.mark.slow  # 65 s: 100 000 rejection samples
def test_twisted_smc_sandwiches_the_rejection_estimate(trained):
    _, params, _ = trained
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    exact, rate, rate_se = char_lm.rejection_samples(keys[0], params, LENGTH, SUFFIX, 100_000)
    log_Z, log_Z_se = math.log(rate), rate_se / rate
    model = char_lm.suffix_model(params, LENGTH, SUFFIX)
    smc = TwistedSMC(model, num_particles=32, twist=char_lm.TwistHead(params, LENGTH))
    smc.fit_twists(keys[1], num_steps=100, optimizer=optax.adam(1e-2))
    bounds = smc.log_Z_bounds(keys[2], exact_samples={"init": {}, "step": {"token": jnp.asarray(exact)}}, num_runs=16)
    assert bounds.smc_lower < log_Z + 4 * math.hypot(log_Z_se, bounds.smc_lower_se)
    assert bounds.csmc_upper > log_Z - 4 * math.hypot(log_Z_se, bounds.csmc_upper_se)
    assert bounds.csmc_upper - bounds.smc_lower < 1.0  # a useful sandwich
    # every sampled sequence satisfies the constraint
    tokens = smc.run(keys[3]).get_samples(keys[3])["step"]["token"]
    assert all(char_lm.decode(t).endswith(SUFFIX) for t in tokens)
