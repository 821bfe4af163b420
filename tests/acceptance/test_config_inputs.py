"""Bad configs and command lines, as a new user writes them: missing or broken config files,
unknown keys, values of the wrong type or out of range, teacher settings that cannot work, a
device or process count the machine cannot give, flags in the wrong place. Each is one ERROR
line naming the key or file and the fix, before any training starts.
"""
import pytest

from _as_user import PLAIN, Case, check, params, write

pytestmark = [pytest.mark.acceptance, pytest.mark.slow]


def yaml_file(name, text):
    """A config file ``name`` in the case, and the command that reads it."""
    return (lambda u: u.tool("train_net", "--config-file", u.c(name)),
            lambda u: write(u.c(name), text.format(plain=PLAIN)))


def case_from_file(id_, name, text, error):
    argv, setup = yaml_file(name, text)
    return Case(id_, argv, setup=setup, error=error)


CASES = [
    # ------------------------------------------------------------ config files and keys
    Case("config_file_missing", lambda u: u.tool("train_net", "--config-file", "configs/nope.yaml"),
         error=r"^ERROR: config file configs/nope.yaml not found \(--config-file\): check the path"),
    Case("unknown_key_on_the_command_line", lambda u: u.plain("MGD.NOPE", "1"),
         error=r"unknown config key MGD.NOPE \(in the command-line options\): check its spelling; MGD keys are "
               r"declared in mgd_det/config.py"),
    case_from_file("unknown_key_in_a_yaml_file", "typo.yaml", '_BASE_: "{plain}"\nMGD:\n  REDUCR: "SM"\n',
                   r"unknown config key MGD.REDUCR \(in config file {case}/typo.yaml\): check its spelling"),
    case_from_file("yaml_syntax_error", "bad.yaml", "MODEL:\n  DEVICE: [cpu\n",
                   r"config file {case}/bad.yaml is not valid YAML: .+; fix its syntax"),
    case_from_file("base_file_missing", "child.yaml", '_BASE_: "Base-Nowhere.yaml"\n',
                   r"base config {case}/Base-Nowhere.yaml not found \(_BASE_ of {case}/child.yaml\): a relative "
                   r"_BASE_ is read from the folder of the file that names it"),
    Case("int_where_a_float_is_expected", lambda u: u.mgd("MGD.LOSS_WEIGHT", "1"),
         error=r"config key MGD.LOSS_WEIGHT expects a value of type float, got 1 \(int\) in the command-line "
               r"options \(write e.g. 1.0, not 1\)"),
    Case("text_where_an_int_is_expected", lambda u: u.mgd("MGD.NORM_GROUPS", "abc"),
         error=r"config key MGD.NORM_GROUPS expects a value of type int, got abc \(str\)"),
    Case("odd_number_of_command_line_options", lambda u: u.plain("SOLVER.BASE_LR"),
         error=r"command-line options must be KEY VALUE pairs, got an odd number \(\d+\) ending with '.*"
               r"SOLVER.BASE_LR': give every key a value"),
    # ------------------------------------------------------------ values
    Case("norm_groups_zero", lambda u: u.mgd("MGD.NORM_GROUPS", "0"),
         error=r"MGD.NORM_GROUPS must be an integer > 0 \(got 0\)"),
    Case("update_num_batches_zero", lambda u: u.mgd("MGD.UPDATE.NUM_BATCHES", "0"),
         error=r"MGD.UPDATE.NUM_BATCHES must be an integer > 0 \(got 0\): the assignment needs tracked batches"),
    Case("negative_loss_weight", lambda u: u.mgd("MGD.LOSS_WEIGHT", "-1.0"),
         error=r"MGD.LOSS_WEIGHT must be a number >= 0 \(got -1.0\) \(0 disables distillation\)"),
    Case("factors_shorter_than_positions", lambda u: u.mgd("MGD.FACTORS", "[1e-7, 1e-7]"),
         error=r"MGD.FACTORS has 2 entries but MGD.POSITIONS has 4 .*: give one factor per position"),
    Case("factors_with_a_nan", lambda u: u.mgd("MGD.FACTORS", "[2e-8, 2e-8, nan, 2e-7]"),
         error=r"config key MGD.FACTORS: \[2e-8, 2e-8, nan, 2e-7\] \(in the command-line options\) holds nan, "
               r"which is not a finite number: give finite numbers only"),
    Case("unknown_position", lambda u: u.mgd("MGD.POSITIONS", "['res2', 'res3', 'res4', 'res9']"),
         error=r"MGD.POSITIONS: unknown position\(s\) \['res9'\]; valid: res2, res3, res4, res5, p2"),
    Case("no_position_at_all", lambda u: u.mgd("MGD.POSITIONS", "[]", "MGD.FACTORS", "[]"),
         error=r"MGD.POSITIONS is empty .*: an MGD run needs at least one pathway to distil; list positions"),
    Case("unknown_reducer", lambda u: u.mgd("MGD.REDUCER", "MAXPOOL"),
         error=r"MGD.REDUCER must be one of SM, RD, AMP, SP \(got 'MAXPOOL'\)"),
    Case("unknown_student_norm", lambda u: u.mgd("MGD.STUDENT_NORM", "LayerNorm"),
         error=r"MGD.STUDENT_NORM must be one of BN, SyncBN, GN, none \(got 'LayerNorm'\)"),
    Case("unknown_weighting", lambda u: u.mgd("MGD.WEIGHTING", "constnat"),
         error=r"MGD.WEIGHTING must be one of constant, learned, replay \(got 'constnat'\)"),
    Case("kd_temperature_zero", lambda u: u.mgd("MGD.KD.ENABLED", "True", "MGD.KD.TEMPERATURE", "0.0"),
         error=r"MGD.KD.TEMPERATURE must be a number > 0 \(got 0.0\), e.g. 1.0"),
    Case("apply_delay_not_below_the_update_period",
         lambda u: u.mgd("MGD.UPDATE.APPLY_DELAY", "5", "MGD.UPDATE.PERIOD", "2", "SOLVER.MAX_ITER", "8"),
         error=r"MGD.UPDATE.APPLY_DELAY \(5\) must be < MGD.UPDATE.PERIOD \(2\): .*lower APPLY_DELAY or raise PERIOD"),
    Case("ims_per_batch_zero", lambda u: u.plain("SOLVER.IMS_PER_BATCH", "0"),
         error=r"SOLVER.IMS_PER_BATCH must be an integer > 0 \(got 0\)"),
    Case("max_iter_zero", lambda u: u.plain("SOLVER.MAX_ITER", "0"),
         error=r"SOLVER.MAX_ITER must be an integer > 0 \(got 0\): the number of training iterations"),
    Case("output_dir_under_a_regular_file", lambda u: u.plain(run=u.c("file", "out")),
         setup=lambda u: write(u.c("file"), "x"),
         error=r"OUTPUT_DIR {case}/file/out lies under {case}/file, which is a file, not a folder: "
               r"choose another OUTPUT_DIR"),
    # ------------------------------------------------------------ the teacher's config
    Case("teacher_overrides_odd_count", lambda u: u.mgd("MGD.TEACHER.OVERRIDES", "['MODEL.RETINANET.NUM_CLASSES']"),
         error=r"MGD.TEACHER.OVERRIDES must alternate KEY and VALUE \(got 1 items: .*\), e.g. "),
    Case("teacher_overrides_unknown_key",
         lambda u: u.mgd("MGD.TEACHER.OVERRIDES", "['MODEL.RETINANET.NUM_CLASES', '3']"),
         error=r"MGD.TEACHER.OVERRIDES: unknown key 'MODEL.RETINANET.NUM_CLASES' \(check its spelling\)"),
    Case("teacher_config_file_missing", lambda u: u.mgd("MGD.TEACHER.CONFIG_FILE", "teacher_typo.yaml"),
         error=r"MGD.TEACHER.CONFIG_FILE teacher_typo.yaml not found \(a relative path is read from the folder of "
               r"the config file that sets it"),
    Case("teacher_config_file_empty", lambda u: u.mgd("MGD.TEACHER.CONFIG_FILE", ""),
         error=r"MGD.TEACHER.CONFIG_FILE is empty: set it to the teacher's plain Detectron2 config"),
    Case("teacher_and_student_input_formats_differ", lambda u: u.mgd("MGD.TEACHER.OVERRIDES", "['INPUT.FORMAT', 'L']"),
         error=r"INPUT.FORMAT 'BGR' \(the student's\) and the teacher's INPUT.FORMAT 'L' .*and only RGB<->BGR is "
               r"converted: set INPUT.FORMAT 'L' for the student, or distil from a teacher trained on 'BGR'"),
    # ------------------------------------------------------------ device, processes, flags
    Case("device_cuda_without_cuda", lambda u: u.plain("MODEL.DEVICE", "cuda"),
         env=lambda u: {"CUDA_VISIBLE_DEVICES": ""},  # no CUDA device, on any machine
         error=r"MODEL.DEVICE is 'cuda' but torch sees no CUDA device .*; set MODEL.DEVICE cpu, or leave it unset"),
    Case("two_processes_with_an_odd_batch",
         lambda u: u.plain("SOLVER.IMS_PER_BATCH", "3", flags=["--num-gpus", "2"]),
         error=r"SOLVER.IMS_PER_BATCH 3 is not divisible by the 2 processes \(SOLVER.IMS_PER_BATCH, --num-gpus\): "
               r"use a multiple of 2"),
    Case("eval_only_without_weights", lambda u: u.plain(flags=["--eval-only"]),
         error=r"--eval-only without trained weights would evaluate a randomly initialised model \(MODEL.WEIGHTS is "
               r"empty\): add MODEL.WEIGHTS path/to/model_final.pth, or --resume"),
    Case("eval_teacher_with_a_plain_config", lambda u: u.plain(flags=["--eval-teacher"]),
         error=r"--eval-teacher needs an MGD config .*got RetinaNet from \S+retinanet_R18_FPN.yaml: to evaluate a "
               r"plain detector use --eval-only MODEL.WEIGHTS"),
    Case("flag_after_the_key_value_options", lambda u: u.plain() + ["--resume"],
         error=r"command-line flag\(s\) --resume come after the KEY VALUE options, .*put flags such as --resume, "
               r"--eval-only, --num-gpus before the options"),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_config_or_command_line(case, user):
    check(case, user)
