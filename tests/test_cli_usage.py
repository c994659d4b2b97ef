"""The command line as its user meets it: every help screen says what the command does, its exit codes and one
example; bad input of every kind ends with one `sweeper:` line and a non-zero exit, never a traceback."""
import argparse
import pathlib
import re
import subprocess
import sys

import pytest

from sweeper.cli import _parser

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOY = str(ROOT / "search_spaces" / "toy.yaml")


def _sweeper(*args, stdin: bytes | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweeper", *map(str, args)], input=stdin, capture_output=True,
                          timeout=120, cwd=cwd)


def _commands() -> list[list[str]]:
    """Every (sub)command of the parser, e.g. ['run'], ['data', 'push']: a new one is checked without a change here."""
    def walk(p: argparse.ArgumentParser, prefix: list[str]) -> list[list[str]]:
        out = []
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sp in a.choices.items():
                    out += [prefix + [name]] + walk(sp, prefix + [name])
        return out
    return walk(_parser(), [])


def test_top_level_help_says_what_sweeper_is():
    r = _sweeper("--help")
    out = r.stdout.decode()
    assert r.returncode == 0 and "Adversarial Examples Are Not Bugs" in out and "internal" not in out
    assert "error reporting only" not in out  # the module's docstring is for developers
    assert "example: sweeper plan" in out and "exit codes:" in out


@pytest.mark.parametrize("cmd", _commands(), ids=" ".join)
def test_every_command_help_has_what_exit_codes_and_an_example(cmd):
    r = _sweeper(*cmd, "--help")
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr
    description = out.split("\n\n")[1]  # after the usage: what the command does (a sentence, not the flags)
    assert len(description) > 40 and not description.startswith(("positional", "options")), out
    assert "\nexit codes:\n  0 " in out, out
    example = out.split("\nexample:\n", 1)[-1].strip()
    assert "\nexample:\n" in out and example.startswith(f"sweeper {cmd[0]}"), out


def _bad_files(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "syntax.yaml").write_text("name: [a\n")
    (tmp_path / "unknown.yaml").write_text(open(TOY).read().replace("\nseed: 0\n", "\nseed: 0\nsede: 1\n"))
    (tmp_path / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    (tmp_path / "nul.yaml").write_bytes(b"name: a\x00\n")
    (tmp_path / "gridkind.yaml").write_text("name: k\ndata: {dataset: toy}\nstages:\n  a: {kind: {grid: [train]}}\n")


BAD = [  # (argv, stdin, a part of the one line), argv with {d}: the tmp folder of _bad_files
    (["frobnicate"], None, "invalid choice"),
    (["schema", "extra-arg"], None, "unrecognized arguments"),
    (["plan"], None, "required"),
    (["plan", "{d}/missing.yaml"], None, "cannot read"),
    (["plan", "{d}"], None, "cannot read"),  # a directory as the sweep file
    (["plan", "{d}/empty.yaml"], None, "expected a mapping"),
    (["plan", "{d}/syntax.yaml"], None, "YAML syntax error"),
    (["plan", "{d}/unknown.yaml"], None, "did you mean 'seed'"),
    (["plan", "{d}/binary.yaml"], None, "not a text file"),
    (["report", "-"], b"\x89PNG\x00\xff", "not YAML text"),
    (["plan", "{d}/nul.yaml"], None, "not YAML text"),
    (["plan", "{d}/gridkind.yaml"], None, "expected one of train"),
    (["plan", TOY, "--set", "seed={a: [1"], None, "not valid YAML"),
    (["plan", TOY, "--set", "junk"], None, "--set expects KEY=VALUE"),
    (["plan", TOY, "--set", "stages.eval.attacks.5.eps=1"], None, "cannot set"),
    (["plan", "{d}/empty.yaml", "--set", "seed=1"], None, "cannot set"),
    (["plan", TOY, "--store", "foo://bar"], None, "not a usable store URI"),
    (["data", "list", "--store", "foo://bar"], None, "not a usable store URI"),
    (["migrate-keys", TOY, "--store", "{d}/s", "--old-root", "{a"], None, "--old-root"),
    (["run", TOY, "--executor", "local", "--address", "auto"], None, "cannot take --address"),
]


@pytest.mark.parametrize("argv, stdin, expect", BAD, ids=[" ".join(a).replace(TOY, "toy.yaml") for a, _, _ in BAD])
def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path, argv, stdin, expect):
    _bad_files(tmp_path)
    r = _sweeper(*[a.replace("{d}", str(tmp_path)) for a in argv], stdin=stdin, cwd=tmp_path)
    err = r.stderr.decode()
    assert r.returncode != 0 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    if r.returncode == 2 and lines[0].startswith("usage:"):  # argparse's own usage error: usage, then one line
        lines = [ln for ln in lines if re.match(r"sweeper( [a-z-]+)?: error: ", ln)]
    else:
        assert lines[0].startswith("sweeper: "), err
    assert len(lines) == 1 and expect in lines[0], err


@pytest.mark.parametrize("name, content", [("binary.yaml", b"\x89PNG\x00\xff"), ("nul.yaml", b"a: \x00\n"),
                                           ("missing.yaml", None)])
def test_a_cluster_file_that_is_not_text_is_one_problem_line(tmp_path, name, content):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    r = _sweeper("validate-cluster", tmp_path / name)
    err = r.stderr.decode()
    assert r.returncode == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"{tmp_path / name}: "), err
