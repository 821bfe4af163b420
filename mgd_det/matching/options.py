"""A pathway family's own options: declared once with their defaults and checks.

A family lists its options (:class:`Option`); a pathway entry may set them
(``"KD:0.5:temperature=2:focal_gamma=0"``), and whoever builds the distiller may give
defaults by option name (the Detectron2 side maps a few global config keys to them, e.g.
``MGD.KD.TEMPERATURE`` -> ``temperature``). :func:`resolve_options` merges the three -- the
entry's value, else the builder's default, else the family's own -- and checks every value
once, before anything is built. A bad value raises :class:`OptionError`, which carries the
option, the value and the problem as fields, so the config side can name the key that set it
without rewriting the message.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from ..errors import ConfigError

# A check returns what is wrong with a value (a phrase such as "must be > 0"), or None.
Check = Callable[[Any], Optional[str]]


@dataclass(frozen=True)
class Option:
    """One option of a pathway family.

    ``parse`` turns the text of a pathway entry into a value (``float``, ``int``, ``str`` or
    :func:`parse_bool`); ``hint`` ends a problem's message with an example or a meaning.
    """

    name: str
    default: Any
    doc: str
    check: Check
    parse: Callable[[str], Any] = str
    hint: str = ""


class OptionError(ConfigError):
    """A family option with a bad value (or an unknown option), as fields.

    ``from_default`` tells whether the value came from the builder's defaults (a global key on
    the config side) rather than from the pathway entry itself.
    """

    def __init__(self, pathway: str, option: str, value: Any, problem: str, from_default: bool = False,
                 hint: str = ""):
        super().__init__(f"pathway {pathway!r}: option {option}={value!r} {problem}{hint}")
        self.pathway, self.option, self.value, self.problem = pathway, option, value, problem
        self.from_default, self.hint = from_default, hint

    def __reduce__(self):
        return (OptionError, (self.pathway, self.option, self.value, self.problem, self.from_default, self.hint))


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not true or false")


def number(name: str, default: float, doc: str, minimum: float = 0.0, strict: bool = False,
           integer: bool = False, hint: str = "") -> Option:
    """A finite number >= minimum (> minimum when ``strict``), an int when ``integer``."""
    wanted = f"must be {'an integer' if integer else 'a number'} {'>' if strict else '>='} {minimum:g}"

    def check(value: Any) -> Optional[str]:
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
            return wanted
        if value < minimum or (strict and value == minimum):
            return wanted
        return None

    return Option(name, default, doc, check, int if integer else float, hint)


def choice(name: str, default: str, choices: Sequence[str], doc: str) -> Option:
    """One of ``choices``."""
    valid = tuple(choices)

    def check(value: Any) -> Optional[str]:
        return None if value in valid else f"must be one of {', '.join(valid)}"

    return Option(name, default, doc, check, str)


def flag(name: str, default: bool, doc: str) -> Option:
    """True or False."""

    def check(value: Any) -> Optional[str]:
        return None if isinstance(value, bool) else "must be True or False"

    return Option(name, default, doc, check, parse_bool)


def parse_option(options: Sequence[Option], pathway: str, field_text: str) -> Tuple[str, Any]:
    """``"name=value"`` of a pathway entry -> (name, parsed value)."""
    name, _, text = (part.strip() for part in field_text.partition("="))
    option = _find(options, pathway, name, text)
    try:
        return name, option.parse(text)
    except ValueError:
        raise OptionError(pathway, name, text, f"cannot be read as {_kind(option)}", hint=option.hint) from None


def resolve_options(options: Sequence[Option], pathway: str, given: Mapping[str, Any],
                    defaults: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """``{option: value}`` for every declared option: ``given``, else ``defaults``, else the
    option's own default; each value checked. ``defaults`` may hold options of other families
    (only the declared ones are read); ``given`` may not."""
    defaults = defaults or {}
    for name in given:
        _find(options, pathway, name, given[name])
    values = {}
    for option in options:
        from_default = option.name not in given
        value = defaults.get(option.name, option.default) if from_default else given[option.name]
        problem = option.check(value)
        if problem:
            raise OptionError(pathway, option.name, value, problem, from_default, option.hint)
        values[option.name] = value
    return values


def _find(options: Sequence[Option], pathway: str, name: str, value: Any) -> Option:
    for option in options:
        if option.name == name:
            return option
    valid = ", ".join(o.name for o in options) or "none"
    raise OptionError(pathway, name, value, f"is not an option of this pathway's family (its options: {valid})")


def _kind(option: Option) -> str:
    return {float: "a number", int: "an integer", parse_bool: "true or false"}.get(option.parse, "text")
