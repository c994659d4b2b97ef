"""MkDocs hooks of sweeper's docs site: the reference pages generated from the code at build time.

A page asks for generated text with a marker on a line of its own; ``on_page_markdown`` replaces it:

- ``<!-- sweeper:sweep-file -->``: every sweep-file key (type, default, allowed values, description) from the
  pydantic models of :mod:`sweeper.sweep.schema` (:func:`sweep_file_reference`);
- ``<!-- sweeper:eps-bounds -->``: the per-dataset bounds on eps (:func:`eps_bounds`);
- ``<!-- sweeper:cli -->``: every command and flag of the argparse parser of :mod:`sweeper.cli` (:func:`cli_reference`);
- ``<!-- sweeper:paper -->``: the paper's numbers of ``sweeper/report/references/paper.yaml`` (:func:`paper_numbers`);
- ``<!-- sweeper:modules PACKAGE -->``: one mkdocstrings block (``::: PACKAGE.module``) per module of a package
  folder (:func:`module_blocks`), so that a new module gets its API docs without editing a page.

An unknown marker stops the build. Nothing here imports mkdocs, so ``tests/test_docs.py`` calls the same functions
without it installed; the build uses them through ``mkdocs.yml``'s ``hooks:``.
"""
from __future__ import annotations

import html
import re
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^<!-- sweeper:([a-z-]+)(?: ([\w.]+))? -->$", re.MULTILINE)

# ------------------------------------------------------------------ the sweep file


def _models() -> list[tuple[str, type, str]]:
    """(section title, model, what it is) in reading order: the file's top level, its sections, the four stage
    kinds and the configs they hold. Every pydantic model of sweeper.sweep.schema appears (those reached from no
    section are appended, so a new model is never left out)."""
    from pydantic import BaseModel

    from sweeper.sweep import schema as s

    out = [("Top level", s.SweepFile, "the keys at the top of a sweep file"),
           ("data", s.DataSpec, "`data:`: the dataset every stage refers to; part of every node's key, but for `root`"),
           ("data.toy", s.ToySpec, "`data.toy:`: the theory toy's options (only with `dataset: toy`)"),
           ("run", s.RunSpec, "`run:`: where and how to run; never part of a node's key"),
           ("run.robust_curve", s.RobustCurveSpec, "`run.robust_curve:`: robust accuracy during training, for the "
                                                   "W&B curves")]
    for kind, model in s.STAGE_MODELS.items():
        out.append((f"kind: {kind}", model, f"a stage with `kind: {kind}` (under `stages:`)"))
    out += [("train", s.TrainConfig, "`train:` of a train stage: how to train"),
            ("attack", s.AttackConfig, "an attack: `adversarial:` of a train stage, `attack:` of a relabel synthesize "
                                       "stage, each item of `attacks:` of an evaluate stage, `run.robust_curve.attack`"),
            ("inversion", s.InversionConfig, "`inversion:` of an inversion synthesize stage")]
    seen = {m for _, m, _ in out}
    for name in sorted(vars(s)):
        obj = getattr(s, name)
        if (isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == s.__name__
                and not name.startswith("_") and obj not in seen):
            out.append((name, obj, f"`{name}`"))
    return out


def schema_models() -> list[type]:
    """Every public pydantic model of sweeper.sweep.schema (what the reference must cover)."""
    from pydantic import BaseModel

    from sweeper.sweep import schema as s

    return [o for n, o in sorted(vars(s).items()) if isinstance(o, type) and issubclass(o, BaseModel)
            and o.__module__ == s.__name__ and not n.startswith("_")]


def anchor(model: type) -> str:
    return "key-" + model.__name__.lower()


def field_key(name: str, field) -> str:
    """The key as written in a sweep file (``from``, not ``from_``)."""
    return field.alias or name


