"""Workdir paths: local ones become absolute, URLs stay URLs, writes are atomic."""

import os

import pytest
from matplotlib.figure import Figure

from research import storage


def test_a_url_keeps_its_double_slash_and_a_local_path_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert os.fspath(storage.workdir_path("gs://bucket/run")) == "gs://bucket/run"
    assert os.fspath(storage.workdir_path("gs://bucket/run") / "checkpoints") == (
        "gs://bucket/run/checkpoints"
    )
    assert storage.workdir_path("runs/a") == tmp_path / "runs" / "a"
    assert storage.is_remote("gs://bucket/run") and not storage.is_remote(tmp_path)


def test_an_atomic_write_leaves_the_old_content_when_it_fails(tmp_path, monkeypatch):
    path = storage.workdir_path(tmp_path / "sub" / "config.json")
    storage.write_text(path, "old")
    assert path.read_text() == "old"

    def refuse(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space"):
        storage.write_text(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.json"]  # no temporary left


def test_a_figure_is_saved_in_the_format_of_its_suffix(tmp_path):
    fig = Figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1])
    png = storage.save_figure(fig, storage.workdir_path(tmp_path / "plots" / "a.png"))
    svg = storage.save_figure(fig, storage.workdir_path(tmp_path / "plots" / "a.svg"))
    assert png.read_bytes().startswith(b"\x89PNG")
    assert b"<svg" in svg.read_bytes()[:400]


def test_moving_a_directory_keeps_its_files(tmp_path):
    source = storage.workdir_path(tmp_path / "20")
    storage.write_text(source / "a" / "x.txt", "1")
    storage.move(source, storage.workdir_path(tmp_path / "20.damaged"))
    assert not source.exists()
    assert (tmp_path / "20.damaged" / "a" / "x.txt").read_text() == "1"
