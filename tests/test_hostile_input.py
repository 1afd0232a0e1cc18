"""Issue 21: weights, checkpoints and run folders written by someone else, and inputs changed in place.

A pickle that would create a sentinel file is refused and creates nothing; export writes nothing outside --dest and
replaces an earlier export whole; changing data, weights, teacher, class order or prior-train settings at the same
path changes exactly the fingerprints of the stages that read them.
"""

import json
import os
import pathlib
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from raydistill.checkpoints import check_checkpoints, load_state, save_state
from raydistill.config import PriorTrainSettings, load_config
from raydistill.errors import UserError
from raydistill.export import export_image_folder
from raydistill.pipeline import pin_prior_revision, prepare, stage_fingerprints
from raydistill.priors import load_prior
from raydistill.rundir import RunDir
from raydistill.stages.context import Inputs
from raydistill.stages.prior_train import training_state_name
from raydistill.train.models import create_student, load_teacher

from test_errors import own_lines, png, run_cli, write_shards


class Planted:
    """Unpickling this creates `sentinel`: what an attacker's checkpoint would do, harmlessly."""

    def __init__(self, sentinel: pathlib.Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return pathlib.Path.touch, (self.sentinel,)


def test_checkpoints_round_trip_without_pickles(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3}
    save_state(state, str(tmp_path))
    loaded = load_state(str(tmp_path))
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["weight"], model.weight)
    assert set(loaded["optimizer"]["state"]) == {0, 1}  # integer keys survive JSON
    torch.optim.AdamW(model.parameters()).load_state_dict(loaded["optimizer"])
    assert sorted(os.listdir(tmp_path)) == ["state.json", "tensors.safetensors"]


def test_a_planted_pickle_checkpoint_is_refused_and_runs_nothing(tmp_path):
    sentinel = tmp_path / "pwned"
    checkpoint = tmp_path / "train_state" / "run" / "checkpoint_000"
    checkpoint.mkdir(parents=True)
    torch.save({"model": Planted(sentinel)}, checkpoint / "state.pt")
    storage = str(tmp_path / "train_state")
    with pytest.raises(UserError, match=r"checkpoint_000 lacks state.json and tensors.safetensors.*delete"):
        check_checkpoints(RunDir(storage).fs, storage)
    with pytest.raises(UserError, match=r"lacks state.json"):
        load_state(str(checkpoint))
    assert not sentinel.exists()
    shutil.rmtree(checkpoint)
    check_checkpoints(RunDir(storage).fs, storage)  # no checkpoint at all is fine


def test_a_planted_training_checkpoint_stops_the_run_with_one_line(digits_dataset, monkeypatch, capsys, tmp_path,
                                                                   ray_local):
    """Through the CLI: the pickle sits where Ray Train would resume the student from."""
    out = tmp_path / "run"
    args = ["run", "--data", str(digits_dataset), "--ipc", "2", "--out", str(out), "--prior", "pixel",
            "--set", "train.epochs=1", "--set", "evaluate.baseline=false"]
    config = prepare(load_config(overrides=[{"data": {"train": str(digits_dataset)}, "quantize": {"ipc": 2},
                                             "prior": {"spec": "pixel"}, "out": str(out),
                                             "train": {"epochs": 1}, "evaluate": {"baseline": False}}]))
    fingerprint = stage_fingerprints(config.config, config.inputs)["train"]
    sentinel = tmp_path / "pwned"
    checkpoint = out / "train_state" / fingerprint / "method-convnet3" / "checkpoint_2026-01-01_00-00-00.000000"
    checkpoint.mkdir(parents=True)
    torch.save(Planted(sentinel), checkpoint / "state.pt")
    code, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and "lacks state.json and tensors.safetensors" in err and "Traceback" not in own_lines(err)
    assert not sentinel.exists()


def test_pickled_teacher_weights_need_trust(tmp_path):
    sentinel = tmp_path / "pwned"
    file = tmp_path / "teacher.pth"
    torch.save({"state_dict": Planted(sentinel)}, file)
    with pytest.raises(UserError, match=r"teacher.pth is not .safetensors.*--trust-pickles"):
        load_teacher(f"cifar-resnet20:{file}", num_classes=10)
    assert not sentinel.exists()
    honest = tmp_path / "honest.pth"
    torch.save(create_student("cifar-resnet20", 10, 32).state_dict(), honest)
    load_teacher(f"cifar-resnet20:{honest}", num_classes=10, trust_pickles=True)


