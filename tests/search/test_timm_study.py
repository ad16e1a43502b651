"""A real study on a random-init timm ViT scored on a generated ImageFolder tree."""

import optuna

from tests.data.test_data import make_folder
from vitune.search.study import open_study, run_study
from vitune.search.studyfile import load_study_file


def test_timm_study_runs_end_to_end(tmp_path, fast_target_file):
    root = make_folder(tmp_path / "images", classes=3, per_class=8)
    path = tmp_path / "timm.toml"
    path.write_text(
        f"""
[study]
name = "timm"
n_trials = 2
sampler = "tpe"
[model]
source = "timm"
name = "vit_tiny_patch16_224"
img_size = 32
num_classes = 3
[data]
source = "imagefolder"
root = "{root}"
[target]
name = "{fast_target_file}"
tuning = "off"
[space]
precision = ["fp32", "int8"]
rank_fraction = [1.0, 0.5]
prune_heads = [0.0]
prune_mlp = [0.0, 0.5]
[search]
# Two trials on a random-init model: neither screen may stop the second one, which
# otherwise happens whenever its accuracy shards cannot reach the first's front.
min_fidelity = 0
accuracy_shards = 1
[[space.override]]
layers = "blocks.1[0-1].*"
precision = ["fp32"]
"""
    )
    spec = load_study_file(path)
    summary = run_study(spec, progress=False, log=lambda *_: None)
    assert summary.total_complete == 2, open_study(spec, create=False).trials[-1].user_attrs.get("error")
    study = open_study(spec, create=False)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert trials[0].user_attrs["summary"] == "uncompressed"
    assert all(t.values[1] > 0 for t in trials)
    assert not any(k.startswith("blocks.10.") and k.endswith(":precision") for k in trials[-1].params)
