"""The package's shape: every module of r2/ imports, and no module imports one that imports it back."""
import ast
import importlib
from pathlib import Path

import r2

ROOT = Path(r2.__file__).resolve().parent


def module_names() -> dict[str, Path]:
    """r2 module name -> file, for every .py file under r2/ (r2.metrics.__main__ included)."""
    names = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ("r2",) + path.relative_to(ROOT).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The r2 modules that module `name` imports anywhere in its file (top level or inside functions): `import
    r2.x`, `from r2 import x`, `from r2.x import y` and relative imports, each resolved to a module of r2. Imports
    under `if __name__ == "__main__":` are left out: they run when the file is the program (`python -m r2.cache`),
    whose module is __main__, not `name`, so they cannot close a cycle."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    tree.body = [n for n in tree.body if not (isinstance(n, ast.If) and ast.unparse(n.test).replace("'", '"')
                                              == '__name__ == "__main__"')]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `from r2.x import function` -> r2.x
                target = target.rpartition(".")[0]
            if target and target != name and target != "r2":
                found.add(target)
    return found


def test_every_module_imports():
    for name in module_names():
        importlib.import_module(name)


def test_no_import_cycles():
    modules = module_names()
    graph = {name: imports_of(name, path, set(modules)) for name, path in modules.items()}
    cycles = []
    for start in graph:  # depth-first from each module: reaching it again is a cycle
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" -> ".join(trail + [start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))
    assert not cycles, cycles


def test_inference_never_imports_the_trainer():
    """Running a trained model (r2.predict, its CLI, the app) reads a checkpoint's config through r2.train_config;
    no module it reaches, at any depth, is the training loop (r2.train) or the sweep."""
    modules = module_names()
    graph = {name: imports_of(name, path, set(modules)) for name, path in modules.items()}
    for start in ("r2.predict", "r2.predict.cli", "r2.app"):
        reached, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - reached:
                reached.add(nxt)
                todo.append(nxt)
        assert not reached & {"r2.train", "r2.sweep"}, (start, sorted(reached))


def test_the_cycle_finder_sees_relative_and_late_imports(tmp_path):
    """imports_of resolves `from ..x import y`, `from . import z` and an import inside a function, and leaves out
    the `__main__` block."""
    (tmp_path / "m.py").write_text("from ..datasets import Record\nfrom . import moments\n\ndef f():\n"
                                   "    from r2.train import Trainer\n\nif __name__ == '__main__':\n"
                                   "    from r2.verify import main\n")
    known = {"r2.metrics", "r2.metrics.m", "r2.metrics.moments", "r2.datasets", "r2.train", "r2.verify"}
    assert imports_of("r2.metrics.m", tmp_path / "m.py", known) == {"r2.datasets", "r2.metrics",
                                                                    "r2.metrics.moments", "r2.train"}
