"""The study's design in numbers, importable without numpy (the command's --help shows them): how many seeds
each kind of arm trains, the thresholds it reports, and the sensitivity sweep's grid."""

# Seeds: 14 for InfoNCE and the paper's loss (and the losses compared with it), so that every paired difference at
# 25 and 200 km has a 95 % interval of at most +-0.5 points (benchmarks/results/study-power.md); 3 for the other
# losses, the ablation, the range rule and refits; 2 for the gallery-negative variants (about 6x slower a step);
# 1 per point of the sweep (a lead to follow, chosen on validation photos).
POWER_SEEDS, OTHER_SEEDS, GALLERY_SEEDS, SWEEP_SEEDS = 14, 3, 2, 1
THRESHOLDS = (1, 25, 200, 750, 2500)  # km: the field's street, city, region, country and continent scales
PRESETS = ("mp16", "osv5m")  # the datasets the study trains on, each tested on its own and the other's test photos
# The sweep: theta1 / theta2 around the paper summary's suggested 100 / 500 / 1,000 km, and s1, s2 over 0.5 to 10.
THETA1 = (100.0, 500.0, 1000.0, 2500.0, None)  # None: the variogram's range
THETA2 = (1.0, 25.0, 100.0)
S_VALUES = (0.5, 1.0, 2.0, 5.0, 10.0)
