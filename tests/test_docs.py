"""The docs site's sources, checked without MkDocs (`make docs` builds the site with --strict; CI runs it too).

The generated reference pages are checked through the very functions the build calls (docs/hooks.py): every field
of every model of sweeper/sweep/schema.py and every command and flag of the argparse parser appear. Also: every
page of mkdocs.yml's nav exists and every page is in the nav, the README stays a front page (under 150 lines,
pointing at the docs), and the relative links of the README files resolve.
"""
import ast
import importlib.util
import pathlib
import re

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _hooks():
    spec = importlib.util.spec_from_file_location("sweeper_docs_hooks", DOCS / "hooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


hooks = _hooks()


def _config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def _nav_pages(nav) -> list[str]:
    out = []
    for item in nav:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            for v in item.values():
                out += _nav_pages(v) if isinstance(v, list) else [v]
    return out


def test_every_nav_page_exists_and_every_page_is_in_the_nav():
    cfg = _config()
    assert cfg["docs_dir"] == "docs" and cfg["strict"] is True
    pages = _nav_pages(cfg["nav"])
    missing = [p for p in pages if not (DOCS / p).is_file()]
    assert not missing, f"mkdocs.yml's nav names pages that do not exist: {missing}"
    assert len(pages) == len(set(pages)), "a page is twice in the nav"
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert not (on_disk - set(pages)), f"pages left out of the nav: {on_disk - set(pages)}"


def _section(markdown: str, anchor: str) -> str:
    """The text of the `## ... {#anchor}` section up to the next `## `."""
    m = re.search(r"^## .*\{#" + re.escape(anchor) + r"\}\n(.*?)(?=^## |\Z)", markdown, re.MULTILINE | re.DOTALL)
    assert m, f"no section {anchor}"
    return m.group(1)


def _schema_models() -> list[type]:
    """The public pydantic models of sweeper/sweep/schema.py, found independently of docs/hooks.py."""
    from pydantic import BaseModel

    from sweeper.sweep import schema

    return [o for n, o in vars(schema).items() if isinstance(o, type) and issubclass(o, BaseModel)
            and o.__module__ == schema.__name__ and not n.startswith("_")]


def test_the_sweep_file_reference_covers_every_field_of_every_model():
    text = hooks.sweep_file_reference()
    models = _schema_models()
    assert len(models) >= 12 and set(models) == set(hooks.schema_models())
    for model in models:
        section = _section(text, hooks.anchor(model))
        for name, field in model.model_fields.items():
            key = field.alias or name
            row = re.search(r"^\| `" + re.escape(key) + r"` \|(.*)\|$", section, re.MULTILINE)
            assert row, f"{model.__name__}.{key} is missing from the sweep-file reference"
            cells = [c.strip() for c in row.group(1).split(" | ")]
            assert len(cells) == 4 and cells[0] and cells[1], (model.__name__, key, cells)  # type, default
            if field.description:
                assert cells[3], f"{model.__name__}.{key}: description lost"
    # allowed values are spelled out, e.g. every architecture and every attack method
    from sweeper.sweep.schema import ARCHS, METHODS

    for v in (*ARCHS, *METHODS):
        assert f"<code>{v}</code>" in text, v
    assert "required" in _section(text, "key-trainconfig")  # epochs has no default


def test_the_eps_bounds_and_the_paper_numbers_are_generated():
    bounds = hooks.eps_bounds()
    assert "`fashion_mnist` (1x28x28)" in bounds and "<= 28 (" in bounds and "<= 1000" in bounds
    paper = hooks.paper_numbers()
    for section in yaml.safe_load((ROOT / "sweeper/report/references/paper.yaml").read_text()):
        assert f"### {section}" in paper
    assert "| D_det | 43.7% |" in paper


def test_the_cli_reference_covers_every_command_and_flag():
    import argparse

    from sweeper.cli import _parser

    text = hooks.cli_reference()
    commands = hooks.command_names()
    assert {"sweeper", "sweeper plan", "sweeper run", "sweeper report", "sweeper data push", "sweeper schema"} <= set(commands)
    for cmd, parser, _ in hooks._commands(_parser()):
        section = _section(text, "cli-" + cmd.replace(" ", "-"))
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            for name in action.option_strings or [action.metavar or action.dest]:
                assert f"<code>{name}" in section, f"{cmd}: {name} is missing from the CLI reference"
        if parser.epilog:
            assert parser.epilog.strip().splitlines()[-1].strip() in section


def test_every_marker_expands_and_every_package_folder_has_its_api_page():
    for page in DOCS.rglob("*.md"):
        hooks.expand(page.read_text(), str(page))  # an unknown marker raises, as it stops the build
    with pytest.raises(ValueError):
        hooks.expand("<!-- sweeper:no-such-thing -->\n")
    assert "<!-- sweeper:sweep-file -->" in (DOCS / "reference/sweep-file.md").read_text()
    assert "<!-- sweeper:cli -->" in (DOCS / "reference/cli.md").read_text()
    for folder in sorted(p.parent for p in (ROOT / "sweeper").glob("*/__init__.py")):
        page = DOCS / "reference" / f"{folder.name}.md"
        assert f"<!-- sweeper:modules sweeper.{folder.name} -->" in page.read_text(), page
        modules = hooks.package_modules(f"sweeper.{folder.name}")
        assert modules and all(f"::: {m}" in hooks.module_blocks(f"sweeper.{folder.name}") for m in modules)
    assert "::: sweeper.api" in (DOCS / "reference/api.md").read_text()
    assert "::: sweeper.errors" in (DOCS / "reference/errors.md").read_text()


def test_nested_lists_are_indented_by_four_spaces():
    """Python-Markdown (MkDocs) reads a list item indented by 2 spaces as one more item of the outer list, and a
    fence indented by 2 inside an item as text: nest by 4 spaces (GitHub reads both)."""
    bad = []
    for page in sorted(DOCS.rglob("*.md")):
        fence = False
        for i, line in enumerate(page.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                if re.match(r"^ {1,3}```", line):
                    bad.append(f"{page.relative_to(ROOT)}:{i}: {line.strip()[:60]}")
                fence = not fence
                after = (page.read_text().splitlines() + [""])[i]  # the line after the fence
                if not fence and line.startswith(" ") and re.match(r"^(?:[-*+]|\d+\.) ", after):
                    bad.append(f"{page.relative_to(ROOT)}:{i + 1}: a blank line must end the item's fence first")
            elif not fence and re.match(r"^ {1,3}(?:[-*+]|\d+\.) ", line):
                bad.append(f"{page.relative_to(ROOT)}:{i}: {line.strip()[:60]}")
    assert not bad, "indent nested list items and fences by 4 spaces:\n" + "\n".join(bad)


def _links(path: pathlib.Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    return [m for m in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", m) and not m.startswith("#")]


@pytest.mark.parametrize("readme", ["README.md", "search_spaces/README.md"])
def test_readme_links_resolve(readme):
    path = ROOT / readme
    for link in _links(path):
        target = (path.parent / link.split("#")[0]).resolve()
        assert target.exists(), f"{readme}: broken link {link}"


def test_the_readme_is_a_front_page_that_points_at_the_docs():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 150
    assert "make docs" in text and "site/index.html" in text and "(docs/index.md)" in text
    assert "make demo" in text and "make test" in text and "## Status" in text


def test_the_docs_keep_up_with_the_code_they_describe():
    # the demo tutorial reads every stage of the demo's sweep file
    demo = yaml.safe_load((ROOT / "search_spaces/fmnist_demo.yaml").read_text())
    tutorial = (DOCS / "tutorials/demo.md").read_text()
    assert not [s for s in demo["stages"] if f"`{s}`" not in tutorial], "a demo stage the tutorial does not read"
    # every results.csv column is explained (read from the source: report.py is not imported here)
    tree = ast.parse((ROOT / "sweeper/report/report.py").read_text())
    cols = next(ast.literal_eval(n.value) for n in tree.body
                if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "BASE_COLUMNS")
    science = (DOCS / "science/report.md").read_text()
    assert not [c for c in cols if f"`{c}`" not in science], "a results.csv column docs/science/report.md misses"
    # every shipped sweep file is listed
    listing = (ROOT / "search_spaces/README.md").read_text()
    assert not [p.name for p in (ROOT / "search_spaces").glob("*.yaml") if f"`{p.name}`" not in listing]
    # every exit code the errors module gives is in the exit-code table
    from sweeper import errors

    table = (DOCS / "operations/exit-codes.md").read_text()
    codes = {c.exit_code for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.SweeperError)}
    assert not [c for c in codes - {1} if f"\n| {c} |" not in table]
