"""An append-only JSONL file written one whole batch at a time, so a killed job loses at most one batch.

Every line carries its `batch` index and the batch's size. Each batch is one write followed by fsync, so a
kill can only leave a prefix of the last batch: a last line without its newline, or a batch with fewer lines
than its size. Reopening the file cuts that tail off and the caller redoes the batch. Anything else (a bad
line followed by more lines, a complete line that is not JSON) is damage, not a kill, and is an error that
names the line: the log is never silently cut back. A finished log is read with `read_finished`, which
accepts no tail at all.
"""

import contextlib
import json
import os
from collections import Counter

from imdb_dpo.configuration.errors import UserError


class DamagedLogError(UserError, ValueError):
    """A results file that is damaged; the message names the file, the line and what to do."""


_DAMAGED = "the file is damaged, not left by a kill. Restore it, or delete its folder to redo that work."


def _parse(path: str, raw: bytes, allow_torn_tail: bool) -> tuple[list[dict], int]:
    """The records of whole batches and the byte length they span."""
    records, offsets, end = [], [], 0
    lines = raw.split(b"\n")  # on newlines only: a stray "\r" inside a line is damage, not a line break
    for number, line in enumerate(lines[:-1], start=1):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = None
        if not (isinstance(record, dict) and type(record.get("batch")) is int and type(record.get("batch_size")) is int):
            raise DamagedLogError(f"{path}, line {number}: not a JSON record of this log; {_DAMAGED}")
        records.append(record)
        end += len(line) + 1
        offsets.append(end)
    if lines[-1] and not allow_torn_tail:  # the last line lacks its newline
        raise DamagedLogError(f"{path}, line {len(lines)}: cut short in a finished file; {_DAMAGED}")
    counts = Counter(r["batch"] for r in records)
    last = records[-1]["batch"] if records else None
    for number, record in enumerate(records, start=1):
        if counts[record["batch"]] != record["batch_size"] and (record["batch"] != last or not allow_torn_tail):
            raise DamagedLogError(f"{path}, line {number}: batch {record['batch']} has {counts[record['batch']]} of "
                                  f"{record['batch_size']} lines; {_DAMAGED}")
    while records and records[-1]["batch"] == last and counts[last] != records[-1]["batch_size"]:
        records.pop()  # the batch a kill cut short: it is redone
        offsets.pop()
    return records, offsets[-1] if offsets else 0


def read_finished(path: str, expected_records: int) -> list[dict]:
    """Every record of a finished log, which must hold `expected_records` (its manifest's count) in whole batches;
    any damage is an error (a finished file is never cut back)."""
    with open(path, "rb") as f:
        records = _parse(path, f.read(), allow_torn_tail=False)[0]
    if len(records) != expected_records:
        raise DamagedLogError(f"{path}: {len(records)} records, but its manifest says {expected_records}; {_DAMAGED}")
    return records


class BatchLog:
    def __init__(self, path: str):
        self.path = path
        self.records: list[dict] = []
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if os.path.exists(path):
            self._recover()
        self._file = open(path, "a")

    def _recover(self) -> None:
        with open(self.path, "rb") as f:
            raw = f.read()
        self.records, keep = _parse(self.path, raw, allow_torn_tail=True)
        if keep < len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(keep)

    def append_batch(self, batch_index: int, rows: list[dict]) -> None:
        stamped = [{**row, "batch": batch_index, "batch_size": len(rows)} for row in rows]
        try:
            self._file.write("".join(json.dumps(row, sort_keys=True) + "\n" for row in stamped))
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as error:  # a full disk: name the file (the torn batch is cut and redone on restart)
            with contextlib.suppress(OSError):
                self._file.close()  # closes the file even though flushing the rest of the batch fails again
            raise OSError(error.errno, error.strerror, self.path) from error
        self.records.extend(stamped)

    def close(self) -> None:
        self._file.close()

    def close_and_read(self) -> list[dict]:
        self.close()
        return self.records
