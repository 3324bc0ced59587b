"""The manual: its reference pages are what the code generates, it builds with --strict (a broken link, a page
missing from the nav or a missing image fails), and the README stays a front page whose links resolve."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "docs"))

import generate  # noqa: E402  (docs/generate.py: not a package)


def test_committed_reference_pages_are_what_the_code_generates():
    for relative, text in generate.pages().items():
        committed = (REPO / "docs" / relative).read_text(encoding="utf-8")
        assert committed == text, f"docs/{relative} differs from the code: run `make docs` and commit it"


def test_the_reference_lists_every_spec_key_command_metric_and_state():
    from evaluation.metrics import METRICS
    from sweeps import schema
    from orchestrator.cli import _parser
    from sweeps.spec import SweepSpec
    from results.states import TrialState

    pages = generate.pages()
    spec_keys = set(re.findall(r"^\| `([^`]+)` \|", pages["reference/spec.md"], re.MULTILINE))
    assert set(schema.leaf_paths(SweepSpec)) <= spec_keys, set(schema.leaf_paths(SweepSpec)) - spec_keys
    assert "| `dataset.eval_overlap` | `refuse` \\| `allow` | `refuse` |  | trial, shared in a pack, not in identity |" \
        in pages["reference/spec.md"]
    commands = re.findall(r"^## `sweep (\w+)`", pages["reference/cli.md"], re.MULTILINE)
    subparsers = next(a for a in _parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    assert commands == list(subparsers.choices)
    assert all(f"| `{name}` |" in pages["reference/metrics.md"] for name in METRICS)
    assert all(f"| `{state.value}` |" in pages["reference/states.md"] for state in TrialState)


def test_the_manual_builds_strictly(tmp_path):
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir",
                            str(tmp_path / "site")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    assert (tmp_path / "site" / "reference" / "spec" / "index.html").is_file()
    assert "0.2.0" in (tmp_path / "site" / "changelog" / "index.html").read_text(encoding="utf-8")


def test_the_readme_is_a_front_page_whose_links_resolve():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    links = re.findall(r"\]\(([^)#\s]+)", readme)
    assert links and all((REPO / link).exists() for link in links if "://" not in link), \
        [link for link in links if "://" not in link and not (REPO / link).exists()]
