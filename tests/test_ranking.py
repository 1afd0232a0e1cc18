"""DD-Ranking's HLR, IOR and LRS: the formulas on numbers worked by hand, the report's choice of students, and a
run with `evaluate.full_data` that trains the reference students."""

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from conftest import invoke
from raydistill.ranking import label_robust_scores
from raydistill.stages.report import label_robustness
from raydistill.train.models import create_student


def _lrs(ior: float, hlr: float) -> float:
    a = (0.5 * ior - 0.5 * hlr) / 100
    return 100 * (math.exp(a) - math.exp(-1)) / (math.exp(1) - math.exp(-1))


def test_scores_are_computed_per_repeat_then_averaged_with_the_population_std():
    scores = label_robust_scores(full_hard=[60, 62], distilled_hard=[40, 44], distilled=[50, 52], random=[45, 46])
    assert scores["hlr"] == {"mean": 19.0, "std": 1.0, "runs": [20.0, 18.0]}
    assert scores["ior"] == {"mean": 5.5, "std": 0.5, "runs": [5.0, 6.0]}
    per_run = [_lrs(5, 20), _lrs(6, 18)]
    assert scores["lrs"]["runs"] == [round(v, 2) for v in per_run]
    assert scores["lrs"]["mean"] == round(float(np.mean(per_run)), 2)


def test_lrs_spans_zero_to_one_hundred_over_the_range_of_accuracies():
    best = label_robust_scores([0.0], [100.0], [100.0], [0.0])  # HLR -100, IOR 100: a = 1
    worst = label_robust_scores([100.0], [0.0], [0.0], [100.0])  # HLR 100, IOR -100: a = -1
    assert best["lrs"]["mean"] == 100.0 and worst["lrs"]["mean"] == 0.0
    assert label_robust_scores([50.0], [50.0], [50.0], [50.0])["lrs"]["mean"] == round(_lrs(0, 0), 2) == 26.89


def test_without_a_random_subset_only_hlr_is_given():
    assert set(label_robust_scores([60.0], [40.0])) == {"hlr"}


def _results(top1: dict[str, list[float]]) -> dict:
    return {key: {"convnet3": {"top1_runs": runs}} for key, runs in top1.items()}


def test_the_report_takes_hard_label_students_where_a_teacher_taught_the_others():
    with_teacher = _results({"method": [50.0], "baseline": [45.0], "full": [60.0], "hard": [30.0]})
    assert label_robustness(with_teacher)["convnet3"]["hlr"]["mean"] == 30.0
    without = _results({"method": [50.0], "baseline": [45.0], "full": [60.0]})  # the method's are hard-label ones
    assert label_robustness(without)["convnet3"]["hlr"]["mean"] == 10.0


@pytest.mark.slow
def test_a_run_with_full_data_trains_the_reference_students_and_reports_dd_ranking(ray_local, tmp_path):
    teacher = tmp_path / "teacher.safetensors"
    torch.manual_seed(0)
    save_file(create_student("cifar-resnet20", 10, 32).state_dict(), str(teacher))
    out = tmp_path / "run"
    invoke("run", "--ipc", "2", "--max-per-class", "12", "--out", str(out), "--teacher", f"cifar-resnet20:{teacher}",
           "--set", "train.epochs=2", "--set", "train.checkpoint_every=2", "--set", "quantize.iterations=5",
           "--set", "evaluate.full_data=true")
    full = pq.read_table(out / "reference" / "full" / "distilled")
    assert full.num_rows == 120 and not any(i.startswith("real:") for i in full.column("id").to_pylist())
    weights, labels = full.column("weight").to_numpy(), full.column("label").to_numpy()
    assert all(weights[labels == c].sum() == pytest.approx(1.0) for c in range(10))
    for prefix in ("full", "hard"):
        metrics = json.loads((out / "reference" / prefix / "students" / "convnet3" / "metrics.json").read_text())
        assert metrics["images"] == (120 if prefix == "full" else 20) and metrics["epochs"] == 2

    report = json.loads((out / "report" / "report.json").read_text())
    scores = report["label_robustness"]["convnet3"]
    full_top1, hard_top1 = report["full_data"]["convnet3"]["top1"], report["hard_labels"]["convnet3"]["top1"]
    assert scores["hlr"]["mean"] == pytest.approx(full_top1 - hard_top1, abs=0.011)
    assert scores["ior"]["mean"] == pytest.approx(report["gain_over_baseline"]["convnet3"], abs=0.011)
    assert 0 <= scores["lrs"]["mean"] <= 100 and "reference" in report["stages"]
    summary = (out / "report" / "report.md").read_text()
    assert "every real training image, hard labels (DD-Ranking)" in summary and "convnet3: HLR " in summary
    assert "LRS " in (out / "report" / "index.html").read_text()
