"""nes: party identification on ideology, race, age group, education, gender and income (NES, Gelman & Hill).

Follows ``posterior_database/models/stan/nes.stan`` in ``stan-dev/posteriordb``: the
transformed data are computed once with numpy, the mean is ``x @ beta`` with ``x``'s
columns in the order of Stan's ``beta[1..9]``.
"""

import numpy as np

from pyro_ext.models.posteriordb._util import normal_regression


def model(N, partyid7, real_ideo, race_adj, educ1, gender, income, age_discrete):
    age = np.asarray(age_discrete)
    columns = [real_ideo, race_adj, age == 2, age == 3, age == 4, educ1, gender, income]
    x = np.stack([np.ones(N)] + [np.asarray(c, dtype=np.float64) for c in columns], axis=-1)
    # Stan gives beta and sigma no prior: flat densities on R^9 and (0, inf)
    normal_regression("partyid7", x, partyid7, N)
