"""raydistill: dataset distillation (DDOQ, D3HR, DsCo and their baselines) on Ray."""

import os

# Lines that Ray's workers and raylet send to the driver's console and that ask nothing of the user. Every actor pool
# of Ray Data and Ray Train warns that its constructor arguments live in the object store (Ray issue 53727); the
# raylet, that it started more worker processes than the node has CPUs; and the coordinator of a streaming split
# (`prior train`'s input) logs three INFO lines per epoch about its dataset, plus that its progress bars are off;
# Ray Train's dataset manager warns (two lines) that Ray Train itself sets a deprecated Ray Data option. They stay in Ray's session logs. Ray reads this when it is first imported; a value the user set wins.
RAY_LINES_NOT_FOR_THE_USER = "|".join([
    "has constructor arguments in the object store",
    "PYTHON worker processes have been started",
    "(Starting execution of|Execution plan of) Dataset ",
    r"Dataset \S+ execution finished in ",
    "Progress bars disabled. To enable",
    r"ExecutionOptions.exclude_resources` is deprecated|self\.exclude_resources = exclude_resources",
])
os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", RAY_LINES_NOT_FOR_THE_USER)
