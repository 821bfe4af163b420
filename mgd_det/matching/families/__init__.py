"""Pathway families, one module each: MGD's reducers (``mgd``), ``pkd``, ``attention`` (AT),
``kd``, ``box`` (dense heads), ``rpn``, ``roi``, ``mask`` (two-stage heads).

A family module holds its loss, its :class:`~mgd_det.matching.pathways.Pathway`, its options
and one ``@register_family`` line (see :mod:`.registry`); importing this package registers the
built-in ones, in the order error messages list them. A new family is a new module here and
one import line below (or its own import, from any package).
"""
from .registry import (
    FAMILIES,
    BuildContext,
    PathwayFamily,
    build_pathway,
    check_spec,
    declared_option,
    family,
    family_names,
    parse_pathway,
    parse_pathways,
    reads,
    reads_head,
    register_family,
)
from . import mgd, pkd, attention, kd, box, rpn, roi, mask  # noqa: E402,F401  (registers the built-in families)

__all__ = ["FAMILIES", "BuildContext", "PathwayFamily", "build_pathway", "check_spec", "declared_option", "family", "family_names",
           "parse_pathway", "parse_pathways", "reads", "reads_head", "register_family"]
