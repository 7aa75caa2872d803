"""The dependency direction of ARCHITECTURE.md, one way only: `cython_ext` <- `engine` <-
{`gateway`, `chain_bridge`} <- `loadtest`. The two in the middle are peers: neither imports
the other (the chain bridge reaches the gateway through protocols)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {
    "cython_ext": set(),
    "engine": {"cython_ext"},
    "gateway": {"cython_ext", "engine"},
    "chain_bridge": {"cython_ext", "engine"},
    "loadtest": {"cython_ext", "engine", "gateway", "chain_bridge"},
}


def imported_packages(path: Path) -> set[str]:
    """The top-level packages of this project that a module imports (anywhere in it)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & ALLOWED.keys()


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_what_is_below_it(package: str) -> None:
    modules = sorted((ROOT / package).glob("*.py"))
    assert modules, f"no modules in {package}"
    wrong = {str(m.relative_to(ROOT)): imported_packages(m) - ALLOWED[package] - {package}
             for m in modules}
    assert {m: sorted(p) for m, p in wrong.items() if p} == {}
