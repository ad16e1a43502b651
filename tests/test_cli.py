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


def test_apply_of_an_export_whose_model_was_edited_names_the_model(tmp_path, capsys):
    """An export searched on the default digits model, its [model] edited to a timm model by hand:
    apply says the named model cannot be rebuilt (and what the search compressed), in one line."""
    import json

    from vitune.search.export import FORMAT

    record = {"format": FORMAT, "model": {"source": "timm", "name": "deit_tiny_patch16_224", "checkpoint_sha256": "4ada296c9988" + "0" * 52},
              "data": {"source": "digits", "seed": 0}, "target": {"name": "local-cpu"}, "config": {}, "metrics": {}}
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(record))
    assert main(["apply", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert f"{path} model: the model it names (timm 'deit_tiny_patch16_224') cannot be rebuilt" in err and "weights 4ada296c9988" in err
    assert not (tmp_path / "o").exists()


def test_compress_greedy_baseline_then_apply(tmp_path, capsys, default_workspace, fast_target_file):
    import json
    import shutil

    study = tmp_path / "s.toml"
    study.write_text(f"[study]\nname='s'\n[target]\nname='{fast_target_file}'\ntuning='off'\n")
    record = tmp_path / "greedy.json"
    assert main(["compress", str(study), "--strategy", "greedy-rank", "--params-budget", "0.4", "--measure", "--out", str(record), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "greedy-rank at params budget 0.4" in out and "accuracy  val" in out
    assert 'untuned kernels: tuning = "off"' in out and "baseline: the uncompressed model in" in out and "x its speed" in out
    doc = json.loads(record.read_text())
    assert doc["metrics"]["speedup"] > 0 and doc["metrics"]["baseline"]["candidate_ms"] == doc["metrics"]["latency_ms"]
    assert doc["metrics"]["params_ratio"] <= 0.4 and doc["metrics"]["test_accuracy"] > 0.9
    assert main(["apply", str(record), "--out", str(tmp_path / "shipped"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "shipped" / "metrics.json").read_text())
    assert metrics["test_accuracy"] == doc["metrics"]["test_accuracy"]
    assert metrics["tvm_vs_torch"]["top1_agreement"] == 1.0
    shutil.rmtree(tmp_path / "shipped")
    assert main(["compress", str(study), "--params-budget", "0.001"]) == 2
    assert "unreachable" in capsys.readouterr().err


def test_apply_for_an_unreachable_board_still_writes_its_aarch64_library(tmp_path, capsys, default_workspace):
    import json

    from vitune.targets.compile import library_arch

    study = tmp_path / "arm.toml"
    study.write_text("[study]\nname='arm'\n[target]\nname='arm-a72'\ntuning='off'\n")
    record = tmp_path / "uniform.json"
    assert main(["compress", str(study), "--strategy", "uniform-rank", "--params-budget", "0.5", "--out", str(record), "--quiet"]) == 0
    assert main(["apply", str(record), "--out", str(tmp_path / "deploy"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "not measured: RPC tracker 127.0.0.1:9190 is unreachable" in out
    assert library_arch(tmp_path / "deploy" / "tvm-arm-a72" / "model.so") == "aarch64"
    metrics = json.loads((tmp_path / "deploy" / "metrics.json").read_text())
    assert metrics["latency_ms"] is None and metrics["test_accuracy"] > 0.9
