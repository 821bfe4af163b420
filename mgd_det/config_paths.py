"""Reading a config file with clear errors, and paths relative to the file that set them.

:func:`merge_config` merges a config file and command-line options into a config, turning
yacs/fvcore's terse failures (unknown key, type mismatch, odd option list, missing
``_BASE_`` file, YAML syntax) into :mod:`mgd_det.errors` exceptions that name the key or file
and the fix.

:func:`resolve_path_key` makes a relative path usable wherever the run starts: it is read
from the folder of the config file that *set* the key -- a ``_BASE_`` file's own folder when
the key was set there -- or from the working directory when it came from the command line.
If nothing exists there, the working directory and the top config's folder are tried (the
lookup of earlier versions), so existing configs keep working.
"""
import os
import re
from typing import Any, Dict, List, Optional, Sequence

import yaml

from mgd_det.cfg_facts import get_key, has_key, set_key
from mgd_det.errors import ConfigError, UnknownConfigKeyError, UserFileNotFoundError

BASE_KEY = "_BASE_"
_KEYS_DOC = "MGD keys are declared in mgd_det/config.py, the others in detectron2/config/defaults.py"


# --------------------------------------------------------------------------- merging
def merge_config(cfg, config_file: str, opts: Sequence[str] = ()) -> None:
    """``cfg.merge_from_file(config_file)`` then ``cfg.merge_from_list(opts)``, with errors
    that say which key or file is wrong and how to fix it."""
    if not os.path.isfile(config_file):
        raise UserFileNotFoundError(
            f"config file {config_file} not found (--config-file): check the path (configs "
            f"live under configs/, e.g. configs/mini_digits/retinanet_R18_FPN.yaml)", path=config_file,
        )
    _check_base_chain(config_file)
    _merge(lambda: cfg.merge_from_file(config_file), f"config file {config_file}")
    opts = list(opts)
    flags = [o for o in opts if isinstance(o, str) and o.startswith("--")]
    if flags:
        raise ConfigError(
            f"command-line flag(s) {' '.join(flags)} come after the KEY VALUE options, where they are "
            "read as config keys: put flags such as --resume, --eval-only, --num-gpus before the "
            "options (right after --config-file FILE)"
        )
    if len(opts) % 2:
        raise ConfigError(
            f"command-line options must be KEY VALUE pairs, got an odd number ({len(opts)}) ending "
            f"with {' '.join(opts[-3:])!r}: give every key a value, and quote values with spaces or "
            "parentheses, e.g. DATASETS.TRAIN \"('my_train',)\""
        )
    _merge(lambda: cfg.merge_from_list(opts), "the command-line options")


def _merge(do_merge, where: str) -> None:
    try:
        do_merge()
    except (KeyError, AssertionError, ValueError, TypeError) as err:
        raise _translate(err, where) from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{where} is not valid YAML: {_one_line(err)}; fix its syntax") from err


def _one_line(err: BaseException) -> str:
    return " ".join(str(err.args[0] if err.args else err).split())


_UNKNOWN = re.compile(r"Non-existent (?:config )?key: (\S+)")
_MISMATCH = re.compile(
    r"Type mismatch \(<class '(?P<want>\w+)'> vs\. <class '(?P<got>\w+)'>\) with values "
    r"\((?P<default>.*) vs\. (?P<value>.*)\) for config key: (?P<key>\S+)", re.S)
_INVALID_TYPE = re.compile(r"Invalid type (.*) for key (\S+); valid types")
# A value the literal parser kept as text because it holds a NaN or an infinity.
_NOT_FINITE = re.compile(r"(?<![\w'\"])[-+]?(nan|inf|infinity)(?![\w'\"])", re.I)


