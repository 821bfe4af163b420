"""Which device a run uses: CUDA when it is there, the CPU otherwise, an explicit choice always.

Detectron2's default ``MODEL.DEVICE`` is ``"cuda"``, so "the user asked for CUDA" and "nobody
said anything" look the same after a config is merged. :func:`mgd_det.config.add_mgd_config`
therefore replaces that default by the sentinel :data:`AUTO`; :func:`mgd_det.config.setup_cfg`
resolves it here, after the config file and the command line had their say. Torch only (no
Detectron2 import), so the launcher and scripts can use it before building a config.
"""
import logging
from typing import Optional, Set, Tuple

import torch
import torch.distributed as dist

from mgd_det.errors import ConfigError

__all__ = ["AUTO", "resolve_device", "resolve_cfg_device"]

logger = logging.getLogger(__name__)

# MODEL.DEVICE value meaning "not set by the config file or the command line".
AUTO = "auto"
# Messages already logged / shown through the fallback of _log_start_line (once per process each).
_LOGGED: Set[str] = set()
_SHOWN: Set[str] = set()


def resolve_device(requested: str, cuda_available: Optional[bool] = None) -> Tuple[str, str]:
    """``(device, why)`` for a ``MODEL.DEVICE`` value; ``why`` is a short reason for the log.

    ``AUTO`` (or an empty value) becomes ``"cuda"`` when ``torch.cuda.is_available()`` and
    ``"cpu"`` otherwise. Any other value is kept as given once it is checked: an unparsable
    string, or a CUDA device on a machine that has none (or fewer), is a
    :class:`~mgd_det.errors.ConfigError` (a ``ValueError``).
    """
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    value = (requested or AUTO).strip()
    if value.lower() == AUTO:
        if cuda_available:
            return "cuda", "MODEL.DEVICE not set and CUDA is available"
        return "cpu", "MODEL.DEVICE not set and no CUDA device is visible"
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(
            f"MODEL.DEVICE {value!r} is not a torch device ({err}); use cpu, cuda, cuda:N, "
            f"or leave it unset ({AUTO!r}) to use CUDA when available.", key="MODEL.DEVICE"
        ) from None
    if device.type == "cuda":
        if not cuda_available:
            raise ConfigError(
                f"MODEL.DEVICE is {value!r} but torch sees no CUDA device (torch {torch.__version__}, "
                f"CUDA build: {torch.version.cuda or 'no'}); set MODEL.DEVICE cpu, or leave it unset "
                "to use CUDA only when available.", key="MODEL.DEVICE"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"MODEL.DEVICE is {value!r} but only {torch.cuda.device_count()} CUDA device(s) "
                "are visible; pick an existing index or set MODEL.DEVICE cuda.", key="MODEL.DEVICE"
            )
    return value, "MODEL.DEVICE set explicitly"


def resolve_cfg_device(cfg, cuda_available: Optional[bool] = None) -> str:
    """Resolve ``cfg.MODEL.DEVICE`` in place (``cfg`` must not be frozen), log it, return it."""
    device, why = resolve_device(cfg.MODEL.DEVICE, cuda_available)
    cfg.MODEL.DEVICE = device
    # No device name here: asking for it initialises CUDA, also in a launcher's parent process.
    _log_start_line(f"Device: {device} ({why})")
    return device


def _log_start_line(message: str) -> None:
    """INFO through this module's logger, once per process (a study resolves dozens of configs);
    while no logging is configured yet (tools/train_net.py configures its loggers only after
    reading the config) on stderr through logging's handler of last resort instead, once per
    process and on rank 0 only."""
    if logger.hasHandlers():
        if message not in _LOGGED:
            _LOGGED.add(message)
            logger.info(message)
        return
    if message in _SHOWN or (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0):
        return
    _SHOWN.add(message)
    logging.lastResort.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, message, None, None))
