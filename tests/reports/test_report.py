"""Reports of a real short study: `vitune study show`, `vitune report` (HTML + PNG, rendered in
headless Chromium), and the study read back by optuna-dashboard over HTTP."""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.reports.browser import find_chromium, open_page
from vitune.cli import main
from vitune.reports import build_report, show_text
from vitune.reports.figures import png_size
from vitune.reports.view import load_view
from vitune.search.front import hypervolume
from vitune.search.study import run_study
from vitune.search.studyfile import load_study_file

# Ties keep the warm-start sweep short (4 tied knobs and 8 per-block pruning knobs).
STUDY = """
[study]
name = "report"
n_trials = 10
sampler = "nsga2"
seed = 3
[target]
name = "{target}"
tuning = "off"
[search]
min_fidelity = 0.0
accuracy_shards = 1
[space]
precision = ["fp32", "int8"]
rank_fraction = [1.0, 0.5, 0.25]
prune_heads = [0.0, 0.25]
prune_mlp = [0.0, 0.5]
[[space.tie]]
layers = "blocks.*.attn.*"
knobs = ["precision", "rank_fraction"]
[[space.tie]]
layers = "blocks.*.mlp.fc*"
knobs = ["precision", "rank_fraction"]
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory, fast_target_file, default_workspace):
    tmp = tmp_path_factory.mktemp("report")
    path = tmp / "report.toml"
    path.write_text(STUDY.format(target=fast_target_file))
    spec = load_study_file(path)
    run_study(spec, progress=False, log=lambda *_: None)
    return spec, tmp


@pytest.fixture(scope="module")
def report(study):
    spec, tmp = study
    return build_report(spec, tmp / "out")


def test_report_writes_figures_of_the_stated_size(report):
    doc = json.loads((report.folder / "report.json").read_text())
    names = {f["name"] for f in doc["figures"]}
    assert {"pareto.png", "recipes.png", "history.png", "importance.png"} <= names
    assert doc["missing"] == {"latency_checks": "Latency was measured on the target for every candidate: no cost model was used."}
    page = report.html.read_text()
    for fig in doc["figures"]:
        path = report.folder / fig["name"]
        assert path.stat().st_size > 5000, f"{fig['name']} is (nearly) empty"
        assert png_size(path) == (fig["width"], fig["height"]) and fig["width"] >= 600 and fig["height"] >= 300
        tag = re.search(rf'<img [^>]*data-file="{re.escape(fig["name"])}"[^>]*>', page).group(0)
        assert f'width="{fig["width"]}"' in tag and f'height="{fig["height"]}"' in tag
    assert "http://" not in page and "https://" not in page, "the page must not reach the network"


def test_report_lists_the_front_reference_baselines_and_recipes(study, report):
    spec, _ = study
    view = load_view(spec)
    doc = json.loads((report.folder / "report.json").read_text())
    assert [r["trial"] for r in doc["front"]] == [t.number for t in view.front]
    assert doc["reference"]["origin"] == "uncompressed"
    # speed-ups are against the uncompressed model in the faster of ONNX Runtime and OpenVINO
    ref_ms, what = view.speed_reference()
    assert doc["speed_reference"] == {"latency_ms": ref_ms, "what": what} and what.startswith("the uncompressed model in ")
    # ... timed side by side with the front and the reference at the end of the run, which the rows use
    side, side_ms, label = view.side.shipped_ms, view.side.baseline_ms, view.side.label
    assert doc["side_by_side"] == {"baseline_ms": side_ms, "label": label, "shipped_ms": {str(n): ms for n, ms in side.items()}}
    assert view.reference.number in side and all(t.number in side for t in view.front)
    assert doc["reference"]["speedup"] == pytest.approx(side_ms / side[view.reference.number])
    assert view.baselines and all(t.origin.startswith("uniform") for t in view.baselines)
    assert {t.origin.split()[0] for t in view.trials} >= {"uncompressed", "sampled"}
    # tied knobs are expanded: every block's fc1 and fc2 carry the tied choice
    for t in view.complete:
        fc = [t.recipe[f"blocks.{b}.mlp.{n}"]["rank_fraction"] for b in range(4) for n in ("fc1", "fc2")]
        assert len(set(fc)) == 1
    page = report.html.read_text()
    for label, number in doc["picks"].items():
        assert f"{label}: trial {number}" in page
    for row in doc["front"]:
        assert f"<td class=\"num\">{row['trial']}</td>" in page


@pytest.mark.skipif(not find_chromium() and not os.environ.get("CI"), reason="no Chromium here (.ci/run installs it)")
def test_report_renders_in_headless_chromium_without_errors(study, report):
    spec, _ = study
    page = open_page(report.html)
    assert page.errors == [], page.errors
    assert page.requests == [], f"the report fetched {page.requests}"
    assert page.title == f"vitune report: {spec.name}"
    assert len(page.images) == len(json.loads((report.folder / "report.json").read_text())["figures"])
    for img in page.images:
        assert img["complete"] and img["width"] > 0, f"{img['src']} did not decode"
        assert (img["width"], img["height"]) == (img["attr_width"], img["attr_height"])
        assert (img["width"], img["height"]) == png_size(report.folder / img["src"])
    assert "Front" in page.text and "Which layer choices matter most" in page.text


def test_study_show_prints_front_reference_and_a_recipe(study, capsys):
    spec, _ = study
    view = load_view(spec)
    assert main(["study", "show", str(spec.path)]) == 0
    out = capsys.readouterr().out
    assert "Pareto front" in out and re.search(r"^\s+ref\s+0\.\d{4}", out, re.M)
    assert re.search(r"^recipe of trial \d+, accuracy", out, re.M)
    assert re.search(r"^block\s+attn\s+attn\.qkv\s+attn\.proj\s+mlp\s+mlp\.fc1\s+mlp\.fc2$", out, re.M)
    assert len(re.findall(r"^[0-3]  ", out, re.M)) == 4  # one row per transformer block
    some = view.complete[-1].number
    assert f"recipe of trial {some}," in show_text(spec, some)
    assert main(["study", "show", str(spec.path), "--trial", "999"]) == 2
    assert "has no trial 999" in capsys.readouterr().err


def test_cli_report_and_bad_input(study, tmp_path, capsys):
    spec, _ = study
    assert main(["report", str(spec.path), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "pareto.png" in out and "no network needed" in out and (tmp_path / "r" / "index.html").is_file()
    empty = tmp_path / "empty.toml"
    empty.write_text(f'[study]\nname = "never-ran"\nstorage = "sqlite:///{tmp_path}/e.db"\n')
    assert main(["report", str(empty), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no study 'never-ran'" in err


def test_hypervolume_of_a_known_front():
    # two points over the reference (0.5 accuracy, 10 ms): slabs 0.2 x 8 + 0.1 x 5
    assert hypervolume([(0.7, 2.0), (0.8, 5.0), (0.6, 9.0)], 0.5, 10.0) == pytest.approx(0.2 * 8 + 0.1 * 5)
    assert hypervolume([(0.4, 1.0)], 0.5, 10.0) == 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_optuna_dashboard_reads_the_study_over_http(study):
    spec, _ = study
    port = _free_port()
    dashboard = Path(sys.executable).with_name("optuna-dashboard")  # the console script of the test environment
    proc = subprocess.Popen([str(dashboard), spec.storage, "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, summaries = time.time() + 60, None
        while summaries is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as resp:
                    summaries = json.load(resp)["study_summaries"]
            except OSError:
                assert proc.poll() is None, f"optuna-dashboard exited: {proc.stderr.read().decode()[-500:]}"
                assert time.time() < deadline, "optuna-dashboard did not answer within 60 s"
                time.sleep(0.5)
        (summary,) = [s for s in summaries if s["study_name"] == spec.name]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}?after=0", timeout=30) as resp:
            detail = json.load(resp)
        view = load_view(spec)
        assert len(detail["trials"]) == len(view.trials)
        assert detail["objective_names"] == ["accuracy", "latency_ms"]  # vitune names the study's objectives
        done = {t["number"]: t for t in detail["trials"] if t["state"] == "Complete"}
        for row in view.complete:
            assert done[row.number]["values"] == pytest.approx([row.accuracy, row.latency_ms])
    finally:
        proc.terminate()
        proc.wait(timeout=10)
