"""The pathway family registry: a new family is one registration, and the built-in ones
build what they did (Detectron2-free)."""
import pytest
import torch

from mgd_det.errors import ConfigError
from mgd_det.matching import PathwayDistiller, family_names, parse_pathway, register_family
from mgd_det.matching.families import FAMILIES, reads_head
from mgd_det.matching.outputs import NetOutputs, TeacherOutput
from mgd_det.matching.families.box import OutputBoxPathway
from mgd_det.matching.families.kd import OutputKDPathway
from mgd_det.matching.families.mgd import MatchedFeaturePathway
from mgd_det.matching.families.pkd import StandardizedFeaturePathway
from mgd_det.matching.pathways import Pathway


class MeanGap(Pathway):
    """|mean student - mean teacher| per image: a family no one ships."""

    def forward(self, student, teacher, teacher_features):
        s = student.features[self.spec.position]
        return (s.mean() - teacher_features[self.spec.position].mean()).abs()


@pytest.fixture
def mean_gap_family():
    register_family("GAP")(lambda spec, ctx, options: MeanGap(spec))
    try:
        yield
    finally:
        FAMILIES._entries.pop("GAP")


def test_built_in_families_in_order_and_what_they_build():
    assert family_names() == ("SM", "RD", "AMP", "SP", "PKD", "KD", "BOX")
    assert [f for f in family_names() if reads_head(f)] == ["KD", "BOX"]
    distiller = PathwayDistiller(
        [parse_pathway(t) for t in ("AMP:c3", "sm=SM:c3", "PKD:c4", "KD", "BOX")],
        {"c3": (4, 8), "c4": (4, 6)}, num_classes=3,
    )
    kinds = {name: type(p) for name, p in distiller.pathways.items()}
    assert kinds == {"amp_c3": MatchedFeaturePathway, "sm": MatchedFeaturePathway,
                     "pkd_c4": StandardizedFeaturePathway, "kd": OutputKDPathway, "box": OutputBoxPathway}
    assert sorted(distiller.matchers) == ["c3_g1", "c3_g2"] and distiller.needs_head


def test_a_registered_family_is_parsed_built_and_trained(mean_gap_family):
    spec = parse_pathway("GAP:c3:0.5")
    assert spec.name == "gap_c3" and not reads_head("GAP")
    distiller = PathwayDistiller([spec], {"c3": (2, 2)})
    student = torch.zeros(1, 2, 4, 4, requires_grad=True)
    losses = distiller(NetOutputs({"c3": student}), TeacherOutput({"c3": torch.ones(1, 2, 4, 4)}))
    assert losses["loss_gap_c3"].item() == pytest.approx(0.5)
    losses["loss_gap_c3"].backward()
    assert student.grad.abs().sum() > 0


def test_unknown_and_duplicate_families_are_refused():
    with pytest.raises(ConfigError, match="unknown pathway family 'NOPE'; valid: SM, RD, AMP"):
        parse_pathway("NOPE:c3")
    with pytest.raises(ValueError, match="already registered"):
        register_family("AMP")(lambda spec, ctx, options: None)
    with pytest.raises(ValueError, match="upper case"):
        register_family("gap")
