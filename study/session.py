"""The budgeted study: the runs of study/runner.py, planned against the ledger, trained
within a device-time budget and recorded in it.

    python tools/distill_mini_digits.py --mode gpu --students baseline,AMP --seeds 0,1,2 \
        --budget-min 10 --ledger docs/results/study

Each run is a ``tools/train_net.py`` process (:func:`study.runner.run_training`) in
``<out-dir>/<name>_seed<seed>_<hash[:8]>/``; when it ends, its summary goes to the ledger
(:mod:`study.ledger`) and beside its weights (``ledger_entry.json``, which marks the
folder's weights as usable by later runs on this machine). Runs already in the ledger (same
config hash and seed) are skipped; which of the others run is :mod:`study.plan`'s
choice. A run is started only if its estimated end still fits the budget at that moment.
"""
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from study import ledger
from study.runner import (
    CONFIGS,
    FINETUNES,
    MODES,
    ROW_INPUTS,
    STUDENTS,
    STUDENT_OPTS,
    TEACHER,
    TEACHER_NAME,
    check_seeds,
    check_study,
    run_training,
)
from study.plan import Job, Plan, plan_study
from mgd_det.config import setup_cfg

logger = logging.getLogger(__name__)

TEACHER_KEY = "teacher"
ENTRY_FILE = "ledger_entry.json"

# The tiny data sets standing in for the bundled ones in the smoke mode (tests, DRYRUN).
TINY_DATASETS = {
    "mini_digits_train": "mini_digits_tiny_train",
    "mini_digits_val": "mini_digits_tiny_val",
    "mini_digits_pool": "mini_digits_pool_tiny",
    "mini_digits_train_images": "mini_digits_tiny_train_images",
}
TINY_OPTS = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64",
             "INPUT.MAX_SIZE_TEST", "64", "MGD.UPDATE.NUM_BATCHES", "2", "DATALOADER.NUM_WORKERS", "0"]


# The config keys through which a run reads another study run's file, and the file.
TEACHER_WEIGHTS = "MGD.TEACHER.WEIGHTS"
START_WEIGHTS = "MODEL.WEIGHTS"
TRAJECTORY = "MGD.DISTPRO.TRAJECTORY"
WEIGHTS_FILE = "model_final.pth"


@dataclass
class StudyJob:
    """A planned run with what it takes to train it."""

    job: Job
    config: str
    opts: List[str]
    cfg: object  # the resolved config (for iterations and batch)
    # config key -> (key of the study run that writes the file, the file's name in its folder):
    # the teacher's weights, the start weights, a learned run's trajectory.
    inputs: Dict[str, tuple] = field(default_factory=dict)

    @property
    def teacher(self) -> bool:
        """Learns from the teacher."""
        return TEACHER_WEIGHTS in self.inputs

    @property
    def start_from(self) -> Optional[str]:
        """Key of the run whose weights it starts from."""
        return self.inputs[START_WEIGHTS][0] if START_WEIGHTS in self.inputs else None

    @property
    def folder_name(self) -> str:
        return f"{self.job.name}_seed{self.job.seed}_{self.job.config_hash[:8]}"


@dataclass
class StudyOutcome:
    plan: Plan
    ran: List[dict] = field(default_factory=list)  # ledger entries written
    not_started: List[str] = field(default_factory=list)  # keys: over the budget when their turn came
    failed: Dict[str, str] = field(default_factory=dict)  # key -> error

    def lines(self) -> List[str]:
        out = [f"Study session: {len(self.ran)} run(s) recorded, {len(self.plan.in_ledger)} skipped "
               f"(in the ledger), {len(self.plan.remaining) + len(self.not_started)} left for a later session, "
               f"{len(self.failed)} failed"]
        out += [f"  recorded {e['run']} (AP {ledger.final_metrics(e).get('AP', float('nan')):.2f}, "
                f"{e['wall_s'] / 60:.1f} min)" for e in self.ran]
        out += [f"  skipped  {j.key} (in the ledger)" for j in self.plan.in_ledger]
        out += [f"  remains  {j.key}" for j in self.plan.remaining]
        out += [f"  remains  {k} (not started: its estimate no longer fitted the budget)" for k in self.not_started]
        out += [f"  FAILED   {k}: {err}" for k, err in self.failed.items()]
        return out


