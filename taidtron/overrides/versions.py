"""Which megatron-core runs, and which versions each workaround module in taidtron/overrides/ was checked on.

Every module of this package that works around megatron-core declares `CHECKED_MEGATRON_CORE`, the versions whose
source and behaviour it was re-checked against (private names still there, the bug or gap still present, the
fix still right). Where a version changed something, the module branches on `megatron_core_at_least` and says
what changed in which version. `tests/overrides/test_megatron_version.py` fails when the installed megatron-core is
missing from any module's list: re-check that module, then add the version.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from importlib.metadata import version

from packaging.version import Version


@cache
def megatron_core_version() -> str:
    """The installed megatron-core's version, from its package metadata (`megatron.core.__version__` of 0.19
    appends the commit of whatever git checkout the package directory sits in)."""
    return version("megatron-core")


def megatron_core_at_least(minimum: str) -> bool:
    """True when the installed megatron-core is `minimum` or newer (a version-specific branch of a workaround)."""
    return Version(megatron_core_version()) >= Version(minimum)


def workaround_modules() -> dict[str, tuple[str, ...] | None]:
    """Every module of taidtron/overrides/ (this one excepted) and the megatron-core versions it declares checked
    (None: it declares none)."""
    import taidtron.overrides as package

    checked = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name == __name__.rsplit(".", 1)[-1]:
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        checked[info.name] = getattr(module, "CHECKED_MEGATRON_CORE", None)
    return checked


def checked_everywhere() -> tuple[str, ...]:
    """The megatron-core versions every workaround module was checked on, oldest first."""
    declared = [versions or () for versions in workaround_modules().values()]
    common = set(declared[0]).intersection(*declared[1:]) if declared else set()
    return tuple(sorted(common, key=Version))


def unchecked_megatron_core() -> str | None:
    """A sentence naming the installed megatron-core and the workaround modules not checked on it, else None."""
    installed = megatron_core_version()
    unchecked = sorted(name for name, versions in workaround_modules().items() if installed not in (versions or ()))
    if not unchecked:
        return None
    return (
        f"megatron-core {installed} is installed, but taidtron's workarounds for its internals in "
        f"taidtron/overrides/ ({', '.join(unchecked)}) were not checked against it; install one of "
        f"{', '.join(checked_everywhere()) or 'the versions they name'} (pyproject.toml pins one per Python) or "
        f"re-check those modules for {installed} and add it to their CHECKED_MEGATRON_CORE."
    )
