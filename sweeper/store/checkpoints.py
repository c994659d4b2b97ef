"""Per-epoch training checkpoints in the store: ``checkpoints/<node key>/<epoch>.pt``, checksummed.

A checkpoint is ``{"trainer": Trainer.state_dict(), "history_rows": [...]}`` (torch.save; read back with
``weights_only=True``). The newest two are kept; a damaged one (a crash mid-upload on a store without atomic
writes, a flipped byte) is reported, removed, and the one before it is used. Removed once the node is saved.
"""
from __future__ import annotations

import io
import sys
from typing import Callable

import torch

from sweeper.errors import StoreIOError
from sweeper.store.store import Store


def _warn(msg: str) -> None:
    print(f"sweeper: warning: {msg}", file=sys.stderr, flush=True)


def path(key: str, epoch: int) -> str:
    return f"checkpoints/{key}/{int(epoch):05d}.pt"


def save(store: Store, key: str, epoch: int, state: dict) -> None:
    """Write epoch ``epoch``'s checkpoint; keep it and the one before it (a fallback if this one is damaged)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    store.write_checked(path(key, epoch), buf.getvalue())
    if epoch > 1:
        store.delete(path(key, epoch - 2))


def load(store: Store, key: str, label: str, warn: Callable[[str], None] = _warn) -> dict | None:
    """The newest intact checkpoint of a training node, or None."""
    found = sorted((i.base_name for i in store.listdir(f"checkpoints/{key}") if i.base_name.endswith(".pt")),
                   reverse=True)
    for name in found:
        rel = f"checkpoints/{key}/{name}"
        try:
            # on the CPU: Trainer.load_state_dict puts the state on its own device (saved on a GPU, resumed anywhere)
            return torch.load(io.BytesIO(store.read_checked(rel)), weights_only=True, map_location="cpu")
        except StoreIOError:  # the store itself failed (unreachable, permission): not a damaged checkpoint
            raise
        except Exception as e:  # damaged: say so, drop it, fall back to the previous epoch's
            warn(f"{label}: checkpoint {rel} is damaged ({type(e).__name__}: {e}); removed, resuming from the one "
                 "before it")
            store.delete(rel)
    return None


def drop(store: Store, key: str) -> None:
    store.delete(f"checkpoints/{key}")
