"""An append-only JSONL file written one whole batch at a time, so a killed job loses at most one batch.

Every line carries its `batch` index and the batch's size. Reopening the file drops a torn last line
and the lines of a batch that was cut short, truncating the file back to the last complete batch; the
caller then skips the batches already on disk and samples the rest.
"""

import json
import os
from collections import Counter


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
        records, offsets, end = [], [], 0
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # torn by a kill in the middle of a write
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
            end += len(line)
            offsets.append(end)
        counts = Counter(r["batch"] for r in records)
        while records and counts[records[-1]["batch"]] < records[-1]["batch_size"]:
            records.pop()
            offsets.pop()
        keep = offsets[-1] if offsets else 0
        if keep < len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(keep)
        self.records = records

    @property
    def done_batches(self) -> set[int]:
        return {r["batch"] for r in self.records}

    def append_batch(self, batch_index: int, rows: list[dict]) -> None:
        stamped = [{**row, "batch": batch_index, "batch_size": len(rows)} for row in rows]
        self._file.write("".join(json.dumps(row, sort_keys=True) + "\n" for row in stamped))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records.extend(stamped)

    def close(self) -> None:
        self._file.close()

    def close_and_read(self) -> list[dict]:
        self.close()
        return self.records
