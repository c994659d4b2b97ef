"""The sweep file's JSON Schema (draft-07), generated from the pydantic models of :mod:`sweeper.sweep.schema`.

``sweeper schema`` prints it; ``search_spaces/sweep.schema.json`` is a copy that a test keeps equal to it, and the
shipped sweep files point at it (``# yaml-language-server: $schema=./sweep.schema.json``) so that editors with a
YAML language server complete and check them. pydantic's own schema describes one concrete stage; a sweep file is
read differently (:mod:`sweeper.sweep.spec`), so the generated schema is post-processed to accept what the loader
accepts and no more than it needs to:

- every value inside a stage (but its ``kind``) may be a grid, ``{grid: [v1, v2, ...]}``, whose values are the
  plain value's schema (the loader does not expand a grid inside a grid's values), and a list item may be one too;
- a stage may have ``zip: {dotted.key: [values...]}``; a key set by the zip may be missing from the stage's body,
  so a stage with ``zip`` has no required key but ``kind``;
- ``eps`` and ``step_size`` of an attack may be fraction strings such as ``"8/255"`` (:func:`sweeper.sweep.schema.parse_eps`);
- numbers and booleans may be the strings pydantic reads as such: a YAML 1.1 reader (PyYAML, the loader) reads
  ``1e-3`` as a string and ``yes`` as true, an editor's YAML 1.2 the other way round;
- a stage's kind picks its keys (``if kind is train then ...``), so an editor reports the mistake inside the
  stage's own kind instead of one line per kind.

Cross-field rules (``from`` names a stage of the right kind, ``train_size`` not with ``from``, eps bounds per
dataset...) stay with the loader: the schema accepts a superset of valid files, never less.
"""
from __future__ import annotations

import copy
import json
import warnings
from typing import Any

from pydantic.json_schema import models_json_schema

from sweeper.sweep.schema import KINDS, NAME_PATTERN, STAGE_MODELS, AttackConfig, SweepFile

COMMITTED = "search_spaces/sweep.schema.json"  # the copy the shipped sweep files point at
REGENERATE = f"sweeper schema > {COMMITTED}"

# read by parse_eps: a number or a fraction string
EPS_FIELDS = {"AttackConfig": ("eps", "step_size"), "FourierStage": ("eps",)}

# Strings pydantic's lax mode reads as a number or a boolean (tests/test_schema_json.py checks them against
# pydantic). ECMA-262 regular expressions (what editors run): no inline flags.
_NUM = r"[-+]?(?=[._]*[0-9])[0-9_.]+([eE][-+]?[0-9_]+)?"
FLOAT_STRING = rf"^\s*{_NUM}\s*$"
INT_STRING = r"^\s*[-+]?[0-9][0-9_]*(\.0*)?\s*$"
EPS_STRING = rf"^\s*{_NUM}\s*(/\s*{_NUM}\s*)?$"
BOOL_STRING = r"^([01]|[oO][nN]|[oO][fF][fF]|[tT]([rR][uU][eE])?|[fF]([aA][lL][sS][eE])?|[yY]([eE][sS])?|[nN][oO]?)$"
DEFS = "definitions"
_LAX_DEFS = {"NumberString": {"type": "string", "pattern": FLOAT_STRING, "description": "a number written as a string"},
             "IntegerString": {"type": "string", "pattern": INT_STRING, "description": "a whole number as a string"},
             "BooleanString": {"type": "string", "pattern": BOOL_STRING,
                               "description": "true/false, yes/no, on/off, t/f, y/n or 1/0 (any case)"},
             "EpsString": {"type": "string", "pattern": EPS_STRING,
                           "description": "a number or a fraction such as \"8/255\""}}
_LAX = {"number": {"$ref": f"#/{DEFS}/NumberString"}, "integer": {"$ref": f"#/{DEFS}/IntegerString"},
        "boolean": {"$ref": f"#/{DEFS}/BooleanString"}}
_META = ("title", "description", "default", "examples")


