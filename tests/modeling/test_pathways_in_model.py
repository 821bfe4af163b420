"""Pathways in the Detectron2 model: explicit PATHWAYS, shared solve, KD weighting, config
over checkpoint, mixed labeled/unlabeled batches."""
import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from _tiny import train
from mgd_det.matching import solve_assignment

MGD_RETINA = "mgd_retinanet_R50_R18_AMP.yaml"
EXPLICIT = '["AMP:res4:2e-6", "SM:res4:1e-6", "PKD:p3:0.5", "KD:2.0", "BOX:1.0"]'


@pytest.fixture
def cfg_of(tiny_cfg, tmp_path):
    def make(*opts, config=MGD_RETINA, out=None):
        return tiny_cfg(config, out or tmp_path, *opts)
    return make


def fixed_batch(cfg, n=2):
    mapper = DatasetMapper(cfg, is_train=True)
    return [mapper(d) for d in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:n]]


@pytest.mark.slow
def test_explicit_pathways_build_share_matching_and_train(cfg_of, tmp_path):
    cfg = cfg_of("MGD.PATHWAYS", EXPLICIT, "SOLVER.MAX_ITER", "2")
    trainer, _ = train(cfg)
    model = trainer.unwrapped_model
    d = model.distiller
    assert d.pathway_names == ("amp_res4", "sm_res4", "pkd_p3", "kd", "box")
    # R50 -> R18 at res4: 1024 vs 256 channels, AMP G = 4, SM G = 1: two matchers, one each.
    assert sorted(d.matchers) == ["res4_g1", "res4_g4"]
    assert d.pathways["amp_res4"].matcher is d.matchers["res4_g4"]
    assert bool(d.matchers["res4_g1"].margin_set), "res4 margins come from the teacher's BN"
    history = trainer.storage.histories()
    for name in d.pathway_names:
        assert f"loss_{name}" in history, name
    # The FPN is tapped for p3 and the head for KD/BOX: the teacher runs its whole backbone.
    assert model._teacher_network is model.teacher.backbone


def test_kd_is_a_weighted_pathway_and_loss_weight_scales_every_pathway(cfg_of):
    with EventStorage():
        _kd_and_loss_weight(cfg_of)


def _kd_and_loss_weight(cfg_of):
    base = cfg_of("MGD.KD.ENABLED", "True", "MGD.KD.WEIGHT", "2.0")
    torch.manual_seed(0)
    model = build_model(base).train()
    batch = fixed_batch(base)
    torch.manual_seed(1)
    losses = model(batch)
    assert model.distiller.weighting.weights()["kd"] == pytest.approx(2.0)
    halved = cfg_of("MGD.KD.ENABLED", "True", "MGD.KD.WEIGHT", "2.0", "MGD.LOSS_WEIGHT", "0.5")
    torch.manual_seed(0)
    other = build_model(halved).train()
    torch.manual_seed(1)
    got = other(batch)
    for key in ("loss_kd", "loss_mgd_res2", "loss_mgd_res5"):
        assert float(got[key]) == pytest.approx(0.5 * float(losses[key]), rel=1e-5), key
    assert float(got["loss_cls"]) == pytest.approx(float(losses["loss_cls"]), rel=1e-5)


@pytest.mark.slow
def test_config_value_wins_over_checkpoint(cfg_of, tmp_path):
    """A checkpoint trained with LOSS_WEIGHT 0, loaded under a config saying 1.0, trains with 1.0."""
    cfg0 = cfg_of("MGD.LOSS_WEIGHT", "0.0", "SOLVER.MAX_ITER", "1", out=tmp_path / "zero")
    trainer0, _ = train(cfg0)
    assert float(trainer0.storage.history("loss_mgd_res4").latest()) == 0.0
    checkpoint = str(tmp_path / "zero" / "model_final.pth")
    cfg1 = cfg_of("MGD.LOSS_WEIGHT", "1.0", "SOLVER.MAX_ITER", "1", "MODEL.WEIGHTS", checkpoint, out=tmp_path / "one")
    trainer1, _ = train(cfg1)
    model = trainer1.unwrapped_model
    assert float(model.distiller.weighting.weights()["mgd_res4"]) == pytest.approx(cfg1.MGD.FACTORS[2])
    assert float(trainer1.storage.history("loss_mgd_res4").latest()) > 0.0


def test_shared_solve_in_the_model_matches_a_direct_solve(cfg_of):
    cfg = cfg_of("MGD.PATHWAYS", '["AMP:res3:1e-6", "SP:res3:1e-6"]')
    model = build_model(cfg)
    model.eval()
    d = model.distiller
    assert list(d.matchers) == ["res3_g4"]
    d.start_tracking()
    model.track_batch(fixed_batch(cfg))
    cost = d.matchers["res3_g4"].tracker.mean_cost().clone()
    d.finish_tracking()
    assert torch.equal(d.assignment("res3"), solve_assignment(cost))


