"""Checkpoint integrity: the CRC32 every write stores and every read verifies, empty files, the
leftovers of killed writes, and a write failing on a full disk (an environment error, exit 3)."""

import errno
import logging
import os

import mindspore as ms
import numpy as np
import pytest

from src.checkpoint.io import (CRC_TRAILER_SIZE, CheckpointError, CheckpointWriteError, read_checkpoint,
                               remove_interrupted_writes, save_checkpoint_atomic)
from src.cli import report_error
from src.engine.runtime import EXIT_BAD_INPUT, EXIT_ENVIRONMENT

WEIGHTS = {"backbone.w": np.arange(64, dtype=np.float32).reshape(8, 8), "head.b": np.ones(16, np.float32)}


def _saved(path):
    save_checkpoint_atomic(WEIGHTS, str(path))
    return str(path)


def test_a_flipped_byte_in_tensor_data_is_refused_naming_the_file(tmp_path):
    path = _saved(tmp_path / "last.ckpt")
    data = bytearray(open(path, "rb").read())
    # A value of backbone.w that is in the file as raw float32 bytes: 63.0.
    offset = bytes(data).index(np.float32(63.0).tobytes())
    data[offset] ^= 0x01
    open(path, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match=rf"^{path}: checksum mismatch \(CRC32 stored [0-9a-f]{{8}}, computed "
                                              rf"[0-9a-f]{{8}}\): the file was damaged after it was written; use "
                                              rf"another checkpoint$"):
        read_checkpoint(path)


def test_an_intact_file_loads_and_ends_with_its_checksum(tmp_path):
    path = _saved(tmp_path / "last.ckpt")
    assert open(path, "rb").read()[-CRC_TRAILER_SIZE:].startswith(b"crc_num")
    np.testing.assert_array_equal(read_checkpoint(path)["backbone.w"].asnumpy(), WEIGHTS["backbone.w"])


def test_a_file_without_checksum_loads_with_a_one_line_note(tmp_path, caplog):
    path = str(tmp_path / "old.ckpt")
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(v)} for n, v in WEIGHTS.items()], path)
    with caplog.at_level(logging.INFO):
        params = read_checkpoint(path)
    np.testing.assert_array_equal(params["head.b"].asnumpy(), WEIGHTS["head.b"])
    notes = [r.getMessage() for r in caplog.records if "checksum" in r.getMessage()]
    assert notes == [f"{path}: written without a checksum (an older file or another tool): loaded unverified"]


def test_an_empty_file_is_refused_as_empty(tmp_path):
    path = tmp_path / "empty.ckpt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=rf"^{path}: the file is empty \(0 bytes\): a copy or a write that "
                                              rf"did not finish; use another checkpoint$"):
        read_checkpoint(str(path))


def test_leftovers_of_killed_writes_are_removed_and_named_and_checkpoints_kept(tmp_path, caplog):
    keep = [_saved(tmp_path / "last.ckpt"), _saved(tmp_path / "maskrcnn-1_3.ckpt")]
    leftovers = [".last.4242.0badcafe.partial.tmp", ".last.4242.0badcafe.partial.ckpt",
                 ".maskrcnn-2_6.77.12345678.partial.ckpt"]
    for name in leftovers:
        (tmp_path / name).write_bytes(b"half a checkpoint")
    (tmp_path / "notes.partial.ckpt").write_bytes(b"a user's file, not ours")
    with caplog.at_level(logging.INFO):
        removed = remove_interrupted_writes(str(tmp_path))
    assert removed == sorted(leftovers)
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt", "maskrcnn-1_3.ckpt", "notes.partial.ckpt"]
    lines = [r.getMessage() for r in caplog.records if "interrupted checkpoint writes" in r.getMessage()]
    assert lines == [f"{tmp_path}: removed 3 files left by interrupted checkpoint writes: " + ", ".join(sorted(leftovers))]
    for path in keep:
        read_checkpoint(path)


def test_a_checkpoint_write_on_a_full_disk_is_an_environment_error(tmp_path, monkeypatch, caplog):
    path = _saved(tmp_path / "last.ckpt")
    before = open(path, "rb").read()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ms, "save_checkpoint", full_disk)
    with pytest.raises(CheckpointWriteError) as raised:
        save_checkpoint_atomic(WEIGHTS, path)
    assert open(path, "rb").read() == before
    with caplog.at_level(logging.ERROR):
        code = report_error(logging.getLogger("test"), raised.value)
    assert code == EXIT_ENVIRONMENT != EXIT_BAD_INPUT
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: writing the checkpoint failed, the previous file (if any) is kept: [Errno 28] No space left on device"]
