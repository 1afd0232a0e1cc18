"""Issue 20: a UserError raised inside a Ray task, a Ray Data actor's constructor or a Ray Train worker reaches the
user as the one line (exit 2) the driver would give."""

import sys

import pytest
import ray
import ray.data
import ray.train
from ray.data import ActorPoolStrategy
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from raydistill import cli
from raydistill.errors import UserError

# Workers cannot import tests/, so this module's functions and classes travel by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

MESSAGE = "prior dit:/models/dit is missing on this node: copy it there or pass a shared path"


@ray.remote
def failing_task():
    raise UserError(MESSAGE)


class FailingActor:
    def __init__(self):
        raise UserError(MESSAGE)

    def __call__(self, batch):
        return batch


def failing_train_worker(config):
    raise UserError(MESSAGE)


def raised_by(work) -> BaseException:
    with pytest.raises(Exception) as caught:
        work()
    return caught.value


def task_error():
    return raised_by(lambda: ray.get(failing_task.remote()))


def actor_error():
    data = ray.data.range(4).map_batches(FailingActor, compute=ActorPoolStrategy(size=1), batch_size=2)
    return raised_by(data.take_all)


def train_error(tmp_path):
    trainer = TorchTrainer(failing_train_worker, scaling_config=ScalingConfig(num_workers=1),
                           run_config=RunConfig(name="failing", storage_path=str(tmp_path)))
    return raised_by(trainer.fit)


@pytest.mark.parametrize("where", ["task", "actor constructor", "train worker"])
def test_a_user_error_in_a_worker_is_one_line_at_the_cli(where, ray_local, tmp_path, monkeypatch, capsys):
    error = {"task": task_error, "actor constructor": actor_error,
             "train worker": lambda: train_error(tmp_path)}[where]()
    assert str(error) != MESSAGE  # Ray wrapped it, with the worker's traceback

    def command(standalone_mode):
        raise error

    monkeypatch.setattr(cli, "cli", command)
    monkeypatch.setattr(sys, "argv", ["raydistill", "run"])
    capsys.readouterr()  # what Ray's log forwarding printed while the worker failed
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {MESSAGE}\n"
