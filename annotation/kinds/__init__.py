"""The registry of feedback kinds: the one place the cores learn what a kind does.

Each kind module registers one `Kind` at import; `annotation.apps` imports the kind modules listed
in `KIND_MODULES` when Django starts, so the registry is complete before the first request.
"""

from importlib import import_module

from ..errors import InvalidInput
from .base import Kind

# Every kind module Tandem ships, in the order they are offered to managers.
KIND_MODULES = (
    "annotation.kinds.pairwise",
    "annotation.kinds.hallucination",
    "annotation.kinds.hindsight",
)

_REGISTRY: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    if not kind.name or kind.name in _REGISTRY:
        raise ValueError(f"kind {kind.name!r} is unnamed or registered twice")
    _REGISTRY[kind.name] = kind
    return kind


def load() -> None:
    for module in KIND_MODULES:
        import_module(module)


def kind_for(name: str) -> Kind:
    """The registered kind, or a 400 naming the kinds available."""
    if not _REGISTRY:
        load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InvalidInput(
            f"feedback kind '{name}' is not available yet; available: {', '.join(_REGISTRY)}",
            errors=[{"field": "kind", "message": "not available yet"}],
        ) from None


def registered() -> list[Kind]:
    if not _REGISTRY:
        load()
    return list(_REGISTRY.values())
