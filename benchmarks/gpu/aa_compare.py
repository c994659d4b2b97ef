"""After the demo: is sweeper's robust accuracy (per-example worst case of PGD-20 and APGD-T) within 1 point of
the worst case that adds torchattacks' full AutoAttack (standard version: APGD-CE, APGD-T, FAB-T, Square)?

Reads the evaluation nodes of the demo run with the `--set` below (same store): each holds per-example flags of
the three attacks on the same 1,000 test images.

    python benchmarks/gpu/aa_compare.py STORE [DATA_ROOT]   (DATA_ROOT: the run's --set data.root, if any)
"""
import sys

from sweeper.sweep.plan import build_plan
from sweeper.sweep.spec import load
from sweeper.store.store import Store

ATTACKS = ("[{norm: l2, eps: 1.0, steps: 20}, {norm: l2, eps: 1.0, steps: 20, method: apgd-t, n_targets: 3}, "
           "{norm: l2, eps: 1.0, steps: 100, method: autoattack}]")

if __name__ == "__main__":
    import yaml

    sets = {"stages.eval.attacks": yaml.safe_load(ATTACKS)}
    if len(sys.argv) > 2:
        sets["data.root"] = sys.argv[2]
    plan = build_plan(load("search_spaces/fmnist_demo.yaml", sets))
    store = Store(sys.argv[1])
    print("| model | PGD-20 | worst of PGD-20, APGD-T (sweeper's) | AutoAttack alone | worst of all three | "
          "examples only AutoAttack broke |")
    print("|---|---|---|---|---|---|")
    worst_gap = 0.0
    for n in plan.nodes.values():
        if n.kind != "evaluate" or n.stage != "eval" or not store.is_done(n.key):
            continue
        t = store.load_tensors(n.key)
        flags = {k[len("robust."):]: v.bool() for k, v in t.items() if k.startswith("robust.")}
        aa = next(v for k, v in flags.items() if "autoattack" in k)
        pgd = next(v for k, v in flags.items() if k.endswith("_s20"))
        ours = pgd & next(v for k, v in flags.items() if "apgd-t" in k)
        every = ours & aa
        gap = 100 * (ours.float().mean() - every.float().mean()).item()
        worst_gap = max(worst_gap, gap)
        print(f"| {n.label} | {100 * pgd.float().mean():.1f}% | {100 * ours.float().mean():.1f}% | "
              f"{100 * aa.float().mean():.1f}% | {100 * every.float().mean():.1f}% | {int((ours & ~aa).sum())} |")
    print(f"largest gap between sweeper's worst case and the worst case with AutoAttack: {worst_gap:.1f} points")
