"""The study ledger: one small JSON summary per finished study run, in ``docs/results/study/``.

The ledger is what lets a study accumulate over several short GPU sessions: a run whose
config hash and seed are already in it is not trained again, and the README table and plots
are generated from it (:mod:`study.report`). Entries are committed; a session writes
new ones atomically (:func:`mgd_det.atomic_io.atomic_write_text`) and never rewrites old ones.

The **config hash** is the SHA-256 of the fully resolved Detectron2 config of the run (the
project's defaults, the config file, the study's overrides), serialised as sorted JSON, with:

* left out, because they do not change what a run learns: ``OUTPUT_DIR``, ``SEED`` (kept as
  the entry's own ``seed``: the seeds of one row share a hash), the checkpoint / log / metric
  periods (``SOLVER.CHECKPOINT_PERIOD``, ``VIS_PERIOD``, ``MGD.UPDATE.LOG_PERIOD``,
  ``MGD.UNLABELED.SCORE_LOG_PERIOD``, ``MGD.UNLABELED.STATS_PERIOD``,
  ``MGD.CHECK_FINITE_PERIOD``) and the score cache's file name (``MGD.UNLABELED.SCORE_CACHE``);
* replaced by an identity, because the file behind the path is what matters:
  ``MGD.TEACHER.WEIGHTS`` and ``MODEL.WEIGHTS`` — by the identity of the study run that
  wrote them (its name, config hash and seed; see :func:`run_identity`) when a study run did,
  otherwise by the file's SHA-256 (a path that does not exist stays as written), and
  ``MGD.DISTPRO.TRAJECTORY`` by its file's SHA-256;
* paths inside the repository written relative to it (``MGD.TEACHER.CONFIG_FILE`` is
  absolute once resolved), so two checkouts hash alike.

Everything else is in, ``MODEL.DEVICE`` included ("cuda" / "cpu": a CPU run never stands in
for a GPU one), ``DATALOADER.NUM_WORKERS`` too (it changes the order of the batches) and
``TEST.EVAL_PERIOD`` (it decides which evaluations the entry holds). A new config key or a
changed default changes every hash: the conservative side, since it may change results. The
exception is :data:`LATER_KEYS`: keys added after runs were recorded whose default reproduces
what those runs did; at that default they are left out, so the recorded runs keep their hashes
(``tests/study/test_ledger.py`` recomputes the CPU study's recorded hashes).

A student is keyed on its teacher's *recipe* (the teacher's config hash and seed are in the
student's hash), not on the teacher's weights: the teacher is retrained from the same seed on
each GPU machine (weights differ between machines), and a key on the weights would never let
students of two sessions add up. Each entry records the exact teacher it learned from
(``teacher``: run id, weights SHA-256, AP), so the teacher's spread between machines is
visible in the ledger and the report.
"""
import datetime
import functools
import hashlib
import json
import logging
import os
import subprocess
from typing import Dict, List, Optional, Sequence

from mgd_det.metrics_file import metrics_file, read_series
from mgd_det.atomic_io import atomic_write_text
from mgd_det.errors import DataError

logger = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_LEDGER = os.path.join(REPO, "docs", "results", "study")
SCHEMA = 1
METRICS = ("AP", "AP50", "AP75")

# Keys that do not change what a run learns (see the module docstring).
EXCLUDED_KEYS = (
    "OUTPUT_DIR", "SEED", "SOLVER.CHECKPOINT_PERIOD", "VIS_PERIOD", "MGD.UPDATE.LOG_PERIOD",
    "MGD.UNLABELED.SCORE_LOG_PERIOD", "MGD.UNLABELED.STATS_PERIOD", "MGD.CHECK_FINITE_PERIOD",
    "MGD.UNLABELED.SCORE_CACHE",
)
# Keys added after runs were recorded, hashed only when they differ from the project's
# default (module docstring): the two-stage output pathways' ROI counts (issue 29).
LATER_KEYS = ("MGD.RCNN.ROIS_PER_IMAGE", "MGD.RCNN.MASK_ROIS_PER_IMAGE")
# Keys naming a file whose content (or the study run that wrote it) is what matters.
FILE_KEYS = ("MODEL.WEIGHTS", "MGD.TEACHER.WEIGHTS", "MGD.DISTPRO.TRAJECTORY")

