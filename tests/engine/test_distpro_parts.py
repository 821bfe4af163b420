"""The DistPro trainer parts on their own: batch observer, held-out split and batches,
weighting builders, optimizer exclusion, and the meta-step's side-effect scope."""
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.utils.events import EventStorage, get_event_storage

from mgd_det.engine.batch_observer import BatchObserver
from mgd_det.engine.distpro import exclude_weighting_params, meta_step_scope
from mgd_det.engine.heldout import HeldOutBatches, split_heldout
from mgd_det.errors import ConfigError
from mgd_det.matching.pathways import PathwaySpec
from mgd_det.modeling.weighting import LOSS_WEIGHTINGS

CONFIG = "mgd_retinanet_R50_R18_distpro.yaml"


class Loader:
    def __init__(self, log):
        self.log = log

    def __iter__(self):
        for i in range(3):
            self.log.append(f"load {i}")
            yield [i]

    def __len__(self):
        return 3


def test_batch_observer_calls_back_as_each_batch_is_handed_out():
    log = []
    observer = BatchObserver(Loader(log), [lambda b: log.append(f"callback {b[0]}")])
    observer.add_callback(lambda b: log.append(f"second {b[0]}"))
    it = iter(observer)
    assert next(it) == [0] and log == ["load 0", "callback 0", "second 0"]
    assert list(it) == [[1], [2]] and log[-1] == "second 2"
    assert len(observer) == 3
    with pytest.raises(AttributeError):  # the loader's attributes are not forwarded
        observer.log


def dicts(n, unlabeled=()):
    return [{"image_id": i, **({} if i in unlabeled else {"annotations": []})} for i in range(n)]


def test_split_is_seeded_disjoint_complete_and_keeps_the_order():
    train, held = split_heldout(dicts(40), 0.1, seed=3)
    assert len(held) == 4 and len(train) == 36
    assert sorted(d["image_id"] for d in train + held) == list(range(40))
    assert [d["image_id"] for d in train] == sorted(d["image_id"] for d in train)
    assert split_heldout(dicts(40), 0.1, seed=3) == (train, held)
    assert split_heldout(dicts(40), 0.1, seed=4)[1] != held


def test_only_labeled_images_are_held_out():
    train, held = split_heldout(dicts(20, unlabeled=range(10)), 0.5, seed=0)
    assert len(held) == 5 and all(d["image_id"] >= 10 for d in held)
    with pytest.raises(ConfigError, match="of the 0 labeled training images holds no image"):
        split_heldout(dicts(5, unlabeled=range(5)), 0.5, seed=0)


def test_heldout_batches_keep_annotations_and_leave_the_global_rngs_alone(tiny_cfg, tmp_path):
    cfg = tiny_cfg(CONFIG, tmp_path)
    _, held = split_heldout(DatasetCatalog.get("mini_digits_tiny_train"), 0.25, seed=0)
    batches = HeldOutBatches(cfg, held, seed=0)
    np.random.seed(5)
    torch.manual_seed(5)
    numpy_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    first = batches.batch(0)
    assert np.array_equal(np.random.get_state()[1], numpy_state) and torch.equal(torch.get_rng_state(), torch_state)
    assert len(first) == cfg.SOLVER.IMS_PER_BATCH and all(len(d["instances"]) > 0 for d in first)
    assert [d["image_id"] for d in batches.batch(0)] == [d["image_id"] for d in first]
    assert {d["image_id"] for d in first} <= {d["image_id"] for d in held}
    ids = [tuple(d["image_id"] for d in batches.batch(i)) for i in range(6)]
    assert len(set(ids)) > 1  # a new draw per meta-step


def test_learned_builder_starts_from_the_constant_weights(tiny_cfg, tmp_path):
    cfg = tiny_cfg(CONFIG, tmp_path, "MGD.LOSS_WEIGHT", "2.0", freeze=False)
    specs = [PathwaySpec("AMP", "res3", 1e-7), PathwaySpec("SM", "res4", 3e-6), PathwaySpec("KD", None, 0.5)]
    constant = LOSS_WEIGHTINGS.get("constant")(cfg, specs)
    learned = LOSS_WEIGHTINGS.get("learned")(cfg, specs)
    assert learned.names == constant.names
    torch.testing.assert_close(learned.reference, constant.values, rtol=0, atol=0)  # factor x LOSS_WEIGHT
    torch.testing.assert_close(learned.weight_vector(), constant.values * 3 / 4)  # n / (n + 1) at start
    assert not learned.logits.requires_grad


def test_weighting_parameters_are_removed_from_an_optimizer():
    model = torch.nn.Module()
    model.student = torch.nn.Linear(2, 2)
    model.distiller = torch.nn.Module()
    model.distiller.weighting = torch.nn.Module()
    model.distiller.weighting.logits = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    exclude_weighting_params(optimizer, model)
    kept = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(kept) == 2 and all(p is not model.distiller.weighting.logits for p in kept)


def test_meta_step_scope_restores_what_the_core_cannot_see():
    model = torch.nn.Module()
    model.head = torch.nn.Module()
    model.head.loss_normalizer = 100.0  # RetinaNet's EMA: a Python attribute, not a buffer
    logits = torch.nn.Parameter(torch.zeros(2), requires_grad=False)
    with EventStorage(7) as storage:
        with meta_step_scope(model, logits, 7):
            assert logits.requires_grad
            model.head.loss_normalizer = 3.0
            get_event_storage().put_scalar("num_pos_anchors", 1.0)
        assert get_event_storage() is storage and "num_pos_anchors" not in storage.histories()
    assert model.head.loss_normalizer == 100.0 and not logits.requires_grad
