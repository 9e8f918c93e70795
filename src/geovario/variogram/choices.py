"""The names the semivariogram engine accepts, importable without numpy, torch or scipy (the CLI's options use them)."""

ESTIMATORS = ("matheron", "cressie")
MODELS = ("spherical", "exponential", "gaussian", "stable")
WEIGHTS = ("cressie", "pairs", "none")  # fit weights: N_k/gamma_k^2 (Cressie 1985), N_k, or none
MAX_LAG_KM = 20015.0  # half the Earth's circumference on the R = 6371.0088 km sphere: the largest lag