def schedule_opts(schedule, cfg) -> List[str]:
    """What a study mode changes in every run's config besides its solver: the tiny settings
    (smoke), the loader and input side, and the data sets (the mode's own, the tiny ones,
    the pilot's training slices)."""
    opts = list(TINY_OPTS) if schedule.tiny else []
    opts += schedule.input_opts()

    def rename(name: str) -> str:
        name = schedule.dataset_name(name)
        return TINY_DATASETS.get(name, name) if schedule.tiny else name

    for key in ("TRAIN", "TEST"):
        names = getattr(cfg.DATASETS, key)
        renamed = tuple(rename(n) for n in names)
        if renamed != tuple(names):
            opts += [f"DATASETS.{key}", repr(renamed)]
    return opts


class StudyBuilder:
    """The jobs of one study: resolved configs, hashes and prerequisites."""

    def __init__(self, mode: str, extra_opts: Sequence[str] = ()):
        self.mode = mode
        self.schedule = MODES[mode]
        self.extra_opts = list(extra_opts)
        self.jobs: Dict[str, StudyJob] = {}

    def _resolve(self, config: str, opts: List[str], identities: Dict[str, str]):
        cfg = setup_cfg(config, opts + self.extra_opts)
        extra = schedule_opts(self.schedule, cfg)
        if extra:
            opts = opts + extra
            cfg = setup_cfg(config, opts + self.extra_opts)
        return cfg, opts + self.extra_opts, ledger.config_hash(cfg, identities)

    def add(self, key: str, name: str, role: str, seed: int, config: str, opts: List[str],
            teacher: bool = False, inputs: Optional[Dict[str, tuple]] = None) -> StudyJob:
        """``inputs``: config key -> (study run key, file name) it reads besides the teacher."""
        if key in self.jobs:
            return self.jobs[key]
        inputs = dict(inputs or {})
        if teacher:
            inputs[TEACHER_WEIGHTS] = (self.teacher().job.key, WEIGHTS_FILE)
        identities = {}
        for cfg_key, (run_key, _) in inputs.items():
            writer = self.jobs[run_key].job
            identities[cfg_key] = ledger.run_identity(writer.name, writer.config_hash, writer.seed)
        cfg, opts, digest = self._resolve(config, opts + ["SEED", str(seed)], identities)
        needs = tuple(dict.fromkeys(run_key for run_key, _ in inputs.values()))
        job = Job(key, name, role, seed, digest, int(cfg.SOLVER.MAX_ITER), needs)
        self.jobs[key] = StudyJob(job, config, opts, cfg, inputs)
        return self.jobs[key]

    def teacher(self) -> StudyJob:
        s = self.schedule
        return self.add(TEACHER_KEY, TEACHER_NAME, "teacher", s.teacher_seed, os.path.join(CONFIGS, TEACHER),
                        s.solver_opts(s.teacher_iters))

    def student(self, name: str, seed: int) -> StudyJob:
        """A student row at ``seed``, after the run whose file it reads (ROW_INPUTS; that run
        is trained once, at the mode's teacher seed)."""
        s = self.schedule
        inputs = {}
        if name in ROW_INPUTS:
            cfg_key, writer, file_name = ROW_INPUTS[name]
            inputs[cfg_key] = (self.student(writer, s.teacher_seed).job.key, file_name)
        return self.add(f"{name}/seed{seed}", name, "student", seed, os.path.join(CONFIGS, STUDENTS[name]),
                        s.solver_opts(s.student_iters) + STUDENT_OPTS.get(name, []), teacher=name != "baseline",
                        inputs=inputs)

    def finetune(self, name: str, seed: int) -> StudyJob:
        config, distils = FINETUNES[name]
        base = self.student("baseline", seed)
        # The start weights' path is filled in when the run starts (_Session._train); hashed by identity.
        return self.add(f"{name}/seed{seed}", name, "finetune", seed, os.path.join(CONFIGS, config),
                        self.schedule.finetune_opts(""), teacher=distils,
                        inputs={START_WEIGHTS: (base.job.key, WEIGHTS_FILE)})


