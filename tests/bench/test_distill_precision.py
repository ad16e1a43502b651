"""bench/distill_precision.py: both precisions distil real candidates, timed and scored."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_both_precisions_distil_and_are_scored(tmp_path):
    out = tmp_path / "precision.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "distill_precision.py"), "--model", "digits_vit_base", "--configs", "2",
                    "--steps", "3", "--rounds", "1", "--work", str(tmp_path), "--json", str(out)], check=True, timeout=900)
    doc = json.loads(out.read_text())
    assert len(doc["candidates"]) == 2 and doc["steps"] == 3
    for c in doc["candidates"]:
        assert c["distill_s"]["float32"] > 0 and c["distill_s"]["bfloat16"] > 0
        assert 0 <= c["accuracy"]["float32"] <= 1 and 0 <= c["accuracy"]["bfloat16"] <= 1 and 0 <= c["top1_agreement"] <= 1
