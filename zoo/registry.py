"""The model registry: named student architectures, ``create_student`` and ``list_models`` (the timm pattern).

A model family registers size variants with ``@register_model``; each variant is a function taking
``modalities``, ``num_classes`` and overrides and returning a built student.
"""

from __future__ import annotations

from collections.abc import Callable

_MODELS: dict[str, Callable] = {}


def register_model(fn: Callable) -> Callable:
    """Register a student constructor under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice.")
    _MODELS[fn.__name__] = fn
    return fn


def _ensure_loaded() -> None:
    import zoo.students  # noqa: F401  (registers the families)


def list_models() -> list[str]:
    """Names of the registered student architectures."""
    _ensure_loaded()
    return sorted(_MODELS)


def create_student(name: str, modalities=("text", "image", "audio"), num_classes: int = 10, **kwargs):
    """Build a registered student, e.g. ``create_student("hybrid_tiny", modalities=["image"], num_classes=10)``.

    Keyword arguments override fields of the architecture's config (``embed_dim=96``, ``image={"in_chans": 1}``,
    ``tokenizer=folder_or_tokenizer``).
    """
    _ensure_loaded()
    if name not in _MODELS:
        import difflib

        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise KeyError(f"unknown student {name!r}.{hint} Registered: {sorted(_MODELS)}.")
    return _MODELS[name](
        modalities=list(modalities) if not isinstance(modalities, str) else [modalities],
        num_classes=num_classes,
        **kwargs,
    )
