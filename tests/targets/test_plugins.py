"""Third-party targets and runners: from a TOML file, a user directory, and entry points of an
installed package (a real distribution on sys.path, found by importlib.metadata)."""

import textwrap

import pytest

from vitune.targets import list_targets, load_target
from vitune.targets.check import probe_model
from vitune.targets.measure import measure

PACKAGE = '''
from vitune.targets.runner import LocalRunner

CALLS = []


def profile():
    return {
        "name": "plugin-board",
        "description": "a board registered by a plug-in package",
        "tvm": {"target": {"kind": "llvm", "num-cores": 1}},
        "runner": {"kind": "counting-local", "label": "bench-A"},
        "protocol": {"warmup": 0, "repeat": 2, "min_repeat_ms": 1},
    }


class CountingRunner(LocalRunner):
    """A local runner that records each timing (a stand-in for, e.g., an ssh or adb runner)."""

    def time(self, compiled, inputs, protocol):
        CALLS.append(dict(self.profile.runner_spec.options)["label"])
        return super().time(compiled, inputs, protocol)
'''


@pytest.fixture()
def plugin_package(tmp_path, monkeypatch):
    (tmp_path / "vitune_test_board.py").write_text(PACKAGE)
    info = tmp_path / "vitune_test_board-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vitune-test-board\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """
            [vitune.targets]
            plugin-board = vitune_test_board:profile

            [vitune.runners]
            counting-local = vitune_test_board:CountingRunner
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    import sys

    sys.modules.pop("vitune_test_board", None)


def test_entry_point_target_and_runner(plugin_package):
    assert "plugin-board" in list_targets()
    profile = load_target("plugin-board")
    assert profile.runner == "counting-local" and dict(profile.runner_spec.options) == {"label": "bench-A"}
    model, example = probe_model()
    m = measure(model, example, profile)
    assert m.ok, m.error
    import vitune_test_board

    assert vitune_test_board.CALLS == ["bench-A"]


def test_cli_lists_and_checks_a_plugin_target(plugin_package, capsys):
    from vitune.cli import main

    assert main(["targets", "list"]) == 0
    listing = capsys.readouterr().out
    assert "a board registered by a plug-in package" in listing and "INVALID" not in listing
    assert main(["targets", "check", "plugin-board"]) == 0
    assert "target plugin-board is ready" in capsys.readouterr().out


def test_profile_from_a_file_and_from_the_user_directory(tmp_path, monkeypatch, fast_target_file):
    assert load_target(str(fast_target_file)).name == "test-cpu"
    monkeypatch.setenv("VITUNE_TARGETS_DIR", str(tmp_path))
    (tmp_path / "my-board.toml").write_text(fast_target_file.read_text().replace('name = "test-cpu"', 'name = "my-board"'))
    assert "my-board" in list_targets() and load_target("my-board").name == "my-board"


def test_cli_check_says_what_is_missing(capsys):
    from vitune.cli import main

    assert main(["targets", "check", "arm-a72"]) == 1
    out = capsys.readouterr()
    assert "ok   link    shared library for aarch64" in out.out
    assert "RPC tracker 127.0.0.1:9190 is unreachable" in out.err or "has no device with key 'rpi4'" in out.err
    assert main(["targets", "check", "cuda-sm80"]) == 1
    assert "no CUDA device on this machine" in capsys.readouterr().err


def test_a_crash_while_checking_a_target_is_a_failed_step_not_a_dead_interpreter(tmp_path, monkeypatch, capsys):
    """``targets check`` runs in a child process: here the child segfaults as it starts (as TVM's
    code generation did on an unknown triple), and the command says so in one line."""
    from vitune.cli import main

    (tmp_path / "sitecustomize.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["targets", "check", "local-cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "crashed (SIGSEGV) while checking the target" in err


def test_a_link_failure_names_its_cause_and_keeps_the_whole_output(tmp_path, monkeypatch):
    from vitune.targets.check import cause_line

    monkeypatch.setenv("VITUNE_CACHE_DIR", str(tmp_path))
    output = ("Compilation error:\n/usr/bin/aarch64-linux-gnu-ld: cannot find crti.o: No such file or directory\n"
              "collect2: error: ld returned 1 exit status\nCommand line: aarch64-linux-gnu-gcc -shared -fPIC -o lib.so a.o b.o")
    line = cause_line(output, "targets-check-board-link")
    assert line.startswith("/usr/bin/aarch64-linux-gnu-ld: cannot find crti.o") and str(tmp_path / "logs" / "targets-check-board-link.log") in line
    assert (tmp_path / "logs" / "targets-check-board-link.log").read_text() == output
