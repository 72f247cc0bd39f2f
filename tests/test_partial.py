"""partial.py: a killed job's finished chunks are reloaded, and nothing else is."""

import os

import numpy as np
import pytest

from melanoma import partial
from melanoma.partial import PartialJob


class Killed(Exception):
    pass


def _files(tmp_path, n):
    paths = []
    for i in range(n):
        path = tmp_path / f"img{i}.jpg"
        path.write_bytes(bytes([i]) * 10)
        paths.append(str(path))
    return paths


def _compute(calls, kill_at=None):
    def compute(chunk):
        if kill_at is not None and len(calls) == kill_at:
            raise Killed  # what a SIGKILL leaves: the chunks before it saved, nothing of this one
        calls.append(list(chunk))
        return {"x": np.array([float(len(c)) for c in chunk]), "name": np.array(chunk, dtype=str)}
    return compute


def test_a_killed_job_resumes_at_the_chunk_it_reached(tmp_path, capsys):
    paths = _files(tmp_path, 10)
    calls = []
    with pytest.raises(Killed):
        PartialJob("test", {"a": 1}, paths, chunk=4).run(_compute(calls, kill_at=2))
    assert len(calls) == 2
    job, calls = PartialJob("test", {"a": 1}, paths, chunk=4), []
    parts = job.run(_compute(calls))
    assert calls == [paths[8:]]  # only the last chunk was computed again
    assert [str(v) for part in parts for v in part["name"]] == paths
    assert "resuming test: 8 of 10 images were predicted by an interrupted run" in capsys.readouterr().err
    job.finish()
    assert not job.folder.exists()
    calls = []
    PartialJob("test", {"a": 1}, paths, chunk=4).run(_compute(calls))
    assert len(calls) == 3  # finished: nothing left to reuse


def test_other_settings_or_an_edited_image_start_afresh(tmp_path):
    paths = _files(tmp_path, 3)
    PartialJob("test", {"a": 1}, paths).run(_compute([]))
    calls = []
    PartialJob("test", {"a": 2}, paths).run(_compute(calls))
    assert len(calls) == 1
    with open(paths[1], "r+b") as handle:  # same size, one byte changed: the edit a size check misses
        handle.write(b"\xff")
    calls = []
    PartialJob("test", {"a": 1}, paths).run(_compute(calls))
    assert calls == [paths]


def test_files_that_only_got_new_modification_times_are_reused(tmp_path):
    """A data folder provisioned again (same bytes, new mtimes) keeps a killed job's chunks: session 51 lost a
    70-minute calibration's saved chunks that way when the stamp was size + mtime."""
    paths = _files(tmp_path, 3)
    with pytest.raises(Killed):
        PartialJob("test", {}, paths, chunk=2).run(_compute([], kill_at=1))
    for path in paths:
        stat = os.stat(path)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    calls = []
    PartialJob("test", {}, paths, chunk=2).run(_compute(calls))
    assert calls == [paths[2:]]


def test_an_unreadable_chunk_is_computed_again(tmp_path):
    paths = _files(tmp_path, 4)
    job = PartialJob("test", {}, paths, chunk=2)
    job.run(_compute([]))
    (job.folder / "chunk-00001.npz").write_bytes(b"garbage")
    calls = []
    PartialJob("test", {}, paths, chunk=2).run(_compute(calls))
    assert calls == [paths[2:]]


def test_the_cache_lives_where_MELANOMA_CACHE_DIR_says(tmp_path, monkeypatch):
    monkeypatch.setenv("MELANOMA_CACHE_DIR", str(tmp_path / "cache"))
    assert PartialJob("test", {}, []).folder.parent == tmp_path / "cache" / "partial"
    assert partial.cache_root() == tmp_path / "cache"


def test_an_abandoned_job_is_removed_after_30_days_a_recent_one_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("MELANOMA_CACHE_DIR", str(tmp_path / "cache"))
    paths = _files(tmp_path, 2)
    old, recent = PartialJob("old", {}, paths), PartialJob("recent", {}, paths)
    old.run(_compute([]))
    recent.run(_compute([]))
    month = 31 * 86400
    os.utime(old.folder, (old.folder.stat().st_atime - month, old.folder.stat().st_mtime - month))
    PartialJob("another", {}, paths).run(_compute([]))
    assert not old.folder.exists() and recent.folder.exists()