def test_a_diffusers_folder_with_only_pickled_weights_needs_trust(saved_dit, tmp_path):
    folder = tmp_path / "dit"
    shutil.copytree(saved_dit, folder)
    transformer = load_prior(f"dit:{folder}").denoiser
    shutil.rmtree(folder / "transformer")
    transformer.save_pretrained(folder / "transformer", safe_serialization=False)
    assert not list((folder / "transformer").glob("*.safetensors"))
    with pytest.raises(UserError, match=r"transformer holds only pickled weights.*--trust-pickles"):
        load_prior(f"dit:{folder}")
    assert load_prior(f"dit:{folder}", trust_pickles=True).num_classes == 1000


def test_hub_ids_are_pinned_to_a_commit_or_refused(monkeypatch, tmp_path):
    import huggingface_hub

    def offline(self, repo_id, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", offline)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    config = load_config(overrides=[{"prior": {"spec": "dit:facebook/DiT-XL-2-256"}}])
    with pytest.raises(UserError, match=r"cannot resolve the revision of hub model 'facebook/DiT-XL-2-256'.*@COMMIT"):
        pin_prior_revision(config)
    refs = tmp_path / "models--facebook--DiT-XL-2-256" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("eef87cb\n")
    assert pin_prior_revision(config).prior.spec == "dit:facebook/DiT-XL-2-256@eef87cb"
    pinned = load_config(overrides=[{"prior": {"spec": "dit:facebook/DiT-XL-2-256@abc"}}])
    assert pin_prior_revision(pinned) == pinned
    local = load_config(overrides=[{"prior": {"spec": "tiny"}}])
    assert pin_prior_revision(local) == local


def test_an_unfinished_prior_folder_is_refused(saved_dit, tmp_path):
    folder = tmp_path / "prior"
    shutil.copytree(saved_dit, folder)
    (folder / "autoencoder.json").write_text(json.dumps({"prior": "tiny", "resolution": 32, "latent_scale": 1.0}))
    with pytest.raises(UserError, match=r"has no training.json: `raydistill prior train` stopped"):
        load_prior(f"dit:{folder}")


def test_prior_training_resumes_only_its_own_settings():
    run = {"fingerprint": "latents-1"}
    base = training_state_name(run, PriorTrainSettings(), workers=1)
    assert training_state_name(run, PriorTrainSettings(steps=10_000, checkpoint_every=7), 1) == base
    for changed in ({"lr": 1e-5}, {"seed": 1}, {"preset": "dit-s"}, {"batch_size": 8}):
        assert training_state_name(run, PriorTrainSettings(**changed), 1) != base
    assert training_state_name({"fingerprint": "latents-2"}, PriorTrainSettings(), 1) != base
    assert training_state_name(run, PriorTrainSettings(), 2) != base


def test_an_unwritable_out_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=r"cannot write the run folder .*file/run .*pass an --out you may write to"):
        RunDir(str(tmp_path / "file" / "run"))


# -- export -------------------------------------------------------------------------------------------------------


def fake_run(root, names: list[str], ids: list[str], labels: list[int]) -> str:
    """A run folder with a finished distilled/ set, as a tampered run folder might hold."""
    rundir = RunDir(str(root))
    table = pa.table({"id": ids, "label": pa.array(labels, pa.int32()), "image": [png(30 * (i % 8)) for i in labels],
                      "weight": [1.0] * len(ids)})
    rundir.fs.create_dir(rundir.path("distilled"))
    pq.write_table(table, rundir.path("distilled", "part-0.parquet"))
    rundir.write_json([{"label": i, "name": n, "display_name": n} for i, n in enumerate(names)], "class_names.json")
    rundir.write_marker("distilled", "x", len(ids), 0.0)
    return str(root)


@pytest.mark.parametrize("names, ids, labels, message", [
    (["../../escaped", "b"], ["p0", "p1"], [0, 1], "'../../escaped'"),
    (["/etc/cron.d", "b"], ["p0", "p1"], [0, 1], "'/etc/cron.d'"),
    (["T-shirt/top", "b"], ["p0", "p1"], [0, 1], "'T-shirt/top'"),
    (["cat", "cat"], ["p0", "p1"], [0, 1], "'cat'"),
    (["a\0b", "b"], ["p0", "p1"], [0, 1], "a"),
    (["x" * 300, "b"], ["p0", "p1"], [0, 1], "xxxx"),
    (["a", "b"], ["../../escaped", "p1"], [0, 1], "'../../escaped'"),
    (["a", "b"], ["p0", "p1"], [0, 7], "label 7"),
])
def test_export_of_a_tampered_run_writes_nothing_outside_dest(tmp_path, names, ids, labels, message):
    run = fake_run(tmp_path / "run", names, ids, labels)
    before = set(tmp_path.rglob("*"))
    with pytest.raises(UserError, match=re.escape(message)):
        export_image_folder(run, tmp_path / "sub" / "dest")
    assert set(tmp_path.rglob("*")) - before <= {tmp_path / "sub"}  # only dest's parent, made empty


