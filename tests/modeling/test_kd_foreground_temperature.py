"""MGD.KD.FOREGROUND_TEMPERATURE: declared once, checked (> 0), logged on resume,
and it reaches the KD and BOX pathways of a built model (and changes their losses)."""
import pytest
import torch

from _tiny import MINI
from mgd_det.config import setup_cfg
from mgd_det.config_checks import validate_mgd_config
from mgd_det.engine.resume_settings import LOGGED, RESUME_SETTINGS
from mgd_det.errors import ConfigError
from mgd_det.matching import NetOutputs, PathwaySpec, TeacherOutput
from mgd_det.matching.distiller import PathwayDistiller
from mgd_det.matching.foreground import FOREGROUND_TEMPERATURE

LABEL_FREE = "mgd_retinanet_R50_R18_labelfree_pool.yaml"
HEAD_PATHWAYS = ["MGD.PATHWAYS", "['AMP:res4:2e-6', 'KD:1.0', 'BOX:1.0']"]


def test_default_is_the_core_default_and_resume_logs_a_change():
    cfg = setup_cfg(f"{MINI}/{LABEL_FREE}", ["MODEL.DEVICE", "cpu"])
    assert cfg.MGD.KD.FOREGROUND_TEMPERATURE == FOREGROUND_TEMPERATURE == 0.1
    assert RESUME_SETTINGS["MGD.KD.FOREGROUND_TEMPERATURE"] == LOGGED


@pytest.mark.parametrize("value", ["0.0", "-0.1"])
def test_non_positive_foreground_temperature_is_named(value):
    cfg = setup_cfg(f"{MINI}/{LABEL_FREE}", ["MODEL.DEVICE", "cpu", "MGD.KD.FOREGROUND_TEMPERATURE", value])
    with pytest.raises(ConfigError, match=r"MGD\.KD\.FOREGROUND_TEMPERATURE must be a number > 0"):
        validate_mgd_config(cfg)


def test_core_distiller_refuses_a_non_positive_foreground_temperature():
    with pytest.raises(ConfigError, match="option fg_temperature=0.0 must be a number > 0"):
        PathwayDistiller([PathwaySpec("KD")], {}, option_defaults={"fg_temperature": 0.0}, num_classes=4)


def test_core_distiller_passes_it_to_kd_and_box():
    distiller = PathwayDistiller([PathwaySpec("KD"), PathwaySpec("BOX")], {}, option_defaults={"fg_temperature": 0.37}, num_classes=4)
    assert distiller.pathways["kd"].fg_temperature == pytest.approx(0.37)
    assert distiller.pathways["box"].fg_temperature == pytest.approx(0.37)
    # and it is what the losses use: a softer foreground weight gives another KD loss
    gen = torch.Generator().manual_seed(0)
    t_logits, s_logits = torch.randn(1, 4, 3, 3, generator=gen) - 2, torch.randn(1, 4, 3, 3, generator=gen)
    deltas = torch.randn(1, 4, 3, 3, generator=gen)
    student, teacher = NetOutputs({}, [s_logits], [deltas]), TeacherOutput({}, [t_logits], [deltas])
    sharp = PathwayDistiller([PathwaySpec("KD")], {}, option_defaults={"fg_temperature": 0.1}, num_classes=4)
    assert float(distiller.pathways["kd"](student, teacher, {})) != pytest.approx(
        float(sharp.pathways["kd"](student, teacher, {})), rel=1e-3)


def test_config_key_reaches_the_pathways_of_a_built_model(tmp_path, tiny_cfg):
    from detectron2.modeling import build_model

    cfg = tiny_cfg(LABEL_FREE, tmp_path, "MGD.TEACHER.CONFIG_FILE", "retinanet_R18_FPN.yaml", *HEAD_PATHWAYS,
                   "MGD.KD.FOREGROUND_TEMPERATURE", "0.25")
    pathways = build_model(cfg).distiller.pathways
    assert pathways["kd"].fg_temperature == pytest.approx(0.25)
    assert pathways["box"].fg_temperature == pytest.approx(0.25)
