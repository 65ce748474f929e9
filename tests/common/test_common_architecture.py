"""The design's structural promises: roles import only common/ and monitoring/, common/ imports no role,
and `rlef --help` answers without importing torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("actor", "learner", "executor")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def rlef_imports(folder: str) -> dict[str, set[str]]:
    out = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        out[str(path.relative_to(ROOT))] = {m for m in imported_modules(path) if m.startswith("rlef.")}
    return out


@pytest.mark.parametrize("role", ROLES)
def test_role_imports_only_common_and_monitoring(role: str) -> None:
    allowed = ("rlef.common", "rlef.monitoring", f"rlef.{role}")
    offenders = {
        f: sorted(m for m in mods if not m.startswith(allowed)) for f, mods in rlef_imports(role).items()
    }
    assert not {f: m for f, m in offenders.items() if m}, f"{role}/ imports another role"


@pytest.mark.parametrize("folder", ["common", "monitoring"])
def test_shared_code_imports_no_role(folder: str) -> None:
    forbidden = tuple(f"rlef.{role}" for role in (*ROLES, "deploy"))
    offenders = {f: sorted(m for m in mods if m.startswith(forbidden)) for f, mods in rlef_imports(folder).items()}
    assert not {f: m for f, m in offenders.items() if m}


def test_relative_imports_do_not_cross_roles() -> None:
    for role in ROLES:
        for path in (ROOT / role).rglob("*.py"):
            tree = ast.parse(path.read_text())
            depth = len(path.relative_to(ROOT / role).parts)  # file inside role/ has depth 1
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level:
                    assert node.level <= depth, f"{path}: relative import climbs out of {role}/"


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from rlef.common.cli import build_parser\n"
        "build_parser().format_help()\n"
        "heavy = [m for m in ('torch', 'transformers', 'vllm') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"`rlef --help` imports {out.stdout.strip()}"


def test_help_lists_every_role_command() -> None:
    out = subprocess.run([sys.executable, "-m", "rlef.common.cli", "--help"], capture_output=True, text=True, check=True)
    builtins = ("config", "make-tiny-model", "data", "keys")
    roles = ("actor", "executor", "executor-broker", "learner", "export", "launch", "report", "rollouts", "monitoring")
    for command in builtins + roles:
        assert command in out.stdout


def test_no_undefined_names_or_unused_imports() -> None:
    """pyflakes' checks (ruff F) and syntax errors over the whole tree: dead imports and undefined names."""
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--select", "F,E9", "--output-format", "concise", "--no-cache", str(ROOT),
         "--exclude", ".venv,build,runs,artifacts"],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
