"""The registries: named student architectures (the timm pattern) and the loss terms of the objective.

A model family registers size variants with ``@register_model``; each variant is a function taking
``modalities``, ``num_classes`` and overrides and returning a built student; ``@register_model(family=cls)``
also records the model class, so ``zoo.load`` rebuilds a saved student from the ``architecture`` its config.json
records. A loss term (``zoo.train.objective.LossTerm``) registers with ``@register_loss_term`` under its
recipe key (``stages.<stage>.weights.<key>``).
"""

from __future__ import annotations

from collections.abc import Callable

_MODELS: dict[str, Callable] = {}
ARCHITECTURES: dict[str, type] = {}  # config.json "architecture" -> the model class that loads it
DEFAULT_ARCHITECTURE = "hybrid"
LOSS_TERMS: dict[str, type] = {}  # recipe weight key -> loss term class, in the order the objective sums them


def register_model(fn: Callable | None = None, *, family: type | None = None):
    """Register a student constructor under its function name; ``family`` is the model class it builds, which
    ``zoo.load`` rebuilds a saved student of that architecture with. Use as ``@register_model`` or
    ``@register_model(family=MyStudent)``."""

    def add(fn: Callable) -> Callable:
        if fn.__name__ in _MODELS:
            raise ValueError(f"model {fn.__name__!r} is registered twice.")
        _MODELS[fn.__name__] = fn
        if family is not None:
            ARCHITECTURES[fn.__name__] = family
        return fn

    return add(fn) if fn is not None else add


def register_architecture(name: str, cls: type) -> type:
    """Register a model class under an ``architecture`` name a config.json may record (a family's own name)."""
    if ARCHITECTURES.get(name, cls) is not cls:
        raise ValueError(f"architecture {name!r} is registered twice.")
    ARCHITECTURES[name] = cls
    return cls


def model_class(architecture: str | None) -> type:
    """The model class that loads a config.json recording ``architecture`` (the hybrid family when it records
    none, as configs written before the key existed)."""
    _ensure_loaded()
    name = architecture or DEFAULT_ARCHITECTURE
    if name not in ARCHITECTURES:
        raise ValueError(
            f"config.json names architecture {name!r}, which no installed student family registers "
            f"(registered: {sorted(ARCHITECTURES)}). Import the package that defines it first."
        )
    return ARCHITECTURES[name]


def register_loss_term(cls: type) -> type:
    """Register a loss term class under its recipe key (``cls.key``); a stage weights it by that key."""
    if LOSS_TERMS.get(cls.key, cls) is not cls:
        raise ValueError(f"loss term {cls.key!r} is registered twice.")
    LOSS_TERMS[cls.key] = cls
    return cls


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
