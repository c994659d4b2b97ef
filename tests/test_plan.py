"""The plan: content keys, de-duplication, fan-out, waves; a pure function of the sweep file."""

from sweeper.sweep.plan import CODE_VERSION, build_plan
from sweeper.sweep.spec import loads

BASE = """
name: p
seed: 0
data: {dataset: fashion_mnist, test_size: 100}
run: {store: ./store, max_concurrent_trials: 2}
stages:
  std:
    kind: train
    arch: small_cnn
    train_size: 500
    train: {epochs: 1, lr: 0.05}
  std_b: {kind: train, arch: small_cnn, train_size: 500, seed: 1, train: {epochs: 1, lr: 0.05}}
  d_det:
    kind: synthesize
    from: std
    method: relabel
    size: 100
    targets: deterministic
    attack: {norm: l2, eps: {grid: [0.5, 1.0]}, steps: 3}
  retrain:
    kind: train
    from: d_det
    arch: {grid: [small_cnn, mlp, linear]}
    train: {epochs: 1}
  probe: {kind: transfer, from: d_det, models: [std, std_b]}
  eval:
    kind: evaluate
    from: [std, retrain]
    attacks: [{norm: l2, eps: 0.5, steps: 2}]
"""


def test_dedup_and_fanout_counts():
    plan = build_plan(loads(BASE))
    # std once (not once per eps x arch), std_b, 2 synth, 2 x 3 retrain; 2 synth x 2 models; 1 + 6 evals
    assert {k: v for k, v in plan.counts().items() if v} == {"train": 2 + 6, "synthesize": 2, "evaluate": 7,
                                                             "transfer": 4}
    labels = sorted(n.label for n in plan.nodes.values() if n.stage == "d_det")
    assert labels == ["d_det[attack.eps=0.5]", "d_det[attack.eps=1.0]"]
    retrain = [n for n in plan.nodes.values() if n.stage == "retrain"]
    assert {n.point["d_det.attack.eps"] for n in retrain} == {0.5, 1.0}
    assert all(set(n.inputs) == {"data"} for n in retrain)
    probe = [n for n in plan.nodes.values() if n.kind == "transfer"]
    assert all(set(n.inputs) == {"data", "model"} for n in probe)
    assert all(n.spec.seed == 0 for n in retrain)


def test_identical_stages_share_a_node():
    text = BASE.replace("  probe:", "  std_copy: {kind: train, arch: small_cnn, train_size: 500, train: {epochs: 1, lr: 0.05}}\n  probe:")
    plan = build_plan(loads(text))
    assert plan.counts()["train"] == 8
    std = [n for n in plan.nodes.values() if n.stage == "std"][0]
    assert std.stages == ("std", "std_copy")


def test_keys_stable_and_independent_of_run_and_order():
    a = build_plan(loads(BASE))
    b = build_plan(loads(BASE))
    assert list(a.nodes) == list(b.nodes) and all(len(k) == 16 for k in a.nodes)
    c = build_plan(loads(BASE.replace("run: {store: ./store, max_concurrent_trials: 2}",
                                      "run: {store: s3://b/x, max_concurrent_trials: 8, shard_size: 7}")))
    assert set(c.nodes) == set(a.nodes)
    reordered = BASE.replace(
        "std_b: {kind: train, arch: small_cnn, train_size: 500, seed: 1, train: {epochs: 1, lr: 0.05}}",
        "std_b: {train: {lr: 0.05, epochs: 1}, seed: 1, train_size: 500, arch: small_cnn, kind: train}").replace(
        "    kind: train\n    arch: small_cnn\n    train_size: 500\n",
        "    train_size: 500\n    arch: small_cnn\n    kind: train\n")
    assert reordered != BASE
    assert set(build_plan(loads(reordered)).nodes) == set(a.nodes)


def test_keys_change_with_params_and_propagate():
    a = build_plan(loads(BASE))
    b = build_plan(loads(BASE.replace("train_size: 500\n", "train_size: 600\n")))
    std_a = [k for k, n in a.nodes.items() if n.stage == "std"]
    std_b = [k for k, n in b.nodes.items() if n.stage == "std"]
    assert std_a != std_b
    # everything downstream of std changes too; std_b does not
    same = set(a.nodes) & set(b.nodes)
    assert {a.nodes[k].stage for k in same} == {"std_b"}


