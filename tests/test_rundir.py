"""Run directory writes and markers, and the seeded per-class selection of --max-per-class."""

import numpy as np

from raydistill.config import absolute_spec
from raydistill.data.selection import class_counts, select_per_class
from raydistill.rundir import RunDir


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    rundir = RunDir(str(tmp_path / "run"))
    rundir.write_json({"a": 1}, "stage", "file.json")
    assert rundir.read_json("stage", "file.json") == {"a": 1}
    assert [p.name for p in (tmp_path / "run" / "stage").iterdir()] == ["file.json"]
    assert rundir.read_json("stage", "missing.json") is None


def test_marker_and_reset(tmp_path):
    rundir = RunDir(str(tmp_path / "run"))
    assert rundir.marker("latents") is None
    rundir.write_bytes(b"x", "latents", "part.parquet")
    marker = rundir.write_marker("latents", "abc", rows=3, seconds=1.5, extra_key=7)
    assert rundir.marker("latents") == marker and marker["rows"] == 3 and marker["extra_key"] == 7
    assert "ray" in marker["versions"] and "torch" in marker["versions"]
    assert rundir.files("latents") == [rundir.path("latents", "part.parquet")]  # the marker is not data
    rundir.reset("latents")
    assert rundir.marker("latents") is None and rundir.files("latents") == []


def chunks(ids, labels, size):
    for start in range(0, len(ids), size):
        yield np.asarray(ids[start:start + size], dtype=object), np.asarray(labels[start:start + size])


def test_select_per_class_is_exact_and_order_independent():
    ids = [f"img-{i}" for i in range(1000)]
    labels = [i % 7 for i in range(1000)]
    kept, counts = select_per_class(chunks(ids, labels, 64), limit=20, seed=3)
    assert counts == {label: 20 for label in range(7)} and len(kept) == 140
    reversed_kept, _ = select_per_class(chunks(ids[::-1], labels[::-1], 100), limit=20, seed=3)
    assert kept == reversed_kept
    other_seed, _ = select_per_class(chunks(ids, labels, 64), limit=20, seed=4)
    assert other_seed != kept
    small, counts = select_per_class(chunks(ids[:10], labels[:10], 4), limit=20, seed=0)
    assert len(small) == 10 and counts == class_counts(chunks(ids[:10], labels[:10], 4))


def test_absolute_spec(tmp_path, monkeypatch):
    (tmp_path / "weights").mkdir()
    monkeypatch.chdir(tmp_path)
    assert absolute_spec("taef2:weights") == f"taef2:{tmp_path / 'weights'}"
    assert absolute_spec("weights") == str(tmp_path / "weights")
    assert absolute_spec("digits") == "digits" and absolute_spec("pixel") == "pixel"
    assert absolute_spec("vae:stabilityai/sd-vae-ft-ema") == "vae:stabilityai/sd-vae-ft-ema"
    assert absolute_spec("s3://bucket/data") == "s3://bucket/data" and absolute_spec(None) is None
