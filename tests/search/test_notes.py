"""Notes a study prints at its start: what its menu delivers on a target's shipped build."""

import dataclasses

import pytest


@pytest.mark.parametrize("menu, target, search, noted", [
    ('["fp32", "int8"]', 'budget_model_mb = 1.0\ntuning = "database"', "", True),
    ('["fp32", "int8"]', 'tuning = "tune"', 'objectives = ["accuracy", "latency_ms", "model_mb"]', True),
    ('["fp32", "int8"]', 'budget_model_mb = 1.0\ntuning = "off"', "", False),  # untuned builds keep int8 (dequantized per call)
    ('["fp32", "w8a8"]', 'budget_model_mb = 1.0\ntuning = "database"', "", False),  # w8a8 weights stay int8
    ('["fp32", "int8"]', 'budget_ms = 1.0\ntuning = "database"', "", False),  # the stored size is not bounded
])
def test_a_size_bound_study_with_int8_on_a_prepacking_target_is_told_what_its_build_holds(tmp_path, tiny_vit, menu, target, search, noted):
    from vitune.models.layers import discover
    from vitune.search.notes import int8_size_note
    from vitune.search.studyfile import load_study_file
    from vitune.targets import load_target

    mode = 'mode = "constrained"\n' if "budget" in target else ""
    path = tmp_path / "s.toml"
    path.write_text(f'[study]\nname = "s"\n[target]\nname = "local-cpu"\n{target}\n[search]\n{mode}{search}\n[space]\nprecision = {menu}\n')
    spec = load_study_file(path)
    note = int8_size_note(spec, discover(tiny_vit), load_target("local-cpu"), spec.target)
    assert (note is not None) == noted
    if noted:
        assert note.startswith("local-cpu: note:") and "fp32" in note and "budget_peak_mb" in note


@pytest.mark.parametrize("menu", ['["fp32", "w8a8"]', '["fp32", "int8"]'])
@pytest.mark.parametrize("profile, tvm_target, noted", [
    ("local-cpu", {"kind": "llvm", "mcpu": "znver3"}, True),  # AVX2, no VNNI: generic integer code
    ("local-cpu", {"kind": "llvm", "mcpu": "haswell"}, True),
    ("local-cpu", {"kind": "llvm", "mcpu": "znver4"}, False),  # AVX-512 VNNI: vitune's packed kernel
    ("local-cpu", {"kind": "llvm", "mcpu": "sapphirerapids"}, False),
    ("arm-a78", None, False),  # not x86: its int8 path is its own
    ("cuda-sm80", None, False),
])
def test_a_study_offering_w8a8_on_an_x86_cpu_without_vnni_is_told_its_int8_matmuls_are_slow(tmp_path, tiny_vit, menu, profile, tvm_target, noted):
    from vitune.models.layers import discover
    from vitune.search.notes import study_notes, w8a8_speed_note
    from vitune.search.studyfile import load_study_file
    from vitune.targets import load_target

    path = tmp_path / "s.toml"
    path.write_text(f'[study]\nname = "s"\n[target]\nname = "{profile}"\n[space]\nprecision = {menu}\n')
    spec = load_study_file(path)
    target = load_target(profile)
    if tvm_target is not None:
        target = dataclasses.replace(target, tvm_target=tvm_target)
    note = w8a8_speed_note(spec, discover(tiny_vit), target)
    assert (note is not None) == (noted and "w8a8" in menu)
    if note is not None:
        assert note.startswith(f"{profile}: note:") and "VNNI" in note
        assert note in study_notes(spec, discover(tiny_vit), target, spec.target)


@pytest.mark.parametrize("mcpu, written, noted", [
    ("haswell", "", True),  # the shipped seeds were tuned on znver3 and znver5: other CPU models
    ("znver5", "", False),  # this CPU model's own schedules
    ("znver3", "", False),
    ("haswell", 'seeds = "this-cpu"\n', False),  # the study tunes those workloads here
    ("haswell", 'tuning = "off"\n', False),  # untuned builds read no schedules
])
def test_a_study_built_with_another_cpus_schedules_is_told_what_they_cost(tmp_path, monkeypatch, mcpu, written, noted):
    from vitune.search.notes import seeds_note
    from vitune.search.studyfile import load_study_file
    from vitune.targets import load_target

    monkeypatch.setenv("VITUNE_SEEDS_DIR", str(tmp_path / "no-user-seeds"))
    path = tmp_path / "s.toml"
    path.write_text(f'[study]\nname = "s"\n[target]\nname = "local-cpu"\n{written}')
    spec = load_study_file(path)
    # the shipped seed's target: 2 threads on x86-64 (the profile as the seed's machine had it)
    profile = dataclasses.replace(load_target("local-cpu"), tvm_target={"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    from vitune.targets.seeds import find_seeds

    if not find_seeds(dataclasses.replace(profile, tvm_target={"kind": "llvm", "mcpu": "znver5", "num-cores": 2})):
        pytest.skip("the shipped seed does not fit this machine (another architecture or TVM)")
    note = seeds_note(profile, spec.target)
    assert (note is not None) == noted
    if noted:
        assert note.startswith("local-cpu: note:") and "znver5" in note and 'seeds = "this-cpu"' in note
