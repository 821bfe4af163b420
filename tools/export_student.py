#!/usr/bin/env python
"""Export the student of an MGD checkpoint as a plain Detectron2 checkpoint.

    python tools/export_student.py output/mgd_run/model_final.pth student.pth \
        [--config-file configs/mini_digits/retinanet_R18_FPN.yaml]

Keeps the ``student.`` keys (prefix stripped), drops the distillation branch and the teacher
digest, and writes ``{"model": state_dict}``. The result loads in stock Detectron2 with the
student's plain config, e.g. ``train_net.py --eval-only MODEL.WEIGHTS student.pth``. With
``--config-file`` the export is checked by loading it strictly into that plain model.
"""
import argparse
import logging

import torch

from mgd_det.engine.checkpoint import export_student

logger = logging.getLogger("mgd_det.export_student")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="MGD checkpoint (e.g. model_final.pth)")
    parser.add_argument("output", help="where to write the plain student checkpoint")
    parser.add_argument("--config-file", default="", help="student's plain config, to verify the export")
    return parser.parse_args(argv)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    state = export_student(args.checkpoint, args.output)
    logger.info("Wrote %d student tensors to %s", len(state), args.output)
    if args.config_file:
        from detectron2.config import get_cfg
        from detectron2.modeling import build_model

        cfg = get_cfg()
        cfg.merge_from_file(args.config_file)
        cfg.MODEL.DEVICE = "cpu"
        build_model(cfg).load_state_dict(torch.load(args.output, weights_only=True)["model"], strict=True)
        logger.info("Verified: loads strictly into %s", args.config_file)


if __name__ == "__main__":
    main()
