"""The arrows of docs/architecture.md, read off every import (deferred ones included) of every module."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Downstream order: a package may import those after it, never one before it.
LAYERS = ("orchestrator", "results", "sweeps", "trainer", "evaluation")


def _modules() -> dict[str, Path]:
    found = {}
    for package in LAYERS:
        for path in (REPO / package).rglob("*.py"):
            if "migrations" not in path.parts:  # Alembic's revision scripts, run by Alembic
                found[".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")] = path
    return found


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `path` imports, at its top or inside a function."""
    named = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            named |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            named |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in named if name in known}


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(path, known) - {name} for name, path in known.items()}


def test_every_arrow_points_downstream():
    rank = {package: k for k, package in enumerate(LAYERS)}
    upward = sorted(f"{module} -> {target}" for module, targets in _graph().items() for target in targets
                    if rank[target.split(".")[0]] < rank[module.split(".")[0]])
    assert upward == [], f"the order is {' > '.join(LAYERS)}; these import a package above their own: {upward}"


def test_no_module_imports_one_that_imports_it_back():
    graph = _graph()
    cycles = []
    for start in sorted(graph):  # a path from a module's import back to the module
        seen, frontier = set(), list(graph[start])
        while frontier:
            module = frontier.pop()
            if module == start:
                cycles.append(start)
                break
            if module not in seen:
                seen.add(module)
                frontier.extend(graph[module])
    assert cycles == [], f"no import cycle may exist; these modules reach themselves again: {cycles}"


def test_the_model_family_is_asked_in_one_module():
    """trainer/families.py is the seam: everywhere else calls the family it returns (at most 3 places may read
    the config's flag themselves; generation, below the trainer, is the one that does)."""
    asking = sorted(f"{name}:{line}" for name, path in _modules().items() if name != "trainer.families"
                    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                    if "is_encoder_decoder" in text and not text.lstrip().startswith("#"))
    assert len(asking) <= 3, f"a model's family is asked in trainer.families only; also asked at {asking}"


def test_each_model_family_is_found_from_its_config():
    from types import SimpleNamespace

    from trainer.families import DecoderOnly, EncoderDecoder, family_of

    assert isinstance(family_of(SimpleNamespace(is_encoder_decoder=True)), EncoderDecoder)
    assert isinstance(family_of(SimpleNamespace(is_encoder_decoder=False)), DecoderOnly)
    assert isinstance(family_of(SimpleNamespace()), DecoderOnly)  # a config without the flag: a causal LM


def test_the_module_paths_before_the_regrouping_still_import_the_same_modules():
    """Scripts written against the flat orchestrator/ (and the two renamed modules) keep working: each old path
    is the module at its new place, the same object."""
    import importlib

    flat = ("loading", "checks", "datachecks", "plan", "budget", "prepare", "sweep", "lifecycle", "retry",
            "placement", "packs", "control", "steering", "sinks", "progress", "mlflow_view", "backend",
            "ray_backend", "study", "model_card", "verification", "environment")
    old = [f"orchestrator.{name}" for name in flat] + ["results.models", "trainer.pack"]
    moved = {name: importlib.import_module(name) for name in old}
    assert all(module.__name__ != name and module.__name__ in _modules() for name, module in moved.items()), \
        {name: module.__name__ for name, module in moved.items()}
    assert importlib.import_module("orchestrator.lifecycle").Sink is \
        importlib.import_module("orchestrator.driver.lifecycle").Sink
    from orchestrator.export import merge  # a function of the one-module orchestrator.export
    from orchestrator.search import Search, search_for

    assert merge is importlib.import_module("orchestrator.export.bundle").merge
    strategies = importlib.import_module("orchestrator.search.strategies")
    assert (Search, search_for) == (strategies.Search, strategies.search_for)
