"""Clusters (layer 6, the highest): ``cluster.yaml`` checked offline (``clusterfile``) and sweeps submitted to a
running cluster as Ray jobs, with their status and logs (``cluster``)."""
