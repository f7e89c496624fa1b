"""The layering rule of modules/: `ui`/`serving` -> `tasks` -> `engine` -> (config, errors, messages).

Walks every module's imports with `ast`, so an upward import, or Gradio / FastAPI imported
below the two top layers, fails here rather than in a reviewer's head.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ROOT / "modules"

# Rank of each part of modules/: a module may import only parts of lower or equal rank.
RANKS = {"config": 0, "errors": 0, "messages": 0, "engine": 1, "tasks": 2, "app_context": 3, "serving": 4, "ui": 4}
WEB_FRAMEWORKS = {"gradio", "fastapi", "starlette", "uvicorn", "gradio_client"}
WEB_LAYERS = {"serving", "ui", "app_context"}


def part_of(module: str) -> str:
    """`modules.engine.model_cache` -> `engine`; `modules.config` -> `config`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[str]:
    """Every absolute module an import statement in `path` names (`from a import b` gives a.b too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: use absolute imports, not relative ones")
    return names


SOURCES = sorted(p for p in MODULES.rglob("*.py"))


def test_every_part_has_a_rank():
    parts = {part_of(module_name(p)) for p in SOURCES} - {""}
    assert parts <= set(RANKS), f"new part of modules/ without a layer: {parts - set(RANKS)}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_only_go_down(path: Path):
    here = part_of(module_name(path))
    if not here:
        return
    for name in imported_modules(path):
        top = name.split(".")[0]
        if top == "modules" and part_of(name):
            there = part_of(name)
            assert RANKS[there] <= RANKS[here], f"{path.relative_to(ROOT)} ({here}) imports {name} ({there}): upward"
        if top in WEB_FRAMEWORKS:
            assert here in WEB_LAYERS, f"{path.relative_to(ROOT)} ({here}) imports {top}: web frameworks stay in serving/ui"


def test_the_check_catches_an_upward_import(tmp_path):
    """The walker really sees both kinds of import (a check that cannot fail proves nothing)."""
    bad = tmp_path / "bad.py"
    bad.write_text("from modules.ui import chat_tab\nimport gradio as gr\n")
    names = imported_modules(bad)
    assert "modules.ui.chat_tab" in names and "gradio" in names
