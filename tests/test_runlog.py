"""runlog: the CSV log keeps every finished epoch once across kills and resumes; a partial epoch never stays."""

from __future__ import annotations

from melanoma.runlog import BEFORE_RESUME, finished_log_rows, read_log_rows, set_aside_log, settle_log

HEADER = "epoch,step,train/acc,val/bal_acc\n"


def _write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_row_cut_by_a_kill_is_dropped(tmp_path):
    _write(tmp_path / "m.csv", HEADER + "0,3,0.5,0.4\n1,7,0.6")  # the last row lost its final field
    assert [r["epoch"] for r in read_log_rows(tmp_path / "m.csv")] == ["0"]


def test_partial_epochs_are_cut_and_earlier_rows_win_across_two_resumes(tmp_path):
    log = tmp_path / "logs" / "metrics.csv"
    _write(log, HEADER + "0,3,0.5,0.4\n1,7,0.6,0.5\n2,9,1.0,\n")  # killed in epoch 2 (checkpoint: 2 epochs)
    set_aside_log(tmp_path, epochs_done=2)
    assert not log.exists()
    # the resumed fit re-logs the end of epoch 1 (empty train metrics), runs epoch 2 and is killed in epoch 3
    _write(log, HEADER + "1,7,0.0,\n2,11,0.7,0.6\n3,13,1.0,\n")
    set_aside_log(tmp_path, epochs_done=3)
    _write(log, HEADER + "2,11,0.0,\n3,15,0.8,0.7\n")  # the second resume finishes
    settle_log(tmp_path, float("inf"))
    rows = read_log_rows(log)
    assert [(r["epoch"], r["train/acc"]) for r in rows] == [("0", "0.5"), ("1", "0.6"), ("2", "0.7"), ("3", "0.8")]
    assert not (tmp_path / "logs" / BEFORE_RESUME).exists()


def test_an_interruption_cuts_the_log_back_to_the_checkpoint(tmp_path):
    _write(tmp_path / "logs" / "metrics.csv", HEADER + "0,3,0.5,0.4\n1,5,1.0,\n")
    settle_log(tmp_path, 1)
    assert [r["epoch"] for r in finished_log_rows(tmp_path, 1)] == ["0"]
