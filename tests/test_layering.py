"""The package's layers import one way: targets, compression, models and data know nothing of
the search; cost models sit below it (checked on the source, with ``ast``)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vitune"

# layer → the vitune subpackages it must never import
FORBIDDEN = {
    "targets": ("search", "costmodels", "reports", "compression"),
    "compression": ("search", "costmodels", "reports", "targets"),
    "models": ("search", "costmodels", "reports", "targets"),
    "data": ("search", "costmodels", "reports", "targets", "compression"),
    "costmodels": ("search", "reports"),
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):  # imports inside functions count too
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_lower_layer_imports_nothing_above_it(layer):
    offenders = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for module in imports_of(path):
            parts = module.split(".")
            if parts[0] == "vitune" and len(parts) > 1 and parts[1] in FORBIDDEN[layer]:
                offenders.append(f"{path.relative_to(PACKAGE.parent)} imports {module}")
    assert not offenders, "\n".join(offenders)
