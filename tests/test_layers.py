"""The package's folders follow the data's way and import one way: a module imports only from its own folder or
from folders before it (store -> sweep -> science -> report -> run -> cluster; ``errors`` is a leaf everyone may
import; ``api``, ``cli`` and ``__init__`` sit on top). Lazy imports inside functions count too."""
import ast
import pathlib

import sweeper

PKG = pathlib.Path(sweeper.__file__).parent
LAYERS = ["store", "sweep", "science", "report", "run", "cluster"]
TOP = len(LAYERS)


def _rank(module: str) -> int:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return -1 if parts[-1] == "errors" else TOP


def _imports(path: pathlib.Path) -> list[str]:
    mods = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (sweeper's modules import by absolute name)"
            base = node.module or ""
            if base == "sweeper":
                mods += [f"sweeper.{a.name}" for a in node.names]
            elif base.startswith("sweeper."):
                mods.append(base)
        elif isinstance(node, ast.Import):
            mods += [a.name for a in node.names if a.name.startswith("sweeper.")]
    return mods


def _violations(pkg: pathlib.Path) -> list[str]:
    bad = []
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg.parent).with_suffix("")
        me = ".".join(rel.parts)
        if me.endswith(".__init__"):
            me = me[: -len(".__init__")]
        for mod in _imports(path):
            if _rank(mod) > _rank(me):
                bad.append(f"{me} imports {mod}")
    return bad


def test_every_module_lives_in_a_layer_folder_or_on_top():
    top = {p.stem for p in PKG.glob("*.py")}
    assert top == {"__init__", "__main__", "api", "cli", "errors"}, top
    assert {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(LAYERS)


def test_no_folder_imports_one_after_it():
    assert _violations(PKG) == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The check itself: a science module importing the report is caught, also when the import is lazy."""
    pkg = tmp_path / "sweeper"
    (pkg / "science").mkdir(parents=True)
    (pkg / "science" / "bad.py").write_text("def f():\n    from sweeper.report.report import write_report\n")
    (pkg / "science" / "fine.py").write_text("from sweeper.sweep import schema\nfrom sweeper.errors import SweepError\n")
    assert _violations(pkg) == ["sweeper.science.bad imports sweeper.report.report"]
