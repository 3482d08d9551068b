"""Every implementation the benchmark times, in table order: xtf's backends first, then the peers.

Adding a provider is one module exposing a :class:`~.base.Provider` and one entry in ``_all``.
"""

from __future__ import annotations

from . import cce
from . import liger
from . import materialised
from . import torch_chunked
from . import torch_compile
from .base import Provider
from .base import Unavailable
from .xtf import xtf_providers


def _all() -> list[Provider]:
    return [
        *xtf_providers(),
        liger.PROVIDER,
        cce.PROVIDER,
        cce.EXACT_PROVIDER,
        torch_chunked.PROVIDER,
        torch_compile.PROVIDER,
        materialised.PROVIDER,
    ]


PROVIDERS: dict[str, Provider] = {provider.name: provider for provider in _all()}


def get_provider(name: str) -> Provider:
    provider = PROVIDERS.get(name)
    if provider is None:
        raise ValueError(f"provider must be one of {list(PROVIDERS)}, got {name!r}")
    return provider


def select_providers(names: list[str] | None = None) -> list[Provider]:
    """The named providers in table order (all when ``names`` is None); ValueError on an unknown name."""
    if names is None:
        return list(PROVIDERS.values())
    wanted = {get_provider(name).name for name in names}
    return [provider for provider in PROVIDERS.values() if provider.name in wanted]


__all__ = ["PROVIDERS", "Provider", "Unavailable", "get_provider", "select_providers"]
