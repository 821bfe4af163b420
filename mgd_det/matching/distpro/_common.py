"""Pathway-name checks shared by the learned and the replayed weighting."""

from __future__ import annotations

from typing import Iterable, Tuple

from .._checks import repeated


def check_names(names: Iterable[str], what: str) -> Tuple[str, ...]:
    """The pathway names as a tuple; ValueError unless they are distinct non-empty strings."""
    names = tuple(names)
    bad = [name for name in names if not isinstance(name, str) or not name]
    if bad:
        raise ValueError(f"{what}: pathway names must be non-empty strings; got {bad!r}")
    duplicates = repeated(names)
    if duplicates:
        raise ValueError(f"{what}: pathway names must be distinct; repeated {duplicates}")
    return names


def check_same_names(expected: Tuple[str, ...], given: Iterable[str], what: str) -> None:
    """ValueError naming the missing and the unexpected pathways unless the sets are equal."""
    given = set(given)
    missing = [name for name in expected if name not in given]
    unknown = sorted(given - set(expected))
    if missing or unknown:
        raise ValueError(
            f"{what}: pathways differ from the weighting's {list(expected)}: "
            f"missing {missing}, unknown {unknown}"
        )
