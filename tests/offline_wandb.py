"""Reading back what wandb wrote in offline mode, from its own files: no mocked tracker, no server.

wandb 0.31 ships no Python reader for an offline run's transaction log (`run-<id>.wandb`). The format is LevelDB's
log: after a 7-byte file header, 32 KiB blocks of chunks, each with a 7-byte header (crc32, length, type: 1 whole,
2 first, 3 middle, 4 last); a block's tail too short for a header is padding. Each whole record is a
`wandb.proto.wandb_internal_pb2.Record`.
"""

import glob
import json
import os
import struct

from wandb.proto.wandb_internal_pb2 import Record

BLOCK = 32768


def records_of(directory: str) -> list:
    """Every Record of the offline run in `directory` (a `wandb/offline-run-*` folder), in the order written; of a
    run still writing, those whole so far."""
    (path,) = glob.glob(os.path.join(directory, "run-*.wandb"))
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B"
    records, chunks, pos = [], b"", 7
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if pos + 7 + length > len(data):  # a file wandb is still writing: its last chunk is not all there yet
            break
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(Record.FromString(chunks))
            chunks = b""
    return records


def item_key(item) -> str:
    """A history or config item's name: `key`, or its `nested_key` parts joined as wandb shows them."""
    return item.key or "/".join(item.nested_key)


def read_offline_run(directory: str):
    """The run record and the final config of an offline run."""
    run, config = None, {}
    for record in records_of(directory):
        run = record.run if record.HasField("run") else run
        for updates in (record.run.config.update, record.config.update):  # empty unless that kind of record
            config.update({item_key(item): json.loads(item.value_json) for item in updates})
    return run, config


def history(directory: str) -> list[dict]:
    """Each row the run logged ({name: value}, values decoded from JSON), in order."""
    return [{item_key(item): json.loads(item.value_json) for item in record.history.item}
            for record in records_of(directory) if record.WhichOneof("record_type") == "history"]


def artifacts(directory: str) -> list:
    """The artifact records of the run (wandb.proto's ArtifactRecord: name, type, manifest of files)."""
    return [record.artifact for record in records_of(directory) if record.WhichOneof("record_type") == "artifact"]


def offline_runs(wandb_dir) -> dict:
    """{run name: [its offline-run folders, oldest first]} under `wandb_dir` (WANDB_DIR): a resumed run writes a
    folder per start, under the same id and name."""
    runs = {}
    for folder in sorted(glob.glob(os.path.join(str(wandb_dir), "wandb", "offline-run-*"))):
        run, _ = read_offline_run(folder)
        runs.setdefault(run.display_name, []).append(folder)
    return runs
