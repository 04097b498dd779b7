"""One writer per workdir: a live owner's lock stops a second run; a dead owner's is taken over."""

import json
import os
import subprocess
import sys
import time

import pytest
from train_cli import train

from research.errors import EXIT_USER_ERROR
from research.train import workdir_lock
from research.train.workdir_lock import LOCK_NAME, WorkdirInUseError, WorkdirLock


def _write_lock(workdir, **owner):
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / LOCK_NAME).write_text(json.dumps(owner))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture
def sleeper():
    """A live process of this host that is not us."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_the_lock_is_held_while_running_and_removed_after(tmp_path):
    workdir = tmp_path / "run"
    with WorkdirLock(workdir) as lock:
        owner = json.loads(lock.path.read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == workdir_lock.socket.gethostname()
        (workdir / "config.json").write_text("{}")
    assert not (workdir / LOCK_NAME).exists() and (workdir / "config.json").exists()


def test_a_workdir_created_for_nothing_is_removed_again(tmp_path):
    with WorkdirLock(tmp_path / "run"):
        pass
    assert not (tmp_path / "run").exists()


def test_a_live_owner_on_this_host_stops_a_second_writer(tmp_path, sleeper):
    workdir = tmp_path / "run"
    owner = workdir_lock.this_process() | {
        "pid": sleeper.pid,
        "process_start": workdir_lock._process_start(sleeper.pid),
    }
    _write_lock(workdir, **owner)
    with pytest.raises(WorkdirInUseError, match=f"in use by pid {sleeper.pid} on host"):
        WorkdirLock(workdir).__enter__()
    assert json.loads((workdir / LOCK_NAME).read_text()) == owner  # untouched


@pytest.mark.parametrize(
    "change,reason",
    [
        ({"pid": 2**22 + 12345}, "is no longer running"),
        ({"process_start": "1"}, "pid reused"),
    ],
)
def test_a_dead_owner_on_this_host_is_taken_over_with_a_warning(
    tmp_path, sleeper, capsys, change, reason
):
    workdir = tmp_path / "run"
    owner = workdir_lock.this_process() | {
        "pid": sleeper.pid,
        "process_start": workdir_lock._process_start(sleeper.pid),
    }
    _write_lock(workdir, **(owner | change))
    with WorkdirLock(workdir) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert reason in capsys.readouterr().err


def test_another_hosts_lock_holds_until_it_stops_being_refreshed(tmp_path):
    workdir = tmp_path / "run"
    _write_lock(workdir, host="elsewhere", pid=1, process_start="1", since_utc="then")
    with pytest.raises(WorkdirInUseError, match="on host elsewhere"):
        WorkdirLock(workdir, stale_after_s=60).__enter__()
    old = time.time() - 120
    os.utime(workdir / LOCK_NAME, (old, old))
    with WorkdirLock(workdir, stale_after_s=60):
        pass


def test_the_owner_refreshes_its_lock(tmp_path):
    with WorkdirLock(tmp_path / "run", heartbeat_s=0.05) as lock:
        old = time.time() - 100
        os.utime(lock.path, (old, old))
        time.sleep(0.3)
        assert time.time() - os.stat(lock.path).st_mtime < 5


def test_train_refuses_a_workdir_in_use_and_writes_nothing(tmp_path, data_dir, sleeper):
    workdir = tmp_path / "run"
    owner = workdir_lock.this_process() | {
        "pid": sleeper.pid,
        "process_start": workdir_lock._process_start(sleeper.pid),
    }
    _write_lock(workdir, **owner)
    result = train(workdir, data_dir)
    assert result.returncode == EXIT_USER_ERROR, result.stderr
    assert f"is in use by pid {sleeper.pid}" in result.stderr
    assert sorted(p.name for p in workdir.iterdir()) == [LOCK_NAME]
