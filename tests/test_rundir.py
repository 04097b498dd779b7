"""The workdir layout and the readers of other runs' workdirs."""

import pytest

from research import rundir
from research.errors import WorkdirError


def test_a_runs_state_follows_its_files(tmp_path):
    run = rundir.RunDir.at(tmp_path / "run")
    assert rundir.status(run.root) == rundir.PENDING
    run.checkpoints.mkdir(parents=True)
    assert rundir.status(run.root) == rundir.INTERRUPTED
    run.summary.write_text("{}")
    assert rundir.status(run.root) == rundir.FINISHED


def test_a_workdir_or_its_checkpoints_name_the_same_run(tmp_path):
    run = rundir.RunDir.at(tmp_path / "run")
    assert rundir.run_of(run.checkpoints) == run == rundir.run_of(run.root)
    assert rundir.checkpoints_of(run.root) == run.root  # no checkpoints/ yet: the path itself
    run.checkpoints.mkdir(parents=True)
    assert rundir.checkpoints_of(run.root) == run.checkpoints
    assert rundir.checkpoints_of(run.checkpoints) == run.checkpoints


def test_another_runs_config_is_read_or_missing(tmp_path):
    run = rundir.RunDir.at(tmp_path)
    assert rundir.read_config(tmp_path) is None
    run.config.write_text('{"seed": 3}')
    assert rundir.read_config(tmp_path) == {"seed": 3}
    run.config.write_text("{not json")
    with pytest.raises(WorkdirError, match="not valid JSON"):
        rundir.read_config(tmp_path)