def test_default_filled_equals_explicit_default():
    a = build_plan(loads(BASE))
    b = build_plan(loads(BASE.replace("train: {epochs: 1, lr: 0.05}}", "train: {epochs: 1, lr: 0.05, momentum: 0.9}}")))
    assert set(a.nodes) == set(b.nodes)


def test_sweep_seed_changes_keys():
    a = build_plan(loads(BASE))
    b = build_plan(loads(BASE.replace("seed: 0", "seed: 5", 1)))
    assert not set(a.nodes) & set(b.nodes)


def test_waves_order():
    plan = build_plan(loads(BASE))
    waves = plan.waves()
    # longest-path depth: eval of std (depth 1) runs beside the synthesis
    assert [sorted({n.kind for n in w}) for w in waves] == [["train"], ["evaluate", "synthesize"],
                                                            ["train", "transfer"], ["evaluate"]]
    depth = {n.key: i for i, w in enumerate(waves) for n in w}
    for n in plan.nodes.values():
        assert all(depth[i] < depth[n.key] for i in n.inputs.values())
    # nodes dict is topological
    seen = set()
    for k, n in plan.nodes.items():
        assert set(n.inputs.values()) <= seen
        seen.add(k)
    assert [len(w) for w in waves] == [2, 3, 10, 6]


def test_render_mentions_status():
    plan = build_plan(loads(BASE))
    first = next(iter(plan.nodes))
    out = plan.render({first})
    assert "done" in out and "todo" in out and "done 1/21" in out
    assert "d_det[attack.eps=0.5]" in out and "data=d_det[attack.eps=1.0]" in out
    assert "edges" in out and "evaluate 7" in out
    assert CODE_VERSION == "1"


def test_robust_curve_uses_the_eval_attack_of_the_model_and_never_changes_keys():
    plan = build_plan(loads(BASE))
    std = next(n for n in plan.nodes.values() if n.stage == "std")
    std_b = next(n for n in plan.nodes.values() if n.stage == "std_b")
    curve = std.robust_curve
    assert curve.size == 100 and curve.every == 1
    assert (curve.attack.norm, curve.attack.eps, curve.attack.steps) == ("l2", 0.5, 2)
    assert std_b.robust_curve.attack == curve.attack  # not evaluated: the sweep's eval attack
    assert next(n for n in plan.nodes.values() if n.kind == "evaluate").robust_curve is None
    custom = BASE.replace("run: {store: ./store, max_concurrent_trials: 2}",
                          "run: {store: ./store, robust_curve: {size: 50, every: 2, attack: {norm: linf, "
                          "eps: 8/255, steps: 5}}}")
    other = build_plan(loads(custom))
    assert set(other.nodes) == set(plan.nodes)  # run settings are not part of any key
    c = other.nodes[std.key].robust_curve
    assert c.size == 50 and c.every == 2 and c.attack.norm == "linf"
    assert abs(c.attack.eps - 8 / 255) < 1e-12
    off = build_plan(loads(BASE.replace("max_concurrent_trials: 2}", "robust_curve: {size: 0}}")))
    assert off.nodes[std.key].robust_curve is None
    long = build_plan(loads(BASE.replace("train: {epochs: 1, lr: 0.05}\n  std_b", "train: {epochs: 25, lr: 0.05}\n  std_b")))
    assert next(n.robust_curve for n in long.nodes.values() if n.stage == "std").every == 3  # <= 10 points


def test_synthesis_actors_auto_follows_the_cluster():
    from sweeper.run.engines import synthesis_actors

    run = loads(BASE).run
    assert synthesis_actors(run, {"CPU": 8.0}) == 8
    gpu = loads(BASE.replace("max_concurrent_trials: 2}", "gpus_per_trial: {default: 1, small_cnn: 0.5}}")).run
    assert synthesis_actors(gpu, {"CPU": 16.0, "GPU": 4.0}) == 4
    fixed = loads(BASE.replace("max_concurrent_trials: 2}", "synthesis_actors: 3}")).run
    assert synthesis_actors(fixed, {"CPU": 64.0}) == 3