def generate() -> dict:
    """The sweep file's JSON Schema (a dict, the same for the same models)."""
    models = [SweepFile, *STAGE_MODELS.values()]
    with warnings.catch_warnings():  # serialising RunSpec()'s default warns about gpus_per_trial's int 0
        warnings.simplefilter("ignore")
        _, top = models_json_schema([(m, "validation") for m in models], ref_template=f"#/{DEFS}/{{model}}")
    defs: dict[str, Any] = top["$defs"]
    for d in defs.values():
        d.pop("description", None)  # the models' docstrings are written for developers; fields say it for users
        for prop in d.get("properties", {}).values():
            prop.pop("title", None)  # "Train Size": pydantic's title of a field, noise next to its description
    for model, fields in EPS_FIELDS.items():
        for f in fields:
            _lax_eps(defs[model]["properties"][f])
    for d in defs.values():
        _lax_scalars(d)

    out_defs = {k: v for k, v in defs.items() if k not in {m.__name__ for m in STAGE_MODELS.values()}}
    stage_rules = []
    for kind, model in STAGE_MODELS.items():
        plain = defs[model.__name__]
        full = _stage_variant(plain, defs, out_defs, relaxed=False)
        zipped = _stage_variant(plain, defs, out_defs, relaxed=True)
        zipped["properties"]["zip"] = {
            "type": "object", "minProperties": 1,
            "description": "values that change together: dotted key inside the stage -> list of values, all lists "
                           "of one length (one grid point per position)",
            "additionalProperties": {"type": "array", "minItems": 1}}
        out_defs[f"{model.__name__}"] = full
        out_defs[f"{model.__name__}.zip"] = zipped
        stage_rules.append({"if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
                            "then": {"if": {"required": ["zip"]},
                                     "then": {"$ref": f"#/{DEFS}/{model.__name__}.zip"},
                                     "else": {"$ref": f"#/{DEFS}/{model.__name__}"}}})
    out_defs["Stage"] = {
        "type": "object", "required": ["kind"],
        "description": "one stage: its kind and options; any value but kind may be a grid, {grid: [...]}",
        "properties": {"kind": {"enum": list(KINDS), "description": " | ".join(KINDS)}},
        "allOf": stage_rules}

    sweep = out_defs.pop(SweepFile.__name__)
    stages = sweep["properties"]["stages"]
    stages["additionalProperties"] = {"$ref": f"#/{DEFS}/Stage"}
    stages["propertyNames"] = {"pattern": f"^{NAME_PATTERN.pattern}$"}
    schema = {"$schema": "http://json-schema.org/draft-07/schema#",
              "title": "sweeper sweep file",
              "description": "A sweep of Ilyas et al. 2019 experiments: the dataset, where to run, and the stages "
                             f"({', '.join(KINDS)}) with their grids. Generated from sweeper's "
                             f"pydantic models by `{REGENERATE}`; do not edit.",
              **{k: v for k, v in sweep.items() if k != "title"},
              DEFS: dict(sorted({**out_defs, **_LAX_DEFS}.items()))}
    return _ref_siblings(schema)


def dumps() -> str:
    """The schema as the text of the committed file (and of ``sweeper schema``)."""
    return json.dumps(generate(), indent=2, sort_keys=False) + "\n"


# ---------------------------------------------------------------- post-processing
def _split(node: dict) -> tuple[dict, dict]:
    """(the node's annotations: title, description, default; the rest)."""
    return {k: v for k, v in node.items() if k in _META}, {k: v for k, v in node.items() if k not in _META}


def _lax_scalars(node: Any) -> None:
    """In place: every number, integer and boolean may also be a string pydantic reads as one."""
    if isinstance(node, list):
        for v in node:
            _lax_scalars(v)
        return
    if not isinstance(node, dict):
        return
    for v in node.values():
        _lax_scalars(v)
    if node.get("type") in _LAX and not node.get("x-lax"):
        meta, core = _split(node)
        node.clear()
        node.update(meta, anyOf=[core, copy.deepcopy(_LAX[core["type"]])])
        if core["type"] == "boolean":
            node["anyOf"].append({"enum": [0, 1]})


