"""Helpers shared by the PyInstaller spec files: excludes, naming and the build manifest.

Imported by the specs (run by PyInstaller inside the build venv) and by build.sh
(``python speclib.py inputs-hash``) and the packaging tests.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Never in any binary: build and test tooling, GUIs, and the stdlib parts nothing uses.
COMMON_EXCLUDES = [
    "tkinter",
    "_tkinter",
    "turtle",
    "turtledemo",
    "idlelib",
    "lib2to3",
    "pydoc_data",
    "ensurepip",
    "venv",
    "distutils",
    "setuptools",
    "pkg_resources",
    "pip",
    "wheel",
    "PyInstaller",
    "pytest",
    "_pytest",
    "hypothesis",
    "tests",
    "test",
    "numpy",
    "IPython",
    "playwright",
    "curses",
    "xmlrpc",
]

# The agent runs on small devices: none of the hub's stack goes in.
AGENT_EXCLUDES = [
    *COMMON_EXCLUDES,
    "hub",
    "jinja2",
    "markupsafe",
    "asyncpg",
    "prometheus_client",
    "rich",
    "pygments",
    "pydantic_settings",
    "dotenv",
    "email_validator",
]

# The hub's own stack, minus what it does not import: pydantic's optional rich support
# would otherwise pull in rich, pygments and markdown-it (~2 MB), uvloop's test base unittest.
# If the hub starts to use rich (edgectl), drop it from here; the packaging smoke test runs
# `edge-hub serve` from the binary, so a missing module fails there.
HUB_EXCLUDES = [
    *COMMON_EXCLUDES,
    "hub.testing",
    "rich",
    "pygments",
    "markdown_it",
    "mdurl",
    "uvloop._testbase",
]

# Files whose change means a binary must be rebuilt.
INPUT_GLOBS = [
    "edge_agent/**/*.py",
    "hub/**/*",
    "pyproject.toml",
    "packaging/*.spec",
    "packaging/*.py",
    "packaging/build.sh",
]


def arch_label() -> str:
    """Return the architecture as used in artefact names (x86_64, aarch64, armv7)."""
    machine = platform.machine()
    return {"armv7l": "armv7", "armv8l": "armv7", "arm64": "aarch64", "amd64": "x86_64"}.get(
        machine, machine
    )


def version() -> str:
    """Return the project version, read from the source (not from installed metadata)."""
    for line in (REPO / "edge_agent" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise SystemExit("no __version__ in edge_agent/__init__.py")


def artefact_name(program: str) -> str:
    """Return e.g. ``edge-agent-0.1.0-linux-x86_64``."""
    return f"{program}-{version()}-linux-{arch_label()}"


def inputs_hash(program: str = "") -> str:
    """Return a SHA-256 over every build input (sources, specs, pins), for reuse checks."""
    digest = hashlib.sha256(program.encode())
    files = sorted({p for g in INPUT_GLOBS for p in REPO.glob(g) if p.is_file()})
    for path in files:
        if "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        digest.update(str(path.relative_to(REPO)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _distribution_of(top_level: dict[str, list[str]], module: str) -> list[str]:
    return top_level.get(module.split(".", 1)[0], [])


def write_manifest(analysis, program: str, mode: str, out: Path) -> dict:
    """Write the build manifest: Python version and every bundled distribution with version."""
    top_level = importlib.metadata.packages_distributions()
    modules = sorted({name for name, _path, _kind in analysis.pure})
    modules += sorted(
        {name.split("/")[-1] for name, _path, _kind in analysis.binaries}
        | {name for name, _path, kind in analysis.pure if kind == "EXTENSION"}
    )
    dists: dict[str, str] = {}
    for mod in {name for name, _p, _k in analysis.pure} | {
        n.replace("/", ".").split(".cpython")[0] for n, _p, _k in analysis.binaries
    }:
        for dist in _distribution_of(top_level, mod):
            try:
                dists[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
    dists.pop("edgefleet", None)
    shared_libs = sorted(
        os.path.basename(name) for name, _p, _k in analysis.binaries if ".so" in name
    )
    manifest = {
        "program": program,
        "version": version(),
        "arch": arch_label(),
        "mode": mode,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "libc": "-".join(platform.libc_ver()),
        "pyinstaller": importlib.metadata.version("pyinstaller"),
        "inputs_sha256": inputs_hash(program),
        "packages": dict(sorted(dists.items(), key=lambda kv: kv[0].lower())),
        "shared_libraries": shared_libs,
        "top_level_modules": sorted({m.split(".", 1)[0] for m in modules}),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "inputs-hash":
        print(inputs_hash(sys.argv[2] if len(sys.argv) > 2 else ""))
    elif cmd == "name":
        print(artefact_name(sys.argv[2]))
    elif cmd == "arch":
        print(arch_label())
    elif cmd == "version":
        print(version())
    else:
        raise SystemExit("usage: speclib.py inputs-hash PROGRAM | name PROGRAM | arch | version")
