"""The MGD config is validated up front, naming the key; relative paths are
read from the file that set them (a _BASE_ file's own folder; the command line: the cwd).
One check registry, filled by the modules that own the keys; validated once per launch."""
import glob
import os

import pytest

from _tiny import MINI, REPO
from mgd_det.config import setup_cfg
from mgd_det.config_checks import CHECKS, register_config_check, validate_mgd_config, validate_once
from mgd_det.errors import ConfigError, UnknownConfigKeyError, UserFileNotFoundError

MGD = os.path.join(MINI, "mgd_retinanet_R50_R18_AMP.yaml")
PLAIN = os.path.join(MINI, "retinanet_R18_FPN.yaml")


def cfg_with(*opts, config=MGD):
    return setup_cfg(config, ["MODEL.DEVICE", "cpu", *opts])


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)),
                         ids=lambda p: os.path.relpath(p, REPO))
def test_every_shipped_config_validates(path):
    cfg = setup_cfg(path, ["MODEL.DEVICE", "cpu"])
    if cfg.MGD.WEIGHTING == "replay":
        pytest.skip("needs the trajectory file an earlier DistPro run writes")
    validate_mgd_config(cfg)


@pytest.mark.parametrize("opts,key", [
    (["MGD.NORM_GROUPS", "0"], "MGD.NORM_GROUPS"),
    (["MGD.UPDATE.NUM_BATCHES", "0"], "MGD.UPDATE.NUM_BATCHES"),
    (["MGD.LOSS_WEIGHT", "-1.0"], "MGD.LOSS_WEIGHT"),
    (["MGD.FACTORS", "[1e-7, 1e-7]"], "MGD.FACTORS"),
    (["MGD.FACTORS", "[1e-7, -1e-7, 1e-7, 1e-7]"], "MGD.FACTORS"),
    (["MGD.POSITIONS", "['res2', 'res9', 'res4', 'res5']"], "MGD.POSITIONS"),
    (["MGD.REDUCER", "MAX"], "MGD.REDUCER"),
    (["MGD.STUDENT_NORM", "LN"], "MGD.STUDENT_NORM"),
    (["MGD.WEIGHTING", "learned_typo"], "MGD.WEIGHTING"),
    (["MGD.KD.TEMPERATURE", "0.0"], "MGD.KD.TEMPERATURE"),
    (["MGD.KD.WEIGHT", "-0.5"], "MGD.KD.WEIGHT"),
    (["MGD.UPDATE.PERIOD", "-3"], "MGD.UPDATE.PERIOD"),
    (["MGD.TEACHER.OVERRIDES", "['MODEL.RETINANET.NUM_CLASSES']"], "MGD.TEACHER.OVERRIDES"),
    (["MGD.TEACHER.OVERRIDES", "['MODEL.RETINANET.NUM_CLASES', '3']"], "MGD.TEACHER.OVERRIDES"),
    (["MGD.TEACHER.OVERRIDES", "['MODEL.RETINANET.NUM_CLASSES', 'three']"], "MGD.TEACHER.OVERRIDES"),
    (["MGD.TEACHER.CONFIG_FILE", ""], "MGD.TEACHER.CONFIG_FILE"),
    (["MGD.TEACHER.CONFIG_FILE", "no_such_teacher.yaml"], "MGD.TEACHER.CONFIG_FILE"),
    (["MGD.STUDENT_META_ARCHITECTURE", "MGDDistiller"], "MGD.STUDENT_META_ARCHITECTURE"),
    (["MGD.STUDENT_META_ARCHITECTURE", "RetinaNett"], "MGD.STUDENT_META_ARCHITECTURE"),
    (["SOLVER.IMS_PER_BATCH", "0"], "SOLVER.IMS_PER_BATCH"),
    (["MODEL.RETINANET.NUM_CLASSES", "0"], "MODEL.RETINANET.NUM_CLASSES"),
    (["DATASETS.COCO_SETS", "('only_a_name',)"], "DATASETS.COCO_SETS"),
    (["MGD.UNLABELED.TEMPERATURE", "0.0"], "MGD.UNLABELED.TEMPERATURE"),
    (["MGD.PATHWAYS", "['AMP:res4:1.0', 'AMP:res4:2.0']"], "MGD.PATHWAYS"),
    (["MGD.DISTPRO.HELDOUT_FRACTION", "1.0"], "MGD.DISTPRO.HELDOUT_FRACTION"),
])
def test_bad_value_is_named(opts, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
        validate_mgd_config(cfg_with(*opts))
    assert "\n" not in str(info.value)


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigError) as info:
        validate_mgd_config(cfg_with("MGD.NORM_GROUPS", "0", "MGD.LOSS_WEIGHT", "-1.0", "MGD.REDUCER", "X"))
    for key in ("MGD.NORM_GROUPS", "MGD.LOSS_WEIGHT", "MGD.REDUCER"):
        assert key in str(info.value)


