"""bench/accuracy_speed.py: both ways of reading accuracy run on real candidates and agree."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_before_and_now_read_the_same_accuracy(tmp_path):
    out = tmp_path / "speed.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "accuracy_speed.py"), "--model", "digits_vit_base", "--configs", "2",
                    "--rounds", "1", "--work", str(tmp_path), "--json", str(out)], check=True, timeout=900)
    doc = json.loads(out.read_text())
    assert doc["identical"] and len(doc["candidates"]) == 3 and doc["candidates"][0]["candidate"] == "uncompressed"
    assert all(c["before_s"] > 0 and c["now_s"] > 0 for c in doc["candidates"])
