"""`sweeper report FILE | head -n 12` ends quietly: a reader that goes away early is no error worth a traceback.

The reader's end of stdout is closed before sweeper writes anything (it is still importing), so every write meets
a broken pipe, whatever the size of the output: the same case as `| head` closing after its lines, without the
race of how much of the output fits in the pipe first.
"""
import pathlib
import subprocess
import sys

import pytest

import sweeper.cli
from sweeper.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOY = ROOT / "search_spaces" / "toy.yaml"


def _closed_stdout(*args: str) -> tuple[int, str]:
    p = subprocess.Popen([sys.executable, "-m", "sweeper", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         cwd=ROOT)
    p.stdout.close()  # the reader is gone before the first write
    err = p.stderr.read().decode()
    return p.wait(timeout=120), err


@pytest.mark.parametrize("command", ["report", "plan", "schema"])
def test_a_reader_gone_early_ends_quietly(tmp_path, command):
    args = [command] if command == "schema" else [command, str(TOY), "--store", str(tmp_path / "store")]
    code, err = _closed_stdout(*args)
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err
    assert code == 141  # 128 + SIGPIPE, as for a command a shell saw stopped by the closed pipe
    if command == "report":  # the report is written before it is printed: the files are there all the same
        assert (tmp_path / "store" / "reports" / "toy" / "report.md").is_file()


def test_head_in_a_shell_pipeline_prints_its_lines_and_nothing_else(tmp_path):
    r = subprocess.run(f"{sys.executable} -m sweeper schema | head -n 12", shell=True, capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 12 and r.stderr == "", r.stderr


def test_a_broken_pipe_that_is_not_stdout_is_not_swallowed(tmp_path, monkeypatch):
    """A broken socket inside a command (a cluster's connection, say) is a real error, not a reader gone away."""
    def fail(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sweeper.cli, "_cmd_schema", fail)
    with pytest.raises(BrokenPipeError):
        main(["schema"])
