"""Readers for every --data format, split discovery, the decode transform and the errors a user can trigger."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raydistill.data import (
    SOURCES,
    DigitsSource,
    ImageFolderSource,
    ParquetSource,
    WebDatasetSource,
    decode_batch,
    decode_dataset,
    decode_image,
    open_source,
)
from raydistill.data.transforms import SkippedImage
from raydistill.errors import UserError

SIZE = 8
WNIDS = ["n01443537", "n01629819", "n01641577"]


def _pixels(index: int, label: int) -> np.ndarray:
    """A distinct flat colour per image, so a decoded row shows which image it came from."""
    return np.full((SIZE, SIZE, 3), (index * 7 % 256, label * 40, 255 - index), dtype=np.uint8)


def _png(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _samples(count: int, start: int = 0, classes: int = 3) -> list[tuple[str, int, bytes]]:
    return [(f"img{i:04d}", i % classes, _png(_pixels(i, i % classes))) for i in range(start, start + count)]


def _write_parquet(path: Path, samples, *, with_id: bool = True, hf_struct: bool = False) -> None:
    images = [s[2] for s in samples]
    columns = {
        "image": pa.array([{"bytes": b, "path": None} for b in images]) if hf_struct else pa.array(images, pa.binary()),
        "label": pa.array([s[1] for s in samples], pa.int64()),
    }
    if with_id:
        columns["id"] = pa.array([s[0] for s in samples])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=4)


def _write_imagefolder(root: Path, samples, names=WNIDS) -> None:
    for image_id, label, data in samples:
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{image_id}.png").write_bytes(data)


def _write_tar(path: Path, samples) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for image_id, label, data in samples:
            for name, content in ((f"{image_id}.png", data), (f"{image_id}.cls", str(label).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))


def _expected(samples) -> dict[str, tuple[int, np.ndarray]]:
    return {
        image_id: (label, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))) for image_id, label, data in samples
    }


def _assert_index(source, samples) -> None:
    ids, labels = source.index()
    assert ids.dtype == object and labels.dtype == np.int32
    assert sorted(zip(ids.tolist(), labels.tolist())) == sorted((s[0], s[1]) for s in samples)


def _assert_rows(source, samples, keep_ids=None) -> None:
    """Decoded rows are exactly the written images (or the kept subset), with the right labels and pixels."""
    expected = _expected(s for s in samples if keep_ids is None or s[0] in keep_ids)
    rows = decode_dataset(source.dataset(keep_ids), SIZE).take_all()
    assert sorted(row["id"] for row in rows) == sorted(expected)
    for row in rows:
        label, pixels = expected[row["id"]]
        assert row["label"] == label
        assert row["image"].shape == (SIZE, SIZE, 3) and row["image"].dtype == np.uint8
        np.testing.assert_array_equal(row["image"], pixels)


# --- decoding, no Ray -------------------------------------------------------------------------------------------------


def test_decode_image_resizes_short_side_then_centre_crops():
    wide = np.zeros((20, 40, 3), dtype=np.uint8)
    wide[:, :10] = (255, 0, 0)  # left and right quarters fall outside the centre crop
    wide[:, 30:] = (255, 0, 0)
    wide[:, 10:30] = (0, 0, 255)
    out = decode_image(_png(wide), 10)
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(out[2:-2, 2:-2], np.broadcast_to((0, 0, 255), (6, 6, 3)), atol=2)

    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)  # mode "L" comes out as RGB
    out = decode_image(_png(grey), 8)
    np.testing.assert_array_equal(out[..., 1], np.arange(64).reshape(8, 8))

    with pytest.raises(ValueError, match="cannot decode image"):
        decode_image(b"not an image", 8)


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_decode_image_converts_every_mode_to_8_bit_rgb():
    grey16 = Image.fromarray(np.full((16, 16), 32896, dtype=np.uint16))  # 32896 / 65535 * 255 = 128
    assert decode_image(_encoded(grey16, "PNG"), 16)[0, 0].tolist() == [128, 128, 128]
    transparent = Image.new("RGBA", (16, 16), (10, 20, 30, 0))
    assert decode_image(_encoded(transparent, "PNG"), 16)[0, 0].tolist() == [255, 255, 255]  # onto white
    cyan = decode_image(_encoded(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG"), 16)[0, 0]
    assert cyan[0] < 30 and cyan[1] > 225 and cyan[2] > 225
    grey = decode_image(_encoded(Image.new("L", (16, 16), 77), "PNG"), 16)
    assert grey.shape == (16, 16, 3) and (grey == 77).all()


@pytest.mark.parametrize(("data", "reason"), [
    (b"not an image", "corrupt"),
    (_encoded(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")[:200], "truncated"),
    (_encoded(Image.new("RGB", (3, 40)), "PNG"), "too_small"),
])
def test_unusable_images_say_why(data, reason):
    with pytest.raises(SkippedImage) as error:
        decode_image(data, 16)
    assert error.value.reason == reason


def test_decode_batch_drops_corrupt_image_and_keeps_the_rest(caplog):
    good = _samples(3)
    batch = {
        "id": np.array([good[0][0], "broken", good[1][0], good[2][0]], dtype=object),
        "label": np.array([0, 1, 1, 2], dtype=np.int64),
        "image": np.array([good[0][2], _png(_pixels(9, 1))[:40], good[1][2], good[2][2]], dtype=object),
    }
    with caplog.at_level(logging.WARNING, logger="raydistill.data.transforms"):
        out = decode_batch(batch, SIZE)
    assert out["id"].tolist() == [s[0] for s in good]
    assert out["label"].dtype == np.int32 and out["label"].tolist() == [0, 1, 2]
    assert out["image"].shape == (3, SIZE, SIZE, 3)
    np.testing.assert_array_equal(out["image"][1], _pixels(1, 1))
    assert "broken" in caplog.text

    nothing = {"id": np.array(["x"], dtype=object), "label": np.array([0]), "image": np.array([b"x"], dtype=object)}
    empty = decode_batch(nothing, SIZE)
    assert empty["image"].shape == (0, SIZE, SIZE, 3)


# --- each format, written to tmp_path and read back -------------------------------------------------------------------


def test_parquet_round_trip(tmp_path, ray_local):
    train, val = _samples(10), _samples(4, start=100)
    _write_parquet(tmp_path / "train-00000-of-00002.parquet", train[:6])
    _write_parquet(tmp_path / "train-00001-of-00002.parquet", train[6:])
    _write_parquet(tmp_path / "validation-00000-of-00001.parquet", val, hf_struct=True)
    (tmp_path / "dataset.json").write_text(json.dumps({"classes": ["cat", "dog", "eel"]}))

    source = open_source(str(tmp_path))
    assert isinstance(source, ParquetSource) and source.class_names == ["cat", "dog", "eel"]
    _assert_index(source, train)
    _assert_rows(source, train)
    keep = frozenset({"img0001", "img0007"})
    _assert_rows(source, train, keep_ids=keep)

    val_source = open_source(str(tmp_path), split="val")
    _assert_index(val_source, val)
    _assert_rows(val_source, val)


def test_parquet_hf_struct_images_without_ids(tmp_path, ray_local):
    samples = _samples(7)
    _write_parquet(tmp_path / "data" / "shard-a.parquet", samples, with_id=False, hf_struct=True)
    source = open_source(str(tmp_path))
    ids, labels = source.index()
    assert ids.tolist() == [f"data/shard-a-{i}" for i in range(7)]  # the file's path below the root, then the row
    assert labels.tolist() == [s[1] for s in samples]
    assert source.class_names == ["0", "1", "2"]  # no dataset.json: numbered up to the largest label
    renamed = [(f"data/shard-a-{i}", label, data) for i, (_, label, data) in enumerate(samples)]
    _assert_rows(source, renamed, keep_ids=frozenset({"data/shard-a-0", "data/shard-a-5"}))


def test_imagefolder_round_trip_with_wnid_folders(tmp_path, ray_local):
    train, val = _samples(9), _samples(3, start=50, classes=2)
    _write_imagefolder(tmp_path / "train", train)
    # val lacks the last class: labels must still follow the train folders, not val's own listing.
    _write_imagefolder(tmp_path / "val", val, names=[WNIDS[0], WNIDS[2]])
    (tmp_path / "train" / WNIDS[0] / "notes.txt").write_text("not an image")
    (tmp_path / "train" / WNIDS[1] / "extra.JPEG").write_bytes(_png(_pixels(77, 1), "JPEG"))

    source = open_source(str(tmp_path))
    assert isinstance(source, ImageFolderSource) and source.class_names == WNIDS
    written = [(f"{WNIDS[label]}/{image_id}.png", label, data) for image_id, label, data in train]
    ids, labels = source.index()
    assert sorted(ids.tolist()) == sorted([s[0] for s in written] + [f"{WNIDS[1]}/extra.JPEG"])
    _assert_rows(source, written, keep_ids=frozenset(s[0] for s in written))

    val_source = open_source(str(tmp_path), split="val")
    assert val_source.class_names == WNIDS
    val_written = [(f"{[WNIDS[0], WNIDS[2]][label]}/{i}.png", 2 * label, d) for i, label, d in val]
    _assert_index(val_source, val_written)
    _assert_rows(val_source, val_written)


def test_webdataset_round_trip(tmp_path, ray_local):
    train, val = _samples(8), _samples(3, start=20)
    _write_tar(tmp_path / "train-000000.tar", train[:5])
    _write_tar(tmp_path / "train-000001.tar", train[5:])
    _write_tar(tmp_path / "val-000000.tar", val)

    source = open_source(str(tmp_path))
    assert isinstance(source, WebDatasetSource) and source.class_names == ["0", "1", "2"]
    # Ids are <shard>/<key>: keys restart in every shard.
    train = [(f"train-00000{0 if i < 5 else 1}.tar/{key}", label, data) for i, (key, label, data) in enumerate(train)]
    _assert_index(source, train)
    _assert_rows(source, train)
    _assert_rows(source, train, keep_ids=frozenset({"train-000000.tar/img0000", "train-000001.tar/img0006"}))
    _assert_index(open_source(str(tmp_path), split="val"), [(f"val-000000.tar/{k}", lab, d) for k, lab, d in val])


def test_digits_split_is_stratified_disjoint_and_fixed(ray_local):
    train, val = open_source("digits"), open_source("digits", split="val")
    assert isinstance(train, DigitsSource) and train.class_names == [str(i) for i in range(10)]
    train_ids, train_labels = train.index()
    val_ids, val_labels = val.index()
    assert len(train_ids) + len(val_ids) == 1797
    assert not set(train_ids.tolist()) & set(val_ids.tolist())
    assert set(train_labels.tolist()) == set(val_labels.tolist()) == set(range(10))
    for label in range(10):
        in_class = (train_labels == label).sum() + (val_labels == label).sum()
        assert (val_labels == label).sum() == round(0.2 * in_class)
    assert val_ids.tolist() == open_source("digits", split="val").index()[0].tolist()
    assert val_ids[0].startswith("digits-") and len(val_ids[0]) == len("digits-00042")

    rows = decode_dataset(val.dataset(frozenset(val_ids[:5].tolist())), 8).take_all()
    assert sorted(r["id"] for r in rows) == sorted(val_ids[:5].tolist())
    from sklearn.datasets import load_digits

    digits = load_digits()
    for row in rows:
        index = int(row["id"].removeprefix("digits-"))
        assert row["label"] == digits.target[index]
        np.testing.assert_array_equal(row["image"][..., 0], np.round(digits.images[index] * 255 / 16))


# --- split discovery --------------------------------------------------------------------------------------------------


def _index_ids(source) -> list[str]:
    return sorted(source.index()[0].tolist())


def test_split_discovery(tmp_path):
    # Prefixes: a validation set beats a test set; "trainer" is no train prefix.
    prefixed = tmp_path / "prefixed"
    _write_parquet(prefixed / "train.parquet", _samples(2))
    _write_parquet(prefixed / "test-0.parquet", _samples(2, start=10))
    _write_parquet(prefixed / "val-0.parquet", _samples(2, start=20))
    _write_parquet(prefixed / "trainer.parquet", _samples(2, start=30))
    assert _index_ids(open_source(str(prefixed))) == ["img0000", "img0001"]
    assert _index_ids(open_source(str(prefixed), "val")) == ["img0020", "img0021"]

    # No split prefix at all: everything is train, and there is no val.
    plain = tmp_path / "plain"
    _write_parquet(plain / "part-0.parquet", _samples(3))
    assert len(open_source(str(plain)).index()[0]) == 3
    with pytest.raises(UserError, match="--val-data"):
        open_source(str(plain), "val")

    # Split folders, for shard formats too; test/ stands in for val/.
    folders = tmp_path / "folders"
    _write_tar(folders / "train" / "shard-0.tar", _samples(4))
    _write_tar(folders / "test" / "shard-0.tar", _samples(2, start=40))
    assert _index_ids(open_source(str(folders), "val")) == ["shard-0.tar/img0040", "shard-0.tar/img0041"]
    assert len(open_source(str(folders)).index()[0]) == 4

    # A single file is the train split.
    single = open_source(str(prefixed / "test-0.parquet"), fmt="parquet")
    assert _index_ids(single) == ["img0010", "img0011"]


def test_cifar10_index_and_rows(shared_dir, ray_local):
    cifar = shared_dir / "data" / "cifar10"
    train, val = open_source(str(cifar)), open_source(str(cifar), split="val")
    train_ids, train_labels = train.index()
    val_ids, val_labels = val.index()
    assert len(train_ids) == 50_000 and len(val_ids) == 10_000
    assert len(set(train_ids.tolist())) == 50_000
    assert train.class_names[:2] == ["airplane", "automobile"] and len(train.class_names) == 10
    assert np.bincount(train_labels).tolist() == [5000] * 10
    assert np.bincount(val_labels).tolist() == [1000] * 10

    picked = dict(zip(val_ids[::2500].tolist(), val_labels[::2500].tolist()))
    rows = decode_dataset(val.dataset(frozenset(picked)), 32).take_all()
    assert {row["id"]: row["label"] for row in rows} == picked
    assert all(row["image"].shape == (32, 32, 3) and row["image"].std() > 0 for row in rows)


# --- errors a user can trigger ----------------------------------------------------------------------------------------


def test_bad_inputs_raise_user_errors_that_say_what_to_do(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        open_source(str(tmp_path / "nowhere"))

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is empty"):
        open_source(str(tmp_path / "empty"))

    with pytest.raises(UserError, match=r"unknown data format 'csv'; valid data formats: digits, imagefolder, parquet"):
        open_source(str(tmp_path), fmt="csv")

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    with pytest.raises(UserError, match=r"no data of a known format.*\.txt.*\*\.parquet"):
        open_source(str(tmp_path / "notes"))

    hollow = tmp_path / "hollow"
    _write_imagefolder(hollow, _samples(4, classes=2))
    (hollow / WNIDS[2]).mkdir()
    with pytest.raises(UserError, match=f"class '{WNIDS[2]}' has no images: remove the folder or add images"):
        open_source(str(hollow))

    with pytest.raises(UserError, match="no val split.*pass --val-data"):
        open_source(str(hollow), split="val")

    split = tmp_path / "split"
    _write_imagefolder(split / "train", _samples(4, classes=2))
    _write_imagefolder(split / "val", _samples(2, classes=1), names=["n99999999"])
    with pytest.raises(UserError, match="n99999999.*not classes of the train split"):
        open_source(str(split), split="val")

    with pytest.raises(UserError, match="unknown split 'test'"):
        open_source("digits", split="test")
    with pytest.raises(UserError, match="built-in"):
        open_source(str(split), fmt="digits")

    wds = tmp_path / "wds"
    _write_tar(wds / "a.tar", _samples(2))
    with tarfile.open(wds / "b.tar", "w") as tar:
        info = tarfile.TarInfo("lonely.png")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"png"))
    with pytest.raises(UserError, match="'lonely' in .*b.tar has no .cls member"):
        open_source(str(wds)).index()

    bad_parquet = tmp_path / "bad_parquet"
    bad_parquet.mkdir()
    pq.write_table(pa.table({"img": [b"x"], "label": [0]}), bad_parquet / "x.parquet")
    with pytest.raises(UserError, match=r"has columns \['img', 'label'\]; expected 'image' and 'label'"):
        open_source(str(bad_parquet))


def test_every_format_is_registered():
    assert SOURCES.names() == ["digits", "imagefolder", "parquet", "webdataset"]
