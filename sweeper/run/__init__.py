"""Running a plan (layer 5): what each node kind computes (``kinds``), the ready queue and leases
(``scheduling``), the local and Ray engines (``engines``), synthesis sharded on a pool of Ray actors
(``shards``), training and evaluation as Ray Tune trials (``tuning``) and connecting to an authenticated Ray
cluster (``rayauth``)."""