def build_study(mode: str, students: Sequence[str], seeds: Sequence[int], finetune: bool = False,
                extra_opts: Sequence[str] = ()) -> tuple:
    """(wanted jobs in priority order, every StudyJob by key): the teacher first when a run
    learns from it, then the runs whose files a row reads (the DistPro search), then seed by
    seed every student (so a partial study has every row at one seed before any at two), then
    the fine-tuning rows."""
    students = check_study(mode, students, finetune)
    check_seeds(mode, seeds)
    builder = StudyBuilder(mode, extra_opts)
    wanted = [builder.student(name, seed) for seed in seeds for name in students]
    wanted += [builder.finetune(name, seed) for seed in seeds for name in (FINETUNES if finetune else ())]
    keys = {j.job.key for j in wanted}
    wanted[:0] = [sj for key, sj in builder.jobs.items() if key not in keys and key != TEACHER_KEY]
    if any(j.teacher for j in wanted):
        wanted.insert(0, builder.teacher())
    return [j.job for j in wanted], builder.jobs


def local_entries(jobs: Dict[str, StudyJob], out_root: str) -> Dict[str, dict]:
    """Key -> ledger entry of the runs whose finished weights are in ``out_root`` (this machine)."""
    found = {}
    for key, sj in jobs.items():
        folder = os.path.join(out_root, sj.folder_name)
        entry_path = os.path.join(folder, ENTRY_FILE)
        if os.path.isfile(os.path.join(folder, "model_final.pth")) and os.path.isfile(entry_path):
            with open(entry_path) as f:
                found[key] = ledger.validate_entry(json.load(f), entry_path)
    return found


def make_entry(sj: StudyJob, folder: str, metrics: Dict[str, float], mode: str, device: str, parallel: int,
               teacher: Optional[dict], start: Optional[dict], commit: Optional[str] = None,
               trajectory: Optional[dict] = None) -> dict:
    """The ledger entry of a finished run in ``folder``; ``commit``: the code the run used (the
    checkout when the session started; default: as it is now); ``trajectory``: the entry of
    the learned run whose DistPro trajectory it replays."""
    job, when = sj.job, ledger.now()
    batch = int(sj.cfg.SOLVER.IMS_PER_BATCH)
    weights = os.path.join(folder, "model_final.pth")
    return {
        "schema": ledger.SCHEMA, "run": ledger.run_id(job.name, job.config_hash, job.seed, when),
        "name": job.name, "role": job.role, "mode": mode,
        "config": os.path.relpath(sj.config, ledger.REPO), "config_hash": job.config_hash, "seed": job.seed,
        "iterations": job.iterations, "ims_per_batch": batch, "images_per_s": ledger.images_per_second(folder, batch),
        "device": device, "parallel": parallel, "wall_s": float(metrics.get("wall_s", 0.0)),
        "evaluations": ledger.read_evaluations(folder),
        "weights_sha256": ledger.file_sha256(weights) if os.path.isfile(weights) else None,
        "teacher": teacher and ledger.identity(teacher), "start": start and ledger.identity(start),
        "date": when.isoformat(), "git_commit": commit if commit is not None else ledger.git_commit(),
        "pilot": bool(MODES[mode].pilot), "evaluated_on": ",".join(sj.cfg.DATASETS.TEST),
        "trajectory": trajectory and ledger.identity(trajectory), "host": ledger.host_facts(),
    }