def _translate(err: BaseException, where: str) -> Exception:
    text = _one_line(err)
    match = _UNKNOWN.search(text)
    if match:
        key = match.group(1)
        return UnknownConfigKeyError(
            f"unknown config key {key} (in {where}): check its spelling; {_KEYS_DOC}", key=key,
        )
    match = _MISMATCH.search(text)
    if match:
        want, got = match.group("want"), match.group("got")
        key, value = match.group("key"), match.group("value")
        not_finite = _NOT_FINITE.search(value) if got == "str" and want in ("float", "int", "list", "tuple") else None
        if not_finite:
            return ConfigError(f"config key {key}: {value} (in {where}) holds {not_finite.group(0)}, which is not "
                               "a finite number: give finite numbers only", key=key)
        example = {"float": " (write e.g. 1.0, not 1)", "list": " (write a list, e.g. \"['a', 'b']\")",
                   "tuple": " (write e.g. \"('a',)\")"}.get(want, "")
        return ConfigError(f"config key {key} expects a value of type {want}, got {value} ({got}) in {where}{example}", key=key)
    match = _INVALID_TYPE.search(text)
    if match:
        return ConfigError(f"config key {match.group(2)} has an unsupported value type {match.group(1)} in {where}",
                           key=match.group(2))
    return ConfigError(f"cannot read {where}: {text}")


def _check_base_chain(config_file: str, seen: Optional[List[str]] = None) -> None:
    """Missing or cyclic ``_BASE_`` files named with the file that refers to them."""
    seen = list(seen or []) + [os.path.abspath(config_file)]
    for base in _bases(config_file):
        if not os.path.isfile(base):
            raise UserFileNotFoundError(
                f"base config {base} not found (_BASE_ of {config_file}): a relative _BASE_ is "
                "read from the folder of the file that names it", path=base,
            )
        if os.path.abspath(base) in seen:
            raise ConfigError(f"config {config_file} inherits from itself through _BASE_ {base}", path=base)
        _check_base_chain(base, seen)


# ------------------------------------------------------------------- key origin
def _load_yaml(path: str) -> Dict[str, Any]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {_one_line(err)}; fix its syntax",
                          path=path) from err
    return data if isinstance(data, dict) else {}


def _bases(config_file: str) -> List[str]:
    """The ``_BASE_`` files of ``config_file``, resolved as fvcore resolves them."""
    base = _load_yaml(config_file).get(BASE_KEY)
    if not base:
        return []
    result = []
    for name in base if isinstance(base, list) else [base]:
        name = os.path.expanduser(name)
        if not name.startswith(("/", "https://", "http://")):
            name = os.path.join(os.path.dirname(config_file), name)
        result.append(name)
    return result


def key_origin(config_file: str, key: str) -> Optional[str]:
    """The file of ``config_file``'s ``_BASE_`` chain whose own text sets ``key`` last (the
    child over its bases, later bases over earlier ones), or None if none sets it."""
    if has_key(_load_yaml(config_file), key):
        return config_file
    for base in reversed(_bases(config_file)):
        if os.path.isfile(base):
            found = key_origin(base, key)
            if found:
                return found
    return None


def resolve_path_key(cfg, key: str, config_file: str, opts: Sequence[str] = (), missing_from: str = "origin") -> str:
    """Resolve the relative path held by ``key`` (see the module doc) and store it in ``cfg``.

    ``missing_from`` picks the path reported when no candidate exists: "origin" (the folder
    of the file that set it) or "cwd" (the working directory, where Detectron2 writes
    OUTPUT_DIR: right for weights that a run will produce).
    """
    path = get_key(cfg, key)
    if not path or os.path.isabs(os.path.expanduser(path)) or "://" in path:
        return path
    opts = list(opts)
    from_command_line = key in opts[0::2]
    origin = None if from_command_line else key_origin(config_file, key)
    origin_dir = os.path.dirname(os.path.abspath(origin)) if origin else os.getcwd()
    top_dir = os.path.dirname(os.path.abspath(config_file))
    candidates = []
    for folder in (origin_dir, os.getcwd(), top_dir):
        candidate = path if folder == os.getcwd() else os.path.normpath(os.path.join(folder, path))
        if candidate not in candidates:
            candidates.append(candidate)
    found = next((c for c in candidates if os.path.exists(c)), None)
    if found is None:
        found = path if missing_from == "cwd" else candidates[0]
    set_key(cfg, key, found)
    return found
