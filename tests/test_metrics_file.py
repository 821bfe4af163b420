"""mgd_det.metrics_file: Detectron2's metrics.json read into series per scalar, as the plotting
tools and the study ledger read it."""
import json

from mgd_det.metrics_file import metrics_file, read_series


def test_series_by_prefix_from_a_run_folder(tmp_path):
    records = [
        {"iteration": 9, "distpro/weight_c2": 1.0, "total_loss": 3.0, "note": "text"},
        {"iteration": 19, "distpro/weight_c2": 2.0, "total_loss": 2.5},
        {"iteration": 9, "distpro/weight_c2": 1.5},  # a resumed run logs iteration 9 again
        {"no_iteration": 1.0},
        [1, 2],
    ]
    text = "\n".join(json.dumps(r) for r in records) + "\n{\"iteration\": 29, \"total_lo"  # cut short
    (tmp_path / "metrics.json").write_text(text)
    assert metrics_file(str(tmp_path)) == str(tmp_path / "metrics.json")
    assert read_series(str(tmp_path), "distpro/") == {"weight_c2": [(9, 1.5), (19, 2.0)]}
    assert read_series(str(tmp_path / "metrics.json"))["total_loss"] == [(9, 3.0), (19, 2.5)]
