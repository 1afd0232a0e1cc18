"""RUN/logs/: what the driver logged during one command, Ray's and Ray Data's INFO lines included, which the
console shows only under -v. No Ray in here."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from typing import Iterator

import pyarrow.fs as pafs

from raydistill.rundir import RunDir

# raydistill's own lines, and Ray's loggers, which do not propagate to the root logger.
LOGGERS = ("raydistill", "ray", "ray.data")


@contextlib.contextmanager
def run_log(rundir: RunDir, command: str) -> Iterator[str]:
    """Copies every INFO-or-worse line of LOGGERS into RUN/logs/<command>-<UTC start>.log while the block runs.

    A local run folder gets the file as lines arrive, so a killed driver leaves its log; on an object store the file
    is uploaded when the block ends, also on an error. Yields the file's name under logs/.
    """
    name = f"{command}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}.log"
    local = isinstance(rundir.fs, pafs.LocalFileSystem)
    if local:
        rundir.fs.create_dir(rundir.path("logs"), recursive=True)
        target = rundir.path("logs", name)
    else:
        descriptor, target = tempfile.mkstemp(suffix=".log")
        os.close(descriptor)
    handler = logging.FileHandler(target, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(logger) for logger in LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield name
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()
        if not local:
            with open(target, "rb") as log:
                rundir.write_bytes(log.read(), "logs", name)
            os.unlink(target)