def test_export_replaces_an_earlier_export_whole_and_refuses_other_folders(tmp_path):
    run = fake_run(tmp_path / "run", ["a", "b"], ["p0", "p1"], [0, 1])
    dest = tmp_path / "dest"
    assert export_image_folder(run, dest) == 2
    (dest / "a" / "stale.png").write_bytes(b"old")
    assert export_image_folder(run, dest) == 2
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.png")) == ["a/p0.png", "b/p1.png"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("")
    with pytest.raises(UserError, match=r"exists and is not an earlier export"):
        export_image_folder(run, mine)
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]


# -- inputs changed in place --------------------------------------------------------------------------------------


@pytest.fixture
def digits_dataset(tmp_path):
    """Three classes of small PNGs as parquet shards with a dataset.json, a val shard beside them."""
    return write_shards(tmp_path / "data", {0: 6, 1: 6, 2: 6}, ["cat", "dog", "eel"])


def fingerprints_of(data, tmp_path, **sections) -> dict[str, str]:
    overrides = {"data": {"train": str(data)}, "quantize": {"ipc": 2}, "prior": {"spec": "pixel"},
                 "out": str(tmp_path / "run"), **sections}
    ctx = prepare(load_config(overrides=[overrides]))
    return stage_fingerprints(ctx.config, ctx.inputs)


def redone(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return [stage for stage in before if before[stage] != after[stage]]


ALL = ["encode", "quantize", "synthesize", "train", "dope", "reference", "evaluate", "report"]


def test_data_changed_in_place_redoes_every_stage(digits_dataset, tmp_path):
    before = fingerprints_of(digits_dataset, tmp_path)
    assert fingerprints_of(digits_dataset, tmp_path) == before
    shard = digits_dataset / "train-00000-of-00001.parquet"
    table = pq.read_table(shard)
    images = table.column("image").to_pylist()
    pq.write_table(table.set_column(0, "image", pa.array(images[1:] + images[:1])), shard)  # same ids, new pixels
    assert redone(before, fingerprints_of(digits_dataset, tmp_path)) == ALL


def test_reordered_class_names_redo_every_stage(digits_dataset, tmp_path):
    before = fingerprints_of(digits_dataset, tmp_path)
    (digits_dataset / "dataset.json").write_text(json.dumps({"classes": ["dog", "cat", "eel"]}))
    assert redone(before, fingerprints_of(digits_dataset, tmp_path)) == ALL


def test_validation_data_changed_in_place_redoes_evaluation_only(digits_dataset, tmp_path):
    before = fingerprints_of(digits_dataset, tmp_path)
    shard = digits_dataset / "val-00000-of-00001.parquet"
    pq.write_table(pq.read_table(shard).slice(1), shard)
    assert redone(before, fingerprints_of(digits_dataset, tmp_path)) == ["evaluate", "report"]


def test_teacher_weights_changed_in_place_redo_training_onwards(digits_dataset, tmp_path):
    teacher = tmp_path / "teacher.safetensors"
    save_file(create_student("cifar-resnet20", 3, 32).state_dict(), str(teacher))
    before = fingerprints_of(digits_dataset, tmp_path, train={"teacher": f"cifar-resnet20:{teacher}"})
    torch.manual_seed(1)
    save_file(create_student("cifar-resnet20", 3, 32).state_dict(), str(teacher))
    after = fingerprints_of(digits_dataset, tmp_path, train={"teacher": f"cifar-resnet20:{teacher}"})
    assert redone(before, after) == ["train", "dope", "reference", "evaluate", "report"]


def test_prior_weights_changed_in_place_redo_every_stage(digits_dataset, saved_dit, tmp_path):
    folder = tmp_path / "vae"
    shutil.copytree(saved_dit / "vae", folder)
    before = fingerprints_of(digits_dataset, tmp_path, prior={"spec": f"vae:{folder}", "resolution": 32})
    weights = next(folder.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-4:] = bytes(4)  # the last value of the last tensor, same size
    weights.write_bytes(bytes(data))
    after = fingerprints_of(digits_dataset, tmp_path, prior={"spec": f"vae:{folder}", "resolution": 32})
    assert redone(before, after) == ALL


def test_d3hr_gpu_count_is_part_of_its_result():
    inputs = Inputs(data="listing", classes=("a", "b"), prior="weights", teacher="", val="")

    def quantize(method, gpus):
        config = load_config(overrides=[{"quantize": {"method": method, "gpus_per_task": gpus}}])
        return stage_fingerprints(config, inputs)["quantize"]

    assert quantize("ddoq", 0.0) == quantize("ddoq", 1.0)
    assert quantize("d3hr", 0.0) != quantize("d3hr", 0.5)
