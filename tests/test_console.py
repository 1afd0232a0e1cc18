"""Issue 22, the console: Ray Train's per-epoch lines and Ray Data's INFO lines only under -v, all of them in
RUN/logs/ (a run's job log: tests/test_cluster.py; on an object store: tests/test_object_storage.py)."""

import importlib
import logging
import os
import re
import time

import pytest
from ray.util.debug import log_once

from raydistill import RAY_LINES_NOT_FOR_THE_USER
from raydistill.rundir import RunDir
from raydistill.runlog import run_log
from raydistill.stages.cluster import apply_train_log_level, quiet_ray_console, train_log_level
from raydistill.stages.progress import epoch_bar


@pytest.fixture
def levels_restored():
    """The loggers this test sets, as they were (setLevel, not a patched attribute, clears their caches)."""
    reporting = importlib.import_module("ray.train.v2._internal.execution.context")
    loggers = [logging.getLogger(), logging.getLogger(reporting.__file__)]
    before = [logger.level for logger in loggers]
    yield loggers
    for logger, level in zip(loggers, before):
        logger.setLevel(level)


def test_ray_trains_report_lines_follow_the_console_level(levels_restored):
    root, reporting = levels_restored
    root.setLevel(logging.WARNING)
    assert train_log_level() == "WARNING"
    root.setLevel(logging.INFO)
    assert train_log_level() == "INFO"
    # The logger Ray Train 2.60 reports through is named after its file; a Ray that renamed it would print again.
    apply_train_log_level("WARNING")
    assert not reporting.isEnabledFor(logging.INFO)
    apply_train_log_level("INFO")
    assert reporting.isEnabledFor(logging.INFO)


@pytest.fixture
def ray_console_restored():
    """Ray's and Ray Data's console handlers and Ray Data's issue detectors, as they were."""
    import ray.data

    handlers = [h for name in ("ray", "ray.data") for h in logging.getLogger(name).handlers]
    levels, filters = [h.level for h in handlers], [list(h.filters) for h in handlers]
    detectors = ray.data.DataContext.get_current().issue_detectors_config
    before = list(detectors.detectors)
    yield
    for handler, level, kept in zip(handlers, levels, filters):
        handler.setLevel(level)
        handler.filters = kept
    detectors.detectors = before


def _console_levels() -> set[int]:
    return {h.level for name in ("ray", "ray.data") for h in logging.getLogger(name).handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)}


def test_ray_data_info_lines_and_memory_advice_leave_the_console_unless_verbose(levels_restored,
                                                                                ray_console_restored):
    import ray.data

    root, _ = levels_restored
    root.setLevel(logging.WARNING)
    quiet_ray_console()
    assert _console_levels() == {logging.WARNING}
    detectors = ray.data.DataContext.get_current().issue_detectors_config.detectors
    assert detectors and "HighMemoryIssueDetector" not in {d.__name__ for d in detectors}
    assert not log_once("cpu_warning")  # spent: Ray Data's no-free-CPU warning will not print
    root.setLevel(logging.INFO)
    quiet_ray_console()
    assert _console_levels() == {logging.INFO}


def test_rays_token_notice_for_a_local_ray_leaves_the_console_unless_verbose(levels_restored, ray_console_restored):
    root, _ = levels_restored
    console = [h for h in logging.getLogger("ray").handlers
               if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    notice = logging.LogRecord("ray._private.authentication.authentication_token_setup", logging.WARNING, "", 0,
                               "Token authentication is enabled for this Ray cluster.", None, None)
    other = logging.LogRecord("ray.data", logging.WARNING, "", 0, "a block failed", None, None)
    root.setLevel(logging.WARNING)
    quiet_ray_console()
    assert console and not any(h.filter(notice) for h in console) and all(h.filter(other) for h in console)
    root.setLevel(logging.INFO)
    quiet_ray_console()
    assert all(h.filter(notice) for h in console)


def test_ray_lines_that_ask_nothing_of_the_user_are_skipped_and_errors_are_not():
    """Ray reads the skip pattern from the environment when first imported; raydistill sets it before that."""
    pattern = re.compile(os.environ["RAY_DEDUP_LOGS_SKIP_REGEX"])
    assert pattern.pattern == RAY_LINES_NOT_FOR_THE_USER
    assert pattern.search("[2026-12-03 17:14:09,968 E 27661 27701] core_worker.cc:2465: Actor with class name: "
                          "'PreemptionWatcher' and ID: '63' has constructor arguments in the object store and "
                          "max_restarts > 0. If the arguments in the object store go out of scope or are lost, ...")
    assert pattern.search("WARNING: 8 PYTHON worker processes have been started on node: bb10 with address: ...")
    for line in ("Starting execution of Dataset train_03_4. Full logs are in /tmp/ray/session_x/logs/ray-data",
                 "Execution plan of Dataset train_03_4: InputDataBuffer[Input] -> TaskPoolMapOperator[ListFiles]",
                 "✔️  Dataset train_03_4 execution finished in 2.66 seconds",
                 "Progress bars disabled. To enable, set `ray.data.DataContext.get_current().enable_progress_bars`",
                 "execution_options.py:436: RayDeprecationWarning: `ExecutionOptions.exclude_resources` is deprecated",
                 "  self.exclude_resources = exclude_resources"):
        assert pattern.search(line), line
    assert not pattern.search("raydistill.errors.UserError: --ipc must be a positive number of images per class")
    assert not pattern.search("ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.")
    assert not pattern.search("prior train: step 30 of 30, loss 0.1601")


def test_the_run_log_keeps_info_lines_of_raydistill_ray_and_ray_data(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="raydistill")
    rundir = RunDir(str(tmp_path / "run"))
    with run_log(rundir, "run") as name:
        logging.getLogger("ray.data").info("Execution plan of Dataset d1")
        logging.getLogger("ray.data").debug("a scheduler detail")
        logging.getLogger("raydistill").info("encode: running")
        assert (tmp_path / "run" / "logs" / name).exists()  # written as lines come, so a killed driver leaves it
    text = (tmp_path / "run" / "logs" / name).read_text()
    assert name.startswith("run-") and "Execution plan of Dataset d1" in text and "encode: running" in text
    assert "a scheduler detail" not in text
    logging.getLogger("ray.data").info("after the run")
    assert "after the run" not in (tmp_path / "run" / "logs" / name).read_text()


def test_the_epoch_bar_follows_what_rank_zero_reports(ray_local, capsys):
    import ray

    with epoch_bar(10, "train students/convnet3", enabled=True) as progress:
        ray.get(progress.update.remote(3, 0.25))
        time.sleep(1.2)  # two polls
    err = capsys.readouterr().err
    assert "train students/convnet3" in err and "3/10" in err and "loss=0.2500" in err
    with epoch_bar(10, "no terminal", enabled=False) as progress:
        assert progress is None
