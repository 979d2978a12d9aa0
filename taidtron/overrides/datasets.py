"""megatron-core's compiled dataset helpers (checked: 0.16.1, 0.19.2).

`GPTDataset` builds its sample index with `megatron.core.datasets.helpers_cpp`. When the installed package lacks the
compiled module, `ensure_dataset_helpers` compiles it and, if the package directory is read-only, injects the build
into `sys.modules` under the name megatron imports: the one place taidtron adds a module to a library.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

CHECKED_MEGATRON_CORE = ("0.16.1", "0.19.2")


def ensure_dataset_helpers() -> None:
    """Make `megatron.core.datasets.helpers_cpp` importable (GPTDataset builds its sample index with it).

    The megatron-core wheels on PyPI ship it compiled (helpers_cpp.cpython-311-x86_64-linux-gnu.so in 0.16.1,
    helpers_cpp.cpython-312-x86_64-linux-gnu.so in 0.19.2), so normally this only imports it. Where it is missing
    (a source install, an unusual platform) it is compiled once from the helpers.cpp that megatron-core ships,
    which needs a C++ compiler and `pip install pybind11`.
    The build goes into the package directory when writable, else `$TAIDTRON_CACHE` (default
    ~/.cache/taidtron), and is written under a temporary name then renamed, so concurrent ranks are safe.
    """
    try:
        importlib.import_module("megatron.core.datasets.helpers_cpp")
        return
    except ImportError:
        pass
    import subprocess
    import sys
    import sysconfig

    import megatron.core.datasets as mcd

    src = Path(mcd.__file__).parent / "helpers.cpp"
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    pkg_dir = Path(mcd.__file__).parent
    out_dir = (
        pkg_dir
        if os.access(pkg_dir, os.W_OK)
        else Path(os.environ.get("TAIDTRON_CACHE", Path.home() / ".cache" / "taidtron"))
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"helpers_cpp{suffix}"
    if not target.exists():
        try:
            import pybind11
        except ImportError:
            raise RuntimeError(
                "megatron-core's C++ dataset helpers are not compiled in this install and pybind11 is "
                "missing; run `pip install pybind11` (a C++ compiler is needed too), or install a "
                "megatron-core wheel that ships helpers_cpp."
            ) from None
        tmp = out_dir / f".helpers_cpp.{os.getpid()}{suffix}"
        cmd = [
            os.environ.get("CXX", "c++"),
            "-O3",
            "-Wall",
            "-shared",
            "-std=c++17",
            "-fPIC",
            f"-I{pybind11.get_include()}",
            f"-I{sysconfig.get_paths()['include']}",
            str(src),
            "-o",
            str(tmp),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"compiling megatron-core's dataset helpers failed:\n{' '.join(cmd)}\n{proc.stderr}")
        os.replace(tmp, target)
    if out_dir != pkg_dir:  # load it from the cache under the name megatron imports
        spec = importlib.util.spec_from_file_location("megatron.core.datasets.helpers_cpp", target)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["megatron.core.datasets.helpers_cpp"] = module
    importlib.import_module("megatron.core.datasets.helpers_cpp")
