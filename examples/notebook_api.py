"""The Python API, as in a notebook: load the theory toy with overrides, look at its plan, run it, and read its
results and training curves as pandas DataFrames.

    .venv/bin/python examples/notebook_api.py                  # everything in this process (--executor local)
    .venv/bin/python examples/notebook_api.py --executor ray   # as `sweeper run` does: a private local Ray

The store is a temporary folder, removed at the end (give --store DIR to keep it; running again then resumes).
"""

import argparse
import pathlib
import tempfile

import sweeper

TOY = pathlib.Path(__file__).resolve().parents[1] / "search_spaces" / "toy.yaml"


def main(executor: str, store: str) -> None:
    # overrides: {dotted key: value}, or the strings of `--set` ("stages.d_det.attack.eps={grid: [0.2, 0.4]}")
    sw = sweeper.load(TOY, overrides={"run.store": store, "stages.d_det.attack.eps": {"grid": [0.2, 0.4]}})
    print(sw)
    print(sw.plan_frame()[["key", "kind", "label", "wave", "done"]].to_string(index=False))

    summary = sw.run(executor=executor, wandb="disabled", log=lambda line: None)  # log=print shows progress
    print(f"\nran {summary['ran']} nodes, skipped {summary['skipped']} ({summary['total']} in the plan); "
          f"report: {sorted(summary['report'])}")

    df = sw.results()  # one row per evaluation, the columns of results.csv
    robust = [c for c in df.columns if c.startswith("robust_acc[")]
    print(f"\nresults: {df.shape[0]} rows x {df.shape[1]} columns")
    print(df[["model_label", "train_set", "synth_eps", "clean_acc", *robust, "hit_rate"]]
          .to_string(index=False, float_format="%.3f"))

    curves = sw.curves("std")  # one row per epoch of the train node labelled "std"
    print("\ncurves of std:")
    print(curves[["epoch", "train_loss", "train_acc", "test_acc", "robust_acc"]]
          .to_string(index=False, float_format="%.3f"))

    again = sw.run(executor=executor, wandb="disabled", report=False, log=lambda line: None)
    print(f"\nrun again: ran {again['ran']}, skipped {again['skipped']}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--executor", choices=["local", "ray"], default="local")
    p.add_argument("--store", default=None, help="keep the store here (default: a temporary folder)")
    args = p.parse_args()
    if args.store:
        main(args.executor, args.store)
    else:
        with tempfile.TemporaryDirectory(prefix="sweeper-api-") as tmp:
            main(args.executor, f"{tmp}/store")
