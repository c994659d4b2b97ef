"""sweeper: the experiments of Ilyas et al. 2019, "Adversarial Examples Are Not Bugs, They Are Features",
as distributed sweeps on Ray, Ray Tune and W&B.

The package's folders follow the data's way, each importing only the ones before it: ``sweep`` (the sweep
file, its schema and the plan of content-keyed nodes) -> ``science`` (attacks, synthesis, training, evaluation;
torch only) -> ``store`` (every node's artifact, leases, checkpoints) -> ``report`` (the markdown report, figures,
W&B runs and dashboards) -> ``run`` (node kinds, scheduling, the local and Ray engines: actors for synthesis, Tune
for training) -> ``cluster`` (cluster.yaml, submitted jobs); ``api``, ``cli`` and ``errors`` sit on top.
Importing sweeper starts nothing and touches no GPU: Ray and W&B are imported only at the edges (``run``,
``report.tracking``, ``cluster``, ``cli``).

For notebooks: ``sweeper.load(FILE, overrides=...)`` returns a sweep with its plan, ``run()``, ``results()``
(a DataFrame) and ``curves(label)`` (``sweeper.api``; imported on first use, so ``import sweeper`` stays light).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # sweeper.load / sweeper.LoadedSweep: import sweeper.api (pydantic, pyarrow) only when first used
    if name in ("load", "LoadedSweep"):
        from sweeper import api

        return getattr(api, name)
    raise AttributeError(f"module 'sweeper' has no attribute {name!r}")