# field -> allowed types of a ledger entry (None: the value may be null).
FIELDS = {
    "schema": (int,), "run": (str,), "name": (str,), "role": (str,), "mode": (str,), "config": (str,),
    "config_hash": (str,), "seed": (int,), "iterations": (int,), "ims_per_batch": (int,),
    "images_per_s": (float, int, type(None)), "device": (str,), "parallel": (int,), "wall_s": (float, int),
    "evaluations": (list,), "weights_sha256": (str, type(None)), "teacher": (dict, type(None)),
    "start": (dict, type(None)), "date": (str,), "git_commit": (str, type(None)),
}
# Fields added later: checked when present (entries written before them lack them).
OPTIONAL_FIELDS = {"pilot": (bool,), "evaluated_on": (str,), "trajectory": (dict, type(None)), "host": (dict,)}
ROLES = ("teacher", "student", "finetune")


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_identity(name: str, config_hash: str, seed: int) -> str:
    """What a student hashes in place of a weights file a study run wrote: the run's recipe."""
    return f"run:{name}:{config_hash}:seed{seed}"


def _plain(value):
    """A CfgNode / tuple tree as JSON-able dicts and lists, repository paths made relative."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str) and value.startswith(REPO + os.sep):
        return os.path.relpath(value, REPO)
    return value


def _pop(tree: dict, dotted: str, prune: bool = False):
    """Remove and return ``dotted`` (None if absent); ``prune``: parents left empty go too."""
    *parents, leaf = dotted.split(".")
    path = [tree]
    for part in parents:
        path.append(path[-1].get(part, {}))
    value = path[-1].pop(leaf, None)
    if prune:
        for parent, part in reversed(list(zip(path[:-1], parents))):
            if parent.get(part) == {}:
                del parent[part]
    return value


def _get(tree: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


@functools.lru_cache(maxsize=1)
def _default_tree() -> dict:
    """The project's default config as plain data (Detectron2 imported only when hashing)."""
    from mgd_det.config import get_mgd_cfg

    return _plain(get_mgd_cfg())


