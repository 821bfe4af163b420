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
    assert family_names() == ("SM", "RD", "AMP", "SP", "PKD", "AT", "KD", "BOX",
                              "RPN_KD", "RPN_BOX", "ROI_KD", "ROI_BOX", "MASK_KD")
    assert [f for f in family_names() if reads_head(f)] == ["KD", "BOX", "RPN_KD", "RPN_BOX", "ROI_KD", "ROI_BOX",
                                                            "MASK_KD"]
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


class ScaledGap(MeanGap):
    def __init__(self, spec, scale):
        super().__init__(spec)
        self.scale = scale

    def forward(self, student, teacher, teacher_features):
        return self.scale * super().forward(student, teacher, teacher_features)


@pytest.fixture
def scaled_gap_family():
    """A family with its own option, declared and registered in one place, as a plugin module would."""
    from mgd_det.matching.options import number

    register_family("SGAP", options=(number("scale", 1.0, "how much the gap counts", strict=True),))(
        lambda spec, ctx, options: ScaledGap(spec, options["scale"]))
    try:
        yield
    finally:
        FAMILIES._entries.pop("SGAP")


def _gap_loss(distiller):
    feats = NetOutputs({"c3": torch.zeros(1, 2, 4, 4)}), TeacherOutput({"c3": torch.ones(1, 2, 4, 4)})
    return float(next(iter(distiller(*feats).values())))


def test_a_family_option_comes_from_the_entry_then_the_defaults_then_the_family(scaled_gap_family):
    channels = {"c3": (2, 2)}
    assert _gap_loss(PathwayDistiller([parse_pathway("SGAP:c3")], channels)) == pytest.approx(1.0)
    assert _gap_loss(PathwayDistiller([parse_pathway("SGAP:c3")], channels,
                                      option_defaults={"scale": 3.0, "temperature": 9.0})) == pytest.approx(3.0)
    spec = parse_pathway("g=SGAP:c3:1.0:scale=0.25")
    assert spec.options == {"scale": 0.25} and spec.name == "g"
    assert _gap_loss(PathwayDistiller([spec], channels, option_defaults={"scale": 3.0})) == pytest.approx(0.25)


def test_kd_options_set_on_the_entry_equal_the_same_values_given_as_defaults():
    gen = torch.Generator().manual_seed(0)
    t_logits, s_logits = torch.randn(1, 8, 3, 3, generator=gen) - 2, torch.randn(1, 8, 3, 3, generator=gen)
    student, teacher = NetOutputs({}, [s_logits], [torch.zeros(1, 8, 3, 3)]), TeacherOutput({}, [t_logits], [])
    by_entry = PathwayDistiller([parse_pathway("KD:1.0:temperature=2:focal_gamma=0.5:fg_temperature=0.3")], {},
                                num_classes=4)
    by_default = PathwayDistiller([parse_pathway("KD")], {}, num_classes=4,
                                  option_defaults={"temperature": 2.0, "focal_gamma": 0.5, "fg_temperature": 0.3})
    plain = PathwayDistiller([parse_pathway("KD")], {}, num_classes=4)
    loss = float(by_entry(student, teacher)["loss_kd"])
    assert loss == float(by_default(student, teacher)["loss_kd"]) != pytest.approx(float(plain(student, teacher)["loss_kd"]))


@pytest.mark.parametrize("text,match", [
    ("KD:1.0:tempreature=2", r"option tempreature='2' is not an option of this pathway's family \(its options: "
                             r"temperature, fg_temperature, focal_gamma\)"),
    ("KD:temperature=warm", r"option temperature='warm' cannot be read as a number"),
    ("AMP:res4:allow_sharing=maybe", r"option allow_sharing='maybe' cannot be read as true or false"),
    ("PKD:p3:scale=2", r"its options: none"),
    ("KD:temperature=2:0.5", r"options \(name=value\) come after the position and factor"),
])
def test_bad_options_in_an_entry_are_named(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_pathway(text)


def test_option_values_are_checked_once_when_built_and_the_error_keeps_its_fields():
    import pickle

    from mgd_det.matching.options import OptionError

    with pytest.raises(OptionError) as info:
        PathwayDistiller([parse_pathway("AMP:c3:student_norm=LN")], {"c3": (2, 4)})
    err = info.value
    assert (err.pathway, err.option, err.value, err.from_default) == ("amp_c3", "student_norm", "LN", False)
    assert "must be one of BN, SyncBN, GN, none" in err.problem
    again = pickle.loads(pickle.dumps(err))
    assert (again.option, again.problem, str(again)) == (err.option, err.problem, str(err))
    with pytest.raises(OptionError, match="norm_groups=0 must be an integer > 0") as info:
        PathwayDistiller([parse_pathway("AMP:c3")], {"c3": (2, 4)}, option_defaults={"norm_groups": 0})
    assert info.value.from_default


def test_the_registry_refuses_duplicates_and_names_the_key_of_an_unknown_entry():
    from mgd_det.registry import Registry

    things = Registry("thing")
    things.register("a", 1)

    @things.register("b")
    def b():
        return 2

    assert things.names() == ("a", "b") and things.get("b") is b and "a" in things and len(things) == 2
    with pytest.raises(ValueError, match="thing 'a' is already registered"):
        things.register("a", 3)
    with pytest.raises(ConfigError, match=r"^MGD\.THING must be one of a, b \(got 'c'\)$") as info:
        things.get("c", key="MGD.THING")
    assert info.value.key == "MGD.THING"
    with pytest.raises(ConfigError, match="unknown thing 'c'; valid: a, b"):
        things.get("c")
