"""The sweep file's JSON Schema (sweeper/sweep/schema_json.py): the committed copy is what the models generate, it
accepts every sweep the loader accepts (shipped files, the tests' sweeps, grids, zip, "8/255", YAML 1.1 scalars)
and rejects unknown keys and wrong types, as the loader does."""
import json
import pathlib
import random
import subprocess
import sys

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from sweeper.sweep import schema as models
from sweeper.errors import SpecError
from sweeper.sweep.schema_json import COMMITTED, EPS_FIELDS, REGENERATE, attack_eps_fields, eps_fields, generate
from sweeper.sweep.spec import loads

from sweeps import SLOW, SMALL

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "search_spaces").glob("*.yaml"))
HEADER = "# yaml-language-server: $schema=./sweep.schema.json"


@pytest.fixture(scope="module")
def validator():
    schema = json.loads((ROOT / COMMITTED).read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _errors(validator, doc) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(doc)]


def test_committed_schema_is_what_the_models_generate():
    committed = json.loads((ROOT / COMMITTED).read_text())
    assert committed == generate(), f"{COMMITTED} is out of date with sweeper/sweep/schema.py; regenerate it: {REGENERATE}"


def test_sweeper_schema_prints_it():
    r = subprocess.run([sys.executable, "-m", "sweeper", "schema"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "" and json.loads(r.stdout) == generate()
    assert r.stdout == (ROOT / COMMITTED).read_text()  # byte for byte: regenerating changes nothing


@pytest.mark.parametrize("f", SHIPPED, ids=lambda p: p.name)
def test_shipped_files_point_at_the_schema_and_pass_it(f, validator):
    text = f.read_text()
    assert text.splitlines()[0] == HEADER
    loads(text, str(f))  # the loader accepts it ...
    assert _errors(validator, yaml.safe_load(text)) == []  # ... and so does the schema


ACCEPTED = {
    "tests/sweeps.SMALL": SMALL, "tests/sweeps.SLOW": SLOW,
    # grids on scalars, on a whole section, on a list item, on `from`; an eps fraction; a zip whose keys are
    # missing from the stage's body; YAML 1.1 scalars (PyYAML reads 1e-3 as a string, an editor as a number)
    "grids, zip, strings": """
name: g
data: {dataset: cifar10, root: store}
run: {gpus_per_trial: {default: 1, airbench: 0.5}, synthesis_actors: 2,
      robust_curve: {size: 10, every: 2, attack: {norm: linf, eps: 8/255}}}
stages:
  a: {kind: train, arch: {grid: [resnet18, airbench]}, train_size: 100,
      train: {epochs: {grid: [1, 2]}, lr: 1e-3, augment: yes, weight_decay: "5e-4"},
      adversarial: {grid: [null, {norm: linf, eps: "8/255", steps: 7, step_size: 2/255}]}}
  z: {kind: train, train: {lr: 0.1}, zip: {arch: [mlp, linear], train.epochs: [1, 2]}}
  inv: {kind: synthesize, from: {grid: [a, z]}, method: inversion, inversion: {steps: 3, step_decay: cosine}}
  rel: {kind: synthesize, from: a, method: relabel, size: 10, targets: {grid: [random, deterministic]},
        attack: {norm: l2, eps: 0.5}}
  ev: {kind: evaluate, from: [a, z], attacks: [{norm: l2, eps: 0.25}, {grid: [{norm: l2, eps: 0.5},
       {norm: linf, eps: 8/255, method: apgd-t, n_targets: 3}]}, {norm: l2, eps: {grid: [1, 2]}}]}
  tr: {kind: transfer, from: rel, models: [a, z]}
""",
    "toy": "name: t\ndata: {dataset: toy, toy: {d: 10, p: 0.9}}\nstages: {s: {kind: evaluate, from: [], attacks: []}}\n",
}


@pytest.mark.parametrize("name", ACCEPTED)
def test_what_the_loader_accepts_the_schema_accepts(name, validator):
    text = ACCEPTED[name]
    try:
        loads(text, name)
    except SpecError as e:
        if "no stage named" not in e.message and "expected a train" not in e.message:
            raise  # the toy case refers to no stage: the loader refuses only the reference, which the schema
            # leaves to the loader (see sweeper/sweep/schema_json.py)
    assert _errors(validator, yaml.safe_load(text)) == []


BASE = yaml.safe_load((ROOT / "search_spaces" / "toy.yaml").read_text())


def _with(path: str, value):
    doc = json.loads(json.dumps(BASE))
    *parents, last = path.split(".")
    node = doc
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    node[last] = value
    return doc


REJECTED = [  # (dotted path, value): each breaks the toy sweep once, for the loader and the schema alike
    ("sede", 1),                                         # unknown top-level key
    ("run.stor", "./s"),                                 # unknown key in a section
    ("stages.std.train.epochz", 3),                      # unknown key inside a stage
    ("stages.robust.adversarial.epsilon", 0.1),          # unknown key in an attack
    ("stages.std.train.epochs", "ten"),                  # wrong type
    ("stages.std.train.epochs", {"grid": [1, "two"]}),   # wrong type inside a grid
    ("stages.std.train.epochs", {"grid": []}),           # an empty grid
    ("stages.std.train.epochs", {"grid": [1], "x": 2}),  # a grid with another key
    ("stages.std.arch", "resnet9000"),                   # not an allowed value
    ("stages.std.kind", "trian"),                        # no such kind
    ("stages.eval.attacks.0.norm", "l3"),
    ("stages.eval.attacks.0.eps", "eight"),
    ("stages.std.train.augment", "maybe"),
    ("stages.std.zip", {"train.lr": 0.1}),               # a zip value must be a list
    ("run.wandb", "sometimes"),
    ("data.dataset", "mnist"),
    ("name", "has space"),
]


@pytest.mark.parametrize("path, value", REJECTED, ids=[f"{p}={v}" for p, v in REJECTED])
def test_unknown_keys_and_wrong_types_are_rejected_by_both(path, value, validator):
    doc = _with(path, value)
    with pytest.raises(SpecError):
        loads(yaml.safe_dump(doc), "bad")
    assert _errors(validator, doc), f"the schema accepts {path}={value!r}"


def test_a_bad_stage_name_is_rejected(validator):
    doc = json.loads(json.dumps(BASE))
    doc["stages"]["bad name"] = doc["stages"].pop("std")
    assert _errors(validator, doc)


def test_strings_pydantic_reads_as_numbers_or_booleans_pass_the_schema(validator):
    """A property test: random short strings; every one pydantic (or parse_eps) accepts where a number, a whole
    number, a boolean or an eps is expected must pass the schema there (and "eight" must not)."""
    rng = random.Random(0)
    alphabet = "0123456789.._+-eE /xyntfaloTYNFO"
    words = ["1e-3", " 0.5 ", "1_000", ".5", "+3", "10.0", "8/255", " 8 / 255 ", "yes", "No", "ON", "off", "t",
             "F", "1", "0", "true", "FALSE", "2/2.5e1"]
    samples = words + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(3000)]
    checked = 0
    for field, model, path in [("lr", models.TrainConfig, "stages.std.train.lr"),
                               ("epochs", models.TrainConfig, "stages.std.train.epochs"),
                               ("augment", models.TrainConfig, "stages.std.train.augment"),
                               ("eps", models.AttackConfig, "stages.eval.attacks.0.eps")]:
        for s in samples:
            base = {"epochs": 1} if model is models.TrainConfig else {"norm": "l2"}
            try:
                model.model_validate({**base, field: s})
            except Exception:
                continue
            checked += 1
            assert not _errors(validator, _with(path, s)), f"{field}: pydantic accepts {s!r}, the schema does not"
    assert checked > 100
    assert _errors(validator, _with("stages.std.train.lr", "fast"))


def test_eps_fields_follow_the_model():
    assert EPS_FIELDS["AttackConfig"] == attack_eps_fields()
    every = {m.__name__: eps_fields(m) for m in _models(models.SweepFile).union(*(
        _models(m) for m in models.STAGE_MODELS.values()))}
    assert EPS_FIELDS == {name: fields for name, fields in every.items() if fields}


def _models(root: type[BaseModel]) -> set[type[BaseModel]]:
    from sweeper.sweep.spec import _unwrap

    out, todo = set(), [root]
    while todo:
        m = todo.pop()
        if m in out:
            continue
        out.add(m)
        for f in m.model_fields.values():
            todo += [t for t in _unwrap(f.annotation) if isinstance(t, type) and issubclass(t, BaseModel)]
    return out


def test_every_sweep_file_key_has_a_description():
    every = set().union(_models(models.SweepFile), *(_models(m) for m in models.STAGE_MODELS.values()))
    assert len(every) == 13  # 12 + FourierStage
    missing = [f"{m.__name__}.{f.alias or n}" for m in every for n, f in m.model_fields.items() if not f.description]
    assert missing == [], f"sweep-file keys without a description (Field(description=...), for users): {missing}"
