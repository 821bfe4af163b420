"""Matching Guided Distillation for object detectors (Detectron2 extension)."""
