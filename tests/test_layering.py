"""Imports only point down: utils (and the registry) <- ops <- models <- data / animation library <-
systems <- command-line programs. Checked statically on every import statement (also the ones inside
functions) and by importing the lower packages in a fresh interpreter."""

import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO

LAYERS = [  # (module prefix, layer); the longest matching prefix wins
    ("threestudio", 0),  # the registry (threestudio/__init__.py) and utils
    ("threestudio.utils", 0),
    ("threestudio.ops", 1),
    ("threestudio.models", 2),
    ("threestudio.data", 3),
    ("threestudio.animation", 3),
    ("threestudio.systems", 4),
    ("threestudio.animation.cli", 5),
    ("threestudio.tiny", 5),
    ("threestudio.export", 5),
    ("launch", 5),
    ("animation", 5),
]
NAMES = {0: "utils", 1: "ops", 2: "models", 3: "data/animation", 4: "systems", 5: "CLIs"}


def layer(module: str) -> int | None:
    best = None
    for prefix, n in LAYERS:
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, n)
    return best[1] if best else None


def modules() -> list[tuple[str, str]]:
    out = [("launch", "launch.py"), ("animation", "animation.py")]
    for p in sorted((REPO / "threestudio").rglob("*.py")):
        rel = p.relative_to(REPO).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out.append((name, str(p.relative_to(REPO))))
    return out


def imported(path: str) -> set[str]:
    """Every threestudio module an import statement in the file names."""
    tree = ast.parse((REPO / path).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: use absolute imports"
            base = node.module or ""
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    return {n for n in names if n.split(".")[0] in ("threestudio", "launch", "animation")}


def test_imports_only_point_down():
    known = {name for name, _ in modules()}
    bad = []
    for name, path in modules():
        own = layer(name)
        for target in imported(path):
            if target not in known and target.rpartition(".")[0] in known:
                target = target.rpartition(".")[0]  # `from module import name`
            if target in known and layer(target) > own:
                bad.append(f"{path} ({NAMES[own]}) imports {target} ({NAMES[layer(target)]})")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package,forbidden", [
    ("threestudio.ops", ("threestudio.models", "threestudio.data", "threestudio.systems")),
    ("threestudio.models.renderers", ("threestudio.data", "threestudio.systems")),
    ("threestudio.models.body, threestudio.models.guidance, threestudio.models.geometry",
     ("threestudio.data", "threestudio.systems")),
    ("threestudio.data, threestudio.animation.animator", ("threestudio.systems",)),
])  # fmt: skip
def test_importing_a_package_loads_no_higher_layer(package, forbidden):
    code = f"import sys; import {package}; print('\\n'.join(m for m in sys.modules if m.startswith({forbidden!r})))"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "", f"importing {package} loaded: {r.stdout.split()}"
