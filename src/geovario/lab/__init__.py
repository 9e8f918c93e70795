"""The lab: a simulated Earth and datasets drawn on it, and the experiments run there.

Apart from the library core (data, features, variograms, losses, training, evaluation) and the
applications (the CLI, the page): nothing in the core imports the lab.

- ``world``: the simulated Earth (spatial fields, borders, look-alikes) and the datasets drawn on it
  (``mp16``, the default, and ``osv5m``), written as feature stores by ``geovario simulate``;
- ``experiments``: the lab's training budget and one train-and-evaluate run;
- ``demo``: ``geovario demo``; ``bench``: ``geovario bench losses``; ``study``: ``geovario bench study``
  (its design numbers in ``study_design``, its figures in ``study_plots``);
- ``probe``: ``geovario bench gps-embeddings``.
"""
