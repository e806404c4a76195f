"""The character-level LM example in torch: a trained GRU, and twisted SMC's log-Z sandwich around
an independent estimate of Z (rejection sampling of p0).  Seeds are fixed; tolerances are 4
combined standard errors."""

import math
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the pyro extra is not installed")
import pyro  # noqa: E402

from pyro_ext.infer import TwistedSMC  # noqa: E402
from pyro_ext.models import char_lm  # noqa: E402

LENGTH, SUFFIX = 8, "he"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: one thread avoids pool overhead on a busy machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(one_thread):
    text = char_lm.encode(char_lm.corpus())
    model, losses = char_lm.train(text, num_steps=300, hidden=64, seed=0)
    return text, model, losses


def test_corpus_and_training(trained):
    text, _, losses = trained
    assert len(text) > 100_000 and set(np.unique(text)) <= set(range(len(char_lm.ALPHABET)))
    assert char_lm.decode(char_lm.encode("a, b.\n")) == "a, b.\n"
    # better than the unigram entropy of the corpus (about 2.9 nats), and it went down
    unigram = np.bincount(text) / len(text)
    entropy = -np.sum(unigram[unigram > 0] * np.log(unigram[unigram > 0]))
    assert losses[-30:].mean() < entropy - 0.3 < losses[:5].mean()


def test_twisted_smc_sandwiches_the_rejection_estimate(trained):
    _, model, _ = trained
    exact, rate, rate_se = char_lm.rejection_samples(model, LENGTH, SUFFIX, 100_000, seed=1)
    log_Z, log_Z_se = math.log(rate), rate_se / rate
    head = char_lm.TwistHead(model, LENGTH)
    smc = TwistedSMC(char_lm.suffix_model(model, LENGTH, SUFFIX), num_particles=32, twist=head)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    pyro.set_rng_seed(1)
    smc.fit_twists(num_steps=200, optimizer=torch.optim.Adam(head.parameters(), lr=1e-2))
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())  # the base stays frozen
    assert sorted(smc.twist_params) == ["W1", "W2", "b2", "pos"]
    bounds = smc.log_Z_bounds(exact_samples={"init": {}, "step": {"token": exact}}, num_runs=16)
    assert bounds.smc_lower < log_Z + 4 * math.hypot(log_Z_se, bounds.smc_lower_se)
    assert bounds.csmc_upper > log_Z - 4 * math.hypot(log_Z_se, bounds.csmc_upper_se)
    assert bounds.csmc_upper - bounds.smc_lower < 1.0  # a useful sandwich
    # every sampled sequence satisfies the constraint
    tokens = smc.run().get_samples(3)["step"]["token"]
    assert all(char_lm.decode(t).endswith(SUFFIX) for t in tokens)


def test_bad_suffix_names_itself(trained):
    _, model, _ = trained
    with pytest.raises(ValueError, match="suffix: expected 1..8 characters"):
        char_lm.suffix_model(model, LENGTH, "THE")
    with pytest.raises(ValueError, match="suffix"):
        char_lm.rejection_samples(model, 2, "the", 10)


def test_the_torch_example_never_imports_jax():
    jax_loaded = "any(m.split('.')[0] in ('jax', 'numpyro') for m in sys.modules)"
    code = f"import sys, pyro_ext.models.char_lm; sys.exit({jax_loaded})"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
