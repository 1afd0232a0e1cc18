"""Config loading, overrides, validation messages and fingerprints."""

import pytest

from raydistill.config import RunConfig, fingerprint, load_config, parse_override
from raydistill.errors import UserError
from raydistill.pipeline import stage_fingerprints
from raydistill.stages.context import Inputs


def test_defaults_yaml_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("quantize:\n  ipc: 5\ntrain:\n  students: [convnet3, cifar-resnet20]\n")
    config = load_config(path, [parse_override("quantize.method=kmeans"), parse_override("data.max_per_class=100")])
    assert config.quantize.ipc == 5 and config.quantize.method == "kmeans"
    assert config.train.students == ("convnet3", "cifar-resnet20")
    assert config.data.max_per_class == 100
    assert load_config().quantize.method == "ddoq"


def test_override_parses_yaml_values():
    assert parse_override("data.val=null") == {"data": {"val": None}}
    assert parse_override("train.lr=0.01") == {"train": {"lr": 0.01}}


def test_unknown_key_lists_valid_ones():
    with pytest.raises(UserError, match=r"unknown config key 'quantize.ipcs'; valid keys in quantize: method, ipc"):
        load_config(None, [parse_override("quantize.ipcs=3")])
    with pytest.raises(UserError, match=r"unknown config key 'quantise'"):
        load_config(None, [{"quantise": {"ipc": 3}}])


def test_wrong_type_names_key():
    with pytest.raises(UserError, match=r"'quantize.ipc' expects int, got 'ten'"):
        load_config(None, [parse_override("quantize.ipc=ten")])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="section.key=value"):
        parse_override("quantize.ipc")
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


# What `prepare` would find on disk, held fixed so that only the config varies.
INPUTS = Inputs(data="listing", classes=("a", "b"), prior="weights", teacher="", val="")


def test_resource_fields_do_not_change_fingerprints():
    base = stage_fingerprints(RunConfig(), INPUTS)
    resized = stage_fingerprints(load_config(None, [{"encode": {"actors": 4, "batch_size": 7}}]), INPUTS)
    assert base == resized
    changed = stage_fingerprints(load_config(None, [{"quantize": {"ipc": 3}}]), INPUTS)
    assert changed["encode"] == base["encode"]
    assert all(changed[s] != base[s] for s in ("quantize", "synthesize", "train", "evaluate", "report"))
    assert fingerprint(1, "a") == fingerprint(1, "a") != fingerprint(2, "a")


@pytest.mark.parametrize("method, prior, expected", [
    # (quantize.space, encode.invert, synthesize.decode, guidance, negative prompt, train.weight_transform)
    ("ddoq", "tiny", ("latent", False, "nearest", None, "", "power:0.5")),
    ("kmeans", "pixel", ("latent", False, "nearest", None, "", "none")),
    ("ddoq", "dit-tiny", ("latent", False, "ddim", 4.0, "", "power:0.5")),
    ("kmeans", "sd-tiny", ("latent", False, "ddim", 8.0, "cartoon, anime, painting", "none")),
    ("d3hr", "dit-tiny", ("noise", True, "ddim", 4.0, "", "none")),
    ("dsco", "dit-tiny", ("latent", False, "dsco", 4.0, "", "none")),
])
def test_resolve_fills_each_default_once_from_the_method_and_prior(method, prior, expected):
    from raydistill.pipeline import validate

    config = validate(load_config(overrides=[{"quantize": {"method": method}, "prior": {"spec": prior}}]))
    assert (config.quantize.space, config.encode.invert, config.synthesize.decode, config.synthesize.guidance,
            config.prior.negative_prompt, config.train.weight_transform) == expected
    assert config.encode.guidance == config.synthesize.guidance
    assert validate(config) == config  # resolving a resolved config changes nothing


def test_a_default_written_out_is_the_same_run_as_the_default():
    from raydistill.pipeline import stage_fingerprints, validate

    implicit = validate(load_config(overrides=[{"quantize": {"method": "d3hr"}, "prior": {"spec": "dit-tiny"}}]))
    explicit = validate(load_config(overrides=[{"quantize": {"method": "d3hr", "space": "noise"},
                                                "prior": {"spec": "dit-tiny"},
                                                "synthesize": {"decode": "ddim", "guidance": 4.0}}]))
    assert stage_fingerprints(implicit, INPUTS) == stage_fingerprints(explicit, INPUTS)


def test_a_recipe_is_the_base_that_files_and_overrides_change(tmp_path):
    config = load_config(overrides=[{"recipe": "d3hr-imagenet"}, {"train": {"batch_size": 100}}])
    assert (config.quantize.method, config.quantize.candidates, config.train.lr_schedule) == ("d3hr", 10**6,
                                                                                             "half_cosine")
    assert config.train.batch_size == 100  # the override wins over the recipe's 50
    (tmp_path / "job.yaml").write_text("recipe: ddoq-dit-imagenette\nencode:\n  actors: 4\n")
    job = load_config(tmp_path / "job.yaml", [{"quantize": {"ipc": 50}}])
    assert (job.quantize.algorithm, job.train.repeats, job.encode.actors, job.quantize.ipc) == ("minibatch", 5, 4, 50)
    with pytest.raises(UserError, match=r"unknown recipe 'd3hr'; the recipes are d3hr-cifar10, d3hr-imagenet, "
                                        r"d4m-imagenet"):
        load_config(overrides=[{"recipe": "d3hr"}])
