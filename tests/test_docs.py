"""Every example in the documentation is exercised: TOML examples parse and validate (study
files, target profiles, plug-in packages' pyproject), Python snippets run on the default model,
command lines parse with the real CLI parser; the references name every key the parsers accept."""

import re
import shlex
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from vitune.cli import build_parser
from vitune.compression.methods import CompressionMethods
from vitune.search.studyfile import SECTION_KEYS, parse_study
from vitune.targets.profile import TARGET_ENTRY_POINTS, Protocol, load_target, parse_target
from vitune.targets.runner import RUNNER_ENTRY_POINTS

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.M | re.S)


def blocks(path: Path) -> list[tuple[str, str, str]]:
    """(language, tag, text) of each fenced block."""
    out = []
    for m in FENCE.finditer(path.read_text()):
        info = m.group(1).split()
        out.append((info[0] if info else "", info[1] if len(info) > 1 else "", m.group(2)))
    return out


def _ids(kind):
    return [p.name for p in DOCS if any(lang == kind for lang, _, _ in blocks(p))]


def test_every_example_says_what_it_is():
    for path in DOCS:
        for lang, tag, text in blocks(path):
            assert lang, f"{path.name}: a code block needs a language (bash, python, toml, text): {text[:60]!r}"
            if lang == "toml":
                assert tag in ("study", "target", "pyproject"), f"{path.name}: a toml block needs a tag (study|target|pyproject): {text[:60]!r}"


@pytest.mark.parametrize("doc", _ids("toml"))
def test_toml_examples_parse_and_validate(doc, tmp_path, monkeypatch):
    path = ROOT / ("README.md" if doc == "README.md" else f"docs/{doc}")
    found = blocks(path)
    targets_dir = tmp_path / "targets"
    targets_dir.mkdir()
    monkeypatch.setenv("VITUNE_TARGETS_DIR", str(targets_dir))
    for lang, tag, text in found:  # profiles first: a study in the same page may name them
        if lang == "toml" and tag == "target":
            profile = parse_target(tomllib.loads(text), f"{doc} example")
            (targets_dir / f"{profile.name}.toml").write_text(text)
            assert load_target(profile.name).name == profile.name
    for n, (lang, tag, text) in enumerate(found):
        if lang != "toml" or tag == "target":
            continue
        data = tomllib.loads(text)
        if tag == "pyproject":
            groups = data["project"]["entry-points"]
            assert set(groups) <= {TARGET_ENTRY_POINTS, RUNNER_ENTRY_POINTS}, f"{doc}: unknown entry-point group in {set(groups)}"
            continue
        data.setdefault("study", {}).setdefault("name", "doc-example")  # a fragment of a study: only the name is required
        folder = tmp_path / f"study{n}"
        folder.mkdir()
        if data.get("model", {}).get("checkpoint"):  # paths a study names must exist when it is read
            (folder / data["model"]["checkpoint"]).write_bytes(b"")
        if data.get("data", {}).get("root"):
            (folder / data["data"]["root"]).mkdir(parents=True)
        spec = parse_study(data, folder / "study.toml")
        if "/" not in spec.target.name:
            load_target(spec.target.name)  # a study's target must be one the reader can load


def _commands(text: str) -> list[str]:
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    out = []
    for line in lines:
        for part in re.split(r"&&|\|", line):
            part = part.strip()
            if part.startswith("vitune "):
                out.append(part)
    return out


def test_every_vitune_command_in_the_docs_parses():
    parser = build_parser()
    seen = 0
    for path in DOCS:
        for lang, _, text in blocks(path):
            if lang in ("bash", "sh", "console"):
                for cmd in _commands(text):
                    argv = shlex.split(cmd)[1:]
                    try:
                        parser.parse_args(argv)
                    except SystemExit:
                        pytest.fail(f"{path.name}: `{cmd}` does not parse")
                    seen += 1
    assert seen >= 20


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    nxt = re.search(r"^#{2,3} ", text[start + len(heading):], re.M)
    return text[start: start + len(heading) + (nxt.start() if nxt else len(text))]


def test_the_study_file_reference_names_every_key():
    text = (ROOT / "docs/studyfile.md").read_text()
    headings = {"study": "## `[study]`", "model": "## `[model]`", "data": "## `[data]`", "data.fractions": "## `[data]`",
                "target": "## `[target]`", "target.also": "### `[[target.also]]`", "search": "## `[search]`", "space": "## `[space]`",
                "space.override": "### `[[space.override]]`", "space.tie": "### `[[space.tie]]`"}
    for section, keys in SECTION_KEYS.items():
        if section == "":
            continue
        body = _section(text, headings[section])
        for key in keys:
            assert f"`{key}`" in body, f"docs/studyfile.md {headings[section]} does not document {key!r}"
    body = _section(text, "## `[compression]`")
    for f in fields(CompressionMethods):
        assert f"`{f.name}`" in body, f"docs/studyfile.md [compression] does not document {f.name!r}"


def test_the_target_reference_names_every_key():
    text = (ROOT / "docs/targets.md").read_text()
    ref = _section(text, "## Profile reference")
    for key in ("name", "description", "tvm", "runner", "protocol", "hardware", "target", "host", "cross_compiler", "kind",
                "tracker", "key", "port", "timeout_s", "cores", "clock_ghz", "peak_gflops", "memory_bandwidth_gbs", "memory_gb", "precisions"):
        assert f"`{key}`" in ref, f"docs/targets.md does not document {key!r}"
    for f in fields(Protocol):
        assert f"`{f.name}`" in ref, f"docs/targets.md does not document [protocol] {f.name!r}"
    for key in ("tuning", "min_timeout_s", "timeout_factor", "first_timeout_s"):
        assert f"`{key}`" in ref, f"docs/targets.md does not document [tuning] {key!r}"


def _install(page: Path, folder: Path) -> None:
    """What `pip install -e .` of a page's example package does, for the test: the page's
    ```python <file>.py``` blocks become modules on sys.path, its pyproject's entry points a
    distribution importlib.metadata finds."""
    found = blocks(page)
    for lang, tag, text in found:
        if lang == "python" and tag.endswith(".py"):
            (folder / tag).write_text(text)
    for lang, tag, text in found:
        if lang == "toml" and tag == "pyproject":
            project = tomllib.loads(text)["project"]
            info = folder / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
            info.mkdir()
            (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
            eps = "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in items.items()) + "\n"
                          for group, items in project["entry-points"].items())
            (info / "entry_points.txt").write_text(eps)


def test_the_python_snippets_run(tmp_path, monkeypatch, default_workspace, capsys):
    """Each page's snippets in order, in one namespace, in a scratch folder, on the real default
    model (trained once per test session); example packages are installed first."""
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    modules = set(sys.modules)
    ran = 0
    try:
        for path in DOCS:
            _install(path, tmp_path)
            namespace: dict = {"__name__": f"docs_{path.stem}"}
            for lang, tag, text in blocks(path):
                if lang == "python" and not tag:
                    exec(compile(text, f"{path.name} snippet", "exec"), namespace)  # noqa: S102 - our own documentation
                    ran += 1
    finally:
        for name in set(sys.modules) - modules:
            if name.startswith("vitune_myboard"):
                sys.modules.pop(name)
    assert ran >= 7
    out = capsys.readouterr().out
    assert "complete," in out and "uncompressed:" in out and "open " in out and "ready" in out and "myboard myboard-local" in out
    assert (tmp_path / "report" / "index.html").is_file() and (tmp_path / "shipped" / "model.pt").is_file()
