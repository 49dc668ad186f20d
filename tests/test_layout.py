"""The import rules of docs/design.md, read from the source: imports point down the data path."""

import ast
import glob
import os

from conftest import REPO


def _imports(path):
    """Every module name `path` imports (top level or inside functions)."""
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def _offenders(pattern, forbidden, allowed=()):
    out = []
    for path in sorted(glob.glob(os.path.join(REPO, pattern), recursive=True)):
        rel = os.path.relpath(path, REPO)
        if rel in allowed:
            continue
        out += [f"{rel}: {m}" for m in _imports(path) if m == forbidden or m.startswith(forbidden + ".")]
    return out


def test_ppt_jax_never_imports_data_prep_but_from_the_entry_point():
    assert _offenders("ppt_jax/**/*.py", "data_prep", allowed=("ppt_jax/main.py",)) == []


def test_configs_import_no_trainer_code():
    assert _offenders("configs/*.py", "ppt_jax.train") == []


def test_the_sparse_engine_is_a_leaf():
    found = [o for o in _offenders("ppt_jax/sparse/*.py", "ppt_jax")
             if not o.split(": ")[1].startswith("ppt_jax.sparse")]
    assert found == []
