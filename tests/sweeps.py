"""Small sweep files and helpers shared by the tests that start a real Ray head."""
import socket

SMALL = """
name: small
seed: 0
data: {dataset: fashion_mnist, test_size: 200}
run: {store: STORE, shard_size: 100, synthesis_actors: 2, cpus_per_trial: 1, max_concurrent_trials: 2}
stages:
  std:
    kind: train
    arch: small_cnn
    train_size: 600
    train: &t {epochs: 2, batch_size: 128, optimizer: sgd, lr: 0.05, schedule: cosine}
  d_det: {kind: synthesize, from: std, method: relabel, size: 300, targets: deterministic,
          attack: {norm: l2, eps: 2.0, steps: 4, step_size: 0.5}}
  train_d_det: {kind: train, from: d_det, arch: small_cnn, train: *t}
  probe: {kind: transfer, from: d_det, models: [std]}
  eval: {kind: evaluate, from: [std, train_d_det], attacks: [{norm: l2, eps: 1.0, steps: 3}]}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
