"""End to end on the built-in digits set: report contents, skip on rerun, verify, a changed stage redone, doping,
export."""

import json
import shutil
import socket
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from conftest import invoke, plant_lock
from raydistill.cli import cli
from raydistill.data import decode_dataset, open_source
from raydistill.imaging import to_tensor
from raydistill.pipeline import list_runs
from raydistill.rundir import RunDir
from raydistill.stages.train import load_student
from raydistill.synthesize.doping import clarity

FAST = ["--set", "train.epochs=40", "--set", "train.checkpoint_every=20", "--set", "quantize.iterations=20"]


@pytest.fixture(scope="module")
def digits_run(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    result = invoke("run", "--ipc", "5", "--out", str(out), *FAST)
    return out, result.output


def test_report_has_the_promised_keys_and_sane_values(digits_run):
    out, printed = digits_run
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["method"] == "ddoq" and report["ipc"] == 5 and report["prior"] == "pixel"
    assert report["dataset"] == "digits" and report["num_classes"] == 10
    for section in ("students", "baseline"):
        top1 = report[section]["convnet3"]["top1"]
        assert 30 < top1 <= 100, f"{section} top-1 {top1} is near chance: training is broken"
    q = report["quantization"]
    assert 0 < q["w2_weighted"] <= q["w2_uniform"]
    assert set(report["stages"]) == {"encode", "quantize", "synthesize", "train", "evaluate"}  # no dope: it is off
    assert all(s["seconds"] > 0 and s["rows"] > 0 for s in report["stages"].values())
    assert report["train_images"] + report["stages"]["evaluate"]["rows"] == 1797  # digits: train + held-out
    assert report["skipped_images"] == 0
    assert (out / "report" / "grid.png").stat().st_size > 1000
    assert "top-1" in (out / "report" / "report.md").read_text()
    page = (out / "report" / "index.html").read_text()
    assert page.count("<h3>") == 10 and page.count("random real subset</h4>") == 10 and "Voronoi weights" in page
    assert "convnet3: top-1" in printed and "random real subset" in printed


def test_distilled_set_contract(digits_run):
    out, _ = digits_run
    table = pq.read_table(out / "distilled")
    assert table.num_rows == 50
    assert np.bincount(table.column("label").to_numpy()).tolist() == [5] * 10
    weights = table.column("weight").to_numpy()
    labels = table.column("label").to_numpy()
    for label in range(10):
        assert weights[labels == label].sum() == pytest.approx(1.0)
    prototypes = pq.read_table(out / "prototypes")
    assert set(prototypes.column_names) >= {"label", "index", "point", "weight", "count", "method"}
    report = json.loads((out / "report" / "report.json").read_text())
    assert prototypes.column("count").to_numpy().sum() == report["train_images"]
    assert (out / "students" / "convnet3" / "model.safetensors").exists()
    assert (out / "baseline" / "students" / "convnet3" / "metrics.json").exists()


def test_rerun_skips_finished_stages(digits_run):
    out, _ = digits_run
    before = {p: p.stat().st_mtime_ns for p in out.rglob("_SUCCESS.json")}
    invoke("run", "--ipc", "5", "--out", str(out), *FAST)
    after = {p: p.stat().st_mtime_ns for p in out.rglob("_SUCCESS.json")}
    assert before == after


def test_verify_catches_a_damaged_file_and_a_rerun_repairs_it(digits_run):
    out, _ = digits_run
    marker = json.loads((out / "latents" / "_SUCCESS.json").read_text())
    assert marker["files"] and all(f.startswith("latents/label=") for f in marker["files"])
    assert set(json.loads((out / "students" / "_SUCCESS.json").read_text())["files"]) == {
        "students/convnet3/metrics.json", "students/convnet3/model.safetensors",
        "baseline/students/convnet3/metrics.json", "baseline/students/convnet3/model.safetensors",
    }
    assert "report: ok" in invoke("verify", str(out)).output
    damaged = out / "report" / "report.md"
    size = damaged.stat().st_size
    damaged.write_bytes(damaged.read_bytes()[: size // 2])
    result = CliRunner().invoke(cli, ["verify", str(out)])
    assert result.exit_code == 1
    assert f"report/report.md: {size // 2} bytes, expected {size}" in result.output and "encode: ok" in result.output
    before = {p: p.stat().st_mtime_ns for p in out.rglob("_SUCCESS.json") if p.parent.name != "report"}
    invoke("run", "--ipc", "5", "--out", str(out), *FAST)
    assert {p: p.stat().st_mtime_ns for p in before} == before  # only the damaged stage was redone
    assert damaged.stat().st_size == size
    assert "problem" not in invoke("verify", str(out)).output


def test_changed_training_redoes_train_and_later_and_doping_adds_the_least_clear_real_images(digits_run, tmp_path):
    """One rerun with fewer epochs, two students per set and --dope (two reruns would each retrain the students and
    the baseline)."""
    out = tmp_path / "doped-run"
    shutil.copytree(digits_run[0], out)
    markers = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/_SUCCESS.json")}
    invoke("run", "--ipc", "5", "--out", str(out), *FAST, "--set", "train.epochs=10", "--set", "train.repeats=2",
           "--dope", "15")
    now = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/_SUCCESS.json")}
    for folder in ("latents", "prototypes", "distilled"):
        assert now[folder] == markers[folder]
    for folder in ("students", "evaluation", "report"):
        assert now[folder]["fingerprint"] != markers[folder]["fingerprint"]

    doped = pq.read_table(out / "doped" / "distilled").to_pydict()
    added = {i.removeprefix("real:") for i in doped["id"] if i.startswith("real:")}
    assert len(doped["id"]) == 65 == len(set(doped["id"])) and len(added) == 15
    in_set = set(pq.read_table(out / "prototypes").column("nearest_id").to_pylist())
    assert not added & in_set

    # The same choice computed directly: the trained student's clarity of every training image, lowest first.
    rows = decode_dataset(open_source("digits").dataset(), 32).take_all()
    student = load_student(RunDir(str(out)), "students/convnet3", torch.device("cpu"))
    with torch.inference_mode():
        scores = clarity(student(to_tensor(np.stack([r["image"] for r in rows]))),
                         torch.tensor([int(r["label"]) for r in rows]))
    ranked = [rows[i]["id"] for i in scores.argsort().tolist() if rows[i]["id"] not in in_set]
    assert added == set(ranked[:15])

    labels, weights = np.array(doped["label"]), np.array(doped["weight"])
    for label in range(10):
        assert weights[labels == label].sum() == pytest.approx(1.0)
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["doping"]["added_images"] == 15 and report["doped"]["convnet3"]["top1"] > 15  # chance is 10
    for variant in ("students", "baseline", "doped"):
        scores = report[variant]["convnet3"]
        assert len(scores["top1_runs"]) == 2 and scores["top1"] == pytest.approx(np.mean(scores["top1_runs"]), abs=0.01)
        # The report rounds runs and std to 0.01 each: the std of the rounded runs is within 0.012 of it.
        assert scores["top1_std"] == pytest.approx(np.std(scores["top1_runs"], ddof=1), abs=0.015)
    for prefix in ("", "baseline/", "doped/"):
        assert (out / f"{prefix}students" / "convnet3-repeat1" / "model.safetensors").is_file()
    assert "± " in (out / "report" / "report.md").read_text()
    assert "least clear real (doped)" in (out / "report" / "report.md").read_text()


def test_runs_lists_each_run_with_its_stages_and_top1(digits_run, tmp_path, live_process):
    out, _ = digits_run
    shutil.copytree(out, tmp_path / "finished")
    partial = tmp_path / "partial"  # killed during quantize, and held by a live process
    plant_lock(partial, host=socket.gethostname(), pid=live_process, heartbeat=time.time())
    shutil.copy(out / "config.json", partial)
    shutil.copytree(out / "latents", partial / "latents")
    (partial / "prototypes").mkdir()
    found = {run["run"].rsplit("/", 1)[1]: run for run in list_runs(str(tmp_path))}
    printed = invoke("runs", str(tmp_path)).output
    assert set(found) == {"finished", "partial"}
    assert found["partial"]["running"] and not found["finished"]["running"]
    assert found["partial"]["stages"] == {"encode": "done", "quantize": "started", "synthesize": "-", "train": "-",
                                          "dope": "-", "reference": "-", "evaluate": "-", "report": "-"}
    assert set(found["finished"]["stages"].values()) == {"done"} and found["finished"]["ipc"] == 5
    top1 = json.loads((out / "report" / "report.json").read_text())["students"]["convnet3"]["top1"]
    assert found["finished"]["top1"]["students"] == {"convnet3": top1} and found["partial"]["top1"] == {}
    assert "partial (running)" in printed and f"convnet3 {top1:.2f} / " in printed


def test_export_writes_an_image_folder(digits_run, tmp_path):
    out, _ = digits_run
    invoke("export", "--out", str(out), "--dest", str(tmp_path / "export"))
    pngs = sorted((tmp_path / "export").rglob("*.png"))
    assert len(pngs) == 50 and {p.parent.name for p in pngs} == {str(d) for d in range(10)}
    lines = (tmp_path / "export" / "weights.csv").read_text().splitlines()
    assert lines[0] == "path,label,class_name,weight" and len(lines) == 51
