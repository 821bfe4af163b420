"""Every ``cfg.MGD.*`` key, declared once with what it means.

Call :func:`add_mgd_config` on a fresh ``get_cfg()`` before merging a config file; the
helper :func:`get_mgd_cfg` does both.

A leaf, as in Detectron2's projects: it imports Detectron2's ``CfgNode`` and the leaf helpers
(config_paths, device, errors), never ``mgd_det.data`` / ``mgd_det.modeling``. Those register
their data sets, the ``MGDDistiller`` meta-architecture and their key checks
(:mod:`mgd_det.config_checks`) when imported: entry points import them
(``import mgd_det.modeling  # registers``).
"""

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from mgd_det.config_paths import merge_config, resolve_path_key
from mgd_det.device import AUTO, resolve_cfg_device


def add_mgd_config(cfg: CN) -> CN:
    """Declare the MGD keys on ``cfg`` (in place) and return it."""
    # Detectron2's default "cuda" would be indistinguishable from an explicit choice: "auto"
    # means "not set", resolved by setup_cfg to cuda when available, else cpu (mgd_det/device.py).
    cfg.MODEL.DEVICE = AUTO
    cfg.MGD = CN()
    # Meta-architecture of the student when MODEL.META_ARCHITECTURE is "MGDDistiller"
    # (e.g. "RetinaNet", "GeneralizedRCNN"). The rest of cfg.MODEL describes the student.
    cfg.MGD.STUDENT_META_ARCHITECTURE = "RetinaNet"

    cfg.MGD.TEACHER = CN()
    # Plain Detectron2 config file of the teacher (a relative path is read from the folder of
    # the config file that sets it; on the command line, from the working directory).
    cfg.MGD.TEACHER.CONFIG_FILE = ""
    # Teacher checkpoint (.pth / .pkl). Loaded strictly: missing or unexpected keys are errors.
    cfg.MGD.TEACHER.WEIGHTS = ""
    # Extra "KEY VALUE" overrides applied to the teacher config after its file.
    cfg.MGD.TEACHER.OVERRIDES = []
    # Allow a teacher checkpoint with missing/unexpected keys (logged loudly). Off by default.
    cfg.MGD.TEACHER.ALLOW_PARTIAL_LOAD = False

    # Distillation positions, by Detectron2 names: "res2".."res5" (last block of each
    # ResNet stage, taken before its final ReLU) and FPN outputs "p2".."p7".
    cfg.MGD.POSITIONS = ["res2", "res3", "res4", "res5"]
    # Loss factor per position (same order as POSITIONS): the weight of each MGD pathway,
    # applied to its summed partial L2 loss divided by the images of the local batch. With
    # data-parallel gradient averaging that is the loss per image over the images of all
    # processes, so a factor means the same on 1 or 64 GPUs. The original detection code
    # divided by 5e7, 5e7, 5e6, 5e6 (res2..res5) and by the *global* batch on each of its 8
    # GPUs before DDP averaged: its effective factors were 1/(8 * 5e7) etc. at 8 GPUs.
    cfg.MGD.FACTORS = [2e-8, 2e-8, 2e-7, 2e-7]
    # Channel reducer of the common case: "AMP" (absolute max pooling, paper default), "RD"
    # (random drop), "SP" (simple max pooling) or "SM" (sparse matching, one teacher channel each).
    cfg.MGD.REDUCER = "AMP"
    # Norm layer applied to student features inside the distillation branch only:
    # "BN", "SyncBN", "GN" or "none". GN suits small per-GPU detection batches.
    cfg.MGD.STUDENT_NORM = "BN"
    # Number of groups when STUDENT_NORM is "GN" (reduced to a divisor of the channels).
    cfg.MGD.NORM_GROUPS = 32
    # Let several student channels share one teacher channel when the student is wider
    # than the teacher (only with REDUCER "SM"). Off: such a pair is an error.
    cfg.MGD.ALLOW_CHANNEL_SHARING = False
    # Explicit pathways, replacing POSITIONS / FACTORS / REDUCER / KD.ENABLED when non-empty:
    # "[NAME=]FAMILY[:POSITION][:FACTOR][:option=value...]" each, e.g. ["AMP:res4:2e-6",
    # "SM:res4:1e-6", "PKD:p3:1.0", "KD:1.0:temperature=2"]. Families (mgd_det/matching/families/,
    # each with its options): SM / RD / AMP / SP (MGD, matched channels), PKD (standardised
    # feature L2, no matching), AT (attention maps, across positions too: "AT:res4<res5"),
    # KD / BOX (a RetinaNet head's logits / box deltas), RPN_KD / RPN_BOX (an R-CNN's
    # objectness / anchor deltas), ROI_KD / ROI_BOX (its box head on the distillation ROIs,
    # see RCNN.ROIS_PER_IMAGE), MASK_KD (its mask head). An option an entry leaves out takes
    # its global key (STUDENT_NORM, NORM_GROUPS, ALLOW_CHANNEL_SHARING, KD.*).
    # Default names: family_position in lower case ("amp_res4", "kd"); losses are
    # "loss_<name>". MGD pathways sharing a position and group size share one matching.
    cfg.MGD.PATHWAYS = []
    # Multiplier of every pathway's factor, KD included (0 disables the distillation losses,
    # keeping the wrapper). Always taken from the config, never from a checkpoint.
    cfg.MGD.LOSS_WEIGHT = 1.0
    # Loss weighting over the pathways, by name in mgd_det.modeling.weighting.LOSS_WEIGHTINGS:
    # "constant" (factor x LOSS_WEIGHT each), "learned" (DistPro: weights learned by a meta-step,
    # see MGD.DISTPRO) or "replay" (a learned run's weight trajectory replayed). A learned
    # weighting keeps its own parameters, optimizer and checkpoint entry, outside the student's.
    cfg.MGD.WEIGHTING = "constant"

    # DistPro (MGD.WEIGHTING "learned" / "replay"; mgd_det/engine/distpro.py).
    cfg.MGD.DISTPRO = CN()
    # M: iterations between meta-steps (each costs about 2-3 training steps).
    cfg.MGD.DISTPRO.PERIOD = 10
    # Adam learning rate of the pathway logits.
    cfg.MGD.DISTPRO.LR = 0.05
    # Share of the training set held out for the meta-step's task loss (never trained on).
    cfg.MGD.DISTPRO.HELDOUT_FRACTION = 0.05
    # LR of the virtual SGD step; 0: the student's current LR per parameter (follows the schedule).
    cfg.MGD.DISTPRO.VIRTUAL_LR = 0.0
    # Norm of the finite-difference perturbation of the Hessian-vector product (eps = radius /
    # ||xi v||, as in DARTS, whose 0.01 is 26-72 % off on a detector; 1e-4: ~1.5 %, BENCHMARKS §7d).
    cfg.MGD.DISTPRO.FD_RADIUS = 1e-4
    # How the meta-step gets the Hessian-vector product: "finite_difference" (two extra
    # gradients, FD_RADIUS) or "exact" (double backward: no finite-difference noise, but more
    # memory and not every op supports it; for small models, tests and checking FD_RADIUS).
    cfg.MGD.DISTPRO.HYPERGRADIENT = "finite_difference"
    # "replay": the trajectory JSON of a learned run (its OUTPUT_DIR/distpro_trajectory.json).
    cfg.MGD.DISTPRO.TRAJECTORY = ""
    # "replay": SOLVER.MAX_ITER of the run that recorded TRAJECTORY, stretched linearly to this
    # run's SOLVER.MAX_ITER. 0: the one recorded in the trajectory file (> 0 overrides it).
    cfg.MGD.DISTPRO.REPLAY_SOURCE_ITERS = 0

    cfg.MGD.UPDATE = CN()
    # Iterations between assignment updates; 0 means one epoch
    # (ceil(len(train set) / SOLVER.IMS_PER_BATCH)).
    cfg.MGD.UPDATE.PERIOD = 0
    # From this iteration on, use SLOW_PERIOD instead of PERIOD (0: never slow down).
    cfg.MGD.UPDATE.SLOW_AFTER = 0
    # Period (iterations) used after SLOW_AFTER.
    cfg.MGD.UPDATE.SLOW_PERIOD = 0
    # Number of training batches tracked (eval mode, no grad) per assignment update.
    cfg.MGD.UPDATE.NUM_BATCHES = 20
    # Log tracking progress every this many batches.
    cfg.MGD.UPDATE.LOG_PERIOD = 5
    # Iterations between the end of an update's tracking and the moment its new assignment
    # takes effect. 0: synchronous (training waits for the solve). > 0: the host solve runs
    # in a worker process while training continues, and the result is installed exactly this
    # many iterations later (waiting only if it is not ready), so runs stay deterministic and
    # resumable. Must be < PERIOD (and < SLOW_PERIOD once active): checked up front; with
    # PERIOD 0 (one epoch) a shorter epoch only warns. 20 covers a ~1 s solve at GPU speeds
    # (~0.1 s per iteration on the bundled data).
    cfg.MGD.UPDATE.APPLY_DELAY = 20

    cfg.MGD.KD = CN()
    # Add Hinton knowledge distillation on the classification logits of the heads in the
    # common case (dense RetinaNet heads: sigmoid per anchor and class; not R-CNN heads).
    cfg.MGD.KD.ENABLED = False
    # Factor of the KD pathway (named "kd", loss "loss_kd") in the common case.
    cfg.MGD.KD.WEIGHT = 1.0
    # KD temperature (the original MGD used 1.5 for classification).
    cfg.MGD.KD.TEMPERATURE = 1.0
    # Foreground temperature tau of the dense KD and BOX pathways (RetinaNet-style heads): an
    # anchor's foreground weight is sigmoid(teacher's largest logit / tau), and both losses are
    # normalised by the teacher's foreground mass (the sum of these weights). 1: the teacher's
    # probability itself; 0.1: close to the indicator of p >= 0.5 (mgd_det/matching/kd.py).
    cfg.MGD.KD.FOREGROUND_TEMPERATURE = 0.1
    # Focal exponent gamma of the dense KD pathway: each element's KL is weighted by
    # |student probability - teacher probability|^gamma (detached), as the focal loss weights
    # its terms, so the ~10^4 background elements a student already matches stop swamping the
    # foreground ones. 0: the plain KL (mgd_det/matching/kd.py, docs/BENCHMARKS.md §10).
    cfg.MGD.KD.FOCAL_GAMMA = 2.0

    cfg.MGD.RCNN = CN()
    # Distillation ROIs per image of the ROI_KD / ROI_BOX / MASK_KD pathways: the student's
    # most confident RPN proposals (after NMS; fewer when it has fewer), on which both box heads
    # (and, where the teacher finds an object, both mask heads) run, each from its own features.
    cfg.MGD.RCNN.ROIS_PER_IMAGE = 32
    # The most ROIs per image the MASK_KD pathway runs both mask heads on: of the distillation
    # ROIs the teacher calls foreground, the ones it is surest of (a mask head costs ~4x a box
    # head per ROI; Detectron2 trains its own on the foreground quarter of 128-512 sampled ROIs).
    cfg.MGD.RCNN.MASK_ROIS_PER_IMAGE = 8

    # Flag NaN/Inf teacher/student features every this many iterations (device-side, read
    # only when training stops, to name the position behind a NaN loss); 0 disables it.
    cfg.MGD.CHECK_FINITE_PERIOD = 1
    # Wrap the student in DDP with find_unused_parameters (only if your model needs it).
    cfg.MGD.FIND_UNUSED_PARAMETERS = False

    # Your own COCO-format data sets, registered before training: "NAME:ANNOTATIONS.json:IMAGE_DIR"
    # each (relative paths: from the working directory), e.g. ("my_train:d/train.json:d/images",).
    # Use the names in DATASETS.TRAIN / TEST; see datasets/README.md.
    cfg.DATASETS.COCO_SETS = ()

    cfg.MGD.UNLABELED = CN()
    # Unlabeled image folders, "NAME:PATH" each (searched recursively; PNG/JPEG/BMP/WebP/TIFF),
    # registered as data sets NAME; a "folder:PATH" name in DATASETS.TRAIN works too.
    cfg.MGD.UNLABELED.FOLDERS = ()
    # Draw unlabeled images "preferential" (by tempered teacher score) or "uniform".
    cfg.MGD.UNLABELED.SAMPLING = "preferential"
    # Tempering T of p ∝ (score + SCORE_EPS)^(1/T): 1 = proportional, smaller = greedier.
    cfg.MGD.UNLABELED.TEMPERATURE = 1.0
    # Share u of uniform sampling mixed in: p = (1 - u) * tempered + u / N.
    cfg.MGD.UNLABELED.UNIFORM_SHARE = 0.2
    # Added to every score before tempering (keeps zero-score images reachable).
    cfg.MGD.UNLABELED.SCORE_EPS = 0.01
    # Image score: "rank" (percentile in the pool by class evidence, the sum over detected
    # classes of the teacher's best score: only the order counts, so a weak teacher ranks too),
    # "relative" (sum of detection scores >= min(SCORE_THRESH, the pool's SCORE_QUANTILE of
    # per-image max scores), the other images ordered below by their best detection), "mass"
    # (sum of detection scores >= SCORE_THRESH) or "max". Uninformative scores: uniform
    # sampling. See mgd_det/data/scoring.py.
    cfg.MGD.UNLABELED.SCORE = "rank"
    # Teacher detection confidence counted in the "mass" score (the most "relative" asks; not
    # used by "rank" and "max").
    cfg.MGD.UNLABELED.SCORE_THRESH = 0.5
    # "relative": quantile of the pool's per-image maximum detection scores used as threshold.
    cfg.MGD.UNLABELED.SCORE_QUANTILE = 0.9
    # Images per teacher forward in the scoring pass.
    cfg.MGD.UNLABELED.SCORE_BATCH_SIZE = 8
    # Score cache file ("": OUTPUT_DIR/unlabeled_scores.json); runs sharing a teacher may share it.
    cfg.MGD.UNLABELED.SCORE_CACHE = ""
    # Seconds between progress lines (with ETA) of the scoring pass.
    cfg.MGD.UNLABELED.SCORE_LOG_PERIOD = 10.0
    # Share of each batch's images drawn from the labeled sets when DATASETS.TRAIN mixes
    # labeled and unlabeled sets (detection losses on those, distillation on all).
    cfg.MGD.UNLABELED.LABELED_SHARE = 0.5
    # Iterations between logs of the sampling distribution (entropy, top-decile share).
    cfg.MGD.UNLABELED.STATS_PERIOD = 20
    return cfg


