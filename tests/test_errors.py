"""Every bad input a user can cause gives one clear line on stderr and exit code 2, not a traceback."""

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raydistill.cli import main


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["raydistill", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.err


RAY_WORKER_LINE = re.compile(r"^(\x1b\[[0-9;]*m)*\(.*? pid=\d+(, ip=[\d.]+)?\)")


def own_lines(err: str) -> str:
    """stderr without what Ray forwards from its workers (its own threads' shutdown noise is not ours to fix)."""
    return "\n".join(line for line in err.splitlines() if not RAY_WORKER_LINE.match(line))


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shards(folder: Path, per_class: dict[int, int], classes: list[str], corrupt: int = 0) -> Path:
    """A parquet train shard with per_class[label] images (`corrupt` of them undecodable) and a val shard."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        images, labels, ids = [], [], []
        for label, count in per_class.items():
            for i in range(count):
                images.append(png(10 * label + i))
                labels.append(label)
                ids.append(f"{split}-{label}-{i}")
        for i in range(corrupt if split == "train" else 0):
            images[i] = b"not an image at all"
        table = pa.table({"image": images, "label": pa.array(labels, pa.int32()), "id": ids})
        pq.write_table(table, folder / f"{split}-00000-of-00001.parquet")
    (folder / "dataset.json").write_text(json.dumps({"classes": classes}))
    return folder


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "/no/such/folder"], "/no/such/folder"),
        (["--method", "kmedoids"], "unknown quantizer 'kmedoids'; valid quantizers: d3hr, ddoq, dsco, kmeans, random"),
        (["--method", "dsco", "--prior", "dit-tiny", "--decode", "ddim"], "DsCo's sampling starts from the dsco"),
        (["--method", "kmeans", "--prior", "dit-tiny", "--decode", "dsco"], "DsCo's sampling starts from the dsco"),
        (["--method", "dsco", "--prior", "tiny"], "needs a diffusion prior, but 'tiny' is an autoencoder only"),
        (["--method", "dsco", "--prior", "dit-tiny", "--set", "synthesize.eta=0"], "synthesize.eta must be in"),
        (["--method", "dsco", "--prior", "dit-tiny", "--set", "synthesize.noise_momentum=1"], "noise_momentum must be"),
        (["--method", "dsco", "--prior", "dit-tiny", "--space", "noise"], "drop quantize.space=noise"),
        (["--method", "d3hr", "--prior", "tiny"], "needs a diffusion prior, but 'tiny' is an autoencoder only"),
        (["--method", "d3hr", "--ipc", "1"], "d3hr needs at least 2 images per class"),
        (["--space", "noise", "--decode", "decoder"], "noise prototypes cannot go straight through the VAE decoder"),
        (["--space", "pixels"], "quantize.space 'pixels' is not valid"),
        (["--decode", "ddim"], "--decode ddim needs a diffusion prior, but 'pixel'"),
        (["--method", "d3hr", "--prior", "dit-tiny", "--set", "encode.t_end=1000"], "t = 1000 is outside"),
        (["--prior", "dit-tiny", "--decode", "ddim", "--set", "synthesize.strength=1.5"], "synthesize.strength"),
        (["--set", "prior.prompt=a photo of a {}"], "write the class name as {name}"),
        (["--prior", "sd15"], "unknown prior 'sd15'"),
        (["--student", "no-such-net"], "no-such-net"),
        (["--ipc", "0"], "--ipc must be a positive number"),
        (["--ipc", "1000"], "has 1"),
        (["--set", "quantize.ipcs=3"], "unknown config key 'quantize.ipcs'"),
        (["--set", "train.weight_transform=cube"], "weight_transform 'cube' is not valid"),
        (["--set", "train.checkpoint_seconds=-1"], "train.checkpoint_seconds must be 0 or more"),
        (["--set", "quantize.restarts=0"], "quantize.restarts must be at least 1, got 0"),
        (["--set", "quantize.projected_dims=-1"], "quantize.projected_dims must be 0 (no projection) or more"),
        (["--prior", "taef2:/no/such/weights"], "/no/such/weights"),
        (["--dope", "-1"], "--dope must be a number of real images to add"),
        (["--dope", "5", "--set", "dope.label=teacher"], "but no teacher is set: pass --teacher"),
        (["--dope", "5", "--set", "dope.share=1"], "dope.share must be in (0, 1)"),
        (["--dope", "5", "--set", "dope.student=resnet18"], "dope.student 'resnet18' is not trained in this run"),
    ],
)
def test_bad_input_gives_one_clear_line(monkeypatch, capsys, tmp_path, args, message):
    code, err = run_cli(monkeypatch, capsys, "run", "--out", str(tmp_path / "run"), *args)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and err.startswith("error: ")


def test_runs_of_a_missing_folder_says_so_and_creates_nothing(monkeypatch, capsys, tmp_path):
    code, err = run_cli(monkeypatch, capsys, "runs", str(tmp_path / "nowhere"))
    assert code == 2 and "nowhere is not a folder" in err and not (tmp_path / "nowhere").exists()


def test_empty_data_folder(monkeypatch, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, err = run_cli(monkeypatch, capsys, "run", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r"))
    assert code == 2 and "empty" in err


def test_a_shard_that_is_not_parquet_is_named(monkeypatch, capsys, tmp_path):
    data = write_shards(tmp_path / "data", {0: 4, 1: 4}, ["cat", "dog"])
    (data / "train-00001-of-00002.parquet").write_text("not a parquet file")  # second of the train shards
    code, err = run_cli(monkeypatch, capsys, "run", "--data", str(data), "--ipc", "2", "--out", str(tmp_path / "r"))
    assert code == 2 and "train-00001-of-00002.parquet is not a readable parquet file" in err


def test_class_with_no_images(monkeypatch, capsys, tmp_path):
    data = write_shards(tmp_path / "data", {0: 4, 1: 4}, ["cat", "dog", "emu"])
    code, err = run_cli(monkeypatch, capsys, "run", "--data", str(data), "--ipc", "2", "--out", str(tmp_path / "r"))
    assert code == 2 and "class 'emu' (label 2) has no usable images" in err


def test_ipc_larger_than_a_class_names_the_class_and_the_fix(monkeypatch, capsys, tmp_path):
    data = write_shards(tmp_path / "data", {0: 6, 1: 3}, ["cat", "dog"])
    code, err = run_cli(monkeypatch, capsys, "run", "--data", str(data), "--ipc", "4", "--out", str(tmp_path / "r"))
    assert code == 2 and "class 'dog' (label 1) has 3 usable images but --ipc is 4; lower --ipc to at most 3" in err


def test_unreadable_weights_file(monkeypatch, capsys, tmp_path):
    weights = tmp_path / "teacher.safetensors"
    weights.write_bytes(b"\x00garbage")
    code, err = run_cli(monkeypatch, capsys, "run", "--teacher", f"cifar-resnet20:{weights}", "--out", str(tmp_path / "r"))
    assert code == 2 and str(weights) in err


def test_stage_without_its_inputs(monkeypatch, capsys, tmp_path, ray_local):
    code, err = run_cli(monkeypatch, capsys, "quantize", "--out", str(tmp_path / "r"))
    assert code == 2 and "needs stage 'encode'" in err and "raydistill encode" in err


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_bad_images_are_counted_by_reason_and_odd_modes_are_used(ray_local, monkeypatch, capsys, tmp_path):
    data = write_shards(tmp_path / "data", {0: 6, 1: 6}, ["cat", "dog"], corrupt=1)
    table = pq.read_table(data / "train-00000-of-00001.parquet").to_pylist()
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    odd = {
        "truncated": encoded(photo, "JPEG")[:300],
        "tiny": encoded(Image.new("RGB", (2, 2)), "PNG"),
        "grey": encoded(photo.convert("L"), "PNG"),
        "rgba": encoded(photo.convert("RGBA"), "PNG"),
        "cmyk": encoded(photo.convert("CMYK"), "JPEG"),
        "16bit": encoded(Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)), "PNG"),
    }
    for i, (name, data_bytes) in enumerate(odd.items()):
        table[1 + i]["image"] = data_bytes  # rows 1.. of class 0 (row 0 is the corrupt one)
        table[1 + i]["id"] = name
    table += [{"image": png(5), "label": 1, "id": f"extra-{i}"} for i in range(6)]
    pq.write_table(pa.Table.from_pylist(table), data / "train-00000-of-00001.parquet")
    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["raydistill", "encode", "--data", str(data), "--ipc", "2", "--out", str(out)])
    main()
    marker = json.loads((out / "latents" / "_SUCCESS.json").read_text())
    assert marker["skipped_by_reason"] == {"corrupt": 1, "too_small": 1, "truncated": 1}
    assert marker["skipped_images"] == 3 and marker["rows"] == 18 - 3
    assert marker["skipped_examples"]["truncated"] == ["truncated"]
    assert marker["class_counts"] == {"0": 3, "1": 12}
    written = set(pq.read_table(out / "latents", columns=["id"]).column("id").to_pylist())
    assert {"grey", "rgba", "cmyk", "16bit"} <= written

    # Class 0 is left with 3 usable images: IPC 4 fails with the way out, which then gives it 3 prototypes.
    quantize = ["quantize", "--data", str(data), "--ipc", "4", "--out", str(out), "--set", "evaluate.baseline=false"]
    code, err = run_cli(monkeypatch, capsys, *quantize)
    assert code == 2 and "'cat' (label 0) has 3 usable images but --ipc is 4" in err and "allow_fewer" in err
    monkeypatch.setattr(sys, "argv", ["raydistill", *quantize, "--set", "quantize.allow_fewer=true"])
    main()
    labels = pq.read_table(out / "prototypes", columns=["label"]).column("label").to_pylist()
    assert labels.count(0) == 3 and labels.count(1) == 4


def test_installed_command_prints_no_traceback(tmp_path):
    result = subprocess.run(
        [str(Path(sys.executable).parent / "raydistill"), "run", "--ipc", "-3", "--out", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --ipc must be a positive number of images per class, got -3"


def test_missing_validation_split_fails_before_any_work(monkeypatch, capsys, tmp_path):
    data = write_shards(tmp_path / "data", {0: 4, 1: 4}, ["cat", "dog"])
    (data / "val-00000-of-00001.parquet").unlink()
    out = tmp_path / "r"
    code, err = run_cli(monkeypatch, capsys, "run", "--data", str(data), "--ipc", "2", "--out", str(out))
    assert code == 2 and "no validation data: pass --val-data" in err
    assert not (out / "latents").exists()
