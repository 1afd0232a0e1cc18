"""Issue 20: one run per --out at a time; a holder that died is taken over."""

import json
import socket
import time

import pytest

from conftest import plant_lock
from raydistill.errors import UserError
from raydistill.rundir import LOCK, LOCK_STALE_SECONDS, RunDir

from test_errors import run_cli


def test_a_live_holder_on_this_host_keeps_the_folder(tmp_path, live_process):
    plant_lock(tmp_path, host=socket.gethostname(), pid=live_process, heartbeat=time.time())
    holder = rf"in use by a run of pid {live_process} on {socket.gethostname()}.*another --out"
    with pytest.raises(UserError, match=holder):
        with RunDir(str(tmp_path)).lock():
            pass


def test_a_dead_holder_is_taken_over_and_the_lock_released_after(tmp_path):
    plant_lock(tmp_path, host=socket.gethostname(), pid=2**22 + 12345, heartbeat=time.time())  # no such pid
    with RunDir(str(tmp_path)).lock():
        holder = json.loads((tmp_path / LOCK).read_text())
        assert holder["host"] == socket.gethostname() and isinstance(holder["pid"], int)
    assert not (tmp_path / LOCK).exists()


def test_a_holder_on_another_host_is_alive_while_its_heartbeat_is_fresh(tmp_path):
    plant_lock(tmp_path, host="worker-7", pid=1, heartbeat=time.time())
    with pytest.raises(UserError, match=r"in use by a run of pid 1 on worker-7"):
        with RunDir(str(tmp_path)).lock():
            pass
    plant_lock(tmp_path, host="worker-7", pid=1, heartbeat=time.time() - LOCK_STALE_SECONDS - 1)
    with RunDir(str(tmp_path)).lock():
        pass


def test_a_second_run_on_a_held_out_fails_at_once_naming_the_holder(monkeypatch, capsys, tmp_path, live_process):
    out = tmp_path / "run"
    plant_lock(out, host=socket.gethostname(), pid=live_process, heartbeat=time.time())
    started = time.perf_counter()
    code, err = run_cli(monkeypatch, capsys, "run", "--ipc", "2", "--out", str(out))
    assert code == 2 and f"in use by a run of pid {live_process}" in err and "Traceback" not in err
    assert time.perf_counter() - started < 60  # before Ray starts
    assert sorted(p.name for p in out.iterdir()) == [LOCK]  # nothing of the holder's touched