def test_labels_are_unique_and_describe_a_node():
    """Two nodes never share a label (a label that repeats gets its inputs' labels); describe() gives a node's
    readable settings; keys and labels stay as they were where a label was already unique."""
    plan = build_plan(loads(BASE))
    labels = [n.label for n in plan.nodes.values()]
    assert len(set(labels)) == len(labels)
    evals = sorted(n.label for n in plan.nodes.values() if n.stage == "eval")
    assert "eval(model=std)" in evals and "eval(model=retrain[arch=mlp](data=d_det[attack.eps=0.5]))" in evals
    assert {n.label for n in plan.nodes.values() if n.stage in ("std", "d_det")} == {
        "std", "d_det[attack.eps=0.5]", "d_det[attack.eps=1.0]"}
    ev = next(n for n in plan.nodes.values() if n.label == "eval(model=std)")
    d = plan.describe(ev)
    assert (d["kind"], d["train_set"], d["arch"], d["norm"], d["eps"], d["steps"], d["seed"]) == (
        "evaluate", "D", "small_cnn", "l2", 0.5, 2, 0)
    synth = next(n for n in plan.nodes.values() if n.label == "d_det[attack.eps=1.0]")
    assert (plan.describe(synth)["eps"], plan.describe(synth)["attack"], plan.describe(synth)["synthesis"]) == (
        1.0, "l2_eps1_s3", "relabel")
    retrain = next(n for n in plan.nodes.values() if n.stage == "retrain")
    assert plan.train_set(retrain) == "D_det" and plan.describe(retrain)["norm"] is None


def test_attack_options_at_their_defaults_keep_keys_and_others_change_them():
    """method, loss and keep_best (added after keys existed) leave node keys as they were at their defaults."""
    a = build_plan(loads(BASE))
    same = BASE.replace("attack: {norm: l2, eps: {grid: [0.5, 1.0]}, steps: 3}",
                        "attack: {norm: l2, eps: {grid: [0.5, 1.0]}, steps: 3, method: pgd, loss: ce, keep_best: false}")
    assert same != BASE and set(build_plan(loads(same)).nodes) == set(a.nodes)
    margin = build_plan(loads(BASE.replace("steps: 3}", "steps: 3, loss: margin}")))
    changed = set(margin.nodes) - set(a.nodes)
    assert changed and all(margin.nodes[k].stage in ("d_det", "retrain", "probe", "eval") for k in changed)


def test_keys_are_node_key_of_each_node_and_shipped_sweeps_keep_theirs():
    """build_plan hashes each grid point's params once (not once per node); every key is still exactly
    node_key(kind, spec, inputs, data) of its node, in a plan with fan-out, shared nodes and several sources."""
    import glob
    import pathlib

    from sweeper.sweep.plan import node_key
    from sweeper.sweep.spec import load

    text = BASE.replace("  probe:", "  std_copy: {kind: train, arch: small_cnn, train_size: 500, "
                                    "train: {epochs: 1, lr: 0.05}}\n  probe:")
    root = pathlib.Path(__file__).resolve().parents[1]
    for sweep in [loads(text)] + [load(f) for f in sorted(glob.glob(str(root / "search_spaces" / "*.yaml")))]:
        plan = build_plan(sweep)
        data = {**sweep.data.model_dump(), "root": None, "sweep_seed": sweep.seed}  # root: never in a key
        if sweep.data.dataset != "toy":
            data["sha256"] = plan.data["sha256"]  # the files' checksum (null: data absent, provisional keys)
        assert plan.data == data
        for key, n in plan.nodes.items():
            assert key == n.key == node_key(n.kind, n.spec, n.inputs, data), n.label


def test_the_robust_curve_of_every_training_node_is_its_own_evaluation_attack():
    """The index of evaluate nodes by model (one pass for the plan) picks what a scan per node picked: the first
    attack of the first evaluate node scoring the model, else of the first evaluate node with attacks."""
    text = BASE.replace("    from: [std, retrain]\n    attacks: [{norm: l2, eps: 0.5, steps: 2}]",
                        "    from: [retrain]\n    attacks: [{norm: l2, eps: 0.5, steps: 2}]\n"
                        "  eval_std: {kind: evaluate, from: std, attacks: [{norm: linf, eps: 0.1, steps: 3}]}\n"
                        "  eval_clean: {kind: evaluate, from: std_b, attacks: []}")
    plan = build_plan(loads(text))
    curves = {n.stage: n.robust_curve.attack for n in plan.nodes.values() if n.kind == "train"}
    assert (curves["std"].norm, curves["std"].eps) == ("linf", 0.1)      # its own evaluate node
    assert (curves["retrain"].norm, curves["retrain"].eps) == ("l2", 0.5)
    assert (curves["std_b"].norm, curves["std_b"].eps) == ("l2", 0.5)    # clean-only eval: the first with attacks
