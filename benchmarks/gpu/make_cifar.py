"""CIFAR-10 python-format files (5 train batches + test batch) with class-dependent colour blobs, so the
models have something to learn; only the GPU code path is checked with them, not CIFAR numbers."""
import pickle, sys
from pathlib import Path
import numpy as np
root = Path(sys.argv[1]) / "cifar-10-batches-py"; root.mkdir(parents=True, exist_ok=True)
n = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
rng = np.random.default_rng(0)
def batch(k):
    y = rng.integers(0, 10, size=k)
    x = rng.normal(0.5, 0.15, size=(k, 3, 32, 32))
    for c in range(10):
        i = y == c
        x[i, c % 3, (c // 3) * 8:(c // 3) * 8 + 8, :] += 0.3
    return (np.clip(x, 0, 1) * 255).astype(np.uint8).reshape(k, 3072), y.tolist()
for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    x, y = batch(n)
    pickle.dump({"data": x, "labels": y, "batch_label": name}, open(root / name, "wb"))
pickle.dump({"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": n}, open(root / "batches.meta", "wb"))
