import errno

import pytest

from pipeline.errors import FacekdError
from pipeline.files import opened_atomically, written_together


def test_outputs_written_together_all_appear_once_all_are_complete(tmp_path):
    rec_path, idx_path = tmp_path / "train.rec", tmp_path / "train.idx"
    with written_together(rec_path, idx_path) as (rec_partial, idx_partial):
        rec_partial.write_bytes(b"records")
        idx_partial.write_text("0\t0\n")
        assert not rec_path.exists() and not idx_path.exists()
    assert rec_path.read_bytes() == b"records" and idx_path.read_text() == "0\t0\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["train.idx", "train.rec"]


def test_a_failed_write_publishes_none_and_keeps_the_previous_outputs(tmp_path):
    rec_path, idx_path = tmp_path / "train.rec", tmp_path / "train.idx"
    rec_path.write_bytes(b"old records")
    idx_path.write_text("old index")
    with pytest.raises(RuntimeError, match="the samples ran out"):
        with written_together(rec_path, idx_path) as (rec_partial, idx_partial):
            rec_partial.write_bytes(b"new records")
            idx_partial.write_text("new index")
            raise RuntimeError("the samples ran out")
    assert rec_path.read_bytes() == b"old records" and idx_path.read_text() == "old index"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["train.idx", "train.rec"]


@pytest.mark.parametrize(("names", "message"), [
    (["metrics.json"], r"metrics\.json: cannot write \(No space left on device\); metrics\.json was left as it was"),
    (["train.rec", "train.idx"],
     r"train\.rec and train\.idx: cannot write \(No space left on device\); train\.rec and train\.idx were left as they were"),
])
def test_a_full_disk_becomes_one_error_naming_the_outputs(tmp_path, names, message):
    with pytest.raises(FacekdError, match=message):
        with written_together(*(tmp_path / name for name in names)):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_opened_atomically_publishes_the_closed_stream(tmp_path):
    path = tmp_path / "log.csv"
    with opened_atomically(path, newline="") as stream:
        stream.write("epoch,loss\r\n1,0.5\r\n")
        assert not path.exists()
    assert path.read_bytes() == b"epoch,loss\r\n1,0.5\r\n"
    assert list(tmp_path.iterdir()) == [path]
