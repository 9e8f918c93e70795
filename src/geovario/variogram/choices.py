"""The names and defaults the semivariogram engine accepts, importable without numpy, torch or scipy (the CLI's options
use them), so the library, the estimate settings and the command line share one value of each."""

from dataclasses import dataclass

ESTIMATORS = ("matheron", "cressie")
MODELS = ("spherical", "exponential", "gaussian", "stable")
WEIGHTS = ("cressie", "pairs", "none")  # fit weights: N_k/gamma_k^2 (Cressie 1985), N_k, or none
MAX_LAG_KM = 20015.0  # half the Earth's circumference on the R = 6371.0088 km sphere: the largest lag
# Sampling: every pair up to EXACT_MAX points; above, MAX_PAIRS pairs in two strata, the short one within SHORT_LAG_KM
# (the city-level threshold of the benchmarks, where false negatives live). See variogram/empirical.py.
EXACT_MAX = 20_000
MAX_PAIRS = 4_000_000
SHORT_LAG_KM = 25.0


@dataclass
class EstimateSettings:
    """How ``geovario variogram`` (and :func:`geovario.variogram.estimate.estimate`) bins and fits: by default as the
    semivariogram loss's own fit does, 40 log-spaced bins from 1 km (variogram/fit.py, ``empirical_for_loss``)."""

    bins: int = 40
    max_lag_km: float = MAX_LAG_KM
    log_bins: bool = True
    min_lag_km: float = 1.0
    model: str = "spherical"
    estimator: str = "matheron"
    weights: str = "cressie"
    exact_max: int = EXACT_MAX
    max_pairs: int = MAX_PAIRS
    short_lag_km: float = SHORT_LAG_KM
    seed: int = 0