def _cell(text: str) -> str:
    """Text for a markdown table cell: HTML-escaped (``<store>`` is no tag), pipes and newlines removed, the
    backquoted parts kept as code."""
    parts = re.split(r"(`[^`]*`)", str(text))
    out = []
    for p in parts:
        if p.startswith("`") and p.endswith("`") and len(p) > 1:
            out.append("<code>" + html.escape(p[1:-1], quote=False).replace("|", "&#124;") + "</code>")
        else:
            out.append(html.escape(p, quote=False).replace("|", "&#124;").replace("{", "&#123;"))  # {..}: no attr_list
    return " ".join("".join(out).split())


def _code(v: str) -> str:
    return "<code>" + html.escape(v, quote=False).replace("|", "&#124;") + "</code>"


def _yaml(v: Any) -> str:
    """A value as a sweep file writes it."""
    from pydantic import BaseModel

    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, BaseModel):
        return "its defaults"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_yaml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_yaml(x)}" for k, x in v.items()) + "}"
    if isinstance(v, float) and v == int(v) and abs(v) < 1e15:
        return str(int(v)) if abs(v) >= 1 or v == 0 else repr(v)
    return str(v)


def _bounds(metadata) -> list[str]:
    out = []
    for m in metadata:
        for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(m, attr, None) is not None:
                out.append(f"{op} {_yaml(getattr(m, attr))}")
        if getattr(m, "min_length", None) is not None:
            out.append(f"at least {m.min_length} item(s)")
        if getattr(m, "max_length", None) is not None:
            out.append(f"at most {m.max_length} item(s)")
        if getattr(m, "pattern", None) is not None:
            out.append(f"matches {_code(m.pattern)}")
    return out


def _type(tp: Any) -> tuple[str, list[str]]:
    """(readable type, allowed values or bounds) of an annotation; models link to their section."""
    from pydantic import BaseModel
    from pydantic.fields import FieldInfo

    origin = get_origin(tp)
    if tp is Any:
        return "any", []
    if origin is Literal:
        vals = get_args(tp)
        kinds = sorted({type(v).__name__ for v in vals})
        name = "string" if kinds == ["str"] else "/".join(kinds)
        return name, [" \\| ".join(_code(_yaml(v)) for v in vals)] if len(vals) > 1 else [_code(_yaml(vals[0]))]
    if origin is typing.Annotated:
        base, *meta = get_args(tp)
        name, allowed = _type(base)
        extra = []
        for m in meta:
            extra += _bounds(m.metadata if isinstance(m, FieldInfo) else [m])
        return name, allowed + extra
    if origin is Union:
        args = [a for a in get_args(tp) if a is not type(None)]
        parts = [_type(a) for a in args]
        name = " or ".join(p[0] for p in parts) + (" or null" if len(args) < len(get_args(tp)) else "")
        allowed = []
        for (pname, pallowed), a in zip(parts, args):
            if pallowed:
                allowed.append(("; ".join(pallowed)) if len(parts) == 1 else f"{pname}: " + "; ".join(pallowed))
        return name, allowed
    if origin in (list, tuple):
        (inner, *_) = get_args(tp) or (Any,)
        name, allowed = _type(inner)
        return f"list of {name}", allowed
    if origin is dict:
        k, v = get_args(tp)
        return f"mapping {_type(k)[0]} → {_type(v)[0]}", _type(v)[1]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return f"[{_section_title(tp)}](#{anchor(tp)})", []
    names = {int: "integer", float: "number", str: "string", bool: "boolean"}
    return names.get(tp, getattr(tp, "__name__", str(tp))), []


_TITLES: dict[type, str] = {}


def _section_title(model: type) -> str:
    if not _TITLES:
        for title, m, _ in _models():
            _TITLES[m] = title
    return _TITLES.get(model, model.__name__)


def field_rows(model: type) -> list[dict]:
    """One dict per field of ``model``: key, type, default, allowed, description."""
    from pydantic_core import PydanticUndefined

    rows = []
    for name, f in model.model_fields.items():
        tp, allowed = _type(f.annotation)
        allowed = allowed + _bounds(f.metadata)
        if f.is_required():
            default = "required"
        elif f.default_factory is not None:
            default = _code(_yaml(f.default_factory()))
        elif f.default is PydanticUndefined:
            default = ""
        else:
            default = _code(_yaml(f.default))
        rows.append({"key": field_key(name, f), "type": tp, "default": default, "allowed": "; ".join(allowed),
                     "description": _cell(f.description or "")})
    return rows


