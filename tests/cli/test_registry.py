"""One command registry for the index and the store commands: one way to
register, one error prefix (argparse's errors included), one table of exit
statuses, and no import cycle between the command-line modules."""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.processes import subprocess_env

from diskhash import PayloadStore
from diskhash._cli import app, command, store
from diskhash.errors import DiskHashError

CLI = Path(app.__file__).parent


def test_index_and_store_commands_register_the_same_way():
    assert list(app.COMMANDS) == ["info", "verify", "repair", "dump", "store"]
    assert list(store.COMMANDS) == ["stats", "verify", "rebuild", "compact", "get", "put",
                                    "import", "export"]
    assert isinstance(app.COMMANDS, command.Commands) and isinstance(store.COMMANDS, command.Commands)
    for table, name in ((app.COMMANDS, "info"), (store.COMMANDS, "get")):
        with pytest.raises(ValueError, match="registered twice"):
            table.command(name, "again")(lambda args: 0)


@pytest.mark.parametrize("argv", [
    [],                                         # no command
    ["bogus"],
    ["info", "--timeout", "abc", "x.idx"],      # a bad value in a subcommand
    ["store"],
    ["store", "bogus", "d"],
    ["store", "get", "d"],                      # a missing argument, two levels down
    ["store", "stats", "d", "--timeout", "nan"],
])
def test_argparse_errors_start_with_the_program_name(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        app.build_parser("diskhash").parse_args(argv)
    assert exit_.value.code == command.EXIT_USAGE
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("usage: diskhash")      # the usage of the command that was wrong
    assert err[-1].startswith("diskhash: error: "), err


def test_argparse_errors_of_the_real_program(tmp_path):
    r = subprocess.run([sys.executable, "-m", "diskhash", "store", "get", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == ("python -m diskhash: error: the following arguments are "
                                         "required: key"), r.stderr


def _raising(exc: BaseException):
    def run(args: argparse.Namespace) -> int:
        raise exc
    return run


@pytest.mark.parametrize("exc, status, message", [
    (command.UsageError("bad"), 2, "diskhash: error: bad"),
    (DiskHashError("x.idx: locked"), 1, "diskhash: error: x.idx: locked"),
    (OSError(13, "Permission denied"), 2, "diskhash: error: TARGET: Permission denied"),
    (OSError(13, "Permission denied", "other"), 2, "diskhash: error: other: Permission denied"),
    (ValueError("too big"), 2, "diskhash: error: too big"),
    (KeyboardInterrupt(), 130, "diskhash: interrupted"),
])
def test_every_command_fails_the_same_way(exc, status, message, capsys):
    args = argparse.Namespace(prog="diskhash", target="TARGET", run=_raising(exc))
    assert command.run(args) == status
    assert capsys.readouterr().err == message + "\n"


def _module_tree(name: str) -> ast.Module:
    return ast.parse((CLI / name).read_text(), name)


def test_exit_statuses_are_defined_once():
    """Each status has one name, in command.py; no command returns a bare number."""
    for path in sorted(CLI.glob("*.py")):
        for node in ast.walk(_module_tree(path.name)):
            if isinstance(node, ast.Return) and isinstance(node.value, ast.Constant):
                assert not isinstance(node.value.value, int), f"{path.name}:{node.lineno}: return a name"
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Name) and t.id.startswith("EXIT_"):
                        assert path.name == "command.py", f"{path.name}:{node.lineno}: {t.id}"
    assert (command.EXIT_INTERRUPTED, command.EXIT_BROKEN_PIPE) == (130, 141)


def _cli_imports(name: str) -> set[str]:
    """The diskhash._cli modules ``name`` imports."""
    found: set[str] = set()
    for node in ast.walk(_module_tree(name)):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module == "diskhash._cli":
                found |= {a.name for a in node.names}
            elif node.module.startswith("diskhash._cli."):
                found.add(node.module.rsplit(".", 1)[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.rsplit(".", 1)[1] for a in node.names if a.name.startswith("diskhash._cli.")}
    return found


def test_no_import_cycle_between_the_cli_modules():
    graph = {p.stem: _cli_imports(p.name) - {"__init__"} for p in CLI.glob("*.py") if p.stem != "__init__"}
    assert graph["command"] == set() and graph["progress"] == set()
    assert "app" not in graph["store"]
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module not in done:
            for dep in graph.get(module, ()):
                visit(dep, (*path, module))
            done.add(module)

    for module in graph:
        visit(module, ())


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["get", "1"], ["stats"], ["export", "-", "--format", "tsv"]])
def test_a_full_stdout_names_standard_output_not_the_store(tmp_path, args):
    """Store commands write through the index commands' output helpers: an
    error writing stdout said ``[Errno 28] No space left on device``."""
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put(1, b"one" * 5000)
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "diskhash", "store", args[0], str(d), *args[1:]],
                           stdout=full, stderr=subprocess.PIPE, text=True, timeout=120,
                           env=subprocess_env(), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr == "python -m diskhash: error: standard output: No space left on device\n", r.stderr
