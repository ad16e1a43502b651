import pytest

from vitune.cli import build_parser, main


def test_targets_list_and_show(capsys):
    assert main(["targets", "list"]) == 0
    assert "local-cpu" in capsys.readouterr().out
    assert main(["targets", "show", "local-cpu"]) == 0
    assert '"kind": "llvm"' in capsys.readouterr().out
    assert main(["targets", "show", "nope"]) == 2
    assert "unknown target 'nope'" in capsys.readouterr().err


def test_parser_knows_the_commands():
    parser = build_parser()
    args = parser.parse_args(["study", "run", "x.toml", "--n-trials", "3", "--timeout", "9"])
    assert args.n_trials == 3 and args.timeout == 9.0
    with pytest.raises(SystemExit):
        parser.parse_args(["study", "export", "x.toml", "--pick", "worst", "--out", "o.json"])


def test_apply_rejects_bad_export(tmp_path, capsys):
    bad = tmp_path / "e.json"
    bad.write_text('{"format": "something-else"}')
    assert main(["apply", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "not a vitune export" in capsys.readouterr().err
