"""The defaults of distinct places and confidence (:mod:`geovario.confidence`), importable without numpy (the
command's --help shows them).

- POOL_KM: gallery points within 25 km of a more probable one are the same place; 25 km is the field's "city"
  threshold (Vo et al. 2017, "Revisiting IM2GPS in the Deep Learning Era"; GeoCLIP, Vicente Vivanco et al. 2023),
  the finest scale most results are scored at, so points closer than it are not different answers.
- WITHIN_KM: the confidence distances, the field's city, region, country and continent thresholds.
- LEVEL: the share of the probability mass the confidence radius holds.
"""

POOL_KM = 25.0
WITHIN_KM = (25, 200, 750, 2500)
LEVEL = 0.9
