"""Hostile and changed input, on the data side (issue 21): untrusted class names and ids, labels outside the classes,
ids that collide, images too big to read or decode, compressed tars, data changed in place, and a validation set with
nothing usable in it."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import ray
from PIL import Image

from raydistill.cli import main
from raydistill.config import load_config
from raydistill.data import decode_dataset, decode_image, open_source
from raydistill.data.classes import check_class_names, check_file_stem
from raydistill.data.transforms import MAX_IMAGE_BYTES, MAX_PIXELS, SkipLedger, SkippedImage
from raydistill.digests import listing_digest
from raydistill.errors import UserError
from raydistill.rundir import RunDir
from raydistill.stages import evaluate

from test_errors import own_lines

SIZE = 8


def _png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _write_parquet(path: Path, labels: list[int], ids: list[str] | None = None) -> None:
    columns = {"image": pa.array([_png(10 * i) for i in range(len(labels))]), "label": pa.array(labels, pa.int64())}
    if ids is not None:
        columns["id"] = pa.array(ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A plain tar of (member name, content) pairs, in the order given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))


def _sample(key: str, label: str | int, image: bytes | None = None) -> list[tuple[str, bytes]]:
    return [(f"{key}.png", image if image is not None else _png(7)), (f"{key}.cls", str(label).encode())]


# --- class names and file stems ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", ".", "..", "../etc", "a/b", "a\\b", "a\x00b", "tab\there", "bell\x07",
                                  "c1\x85", " cat", "cat ", "x" * 256, "é" * 128, "\ud800"])
def test_unsafe_class_names_are_named_with_their_file(name):
    with pytest.raises(UserError) as error:
        check_class_names(["dog", name], "data/dataset.json")
    assert repr(name) in str(error.value) and "data/dataset.json" in str(error.value)


def test_equal_class_names_and_names_equal_ignoring_case_are_refused():
    with pytest.raises(UserError, match=r"classes 'cat' and 'cat' in d.json have the same name"):
        check_class_names(["cat", "dog", "cat"], "d.json")
    with pytest.raises(UserError, match=r"classes 'Cat' and 'cAT' in d.json have the same name ignoring case"):
        check_class_names(["Cat", "dog", "cAT"], "d.json")
    check_class_names(["n01440764", "tench", "golden retriever", "é" * 127, "x" * 255], "d.json")  # all fine


def test_image_ids_must_be_one_file_name_with_room_for_png():
    check_file_stem("real:img-00001", "distilled/part-0.parquet")
    check_file_stem("x" * 251, "p")  # x...x.png is 255 bytes
    for stem in ("x" * 252, "a/b", "..", "", "id\n"):
        with pytest.raises(UserError) as error:
            check_file_stem(stem, "distilled/part-0.parquet")
        assert repr(stem) in str(error.value) and "distilled/part-0.parquet" in str(error.value)


def test_real_images_added_by_doping_get_ids_that_are_file_names():
    from raydistill.stages.dope import real_image_id

    source_ids = ["digits-00042", "n01440764/x.JPEG", "shard.tar/000", "n01440764%2Fx.JPEG", "k\udcff", "x" * 300]
    ids = [real_image_id(i) for i in source_ids]
    assert ids[:3] == ["real:digits-00042", "real:n01440764%2Fx.JPEG", "real:shard.tar%2F000"]
    assert len(set(ids)) == len(ids)  # quoting keeps them apart
    for image_id in ids:
        check_file_stem(image_id, "doped/distilled")


def test_a_class_name_that_escapes_its_folder_stops_the_run_at_once(monkeypatch, capsys, tmp_path):
    data = tmp_path / "data"
    _write_parquet(data / "train.parquet", [0, 1, 0, 1])
    _write_parquet(data / "val.parquet", [0, 1])
    (data / "dataset.json").write_text(json.dumps({"classes": ["cat", "../../escape"]}))
    monkeypatch.setattr(sys, "argv", ["raydistill", "run", "--data", str(data), "--ipc", "1",
                                      "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in own_lines(err)
    assert "'../../escape'" in err and f"{data}/dataset.json" in err
    assert not (tmp_path / "run" / "latents").exists()


def test_class_folders_equal_ignoring_case_are_refused(tmp_path):
    for name in ("Cat", "cat", "dog"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.png").write_bytes(_png(1))
    with pytest.raises(UserError, match=rf"'Cat' and 'cat' in {tmp_path} have the same name ignoring case"):
        open_source(str(tmp_path))


def test_a_class_folder_with_a_control_character_is_refused(tmp_path):
    (tmp_path / "cat\x1b[31m").mkdir()
    (tmp_path / "cat\x1b[31m" / "a.png").write_bytes(_png(1))
    with pytest.raises(UserError, match="control character"):
        open_source(str(tmp_path))


# --- labels ------------------------------------------------------------------------------------------------------------


def test_parquet_labels_outside_the_named_classes_are_refused(tmp_path):
    _write_parquet(tmp_path / "part-0.parquet", [0, 1, 3])
    (tmp_path / "dataset.json").write_text(json.dumps({"classes": ["cat", "dog", "emu"]}))
    with pytest.raises(UserError, match=r"part-0.parquet has label 3, but the dataset.json beside it names 3 classes "
                                        r"\(labels 0..2\)"):
        open_source(str(tmp_path)).index()


@pytest.mark.parametrize("label", [-1, 2**31, 2**31 + 2, 2**62])
def test_parquet_labels_that_are_no_class_index_are_refused(tmp_path, label):
    # 2**31 + 2 would wrap to -2**31 + 2 in the int32 cast; 2**62 would make a list of 2**62 numbered classes.
    _write_parquet(tmp_path / "part-0.parquet", [0, label])
    with pytest.raises(UserError, match=rf"part-0.parquet has label {label}"):
        open_source(str(tmp_path)).class_names


@pytest.mark.parametrize("label", ["2147483648", "99999999999999999999999", "-4"])
def test_webdataset_labels_that_are_no_class_index_are_refused(tmp_path, label):
    _write_tar(tmp_path / "shard-0.tar", _sample("a", 0) + _sample("b", label))
    with pytest.raises(UserError, match=rf"shard-0.tar has label {label}"):
        open_source(str(tmp_path)).index()


def test_webdataset_labels_are_bounded_by_the_named_classes(tmp_path):
    _write_tar(tmp_path / "shard-0.tar", _sample("a", 0) + _sample("b", 2))
    (tmp_path / "dataset.json").write_text(json.dumps({"classes": ["cat", "dog"]}))
    with pytest.raises(UserError, match=r"shard-0.tar has label 2, but the dataset.json beside it names 2 classes"):
        open_source(str(tmp_path)).index()


# --- ids ---------------------------------------------------------------------------------------------------------------


def test_row_ids_of_equal_file_names_in_two_folders_differ(tmp_path, ray_local):
    _write_parquet(tmp_path / "a" / "data.parquet", [0, 1])
    _write_parquet(tmp_path / "b" / "data.parquet", [1, 0, 1])
    source = open_source(str(tmp_path))
    ids = source.index()[0].tolist()
    assert ids == ["a/data-0", "a/data-1", "b/data-0", "b/data-1", "b/data-2"]
    rows = decode_dataset(source.dataset(frozenset({"a/data-1", "b/data-1"})), SIZE).take_all()
    assert {row["id"]: row["label"] for row in rows} == {"a/data-1": 1, "b/data-1": 0}


def test_webdataset_ids_name_the_shard_as_keys_restart_in_each(tmp_path, ray_local):
    _write_tar(tmp_path / "a" / "shard.tar", _sample("000", 0) + _sample("001", 1))
    _write_tar(tmp_path / "b" / "shard.tar", _sample("000", 1))
    source = open_source(str(tmp_path))
    assert source.index()[0].tolist() == ["a/shard.tar/000", "a/shard.tar/001", "b/shard.tar/000"]
    rows = decode_dataset(source.dataset(frozenset({"a/shard.tar/000", "b/shard.tar/000"})), SIZE).take_all()
    assert {row["id"]: row["label"] for row in rows} == {"a/shard.tar/000": 0, "b/shard.tar/000": 1}


def test_an_id_on_two_rows_is_refused_with_its_files(tmp_path):
    _write_parquet(tmp_path / "train-0.parquet", [0, 1], ids=["x1", "x2"])
    _write_parquet(tmp_path / "train-1.parquet", [1, 0], ids=["x3", "x1"])
    with pytest.raises(UserError, match=rf"id 'x1' is on more than one row of {tmp_path}/train-0.parquet and "
                                        rf"{tmp_path}/train-1.parquet \(1 ids repeat\)"):
        open_source(str(tmp_path)).index()

    within = tmp_path / "within"
    _write_parquet(within / "part.parquet", [0, 1, 0], ids=["y", "z", "y"])
    with pytest.raises(UserError, match=r"id 'y' is on more than one row of .*within/part.parquet \("):
        list(open_source(str(within)).iter_index())


def test_a_webdataset_key_that_comes_twice_in_a_shard_is_refused(tmp_path):
    _write_tar(tmp_path / "shard-0.tar", _sample("a", 0) + _sample("b", 1) + _sample("a", 1))
    with pytest.raises(UserError, match=r"sample 'a' comes twice in .*shard-0.tar"):
        open_source(str(tmp_path)).index()


# --- big input ---------------------------------------------------------------------------------------------------------


def test_images_past_the_byte_or_pixel_cap_are_too_large():
    for data in (None, b"\0" * (MAX_IMAGE_BYTES + 1)):
        with pytest.raises(SkippedImage) as error:
            decode_image(data, SIZE)
        assert error.value.reason == "too_large"
    # 4100 x 4100 is just over MAX_PIXELS, and compresses to a few KiB: the header alone must stop it.
    side = 4100
    assert side * side > MAX_PIXELS
    with pytest.raises(SkippedImage) as error:
        decode_image(_encoded(Image.new("L", (side, side)), "PNG"), SIZE)
    assert error.value.reason == "too_large" and "4100x4100" in str(error.value)
    # A JPEG is measured after draft: 1/8 scale is 513 x 513, far below the cap.
    assert decode_image(_encoded(Image.new("L", (side, side), 90), "JPEG"), 64).shape == (64, 64, 3)


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "ICO"])
def test_formats_we_do_not_accept_are_not_decoded(fmt):
    with pytest.raises(SkippedImage) as error:
        decode_image(_encoded(Image.new("RGB", (16, 16), (9, 9, 9)), fmt), SIZE)
    assert error.value.reason == "corrupt" and "JPEG, PNG, WEBP, BMP" in str(error.value)


def _ledger_summary(source) -> dict:
    ledger = SkipLedger.remote()
    rows = decode_dataset(source.dataset(), SIZE, ledger=ledger).take_all()
    return {"kept": sorted(row["id"] for row in rows), **ray.get(ledger.summary.remote())}


def test_an_image_file_over_the_byte_cap_is_not_read_and_counted_too_large(tmp_path, ray_local):
    for name, value in (("a", 1), ("b", 2)):
        (tmp_path / "cat").mkdir(exist_ok=True)
        (tmp_path / "cat" / f"{name}.png").write_bytes(_png(value))
    with open(tmp_path / "cat" / "huge.png", "wb") as f:
        f.truncate(MAX_IMAGE_BYTES + 1)  # sparse: no disk, but a read would bring 64 MiB into the task
    summary = _ledger_summary(open_source(str(tmp_path)))
    assert summary["kept"] == ["cat/a.png", "cat/b.png"]
    assert summary["skipped_by_reason"] == {"too_large": 1}
    assert summary["skipped_examples"] == {"too_large": ["cat/huge.png"]}


def test_a_tar_member_over_the_byte_cap_is_not_read_and_counted_too_large(tmp_path, ray_local):
    _write_tar(tmp_path / "shard.tar",
               _sample("a", 0) + _sample("huge", 1, b"\0" * (MAX_IMAGE_BYTES + 1)) + _sample("b", 1))
    summary = _ledger_summary(open_source(str(tmp_path)))
    assert summary["kept"] == ["shard.tar/a", "shard.tar/b"]
    assert summary["skipped_by_reason"] == {"too_large": 1}
    assert summary["skipped_examples"] == {"too_large": ["shard.tar/huge"]}


def test_compressed_tars_are_refused(tmp_path):
    named = tmp_path / "named"
    _write_tar(named / "shard-0.tar", _sample("a", 0))
    (named / "shard-1.tar.gz").write_bytes(gzip.compress((named / "shard-0.tar").read_bytes()))
    with pytest.raises(UserError, match=r"shard-1.tar.gz is a compressed tar \(1 in all\): decompress"):
        open_source(str(named))
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "shard-0.tgz").write_bytes(gzip.compress(b"tar"))
    with pytest.raises(UserError, match=r"shard-0.tgz is a compressed tar"):
        open_source(str(alone))

    # A stray archive beside class folders is no shard: the tree is still an ImageFolder.
    tree = tmp_path / "tree"
    (tree / "cat").mkdir(parents=True)
    (tree / "cat" / "a.png").write_bytes(_png(1))
    (tree / "backup.tar.gz").write_bytes(gzip.compress(b"old"))
    assert open_source(str(tree)).index()[0].tolist() == ["cat/a.png"]

    disguised = tmp_path / "disguised"
    _write_tar(disguised / "plain.tar", _sample("a", 0))
    (disguised / "shard-0.tar").write_bytes(gzip.compress((disguised / "plain.tar").read_bytes()))
    (disguised / "plain.tar").unlink()
    with pytest.raises(UserError, match=r"shard-0.tar is gzip-compressed: decompress it to a plain .tar"):
        open_source(str(disguised)).index()


# --- content digests ---------------------------------------------------------------------------------------------------


def _touch(path: Path, seconds: int) -> None:
    os.utime(path, ns=(seconds * 10**9, seconds * 10**9))


def test_listing_digest_hashes_relative_paths_sizes_and_mtimes(tmp_path):
    (tmp_path / "sub").mkdir()
    for name, content in (("b.bin", b"12"), ("sub/a.bin", b"345"), ("other.txt", b"not asked for")):
        (tmp_path / name).write_bytes(content)
        _touch(tmp_path / name, 1_000)
    fs = pafs.LocalFileSystem()
    paths = [f"{tmp_path}/sub/a.bin", f"{tmp_path}/b.bin"]
    expected = hashlib.sha256(b"b.bin\x002\x001000000000000\nsub/a.bin\x003\x001000000000000\n").hexdigest()
    assert listing_digest(fs, str(tmp_path), paths) == expected
    assert listing_digest(fs, str(tmp_path), reversed(paths)) == expected
    (tmp_path / "other.txt").write_bytes(b"changed, but not one of the paths")
    assert listing_digest(fs, str(tmp_path), paths) == expected


def test_listing_digest_needs_no_ray():
    code = "import sys, raydistill.digests; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], env={**os.environ}).returncode == 0


def _parquet_data(root: Path) -> Path:
    _write_parquet(root / "train-0.parquet", [0, 1])
    return root / "train-0.parquet"


def _imagefolder_data(root: Path) -> Path:
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "a.png").write_bytes(_png(1))
    return root / "cat" / "a.png"


def _webdataset_data(root: Path) -> Path:
    _write_tar(root / "train-0.tar", _sample("a", 0))
    return root / "train-0.tar"


@pytest.mark.parametrize("write", [_parquet_data, _imagefolder_data, _webdataset_data])
def test_content_digest_changes_when_a_file_is_rewritten_in_place(tmp_path, write):
    changed = write(tmp_path)
    _touch(changed, 1_000)
    digest = open_source(str(tmp_path)).content_digest()
    assert open_source(str(tmp_path)).content_digest() == digest
    content = changed.read_bytes()
    changed.write_bytes(content)  # same bytes, same size, newer file
    _touch(changed, 2_000)
    assert open_source(str(tmp_path)).content_digest() != digest
    _touch(changed, 1_000)
    assert open_source(str(tmp_path)).content_digest() == digest


def test_digits_digest_is_a_constant():
    assert open_source("digits").content_digest() == open_source("digits", split="val").content_digest() == "digits"


# --- validation --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("images", [[], [b"not an image", b"\x89PNG broken"]])
def test_evaluate_with_no_usable_validation_image_says_so(tmp_path, ray_local, images):
    val = tmp_path / "val"
    val.mkdir()
    pq.write_table(pa.table({"image": pa.array(images, pa.binary()), "label": pa.array([0] * len(images), pa.int64()),
                             "id": pa.array([f"v{i}" for i in range(len(images))], pa.string())}),
                   val / "val.parquet")
    source = open_source(str(val), split="val")
    config = load_config(overrides=[{"evaluate": {"actors": 1, "crop_ratio": 1.0}}])
    ctx = SimpleNamespace(config=config, evaluated_variants=[], val_source=source, rundir=RunDir(str(tmp_path / "r")))
    with pytest.raises(UserError, match=rf"no usable image in the validation data {val} \(val split\)"):
        evaluate.run(ctx)
