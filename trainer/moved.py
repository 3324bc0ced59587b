"""Module paths that a rename moved keep importing: the old dotted name is the module at its new place.

A user's script or notebook that imported `orchestrator.lifecycle` (before orchestrator/ was grouped into
subpackages), `results.models` or `trainer.pack` goes on working, and gets the very same module object, so a
class is one class whichever path found it. Each package names its own moves in its `__init__`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, moved: dict[str, str]):
        self.moved = moved

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in self.moved else None

    def create_module(self, spec):
        return importlib.import_module(self.moved[spec.name])  # the module itself, not a copy

    def exec_module(self, module) -> None:
        pass  # already executed under its new name


def keep_importable(moved: dict[str, str]) -> None:
    """Old dotted module name -> its new one; consulted only after the normal finders found nothing."""
    sys.meta_path.append(_MovedModules(moved))
