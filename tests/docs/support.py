"""What the docs tests share: the repository root, and scripts/docs_gen.py and benchmarks/results_io.py as modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def load_script(name: str, path: Path) -> ModuleType:
    """A script that is not a package module (scripts/, benchmarks/), loaded by path once per process."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_docs_gen() -> ModuleType:
    """scripts/docs_gen.py, the generator of the API reference and the benchmarks page."""
    return load_script("sluice_docs_gen", REPO / "scripts" / "docs_gen.py")


def load_results_io() -> ModuleType:
    """benchmarks/results_io.py, the one writer of benchmark result files."""
    return load_script("sluice_results_io", REPO / "benchmarks" / "results_io.py")
