#!/usr/bin/env python
"""Train and evaluate plain detectors and MGD-distilled students (Detectron2 style).

    python tools/train_net.py --config-file configs/mini_digits/retinanet_R50_FPN.yaml
    python tools/train_net.py --config-file configs/mini_digits/mgd_retinanet_R50_to_R18_AMP.yaml
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS out/model_final.pth
    python tools/train_net.py --config-file MGD_CFG --eval-teacher   # sanity check of the teacher
    python tools/train_net.py --config-file CFG --num-gpus 8          # multi-GPU via launch()
"""
import logging
import os

import detectron2.utils.comm as comm
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils.logger import setup_logger

from mgd_det.config import setup_cfg
from mgd_det.engine import MGDTrainer, is_mgd
from mgd_det.engine.checkpoint import MGDCheckpointer
from mgd_det.engine.launch import config_device, launch_processes
from mgd_det.modeling import build_teacher, build_teacher_cfg

logger = logging.getLogger("mgd_det.train_net")


def setup(args):
    cfg = setup_cfg(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="mgd_det")
    return cfg


def teacher_eval_cfg(cfg):
    """The teacher's config, evaluated on the MGD config's test sets and test sizes."""
    teacher_cfg = build_teacher_cfg(cfg).clone()
    teacher_cfg.defrost()
    teacher_cfg.DATASETS.TEST = cfg.DATASETS.TEST
    teacher_cfg.INPUT.MIN_SIZE_TEST = cfg.INPUT.MIN_SIZE_TEST
    teacher_cfg.INPUT.MAX_SIZE_TEST = cfg.INPUT.MAX_SIZE_TEST
    teacher_cfg.OUTPUT_DIR = os.path.join(cfg.OUTPUT_DIR, "teacher_eval")
    teacher_cfg.freeze()
    return teacher_cfg


def main(args):
    cfg = setup(args)
    if args.eval_teacher:
        if not is_mgd(cfg):
            raise ValueError("--eval-teacher needs an MGD config (MODEL.META_ARCHITECTURE: MGDDistiller).")
        eval_cfg = teacher_eval_cfg(cfg)
        return MGDTrainer.test(eval_cfg, build_teacher(cfg, teacher_cfg=eval_cfg))
    if args.eval_only:
        model = MGDTrainer.build_model(cfg)
        # MGD-aware: plain student checkpoints, strict all-or-nothing loading, clear errors.
        MGDCheckpointer(model, save_dir=cfg.OUTPUT_DIR, teacher_weights=cfg.MGD.TEACHER.WEIGHTS).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return MGDTrainer.test(cfg, model)
    trainer = MGDTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def parse_args(argv=None):
    parser = default_argument_parser()
    parser.add_argument("--eval-teacher", action="store_true", help="evaluate the MGD config's teacher alone")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    launch_processes(  # gloo processes on the CPU whatever CUDA reports; Detectron2's launch on CUDA
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        device=config_device(args.config_file, args.opts),
    )