def get_mgd_cfg() -> CN:
    """A Detectron2 default config with the MGD keys declared."""
    return add_mgd_config(get_cfg())


def setup_cfg(config_file: str, opts=()) -> CN:
    """Default config + MGD keys + ``config_file`` + ``opts``; teacher paths made usable.

    A relative MGD.TEACHER.CONFIG_FILE / WEIGHTS is read from the folder of the config file
    that sets it (a ``_BASE_`` file's own folder when set there; the working directory when
    set on the command line), then from the working directory and the folder of
    ``config_file`` (see mgd_det/config_paths.py). Unknown keys, type mismatches and missing
    files raise :mod:`mgd_det.errors` exceptions naming the key or file. ``MODEL.DEVICE``
    left unset becomes "cuda" when available, else "cpu" (logged); an explicit value wins
    (ValueError if unusable).
    """
    cfg = get_mgd_cfg()
    merge_config(cfg, config_file, opts)
    resolve_path_key(cfg, "MGD.TEACHER.CONFIG_FILE", config_file, opts, missing_from="origin")
    # A missing teacher checkpoint is usually one its run will write under OUTPUT_DIR, which
    # Detectron2 reads from the working directory.
    resolve_path_key(cfg, "MGD.TEACHER.WEIGHTS", config_file, opts, missing_from="cwd")
    resolve_cfg_device(cfg)
    return cfg
