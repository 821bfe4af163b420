"""The accuracy study: teacher, baseline and MGD students trained on the bundled data, their
COCO AP recorded in a ledger, and the README's table generated from it.

The modules, one job each:

* :mod:`.runner` — the study's rows and modes, one training run as a ``tools/train_net.py``
  process, and the plain (unbudgeted) study.
* :mod:`.plan` — which runs to train next within a device-time budget (pure Python).
* :mod:`.ledger` — one JSON entry per finished run, config hashes, reading the ledger.
* :mod:`.session` — the budgeted study: planned against the ledger, trained, recorded.
* :mod:`.stats` — the pre-registered comparison of two rows (mean difference, Welch's t).
* :mod:`.report` — the study tables and figure from the ledger (``python -m study.report``).

``tools/distill_mini_digits.py`` is the command line; ``benchmarks/gpu_session.sh`` runs one
GPU session of it. Nothing is imported here, so ``python -m study.report`` starts without the
runner's imports.
"""
