"""The batch log: a tail torn by a kill is cut and redone; damage anywhere else, or in a finished file, is an
error naming the line, and the file is left exactly as it was."""

import json

import pytest

from imdb_dpo.lifecycle.batch_log import BatchLog, DamagedLogError, read_finished


def two_batches(path) -> bytes:
    log = BatchLog(str(path))
    log.append_batch(0, [{"x": 1}, {"x": 2}])
    log.append_batch(1, [{"x": 3}, {"x": 4}])
    log.close()
    return path.read_bytes()


def test_a_tail_torn_by_a_kill_is_cut_back_to_whole_batches(tmp_path):
    path = tmp_path / "log.jsonl"
    whole = two_batches(path)
    third = json.dumps({"x": 5, "batch": 2, "batch_size": 2}, sort_keys=True) + "\n"
    path.write_bytes(whole + third.encode() + b'{"x": 6, "ba')  # one line of batch 2, then a torn one
    log = BatchLog(str(path))
    assert {r["batch"] for r in log.records} == {0, 1} and path.read_bytes() == whole
    log.close()


@pytest.mark.parametrize("damage, line", [
    (lambda lines: [lines[0], b"{not json\n", *lines[2:]], 2),                # a complete line that is not JSON
    (lambda lines: [lines[0], lines[1][:5], *lines[2:]], 2),                    # a cut line followed by more lines
    (lambda lines: [lines[0], lines[1][:5] + b"\r" + lines[1][5:], *lines[2:]], 2),  # a stray carriage return
    (lambda lines: [lines[0], b"5\n", *lines[2:]], 2),                         # JSON, but not a record
    (lambda lines: [lines[0], *lines[2:]], 1),                                  # a line of batch 0 lost
])
def test_damage_that_no_kill_leaves_is_an_error_and_changes_nothing(tmp_path, damage, line):
    path = tmp_path / "log.jsonl"
    lines = two_batches(path).splitlines(keepends=True)
    path.write_bytes(b"".join(damage(lines)))
    before = path.read_bytes()
    with pytest.raises(DamagedLogError, match=rf"log\.jsonl, line {line}: .*damaged"):
        BatchLog(str(path))
    with pytest.raises(DamagedLogError, match=rf"log\.jsonl, line {line}: "):
        read_finished(str(path), 4)
    assert path.read_bytes() == before


def test_a_finished_file_is_never_cut_back_and_must_hold_its_manifests_count(tmp_path):
    path = tmp_path / "log.jsonl"
    whole = two_batches(path)
    path.write_bytes(whole[: whole.rindex(b"{")])  # the last line of batch 1 lost
    with pytest.raises(DamagedLogError, match=r"log\.jsonl, line 3: batch 1 has 1 of 2 lines"):
        read_finished(str(path), 4)
    path.write_bytes(whole[:-3])  # a torn last line
    with pytest.raises(DamagedLogError, match=r"log\.jsonl, line 4: cut short in a finished file"):
        read_finished(str(path), 4)
    for kept in (whole[: len(whole) // 2], b""):  # whole batches, or nothing, but fewer than the manifest's count
        path.write_bytes(kept)
        with pytest.raises(DamagedLogError, match=r"log\.jsonl: \d records, but its manifest says 4"):
            read_finished(str(path), 4)
    path.write_bytes(whole)
    assert [r["x"] for r in read_finished(str(path), 4)] == [1, 2, 3, 4]
