"""sweeper: the experiments of Ilyas et al. 2019, "Adversarial Examples Are Not Bugs, They Are Features",
as distributed sweeps on Ray, Ray Tune and W&B.

The flow: ``spec`` reads a sweep file into typed ``schema`` models -> ``plan`` builds the DAG of content-keyed
nodes -> ``store`` holds every node's artifact -> the ``engines`` (local, or Ray with ``shards`` and ``tuning``)
run each node through the kind table of ``kinds`` -> ``report`` writes the results; ``tracking`` sends curves
to W&B on the side. Importing sweeper starts nothing and touches no GPU: Ray and W&B are imported only by the
edge modules (``shards``, ``tuning``, ``tracking``, ``cluster``, ``rayauth``, ``engines``, ``cli``).

For notebooks: ``sweeper.load(FILE, overrides=...)`` returns a sweep with its plan, ``run()``, ``results()``
(a DataFrame) and ``curves(label)`` (``sweeper.api``; imported on first use, so ``import sweeper`` stays light).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # sweeper.load / sweeper.LoadedSweep: import sweeper.api (pydantic, pyarrow) only when first used
    if name in ("load", "LoadedSweep"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'sweeper' has no attribute {name!r}")
