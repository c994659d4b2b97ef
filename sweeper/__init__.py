"""sweeper: the experiments of Ilyas et al. 2019, "Adversarial Examples Are Not Bugs, They Are Features",
as distributed sweeps on Ray, Ray Tune and W&B.

Importing sweeper starts nothing and touches no GPU: Ray and W&B are imported only by the edge modules
(``shards``, ``tuning``, ``tracking``, ``cluster``, ``cli``).
"""

__version__ = "0.1.0"