def sweep_file_reference() -> str:
    """The sweep-file reference: one section per model with a table of its keys."""
    out = []
    for title, model, what in _models():
        out.append(f"## {title} {{#{anchor(model)}}}\n")
        out.append(f"{what[0].upper()}{what[1:]} (`{model.__name__}`).\n")
        out.append("| key | type | default | allowed | description |")
        out.append("|---|---|---|---|---|")
        for r in field_rows(model):
            out.append(f"| `{r['key']}` | {r['type']} | {r['default']} | {r['allowed']} | {r['description']} |")
        out.append("")
    return "\n".join(out)


def eps_bounds() -> str:
    """The bounds on an attack's eps per dataset (``schema.eps_limit``; MAX_EPS where it has none)."""
    from sweeper.sweep import schema as s

    datasets = get_args(s.DataSpec.model_fields["dataset"].annotation)
    norms = get_args(s.AttackConfig.model_fields["norm"].annotation)
    out = ["| dataset | " + " | ".join(f"`{n}`" for n in norms) + " |", "|---" * (len(norms) + 1) + "|"]
    for d in datasets:
        cells = []
        for n in norms:
            lim = s.eps_limit(n, d)
            cells.append(f"<= {s.MAX_EPS:g}" if lim is None else f"<= {lim[0]:.4g} ({_cell(lim[1])})")
        shape = s.IMAGE_SHAPES.get(d)
        name = f"`{d}` ({'x'.join(map(str, shape))})" if shape else f"`{d}` (no box)"
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ the command line


def _commands(parser, prefix: str = "sweeper") -> list[tuple[str, Any, str]]:
    """(command line, parser, one-line help) for the top parser and every subcommand, depth first."""
    import argparse

    out = [(prefix, parser, "")]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                subs = _commands(sub, f"{prefix} {name}")
                subs[0] = (subs[0][0], subs[0][1], helps.get(name) or "")
                out += subs
    return out


def _arg_rows(parser) -> list[str]:
    import argparse

    rows = []
    for a in parser._actions:
        if isinstance(a, (argparse._SubParsersAction, argparse._HelpAction)):
            continue
        if a.option_strings:
            metavar = "" if a.nargs == 0 else " " + (a.metavar or a.dest.upper())
            name = ", ".join(f"{o}{metavar}" for o in a.option_strings)
        else:
            name = a.metavar or a.dest
        default = "" if a.default in (None, False, [], argparse.SUPPRESS) or a.nargs == 0 else _code(str(a.default))
        if a.required and a.option_strings:
            default = "required"
        choices = " \\| ".join(_code(str(c)) for c in a.choices) if a.choices else ""
        extra = " (repeatable)" if isinstance(a, argparse._AppendAction) and "repeatable" not in (a.help or "") else ""
        rows.append(f"| {_code(name)} | {_cell((a.help or '') + extra)} | {default} | {choices} |")
    return rows


def command_names() -> list[str]:
    """Every command line the parser knows (``sweeper``, ``sweeper plan``, ``sweeper data push``, ...)."""
    from sweeper.cli import _parser

    return [c for c, _, _ in _commands(_parser())]


def cli_reference() -> str:
    """Every command of ``sweeper.cli._parser()``: usage, what it does, its arguments, exit codes and example."""
    from sweeper.cli import _parser

    out = []
    for cmd, p, short in _commands(_parser()):
        slug = "cli-" + cmd.replace(" ", "-")
        out.append(f"## `{cmd}` {{#{slug}}}\n")
        if short:
            out.append(f"{_cell(short[0].upper() + short[1:])}.\n")
        out.append("```text\n" + p.format_usage().strip() + "\n```\n")
        if p.description:
            out.append("```text\n" + p.description.strip() + "\n```\n")
        rows = _arg_rows(p)
        if rows:
            out.append("| argument | meaning | default | choices |")
            out.append("|---|---|---|---|")
            out += rows
            out.append("")
        if p.epilog:
            out.append("```text\n" + p.epilog.strip() + "\n```\n")
    return "\n".join(out)