def _put(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def config_hash(cfg, identities: Optional[Dict[str, str]] = None) -> str:
    """SHA-256 (hex) of the result-relevant part of a resolved config (module docstring).

    ``identities`` maps a key of :data:`FILE_KEYS` to what stands for its file (e.g. the
    :func:`run_identity` of the teacher run); other set file keys are hashed by content.
    """
    identities = dict(identities or {})
    tree = _plain(cfg)
    for key in EXCLUDED_KEYS:
        _pop(tree, key)
    defaults = _default_tree()
    for key in LATER_KEYS:
        if _get(tree, key) == _get(defaults, key):
            _pop(tree, key, prune=True)
    for key in FILE_KEYS:
        path = _pop(tree, key)
        if key in identities:
            _put(tree, key, identities[key])
        elif path:
            _put(tree, key, f"sha256:{file_sha256(path)}" if os.path.isfile(path) else path)
    text = json.dumps(tree, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def device_description() -> str:
    """The machine the runs train on: the GPU's name, or "cpu", with the host's core count."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} cores"
    return f"cpu, {os.cpu_count()} cores"


def host_facts() -> Dict[str, str]:
    """A fresh copy of this host's facts (:func:`_host_facts`, read once per process)."""
    return dict(_host_facts())


@functools.lru_cache(maxsize=None)
def _host_facts() -> Dict[str, str]:
    """What decides a run's arithmetic beside its config and seed: the CPU model, the kernels
    torch picks for it (AVX2 / AVX512 change summation orders, so a fixed seed's losses part
    between hosts) and the torch build. Kept in each entry so that runs that differ for this
    reason can be told apart (the study's baselines did not reproduce across sessions)."""
    import platform

    import torch

    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu_model": model, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__}


def git_commit() -> Optional[str]:
    """The checkout's commit (``+dirty`` with uncommitted changes), or ``$MGD_GIT_COMMIT``.

    A GPU machine gets a copy of the tree without ``.git``: the session passes the commit in
    ``MGD_GIT_COMMIT`` (benchmarks/gpu_session.sh). None when neither is known.
    """
    if os.environ.get("MGD_GIT_COMMIT"):
        return os.environ["MGD_GIT_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=30)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=30)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def read_evaluations(output_dir: str) -> List[dict]:
    """Every bbox evaluation of a run's metrics.json: ``[{"iteration", "AP", "AP50", "AP75"}]``."""
    if not os.path.isfile(metrics_file(output_dir)):
        return []
    series = read_series(output_dir, prefix="bbox/")
    by_iter: Dict[int, dict] = {}
    for metric in METRICS:
        for iteration, value in series.get(metric, []):
            by_iter.setdefault(iteration, {"iteration": iteration})[metric] = value
    return [by_iter[i] for i in sorted(by_iter) if all(m in by_iter[i] for m in METRICS)]


def images_per_second(output_dir: str, ims_per_batch: int) -> Optional[float]:
    """Training images/s: the batch over the median of Detectron2's per-iteration ``time``
    (steps only: start-up, evaluations and assignment updates' tracking are left out)."""
    if not os.path.isfile(metrics_file(output_dir)):
        return None
    times = sorted(value for _, value in read_series(output_dir).get("time", []) if value > 0)
    if not times:
        return None
    return ims_per_batch / times[len(times) // 2]


def final_metrics(entry: dict) -> Dict[str, float]:
    """AP/AP50/AP75 of an entry's last evaluation ({} when it has none)."""
    if not entry["evaluations"]:
        return {}
    last = entry["evaluations"][-1]
    return {m: last[m] for m in METRICS}


def identity(entry: dict) -> dict:
    """What a dependent run records about a run it learned from or started at."""
    return {"run": entry["run"], "name": entry["name"], "config_hash": entry["config_hash"], "seed": entry["seed"],
            "weights_sha256": entry["weights_sha256"], "AP": final_metrics(entry).get("AP")}


def run_id(name: str, config_hash: str, seed: int, when: datetime.datetime) -> str:
    """``<name>_seed<seed>_<hash[:8]>_<UTC time>``: the file name; unique per machine and
    second, so entries of two sessions never collide."""
    return f"{name}_seed{seed}_{config_hash[:8]}_{when.strftime('%Y%m%dT%H%M%SZ')}"


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def validate_entry(entry, where: str) -> dict:
    """``entry`` itself when it has every field with the right type, else a DataError naming
    ``where`` (the file) and the field."""
    if not isinstance(entry, dict):
        raise DataError(f"Ledger entry {where} is not a JSON object; delete the file or restore it from git.", path=where)
    for field, types in FIELDS.items():
        if field not in entry:
            raise DataError(f"Ledger entry {where} has no '{field}'; delete the file or restore it from git.",
                            path=where)
        value = entry[field]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise DataError(f"Ledger entry {where}: '{field}' is {value!r}, expected "
                            f"{' or '.join(t.__name__ for t in types)}; fix or delete the file.", path=where)
    for field, types in OPTIONAL_FIELDS.items():
        if field in entry and not isinstance(entry[field], types):
            raise DataError(f"Ledger entry {where}: '{field}' is {entry[field]!r}, expected "
                            f"{' or '.join(t.__name__ for t in types)}; fix or delete the file.", path=where)
    if entry["schema"] != SCHEMA:
        raise DataError(f"Ledger entry {where} has schema {entry['schema']}, this code reads {SCHEMA}; "
                        "update the code (git pull) or convert the entry.", path=where)
    if entry["role"] not in ROLES:
        raise DataError(f"Ledger entry {where}: role {entry['role']!r} is not one of {ROLES}; fix the file.", path=where)
    for evaluation in entry["evaluations"]:
        if not isinstance(evaluation, dict) or any(not isinstance(evaluation.get(k), (int, float))
                                                   for k in ("iteration",) + METRICS):
            raise DataError(f"Ledger entry {where}: evaluation {evaluation!r} needs iteration, "
                            f"{', '.join(METRICS)}; fix or delete the file.", path=where)
    return entry


def write_entry(folder: str, entry: dict, file_name: Optional[str] = None) -> str:
    """Validate ``entry`` and write it to ``folder/<run>.json`` (or ``folder/file_name``)
    atomically; returns the path."""
    path = os.path.join(folder, file_name or f"{entry['run']}.json")
    validate_entry(entry, path)
    os.makedirs(folder, exist_ok=True)
    atomic_write_text(path, json.dumps(entry, indent=1, sort_keys=True) + "\n")
    logger.info("Ledger: wrote %s", path)
    return path


def read_ledger(folder: str) -> List[dict]:
    """Every entry in ``folder`` (``*.json``; other files such as README.md are ignored),
    validated, in file-name order. A missing folder is an empty ledger."""
    if not os.path.isdir(folder):
        return []
    entries = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json"):
            continue
        path = os.path.join(folder, name)
        try:
            with open(path) as f:
                entry = json.load(f)
        except json.JSONDecodeError as err:
            raise DataError(f"Ledger entry {path} is not valid JSON ({err}); delete the file or restore it "
                            "from git.", path=path) from err
        entries.append(validate_entry(entry, path))
    return entries


def matching(entries: Sequence[dict], config_hash_: str, seed: Optional[int] = None) -> List[dict]:
    """Entries of one config hash (and seed), oldest first."""
    return sorted((e for e in entries if e["config_hash"] == config_hash_ and (seed is None or e["seed"] == seed)),
                  key=lambda e: (e["date"], e["run"]))