class _Session:
    """Runs the plan: ``parallel`` at a time, each after its prerequisites, each only if its
    estimate still fits the budget when its turn comes."""

    def __init__(self, jobs, plan, out_root, ledger_dir, mode, device, parallel, local):
        self.jobs, self.plan, self.out_root, self.ledger_dir = jobs, plan, out_root, ledger_dir
        self.mode, self.device, self.parallel = mode, device, parallel
        self.entries: Dict[str, dict] = dict(local)  # key -> entry of weights on this machine
        self.done = {p.job.key: threading.Event() for p in plan.run}
        self.outcome = StudyOutcome(plan)
        self.lock = threading.Lock()
        self.start = time.monotonic()
        # The code the runs use: the checkout now, not when each run ends (the ledger's own
        # commits land in between).
        self.commit = ledger.git_commit()
        # Runs side by side on the CPU share its cores (one thread each on two cores: 1.27x
        # the images per second of one run on both, benchmarks/cpu_levers.py).
        cores = os.cpu_count() or 1
        self.threads = max(1, cores // parallel) if parallel > 1 and device.lower().startswith("cpu") else None

    def _folder(self, key: str) -> str:
        return os.path.join(self.out_root, self.jobs[key].folder_name)

    def run_one(self, planned) -> None:
        key = planned.job.key
        try:
            for need in planned.job.needs:
                if need in self.done:
                    self.done[need].wait()
            missing = [n for n in planned.job.needs if n not in self.entries]
            if missing:
                with self.lock:
                    if all(n in self.outcome.not_started for n in missing):
                        self.outcome.not_started.append(key)
                    else:
                        self.outcome.failed[key] = f"prerequisite(s) {missing} did not finish"
                return
            if time.monotonic() - self.start + planned.estimate_s > self.plan.budget_s:
                with self.lock:
                    self.outcome.not_started.append(key)
                return
            self._train(key)
        except Exception as err:  # one failed run must not stop the session's others
            logger.exception("Study run %s failed", key)
            with self.lock:
                self.outcome.failed[key] = str(err)
        finally:
            self.done[key].set()

    def _train(self, key: str) -> None:
        sj = self.jobs[key]
        opts = list(sj.opts)
        read = {}  # config key -> ledger entry of the run whose file it reads
        for cfg_key, (run_key, file_name) in sj.inputs.items():
            opts += [cfg_key, os.path.join(self._folder(run_key), file_name)]
            read[cfg_key] = self.entries[run_key]
        folder = self._folder(key)
        metrics = run_training(sj.config, folder, opts, threads=self.threads)
        entry = make_entry(sj, folder, metrics, self.mode, self.device, self.parallel, read.get(TEACHER_WEIGHTS),
                           read.get(START_WEIGHTS), self.commit, read.get(TRAJECTORY))
        ledger.write_entry(self.ledger_dir, entry)
        ledger.write_entry(folder, entry, ENTRY_FILE)
        with self.lock:
            self.entries[key] = entry
            self.outcome.ran.append(entry)

    def run(self) -> StudyOutcome:
        with ThreadPoolExecutor(max_workers=max(1, self.parallel)) as pool:
            list(pool.map(self.run_one, self.plan.run))
        return self.outcome


def run_budgeted_study(mode: str, students: Sequence[str], seeds: Sequence[int], out_root: str, ledger_dir: str,
                       budget_min: Optional[float] = None, finetune: bool = False, parallel: int = 1,
                       extra_opts: Sequence[str] = (), default_s_per_it: Optional[float] = None) -> StudyOutcome:
    """Plan the study against the ledger, train what fits ``budget_min`` minutes, record it.
    ``default_s_per_it``: the planner's estimate where the ledger has nothing from this device."""
    wanted, jobs = build_study(mode, students, seeds, finetune, extra_opts)
    device = ledger.device_description()
    local = local_entries(jobs, out_root)
    entries = ledger.read_ledger(ledger_dir)
    known = {e["run"] for e in entries}
    # A run finished here but missing from this ledger (e.g. recorded in another folder): record it.
    for entry in local.values():
        if entry["run"] not in known:
            ledger.write_entry(ledger_dir, entry)
            entries.append(entry)
    budget_s = float("inf") if budget_min is None else budget_min * 60.0
    plan = plan_study(wanted, entries, device, budget_s, parallel, set(local), {k: j.job for k, j in jobs.items()},
                      default_s_per_it)
    logger.info("Study %s on %s, ledger %s:\n%s", mode, device, ledger_dir, "\n".join(plan.lines()))
    outcome = _Session(jobs, plan, out_root, ledger_dir, mode, device, parallel, local).run()
    logger.info("\n".join(outcome.lines()))
    return outcome
