"""The layer rules import-linter cannot state, and CONTRIBUTING.md's layers kept equal to its own.

`make lint` (lint-imports, ``[tool.importlinter]`` in pyproject.toml) enforces the layers.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "rlhfkit"


def imported_modules(source: str, package: str) -> set[str]:
    """Every module ``source`` (a module of ``package``) imports, in a function or not."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # maybe submodules
    return names


def test_imported_modules_sees_function_level_and_relative_imports():
    source = "import os\nfrom . import errors\n\ndef f():\n    from ..data import files\n"
    assert imported_modules(source, "rlhfkit.models") == {
        "os",
        "rlhfkit.models",
        "rlhfkit.models.errors",
        "rlhfkit.data",
        "rlhfkit.data.files",
    }


def test_assets_imports_only_the_standard_library_and_errors():
    """The verified cache sits below models and data: they register builders, it imports none
    (errors and atomic, which it uses, import only the standard library)."""

    def allowed(name: str) -> bool:
        return (
            name == "rlhfkit"
            or name.partition(".")[0] in sys.stdlib_module_names
            or f"{name}.".startswith(("rlhfkit.errors.", "rlhfkit.atomic."))
        )

    files = [*PACKAGE.glob("assets.py"), *PACKAGE.glob("assets/**/*.py"), PACKAGE / "atomic.py"]
    assert files
    outside = set()
    for path in files:
        package = ".".join(path.relative_to(PACKAGE.parent).parent.parts)
        source = path.read_text(encoding="utf-8")
        outside |= {name for name in imported_modules(source, package) if not allowed(name)}
    assert not outside, f"rlhfkit.assets may import the standard library, errors, atomic: {outside}"


def test_contributing_draws_the_layers_that_lint_imports_enforces():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (contract,) = (c for c in pyproject["tool"]["importlinter"]["contracts"] if c["id"] == "layers")
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    diagram = re.search(r"^## Layers\n.*?^```\n(.*?)^```", text, re.S | re.M)
    assert diagram, "CONTRIBUTING.md has a '## Layers' section with its diagram in a code block"
    # one line per layer: its modules, two or more spaces, what lives there
    drawn = [re.split(r" {2,}", line)[0] for line in diagram[1].splitlines() if line.strip()]
    assert drawn == contract["layers"]
