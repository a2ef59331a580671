"""Feast imported without typeguard's instrumentation (features/feast_import.py): the decorator is
off for Feast's classes only, and back for everyone else once Feast has loaded."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import typeguard
original = typeguard.typechecked
{importer}
from feast import Entity
assert typeguard.typechecked is original, "typeguard left patched"
try:
    Entity(name="customer", join_keys=["customer_id"], description=5)  # description must be a str
    print("unchecked")
except typeguard.TypeCheckError:
    print("checked")
@typeguard.typechecked
def f(x: int) -> int:
    return x
try:
    f("no")
    print("others unchecked")
except typeguard.TypeCheckError:
    print("others checked")
"""


def _run(tmp_path, importer: str) -> list[str]:
    script = tmp_path / "check.py"  # typeguard instruments from the source file
    script.write_text(CHECK.format(importer=importer))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split("\n")[:2]


def test_feast_loads_without_typeguard_and_everyone_else_keeps_it(tmp_path):
    assert _run(tmp_path, "from mlops_assets.features.feast_import import import_feast; import_feast()") == [
        "unchecked", "others checked"]


def test_a_plain_import_of_feast_is_instrumented_the_difference_is_real(tmp_path):
    assert _run(tmp_path, "import feast") == ["checked", "others checked"]