def _lax_eps(node: dict) -> None:
    """In place: a radius or step length: a number, or a string parse_eps reads ("8/255")."""
    target = next((m for m in node.get("anyOf", []) if m.get("type") == "number"), None)
    if target is None:
        meta, core = _split(node)
        node.clear()
        node.update(meta, anyOf=[core])
        target = core
    node["anyOf"].insert(node["anyOf"].index(target) + 1,
                         {"$ref": f"#/{DEFS}/EpsString"})
    target["x-lax"] = True  # a fraction string covers every number string


def _grid(plain: dict) -> dict:
    return {"type": "object", "required": ["grid"], "additionalProperties": False,
            "properties": {"grid": {"type": "array", "minItems": 1, "items": plain,
                                    "description": "one grid point per value"}}}


def _gridded(node: Any, defs: dict, out: dict, relaxed: bool) -> Any:
    """A value inside a stage: its own schema (with grids inside) or a grid of plain values."""
    meta, core = _split(node)
    return {**meta, "anyOf": [_inside(core, defs, out, relaxed), _grid(core)]}


def _inside(node: Any, defs: dict, out: dict, relaxed: bool) -> Any:
    """The schema of a value whose parts may be grids: objects' properties and arrays' items get a grid
    alternative; references go to the definition's in-stage variant."""
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node and node["$ref"].rsplit("/", 1)[1] in defs:  # a model (not one of _LAX_DEFS)
        name = node["$ref"].rsplit("/", 1)[1]
        node["$ref"] = f"#/{DEFS}/{_variant(name, defs, out, relaxed)}"
    for key in ("anyOf", "oneOf", "allOf"):
        if key in node:
            node[key] = [_inside(m, defs, out, relaxed) for m in node[key]]
    if isinstance(node.get("properties"), dict):
        node["properties"] = {k: _gridded(v, defs, out, relaxed) for k, v in node["properties"].items()}
    if isinstance(node.get("items"), dict):
        node["items"] = _gridded(node["items"], defs, out, relaxed)
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _gridded(node["additionalProperties"], defs, out, relaxed)
    if relaxed:
        node.pop("required", None)
    return node


def _variant(name: str, defs: dict, out: dict, relaxed: bool) -> str:
    """The definition ``name`` as written inside a stage (grids allowed; no required key when ``relaxed``)."""
    new = f"{name}.in_stage" + (".zip" if relaxed else "")
    if new not in out:
        out[new] = {}  # a placeholder first: a model may refer to itself
        out[new] = _inside(defs[name], defs, out, relaxed)
    return new


def _stage_variant(plain: dict, defs: dict, out: dict, relaxed: bool) -> dict:
    """A stage as written: its kind as is, every other value possibly a grid."""
    node = _inside({k: v for k, v in plain.items() if k != "properties"}, defs, out, relaxed)
    props = {k: (v if k == "kind" else _gridded(v, defs, out, relaxed)) for k, v in plain["properties"].items()}
    node["properties"] = props
    if relaxed:
        node["required"] = ["kind"]
    return node


def _ref_siblings(node: Any) -> Any:
    """Draft-07 ignores the keywords next to a ``$ref``: move the reference into an ``allOf``. Also drops the
    internal ``x-lax`` marks."""
    if isinstance(node, list):
        return [_ref_siblings(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: _ref_siblings(v) for k, v in node.items() if k != "x-lax"}
    if "$ref" in node and len(node) > 1:
        ref = node.pop("$ref")
        node["allOf"] = [{"$ref": ref}, *node.get("allOf", [])]
    return node


def attack_eps_fields() -> tuple[str, ...]:
    """The fields AttackConfig parses with parse_eps (its ``mode="before"`` validator), for the test that
    EPS_FIELDS follows the model."""
    return eps_fields(AttackConfig)


def eps_fields(model) -> tuple[str, ...]:
    """The fields a model parses with parse_eps (a ``mode="before"`` field validator named ``_parse``; () for a
    model without one), for the test that EPS_FIELDS follows the models."""
    v = model.__pydantic_decorators__.field_validators.get("_parse")
    return tuple(v.info.fields) if v is not None else ()
