"""The workarounds in taidtron/overrides/ were checked against specific megatron-core versions: any other version
must fail here, loudly, until someone re-checks them."""

from __future__ import annotations

import ast
from pathlib import Path

from taidtron import overrides

REPO = Path(overrides.__file__).resolve().parents[2]
KNOWN_PRIVATE_NAMES = (
    "_results_queue",
    "_set_main_param_and_optimizer_states",
    "_init_optimizer_states_with_dummy_values",
    "helpers_cpp",
    "_get_cuda_rng_state",
    "_set_cuda_rng_state",
    "_set_pg_timeout",
    "options._timeout",
    "_get_backend",
)
"""The private names the workarounds touch (see taidtron/overrides/__init__.py)."""


def test_installed_megatron_core_is_a_checked_version():
    problem = overrides.unchecked_megatron_core()
    assert problem is None, problem


def test_pyproject_pins_a_checked_megatron_core():
    pyproject = (REPO / "pyproject.toml").read_text()
    pins = [line for line in pyproject.splitlines() if '"megatron-core' in line]
    assert pins, "pyproject.toml lists no megatron-core"
    for line in pins:
        assert any(f"megatron-core=={v}" in line for v in overrides.CHECKED_MEGATRON_CORE), line


def _private_megatron_accesses(path: Path) -> list[str]:
    """`x._name` attribute uses in a module whose `x` was imported from megatron (a cheap, conservative scan)."""
    tree = ast.parse(path.read_text())
    megatron_names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("megatron"):
            megatron_names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            megatron_names.update(a.asname or a.name for a in node.names if a.name.startswith("megatron"))
    return [
        f"{path.name}:{node.lineno} {node.value.id}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and isinstance(node.value, ast.Name)
        and node.value.id in megatron_names
    ]


def test_no_module_outside_overrides_reaches_into_megatron_internals():
    modules = sorted(p for p in REPO.joinpath("taidtron").rglob("*.py") if "overrides" not in p.parts)
    assert len(modules) > 10, modules
    offenders = []
    for path in modules:
        offenders += _private_megatron_accesses(path)
        text = path.read_text()
        offenders += [f"{path.name}: {name}" for name in KNOWN_PRIVATE_NAMES if name in text]
    assert not offenders, f"private megatron-core names used outside taidtron/overrides/: {offenders}"


def test_the_scan_sees_the_overrides_own_private_accesses():
    # the scan above can fail: it finds the known workaround in checkpointing.py
    found = _private_megatron_accesses(REPO / "taidtron" / "overrides" / "checkpointing.py")
    assert any("filesystem_async._results_queue" in f for f in found), found