# ------------------------------------------------------------------ the paper's numbers


def paper_numbers() -> str:
    """``sweeper/report/references/paper.yaml`` as tables (fractions as percentages), with the file's comments."""
    import yaml

    path = ROOT / "sweeper" / "report" / "references" / "paper.yaml"
    text = path.read_text()
    data = yaml.safe_load(text)
    head = [ln.lstrip("# ").rstrip() for ln in text.splitlines() if ln.startswith("#")]
    notes = dict(re.findall(r"^(\w+):\s*#\s*(.*)$", text, re.MULTILINE))
    out = ["From `sweeper/report/references/paper.yaml` (read at build time): " + _cell(" ".join(head)), ""]
    for section, body in data.items():
        out.append(f"### {section}\n")
        if section in notes:
            out.append(_cell(notes[section][0].upper() + notes[section][1:]) + ".\n")
        for k, v in body.items():
            if k != "rows":
                out.append(f"{k}: {_code(_yaml(v))}\n")
        rows = body.get("rows", [])
        cols = list(dict.fromkeys(c for r in rows for c in r))
        out.append("| " + " | ".join(cols) + " |")
        out.append("|---" * len(cols) + "|")
        for r in rows:
            cells = []
            for c in cols:
                v = r.get(c)
                cells.append(f"{100 * v:.1f}%" if isinstance(v, float) and 0 <= v <= 1 else _cell(_yaml(v)
                                                                                             if v is not None else ""))
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------ the Python API


def package_modules(package: str) -> list[str]:
    """The modules of a package folder (``sweeper.store`` -> ``sweeper.store.store``, ...), read from the files
    (nothing imported), in file name order; ``__init__`` and ``__main__`` left out."""
    folder = ROOT.joinpath(*package.split("."))
    return [f"{package}.{p.stem}" for p in sorted(folder.glob("*.py")) if p.stem not in ("__init__", "__main__")]


def module_blocks(package: str) -> str:
    """The package's docstring, then one mkdocstrings block per module."""
    out = [f"::: {package}", "    options:", "      members: false", "      show_root_heading: false", ""]
    for m in package_modules(package):
        out += [f"::: {m}", ""]
    return "\n".join(out)


GENERATORS = {"sweep-file": sweep_file_reference, "eps-bounds": eps_bounds, "cli": cli_reference,
              "paper": paper_numbers}


def expand(markdown: str, page: str = "?") -> str:
    """Replace every marker of ``markdown``; an unknown one raises (the build stops)."""
    def sub(m: re.Match) -> str:
        name, arg = m.group(1), m.group(2)
        if name == "modules" and arg:
            return module_blocks(arg)
        if name in GENERATORS and not arg:
            return GENERATORS[name]()
        raise ValueError(f"{page}: unknown marker {m.group(0)!r}; known: {sorted(GENERATORS)} and 'modules PACKAGE'")

    return MARKER.sub(sub, markdown)


# ------------------------------------------------------------------ mkdocs hooks


RST_ROLE = re.compile(r":(?:mod|func|class|meth|attr|data|exc|obj):(?=<code>)")


def on_page_content(html_text: str, page, config, files) -> str:  # noqa: ARG001 (the hook's signature)
    """The docstrings name code as reStructuredText roles (:func:`x`), which mkdocstrings renders as ":func:" before
    the code: drop the role, keep the code."""
    return RST_ROLE.sub("", html_text)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (the hook's signature)
    if "<!-- sweeper:" not in markdown:
        return markdown
    from mkdocs.exceptions import PluginError

    try:
        return expand(markdown, page.file.src_uri)
    except ValueError as e:  # an unknown marker: one line, and the build stops
        raise PluginError(str(e)) from None
