"""Small timm-style registries: a decorator files a factory under a name; unknown names list the valid ones."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from raydistill.errors import UserError

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """Maps snake_case names to factories for one family of components (readers, priors, quantizers, ...)."""

    def __init__(self, family: str):
        self.family = family
        self._entries: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def add(factory: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.family} {name!r} is registered twice")
            self._entries[name] = factory
            return factory

        return add

    def get(self, name: str) -> F:
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(f"unknown {self.family} {name!r}; valid {self.family}s: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
