"""Device selection: CUDA when available, else the CPU (logged); an explicit MODEL.DEVICE wins."""
import glob
import logging
import os

import pytest
import torch

from mgd_det.config import get_mgd_cfg, setup_cfg
from mgd_det.device import AUTO, resolve_device
from mgd_det.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "mini_digits", "mgd_retinanet_R50_R18_AMP.yaml")


@pytest.fixture(autouse=True)
def fresh_device_lines(monkeypatch):
    """The device line is logged once per process: each test starts as a fresh process would."""
    from mgd_det import device as device_module

    monkeypatch.setattr(device_module, "_LOGGED", set())


@pytest.fixture
def cuda(monkeypatch):
    """Set what ``torch.cuda.is_available()`` reports."""
    def set_available(available: bool):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    return set_available


def device_records(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "mgd_det.device"]


@pytest.mark.parametrize("available, expected", [(False, "cpu"), (True, "cuda")])
def test_unset_device_follows_cuda_availability(available, expected):
    device, why = resolve_device(AUTO, cuda_available=available)
    assert device == expected and "not set" in why


def test_explicit_cpu_wins_over_cuda():
    assert resolve_device("cpu", cuda_available=True) == ("cpu", "MODEL.DEVICE set explicitly")


@pytest.mark.parametrize("value", ["cuda", "cuda:0"])
def test_explicit_cuda_without_cuda_is_one_clear_error(value):
    with pytest.raises(ConfigError, match=r"MODEL.DEVICE is .* set MODEL.DEVICE cpu") as err:
        resolve_device(value, cuda_available=False)
    assert "\n" not in str(err.value) and err.value.key == "MODEL.DEVICE"


def test_unknown_device_string_names_the_key():
    with pytest.raises(ConfigError, match="MODEL.DEVICE 'gpu' is not a torch device"):
        resolve_device("gpu", cuda_available=False)


def test_no_shipped_config_pins_a_device():
    for path in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True):
        cfg = get_mgd_cfg()
        cfg.merge_from_file(path)
        assert cfg.MODEL.DEVICE == AUTO, path


def test_setup_cfg_without_cuda_picks_cpu_and_says_why(cuda, caplog):
    cuda(False)
    with caplog.at_level(logging.INFO, logger="mgd_det.device"):
        cfg = setup_cfg(CONFIG)
    assert cfg.MODEL.DEVICE == "cpu"
    assert device_records(caplog) == ["Device: cpu (MODEL.DEVICE not set and no CUDA device is visible)"]


def test_setup_cfg_with_cuda_picks_cuda(cuda, caplog):
    cuda(True)
    with caplog.at_level(logging.INFO, logger="mgd_det.device"):
        cfg = setup_cfg(CONFIG)
    assert cfg.MODEL.DEVICE == "cuda"
    [record] = device_records(caplog)
    assert record.startswith("Device: cuda (MODEL.DEVICE not set and CUDA is available")


def test_explicit_device_on_the_command_line_wins(cuda, caplog):
    cuda(True)
    with caplog.at_level(logging.INFO, logger="mgd_det.device"):
        cfg = setup_cfg(CONFIG, ["MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.DEVICE == "cpu"
    assert device_records(caplog) == ["Device: cpu (MODEL.DEVICE set explicitly)"]


def test_explicit_device_in_a_config_file_wins(cuda, tmp_path):
    cuda(True)
    child = tmp_path / "child.yaml"
    child.write_text(f'_BASE_: "{CONFIG}"\nMODEL:\n  DEVICE: "cpu"\n')
    assert setup_cfg(str(child)).MODEL.DEVICE == "cpu"


def test_explicit_cuda_on_a_machine_without_cuda_fails_in_setup_cfg(cuda):
    cuda(False)
    with pytest.raises(ValueError, match="MODEL.DEVICE is 'cuda' but torch sees no CUDA device"):
        setup_cfg(CONFIG, ["MODEL.DEVICE", "cuda"])


def test_teacher_follows_the_students_device(cuda):
    from mgd_det.modeling import build_teacher_cfg

    cuda(False)
    assert build_teacher_cfg(setup_cfg(CONFIG)).MODEL.DEVICE == "cpu"


def test_device_line_reaches_stderr_once_before_logging_is_configured(monkeypatch, capsys):
    from mgd_det import device as device_module

    monkeypatch.setattr(device_module.logger, "hasHandlers", lambda: False)
    monkeypatch.setattr(device_module, "_SHOWN", set())
    cfg = get_mgd_cfg()
    for _ in range(2):  # tools/train_net.py resolves the config twice in one process
        cfg.MODEL.DEVICE = "cpu"
        device_module.resolve_cfg_device(cfg, cuda_available=False)
    assert capsys.readouterr().err == "Device: cpu (MODEL.DEVICE set explicitly)\n"


def test_device_line_is_logged_once_per_process(monkeypatch):
    """A study resolves dozens of configs in one process: one device line in its log."""
    from mgd_det import device as device_module

    lines = []
    monkeypatch.setattr(device_module.logger, "hasHandlers", lambda: True)
    monkeypatch.setattr(device_module.logger, "info", lines.append)
    cfg = get_mgd_cfg()
    for _ in range(3):
        cfg.MODEL.DEVICE = "cpu"
        device_module.resolve_cfg_device(cfg, cuda_available=False)
    assert lines == ["Device: cpu (MODEL.DEVICE set explicitly)"]