def test_plain_config_skips_mgd_checks():
    validate_mgd_config(cfg_with("MGD.NORM_GROUPS", "0", config=PLAIN))  # MGD keys unused there


def test_checks_are_extensible():
    @register_config_check
    def check_demo(cfg):
        if cfg.MGD.LOSS_WEIGHT == 0.5:
            yield "MGD.LOSS_WEIGHT 0.5 is not allowed by the demo check"

    try:
        with pytest.raises(ConfigError, match="demo check"):
            validate_mgd_config(cfg_with("MGD.LOSS_WEIGHT", "0.5"))
    finally:
        CHECKS.pop()


def test_checks_are_registered_by_the_modules_owning_the_keys():
    owners = {check.__module__ for check, _ in CHECKS}
    assert {"mgd_det.modeling.pathway_config", "mgd_det.modeling.weighting", "mgd_det.modeling.teacher",
            "mgd_det.modeling.meta_arch", "mgd_det.data.datasets", "mgd_det.data.unlabeled_cfg",
            "mgd_det.engine.distpro", "mgd_det.engine.assignment_hook"} <= owners
    # The builders raise through the same checks: the same text wherever a bad value is caught.
    from mgd_det.modeling.pathway_config import pathway_specs_from_cfg

    cfg = cfg_with("MGD.FACTORS", "[1e-7, 1e-7]")
    with pytest.raises(ConfigError) as by_builder:
        pathway_specs_from_cfg(cfg)
    with pytest.raises(ConfigError) as by_validation:
        validate_mgd_config(cfg)
    assert str(by_builder.value) == str(by_validation.value) and by_builder.value.key == "MGD.FACTORS"


def test_validate_once_trusts_only_the_same_values():
    cfg = cfg_with()
    assert validate_once(cfg)  # not validated yet: validates
    assert not validate_once(cfg)  # validated with these values: trusted
    cfg.MGD.LOSS_WEIGHT = -1.0  # changed after validation: validated again
    with pytest.raises(ConfigError, match=r"MGD\.LOSS_WEIGHT"):
        validate_once(cfg)
    assert validate_once(cfg_with())  # another config object with the same values: validated


def test_trainer_validates_only_a_config_not_validated_yet(tiny_cfg, tmp_path):
    """tools/train_net.py validates (and registers the data) before logging starts; the
    trainer it builds trusts that, while direct MGDTrainer(cfg) users are still validated."""
    from mgd_det.engine import MGDTrainer

    calls = []

    @register_config_check(mgd_only=False)
    def count(cfg):
        calls.append(cfg)
        return ()

    try:
        direct = tiny_cfg("retinanet_R18_FPN.yaml", tmp_path / "direct")
        MGDTrainer(direct)
        assert len(calls) == 1
        launched = tiny_cfg("retinanet_R18_FPN.yaml", tmp_path / "launched")
        validate_mgd_config(launched)  # what tools/train_net.py's setup does
        MGDTrainer(launched)
        assert len(calls) == 2 and calls[1] is launched
    finally:
        CHECKS.remove((count, False))


def test_core_errors_name_the_config_key(tiny_cfg, tmp_path):
    """The core describes a wider student by its family option; the Detectron2 side names the key
    its default came from, from the error's fields."""
    from detectron2.modeling import build_model

    cfg = tiny_cfg("mgd_retinanet_R50_R18_AMP.yaml", tmp_path, "MODEL.RESNETS.DEPTH", "50",
                   "MODEL.RESNETS.RES2_OUT_CHANNELS", "256",
                   "MGD.TEACHER.CONFIG_FILE", os.path.join(MINI, "retinanet_R18_FPN.yaml"))
    with pytest.raises(ConfigError, match=r"MGD\.ALLOW_CHANNEL_SHARING must be True, with the SM family") as info:
        build_model(cfg)
    assert info.value.key == "MGD.ALLOW_CHANNEL_SHARING" and "allow_sharing" not in str(info.value)


@pytest.mark.parametrize("opts,pattern", [
    (["MGD.NOT_A_KEY", "1"], r"unknown config key MGD\.NOT_A_KEY"),
    (["MGD.LOSS_WEIGHT", "1"], r"MGD\.LOSS_WEIGHT expects a value of type float.*1\.0"),
    (["MGD.NORM_GROUPS", "abc"], r"MGD\.NORM_GROUPS expects a value of type int"),
    (["MGD.LOSS_WEIGHT"], r"KEY VALUE pairs"),
    (["MGD.LOSS_WEIGHT", "1.0", "--resume"], r"--resume come after the KEY VALUE options"),
])
def test_merge_errors_name_the_key(opts, pattern):
    with pytest.raises(ConfigError, match=pattern):
        setup_cfg(PLAIN, opts)


def test_unknown_key_is_still_a_key_error():
    with pytest.raises(KeyError):
        setup_cfg(PLAIN, ["MGD.NOT_A_KEY", "1"])
    assert issubclass(UnknownConfigKeyError, ConfigError)


