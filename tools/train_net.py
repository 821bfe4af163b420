#!/usr/bin/env python
"""Train and evaluate plain detectors and MGD-distilled students (Detectron2 style).

    python tools/train_net.py --config-file configs/mini_digits/retinanet_R50_FPN.yaml
    python tools/train_net.py --config-file configs/mini_digits/mgd_retinanet_R50_to_R18_AMP.yaml
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS out/model_final.pth
    python tools/train_net.py --config-file MGD_CFG --eval-teacher   # sanity check of the teacher
    python tools/train_net.py --config-file CFG --num-gpus 8          # multi-GPU via launch()

Run it as a script: ``tools/`` is deliberately not a package (the Detectron2 wheel installs
its own top-level ``tools`` package, which ``from tools.train_net import main`` would import
instead); from Python, load it by file path (as ``tests/_tools.py`` does).

Anticipated errors (config, files, checkpoints, data, devices) end the run with one line
``ERROR: ...`` on stderr and exit code 1; tracebacks and the full config are in
OUTPUT_DIR/log.txt (mgd_det/engine/cli.py).
"""
import logging
import os

from detectron2.engine import default_argument_parser

from mgd_det.cfg_facts import is_mgd
from mgd_det.config import setup_cfg
from mgd_det.config_checks import validate_mgd_config
from mgd_det.data import register_config_datasets
from mgd_det.engine import MGDTrainer
from mgd_det.engine.checkpoint import MGDCheckpointer
from mgd_det.engine.cli import install_excepthook, quiet_default_setup, report_errors
from mgd_det.engine.launch import config_device, launch_processes
from mgd_det.errors import ConfigError
from mgd_det.modeling import build_teacher, build_teacher_cfg

logger = logging.getLogger("mgd_det.train_net")


def check_run_args(cfg, args):
    """Command-line flags that do not fit the config: errors before anything is built."""
    if args.eval_teacher and not is_mgd(cfg):
        raise ConfigError(
            "--eval-teacher needs an MGD config (MODEL.META_ARCHITECTURE: MGDDistiller), got "
            f"{cfg.MODEL.META_ARCHITECTURE} from {args.config_file}: to evaluate a plain detector "
            "use --eval-only MODEL.WEIGHTS path/to/model_final.pth", key="MODEL.META_ARCHITECTURE",
        )
    has_run = os.path.isdir(cfg.OUTPUT_DIR) and any(
        n == "last_checkpoint" or n.startswith("model_") and n.endswith(".pth") for n in os.listdir(cfg.OUTPUT_DIR)
    )
    if args.eval_only and not cfg.MODEL.WEIGHTS and not (args.resume and has_run):
        raise ConfigError(
            "--eval-only without trained weights would evaluate a randomly initialised model "
            "(MODEL.WEIGHTS is empty): add MODEL.WEIGHTS path/to/model_final.pth, or --resume to "
            f"evaluate the last checkpoint of OUTPUT_DIR ({cfg.OUTPUT_DIR})", key="MODEL.WEIGHTS",
        )


def setup(args):
    """Config (validated before any output: an error is never buried under the config dump),
    own data sets registered, logging to OUTPUT_DIR/log.txt. The one place a launch validates
    and registers: MGDTrainer trusts a config validated here (config_checks.validate_once)."""
    cfg = setup_cfg(args.config_file, args.opts)
    validate_mgd_config(cfg)
    check_run_args(cfg, args)
    cfg.freeze()
    quiet_default_setup(cfg, args)
    register_config_datasets(cfg)
    return cfg


def teacher_eval_cfg(cfg):
    """The teacher's config (at the student's test sizes), evaluated on the MGD config's test sets."""
    teacher_cfg = build_teacher_cfg(cfg).clone()
    teacher_cfg.defrost()
    teacher_cfg.DATASETS.TEST = cfg.DATASETS.TEST
    teacher_cfg.OUTPUT_DIR = os.path.join(cfg.OUTPUT_DIR, "teacher_eval")
    teacher_cfg.freeze()
    return teacher_cfg


@report_errors
def main(args):
    cfg = setup(args)
    if args.eval_teacher:
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
    install_excepthook()  # anticipated errors: one line on stderr (mgd_det/engine/cli.py)
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
