"""Cache keys change with everything that changes a result: library versions and vitune's code."""

import shutil

import pytest

import vitune.versions as versions_module
from vitune.search.cache import data_key, target_key
from vitune.search.studyfile import DataSpec
from vitune.targets.tuning import database_dir


@pytest.fixture()
def keys(fast_target):
    return lambda: (data_key(DataSpec(), "val"), target_key(fast_target, "off"), database_dir(fast_target).name)


@pytest.mark.parametrize("library", ["torch", "timm", "tvm"])
def test_a_library_upgrade_is_a_cache_miss(keys, monkeypatch, library):
    before = keys()
    real = versions_module.versions()
    monkeypatch.setattr(versions_module, "versions", lambda: {**real, library: real[library] + ".post99"})
    after = keys()
    # accuracy depends on torch and timm; measurements on all three; tuning records on TVM only
    assert (after[0] != before[0]) == (library in ("torch", "timm"))
    assert after[1] != before[1]
    assert (after[2] != before[2]) == (library == "tvm")


@pytest.mark.parametrize("subpackage,changes", [("compression", (True, True)), ("targets", (False, True)), ("data", (True, False))])
def test_a_change_to_vitunes_code_is_a_cache_miss(keys, monkeypatch, tmp_path, subpackage, changes):
    before = keys()
    copy = tmp_path / "vitune"
    shutil.copytree(versions_module.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    victim = sorted((copy / subpackage).glob("*.py"))[-1]
    victim.write_text(victim.read_text() + "\n# a fix\n")
    monkeypatch.setattr(versions_module, "PACKAGE", copy)
    versions_module.code_hash.cache_clear()
    try:
        after = keys()
    finally:
        versions_module.code_hash.cache_clear()
    assert (after[0] != before[0], after[1] != before[1]) == changes
    assert after[2] == before[2]  # tuning records are keyed by workload, not by vitune's code
