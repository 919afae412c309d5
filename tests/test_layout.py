"""The package's layers: the analysis commands (credit.analysis) build on the core, never the reverse."""

import ast
from pathlib import Path

import credit

PACKAGE = Path(credit.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (a lazy import inside a function counts)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_core_never_imports_the_analysis_layer():
    core = [p for p in PACKAGE.rglob("*.py") if "analysis" not in p.relative_to(PACKAGE).parts]
    assert len(core) > 20 and PACKAGE / "train.py" in core
    offenders = {str(p.relative_to(PACKAGE)): sorted(m for m in imported_modules(p) if m.startswith("credit.analysis"))
                 for p in core if p.name != "cli.py"}  # the command line registers the analysis verbs
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_command_line_offers_every_analysis_verb():
    from credit.cli import build_parser

    verbs = set(build_parser()._subparsers._group_actions[0].choices)
    assert {"train", "eval", "explain", "pmi", "report", "bench", "sweep", "plan"} <= verbs
