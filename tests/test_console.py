"""Issue 22, the console: Ray Train's per-epoch lines only under -v (a run's job log: tests/test_cluster.py)."""

import importlib
import logging

import pytest

from raydistill.stages.cluster import apply_train_log_level, train_log_level


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
