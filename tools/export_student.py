#!/usr/bin/env python
"""Export the student of an MGD checkpoint as a plain Detectron2 checkpoint.

    python tools/export_student.py output/mgd_run/model_final.pth student.pth \
        [--config-file configs/mini_digits/retinanet_R18_FPN.yaml [KEY VALUE ...]] [--force]

Keeps the ``student.`` keys (prefix stripped), drops the distillation branch and the teacher
digest, and writes ``{"model": state_dict}``. The result loads in stock Detectron2 with the
student's plain config, e.g. ``train_net.py --eval-only MODEL.WEIGHTS student.pth``.

With ``--config-file`` (the student's plain config, or the MGD config it was trained with,
plus ``KEY VALUE`` overrides such as ``MODEL.RETINANET.NUM_CLASSES 3``) the student is first
loaded strictly into that model; only a verified export is written. The output is written
atomically; it never replaces the input, nor an existing file without ``--force``.
Anticipated errors print one ``ERROR:`` line and exit with code 1.
"""
import argparse
import logging
import os
import sys

logger = logging.getLogger("mgd_det.export_student")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="MGD checkpoint (e.g. model_final.pth)")
    parser.add_argument("output", help="where to write the plain student checkpoint")
    parser.add_argument("--config-file", default="", help="student's config, to verify the export")
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    parser.usage = parser.format_usage().replace("usage: ", "").strip() + " [KEY VALUE ...]"
    # KEY VALUE overrides may come anywhere after the two paths (before or after the options).
    args, opts = parser.parse_known_args(argv)
    unknown = [o for o in opts if o.startswith("--")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.opts = opts
    return args


def check_paths(args) -> None:
    from mgd_det.errors import ConfigError, UserFileNotFoundError

    if not os.path.isfile(args.checkpoint):
        raise UserFileNotFoundError(f"checkpoint {args.checkpoint} not found: check the path", path=args.checkpoint)
    if os.path.exists(args.output):
        if os.path.samefile(args.checkpoint, args.output):
            raise ConfigError(
                f"output {args.output} is the input checkpoint: exporting would replace the MGD "
                "checkpoint by its bare student; choose another output file", path=args.output,
            )
        if not args.force:
            raise ConfigError(f"output {args.output} exists: choose another file, or add --force to "
                              "replace it", path=args.output)
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise UserFileNotFoundError(f"output folder {folder} does not exist: create it first (mkdir -p {folder}) "
                                    "or choose another output path", path=folder)
    if args.opts and not args.config_file:
        raise ConfigError(f"config overrides {args.opts} need --config-file (the student's config)")


def verify(state, config_file: str, opts) -> None:
    """Load ``state`` strictly into the plain student built from ``config_file`` + ``opts``."""
    from detectron2.modeling import build_model

    from mgd_det.cfg_facts import detector_meta_architecture
    from mgd_det.config import setup_cfg
    from mgd_det.engine.checkpoint import incompatible_keys
    from mgd_det.errors import CheckpointError
    from mgd_det.modeling.teacher import incompatibility_problems

    cfg = setup_cfg(config_file, list(opts) + ["MODEL.DEVICE", "cpu"])
    cfg.MODEL.META_ARCHITECTURE = detector_meta_architecture(cfg)  # an MGD config: its student
    model = build_model(cfg)
    problems = incompatibility_problems(incompatible_keys(state, model.state_dict()))
    if problems:
        raise CheckpointError(
            f"the exported student does not fit {config_file} {' '.join(opts)}: {'; '.join(problems)}; "
            "nothing was written: give the student's config (depth, heads, number of classes as "
            "trained, e.g. MODEL.RETINANET.NUM_CLASSES N)"
        )
    logger.info("Verified: loads strictly into %s", config_file)


def main(argv=None) -> None:
    from mgd_det.atomic_io import atomic_torch_save
    from mgd_det.engine.checkpoint import read_student_state

    args = parse_args(argv)
    check_paths(args)
    state = read_student_state(args.checkpoint)
    if args.config_file:
        verify(state, args.config_file, args.opts)
    atomic_torch_save({"model": state}, args.output)
    logger.info("Wrote %d student tensors to %s", len(state), args.output)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from mgd_det.engine.cli import run_cli

    sys.exit(run_cli(main))
