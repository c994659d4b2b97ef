"""A damaged artifact is never used and never blocks: `sweeper run` checks every sha256 of what it will read,
reports a damaged node once (label and key), moves it aside and computes it again, and the run goes on; a
manifest that is not JSON or whose meta was edited counts as not done and is replaced. Local disk and S3."""
import json
import pathlib

from sweeper.cli import main
from sweeper.sweep.plan import build_plan
from sweeper.sweep.spec import load
from sweeper.store.store import Store
from sweeps import results_of

TOY = pathlib.Path(__file__).resolve().parents[1] / "search_spaces" / "toy.yaml"


def _run(uri):
    return main(["run", str(TOY), "--store", uri, "--executor", "local", "--threads", "1", "--no-report"])


def test_damaged_artifacts_are_moved_aside_and_computed_again(store_uri, capsys):
    assert _run(store_uri) == 0
    want = results_of(TOY, store_uri)
    plan = build_plan(load(TOY))
    by_stage = {n.stage: n for n in plan.nodes.values()}
    std, d_det, robust = by_stage["std"], by_stage["d_det"], by_stage["robust"]
    s = Store(store_uri)

    # std's weights: one flipped byte (same size, so only the sha256 tells); d_det, which reads std, is todo
    m = json.loads(s.read_bytes(f"nodes/{std.key}/manifest.json"))
    rel = f"nodes/{std.key}/{m['attempt']}/tensors.safetensors"
    raw = bytearray(s.read_bytes(rel))
    raw[-5] ^= 0x01
    s.write_bytes(rel, bytes(raw))
    s.delete(f"nodes/{d_det.key}")
    # robust's manifest: its meta edited by hand (the digest no longer matches)
    mr = s.read_text(f"nodes/{robust.key}/manifest.json")
    s.write_text(f"nodes/{robust.key}/manifest.json", mr.replace('"test_acc": 0.9', '"test_acc": 0.1', 1))
    assert s.is_done(std.key) and not s.is_done(std.key, verify=True) and not s.is_done(robust.key)

    capsys.readouterr()
    assert _run(store_uri) == 0
    out = capsys.readouterr().out
    assert out.count("stored artifact is damaged") == 1
    assert f"std ({std.key}): stored artifact is damaged (file tensors.safetensors fails its sha256 check)" in out
    assert f"robust ({robust.key}) ..." in out  # not done: computed again
    assert [i.base_name.split("-")[0] for i in s.listdir("quarantine")] == [std.key]
    assert results_of(TOY, store_uri) == want
