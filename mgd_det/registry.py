"""One extension style for the whole project: a named registry of builders or classes.

Pathway families, loss weightings, relevance score kinds and samplers are each a
:class:`Registry`; a new one is one ``@REGISTRY.register("name")`` line beside its code, and
the config key that selects it lists the registered names in its error. Detectron2-free (the
core registers its pathway families here too); unlike Detectron2's ``Registry`` an unknown
name is a :class:`~mgd_det.errors.ConfigError` naming the key, because a user typed it.
"""
from typing import Dict, Generic, Iterator, Optional, Tuple, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> objects, in registration order.

    Args:
        what: what an entry is, for messages ("pathway family", "loss weighting").
    """

    def __init__(self, what: str):
        self.what = what
        self._entries: Dict[str, T] = {}

    def register(self, name: str, obj: Optional[T] = None):
        """``register(name, obj)``, or ``@register(name)`` above a function or class."""
        if obj is not None:
            self._add(name, obj)
            return obj

        def decorate(entry: T) -> T:
            self._add(name, entry)
            return entry

        return decorate

    def _add(self, name: str, obj: T) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.what} needs a non-empty name; got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._entries[name] = obj

    def get(self, name: str, key: Optional[str] = None) -> T:
        """The entry ``name``; a ConfigError listing the valid names (naming ``key``, the config
        key that chose it, in the words of the config checks) if there is none."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            valid = ", ".join(self._entries)
            if key:
                raise ConfigError(f"{key} must be one of {valid} (got {name!r})", key=key) from None
            raise ConfigError(f"unknown {self.what} {name!r}; valid: {valid}") from None

    def names(self) -> Tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        """The names, like a dict."""
        return iter(self.names())

    def items(self) -> Tuple[Tuple[str, T], ...]:
        return tuple(self._entries.items())

    def __len__(self) -> int:
        return len(self._entries)


