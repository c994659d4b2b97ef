"""The store (layer 1, the lowest): every node's artifact, written atomically, checksummed and checked on read
(``store``, on a local folder or any pyarrow filesystem such as S3), leases so that drivers sharing a store never
run a node twice (``leases``) and training checkpoints (``checkpoints``). Knows nothing of sweeps."""