def test_mixed_batch_keeps_the_detection_losses_of_its_labeled_images(cfg_of):
    with EventStorage():
        _mixed_batch(cfg_of)


def _mixed_batch(cfg_of):
    cfg = cfg_of()
    torch.manual_seed(0)
    model = build_model(cfg).train()
    # Batch statistics would tie an image's features to its batch mates: use running ones, and
    # restart RetinaNet's moving loss normaliser before each pass, so that the labeled image's
    # detection losses can be compared between a mixed batch and the image alone.
    for module in model.student.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    labeled, other = fixed_batch(cfg, 2)
    unlabeled = {k: v for k, v in other.items() if k != "instances"}
    mixed = model([labeled, unlabeled])
    del model.student.loss_normalizer  # created by the first pass; the next starts afresh
    alone = model.student([labeled])  # the plain detector on the labeled image alone
    for key in ("loss_cls", "loss_box_reg"):
        assert key in mixed and float(mixed[key]) == pytest.approx(float(alone[key]), rel=1e-4), key
    # Distillation sees both images: it differs from distilling the labeled image alone.
    assert float(mixed["loss_mgd_res3"]) != pytest.approx(float(model([labeled])["loss_mgd_res3"]), rel=1e-3)
    # Without any label: only distillation losses.
    only = model([unlabeled])
    assert sorted(only) == ["loss_mgd_res2", "loss_mgd_res3", "loss_mgd_res4", "loss_mgd_res5"]


@pytest.mark.parametrize(
    "opts,match",
    [
        (("MGD.PATHWAYS", '["AMP:res9"]'), r"MGD\.PATHWAYS entry 'AMP:res9': unknown position 'res9'"),
        (("MGD.PATHWAYS", '["KD:1.0"]', "MGD.KD.ENABLED", "True"), "add 'KD:<factor>' to MGD.PATHWAYS"),
        (("MGD.PATHWAYS", '["WHAT:res3"]'), "unknown pathway family 'WHAT'"),
    ],
)
def test_bad_pathway_configs(cfg_of, opts, match):
    with pytest.raises(ValueError, match=match):
        build_model(cfg_of(*opts))


def test_head_pathways_need_dense_heads(cfg_of, tiny_teacher_weights):
    cfg = cfg_of("MGD.PATHWAYS", '["AMP:res3", "KD"]', config="mgd_mask_rcnn_R50_R18_AMP.yaml")
    with pytest.raises(ValueError, match=r"KD/BOX pathways need dense \(RetinaNet\) heads on both teacher and student; "
                                         r"the student is two-stage \(R-CNN\).*use RPN_KD, RPN_BOX, ROI_KD"):
        build_model(cfg)


@pytest.mark.parametrize(
    "opts,match",
    [
        (("MGD.PATHWAYS", '["AMP:res4", "AMP:res4"]'), r"names \['amp_res4'\] more than once"),
        (("MGD.PATHWAYS", '["KD:1.0"]', "MGD.KD.ENABLED", "True"), "MGD.KD.ENABLED is set together with MGD.PATHWAYS"),
        (("MGD.PATHWAYS", '["AMP:res9"]'), "unknown position 'res9'"),
        (("MGD.PATHWAYS", '["AMP:res4:abc"]'), "factor 'abc' is not a number"),
    ],
)
def test_pathway_keys_are_validated_up_front(cfg_of, opts, match):
    from mgd_det.config_checks import validate_mgd_config
    from mgd_det.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        validate_mgd_config(cfg_of(*opts))


@pytest.mark.slow
def test_kd_alone_trains_with_no_feature_pathway(cfg_of):
    """The study's KD row (output distillation without MGD's feature pathways): one pathway,
    no channel matching to solve, and its KD settings those of the AMP + KD row it is compared
    with."""
    cfg = cfg_of("SOLVER.MAX_ITER", "2", config="mgd_retinanet_R50_R18_KD.yaml")
    with_features = cfg_of(config="mgd_retinanet_R50_R18_AMP_KD.yaml")
    assert cfg.MGD.KD == with_features.MGD.KD and list(with_features.MGD.POSITIONS)
    trainer, _ = train(cfg)
    d = trainer.unwrapped_model.distiller
    assert d.pathway_names == ("kd",) and not d.matchers
    history = trainer.storage.histories()
    assert "loss_kd" in history and not any(k.startswith("loss_amp") for k in history)
    assert torch.isfinite(torch.tensor(history["loss_kd"].latest()))