def test_missing_base_file_is_named(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text('_BASE_: "nowhere/Base.yaml"\n')
    with pytest.raises(UserFileNotFoundError, match=r"nowhere/Base\.yaml.*_BASE_ of .*child\.yaml"):
        setup_cfg(str(child))


def test_yaml_syntax_error_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  DEVICE: [cpu\n")
    with pytest.raises(ConfigError, match="bad.yaml.*not valid YAML"):
        setup_cfg(str(bad))


def _write_base_and_child(tmp_path):
    """configs/base/Base.yaml sets a relative teacher config next to itself; the child lives
    elsewhere and has a same-named decoy file that the old lookup would have picked."""
    base_dir, child_dir = tmp_path / "base", tmp_path / "child"
    base_dir.mkdir()
    child_dir.mkdir()
    (base_dir / "teacher.yaml").write_text(f'_BASE_: "{PLAIN}"\nMODEL:\n  RESNETS:\n    DEPTH: 34\n')
    (child_dir / "teacher.yaml").write_text(f'_BASE_: "{PLAIN}"\n')  # decoy
    (base_dir / "Base.yaml").write_text(
        f'_BASE_: "{MGD}"\nMGD:\n  TEACHER:\n    CONFIG_FILE: "teacher.yaml"\n    WEIGHTS: "t.pth"\n'
    )
    (base_dir / "t.pth").write_bytes(b"")
    (child_dir / "mgd.yaml").write_text('_BASE_: "../base/Base.yaml"\nMGD:\n  REDUCER: "SM"\n')
    return base_dir, child_dir


def test_relative_paths_resolve_against_the_base_file_that_set_them(tmp_path, monkeypatch):
    base_dir, child_dir = _write_base_and_child(tmp_path)
    monkeypatch.chdir(tmp_path)
    cfg = setup_cfg(str(child_dir / "mgd.yaml"), ["MODEL.DEVICE", "cpu"])
    assert cfg.MGD.TEACHER.CONFIG_FILE == str(base_dir / "teacher.yaml")
    assert cfg.MGD.TEACHER.WEIGHTS == str(base_dir / "t.pth")
    # Set in the child itself: the child's folder.
    (child_dir / "mgd2.yaml").write_text('_BASE_: "../base/Base.yaml"\nMGD:\n  TEACHER:\n    CONFIG_FILE: "teacher.yaml"\n')
    assert setup_cfg(str(child_dir / "mgd2.yaml")).MGD.TEACHER.CONFIG_FILE == str(child_dir / "teacher.yaml")


def test_command_line_paths_resolve_against_the_working_directory(tmp_path, monkeypatch):
    base_dir, child_dir = _write_base_and_child(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "teacher.yaml").write_text(f'_BASE_: "{PLAIN}"\n')
    monkeypatch.chdir(cwd)
    cfg = setup_cfg(str(child_dir / "mgd.yaml"), ["MGD.TEACHER.CONFIG_FILE", "teacher.yaml"])
    assert os.path.abspath(cfg.MGD.TEACHER.CONFIG_FILE) == str(cwd / "teacher.yaml")


def test_missing_weights_are_reported_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = setup_cfg(MGD)
    # The configs name the teacher run's output, which Detectron2 writes below the cwd.
    assert cfg.MGD.TEACHER.WEIGHTS == "output/mini_digits/retinanet_R50_FPN/model_final.pth"


@pytest.mark.parametrize("entry,pattern", [
    ("KD:1.0:focal_gamma=-1", r"MGD\.PATHWAYS entry 'KD:1.0:focal_gamma=-1': option focal_gamma=-1.0 must be a "
                              r"number >= 0 \(the dense KD's focal exponent; 0: the plain KL\), e\.g\. 2\.0"),
    ("AMP:res4:2e-6:norm_groups=0", r"MGD\.PATHWAYS entry 'AMP:res4:2e-6:norm_groups=0': option norm_groups=0 "
                                    r"must be an integer > 0"),
    ("KD:1.0:temprature=2", r"MGD\.PATHWAYS entry 'KD:1.0:temprature=2': option temprature='2' is not an option"),
])
def test_a_bad_option_in_a_pathway_entry_names_the_entry(entry, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        validate_mgd_config(cfg_with("MGD.PATHWAYS", f"['AMP:res5:1e-6', '{entry}']"))
    assert "\n" not in str(info.value)


def test_a_global_option_key_is_checked_once_even_with_several_pathways_reading_it():
    with pytest.raises(ConfigError) as info:
        validate_mgd_config(cfg_with("MGD.PATHWAYS", "['AMP:res4:1e-6', 'SM:res5:1e-6']", "MGD.STUDENT_NORM", "LN"))
    assert str(info.value).count("MGD.STUDENT_NORM must be one of BN, SyncBN, GN, none (got 'LN')") == 1
    assert info.value.key == "MGD.STUDENT_NORM"
