"""A broken Transformer Engine install stops start-up with its fix instead of an ImportError deep in megatron-core
(checked: 0.16.1, 0.19.2)."""

from __future__ import annotations

# 0.16.1 and 0.19.2: fp8_utils sets HAVE_TE from `import transformer_engine` alone, then imports
# `transformer_engine.pytorch` unguarded (TE >= 2.0).
CHECKED_MEGATRON_CORE = ("0.16.1", "0.19.2")


def check_transformer_engine_imports() -> None:
    """Fail with the fix when Transformer Engine is installed but broken. megatron-core 0.16.1 cannot even be
    imported then: its `fp8_utils` decides `HAVE_TE` from `import transformer_engine` alone and goes on to import
    `transformer_engine.pytorch`, which fails when the torch extension is missing or was built for another torch.
    Must run before anything imports megatron-core (`taidtron.models` calls it first)."""
    try:
        import transformer_engine  # noqa: F401
    except ModuleNotFoundError:
        return  # not installed (or a dependency missing): megatron-core imports and treats TE as absent
    except Exception as exc:  # noqa: BLE001 - a broken install raises OSError/ImportError/RuntimeError alike
        error = exc
    else:
        try:
            import transformer_engine.pytorch  # noqa: F401

            return
        except Exception as exc:  # noqa: BLE001
            error = exc
    raise ImportError(
        f"Transformer Engine is installed but does not import for this torch ({type(error).__name__}: {error}); "
        f"reinstall it against this torch (pip install --no-build-isolation -e '.[te]') or uninstall it "
        f"(pip uninstall transformer-engine transformer-engine-torch) to run without it"
    ) from None
