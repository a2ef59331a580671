"""No import cycles in ``mlops_assets`` (lazy imports count: a cycle is a tangle even when it loads)
and no module over 400 lines."""

from __future__ import annotations

from mlops_assets.settings import PROJECT_ROOT

from .import_graph import cycles, import_edges, oversized

PACKAGE = PROJECT_ROOT / "mlops_assets"
MAX_LINES = 400

# Known, owned by the serving rewrite landing in parallel (issue: serving). Listed, not skipped: the
# test fails as soon as one is fixed, so the entry is removed and the rule then holds for it too.
PENDING_CYCLES: set[tuple[str, ...]] = set()
PENDING_OVERSIZED: set[str] = set()


def test_no_import_cycles():
    found = set(cycles(import_edges(PACKAGE)))
    assert found - PENDING_CYCLES == set(), "import cycles: " + "; ".join(" <-> ".join(c) for c in found - PENDING_CYCLES)
    assert PENDING_CYCLES <= found, f"fixed, remove from PENDING_CYCLES: {PENDING_CYCLES - found}"


def test_no_module_over_the_line_limit():
    found = oversized(PACKAGE, MAX_LINES)
    assert set(found) - PENDING_OVERSIZED == set(), f"modules over {MAX_LINES} lines: {found}"
    assert PENDING_OVERSIZED <= set(found), f"fixed, remove from PENDING_OVERSIZED: {PENDING_OVERSIZED - set(found)}"


def test_the_checker_finds_a_lazy_cycle_and_a_long_module(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")  # lazy, relative
    (package / "c.py").write_text("import pkg.a\n" + "x = 1\n" * 10)
    (package / "d.py").write_text("from . import a\n")  # imports into the cycle, not part of it
    assert cycles(import_edges(package)) == [("pkg.a", "pkg.c", "pkg.sub.b")]
    assert oversized(package, 10) == {"pkg/c.py": 11}
