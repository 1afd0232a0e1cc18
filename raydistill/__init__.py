"""raydistill: dataset distillation (DDOQ, D3HR, DsCo and their baselines) on Ray."""

import os

# Lines that Ray's workers and raylet send to the driver's console and that ask nothing of the user: every actor
# pool of Ray Data and Ray Train warns that its constructor arguments live in the object store (Ray issue 53727),
# and the raylet that it started more worker processes than the node has CPUs. They stay in Ray's session logs.
# Ray reads this when it is first imported; a value the user set wins.
RAY_LINES_NOT_FOR_THE_USER = "has constructor arguments in the object store|PYTHON worker processes have been started"
os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", RAY_LINES_NOT_FOR_THE_USER)
