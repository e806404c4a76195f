"""arK: autoregressive model of order K, y[t] ~ normal(alpha + sum_k beta[k] y[t-k], sigma)."""

import pyro
import pyro.distributions as dist
import torch

from pyro_ext.models.posteriordb._util import as_float


def model(K, T, y):
    y = as_float(y)
    alpha = pyro.sample("alpha", dist.Normal(0.0, 10.0))
    beta = pyro.sample("beta", dist.Normal(0.0, 10.0).expand([K]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))
    # lags[t - K, k] = y[t - k - 1] for t = K .. T-1 (0-based): Stan's y[t - k], k = 1..K
    lags = torch.stack([y[K - k - 1 : T - k - 1] for k in range(K)], dim=-1)
    with pyro.plate("T", T - K):
        pyro.sample("y", dist.Normal(alpha + lags @ beta, sigma), obs=y[K:])
