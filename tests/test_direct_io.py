"""
Direct I/O: large checkpoint files are written with O_DIRECT through aligned bounce buffers, and
stay plain `torch.load`-able files with the same bytes and checksums; a file system that refuses
O_DIRECT (ramfs, mounted by the test) gets buffered writes, decided once and logged.
"""
import logging
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from trainer_ckpt import DefaultCheckpointer
from trainer_ckpt.io import fastio
from trainer_ckpt.io import loading
from trainer_ckpt.io import durable
from tests.conftest import FakeTrainer

MIB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent


def odd_state():
    """Sizes that are not multiples of the 4 KiB block, and more than two 16 MiB bounce buffers."""
    return ({"w": torch.randn(10 * MIB + 3), "b": torch.arange(1001)},
            {"epochs_completed": 1, "batches_in_epoch_completed": 0, "note": "x" * 5})


def check_files(directory, model, caplog, direct):
    checkpointer = DefaultCheckpointer(directory)
    with caplog.at_level(logging.DEBUG, logger="trainer_ckpt.storage"):  # the probe logs at DEBUG
        assert checkpointer.maybe_save_checkpoint(FakeTrainer(*model), 1, 0)
    assert fastio.direct_io(str(directory)) is direct
    expected = "with direct I/O (O_DIRECT)" if direct else "through the page cache (no O_DIRECT here)"
    assert f"Checkpoint files in {directory} are written {expected}" in caplog.text
    record = durable.read_json(str(directory / "checkpoint_e1_b0.json"))
    for role, info in record["files"].items():
        data = (directory / info["name"]).read_bytes()
        assert (len(data), zlib.crc32(data)) == (info["size"], info["crc32"])  # the checksum of the bytes on disk
        assert fastio.file_crc(str(directory / info["name"])) == (info["size"], info["crc32"])
    saved = torch.load(directory / "model_state_e1_b0.th", weights_only=True)  # a plain torch.save file
    assert torch.equal(saved["w"], model[0]["w"]) and torch.equal(saved["b"], model[0]["b"])
    model_state, training_state = checkpointer.load_checkpoint()
    assert torch.equal(model_state["w"], model[0]["w"]) and training_state["note"] == "x" * 5
    checkpointer.close()


def test_large_files_are_written_with_o_direct_and_load_as_plain_files(tmp_path, caplog):
    check_files(tmp_path, odd_state(), caplog, direct=True)


@pytest.fixture
def ramfs(tmp_path):
    mount_point = tmp_path / "ramfs"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a ramfs here (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_a_file_system_without_o_direct_gets_buffered_writes(ramfs, caplog):
    with pytest.raises(OSError):  # what the fallback is for: ramfs refuses O_DIRECT
        os.close(os.open(ramfs / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
    check_files(ramfs, odd_state(), caplog, direct=False)


def test_direct_writes_of_every_size_around_the_block_and_buffer(tmp_path):
    for n in (0, 1, 4095, 4096, 4097, 16 * MIB - 1, 16 * MIB, 16 * MIB + 1, 32 * MIB + 4096):
        data = os.urandom(n)
        tmp = durable.write_temp(str(tmp_path / "f"), lambda f: f.write(data), direct=True)
        assert open(tmp, "rb").read() == data, n
        durable.remove_file(tmp)


def test_crc32_combine_matches_zlib_on_the_joined_bytes():
    rng = torch.Generator().manual_seed(0)
    for len1, len2 in [(0, 0), (0, 5), (5, 0), (1, 1), (4095, 4097), (3 * MIB + 1, 1), (7, 2 * MIB + 3)]:
        data = torch.randint(0, 256, (len1 + len2,), dtype=torch.uint8, generator=rng).numpy().tobytes()
        a, b = data[:len1], data[len1:]
        assert fastio.crc32_combine(zlib.crc32(a), zlib.crc32(b), len2) == zlib.crc32(data)


@pytest.mark.parametrize("size", [1, 4096, 2 * MIB - 1, 2 * MIB, 2 * MIB + 1, 5 * MIB + 4097])
def test_large_files_are_checked_as_two_halves_read_at_once(tmp_path, monkeypatch, size):
    monkeypatch.setattr(fastio, "_SPLIT", 2 * MIB)  # the split path, on small files
    data = bytearray(torch.randint(0, 256, (size,), dtype=torch.uint8).numpy().tobytes())
    path = tmp_path / "f"
    path.write_bytes(data)
    assert fastio.file_crc(str(path)) == (size, zlib.crc32(data))
    data[-1] ^= 1  # a flipped bit in the second half (read by the other thread) is seen
    path.write_bytes(data)
    assert fastio.file_crc(str(path)) == (size, zlib.crc32(data))
    record = {"size": size, "crc32": zlib.crc32(data) ^ 1}
    with pytest.raises(loading.BadCheckpoint, match="CRC32"):
        loading.verify(str(path), record)


def test_buffered_writes_start_the_write_back_of_every_16_mib_as_they_go(tmp_path, monkeypatch):
    assert fastio._START_WRITEBACK is not None  # Linux: sync_file_range from the C library
    started = []

    def spy(fd, offset, nbytes, flags):
        started.append((offset, nbytes, flags, os.fstat(fd).st_size))
        return real(fd, offset, nbytes, flags)

    real = fastio._START_WRITEBACK
    monkeypatch.setattr(fastio, "_START_WRITEBACK", spy)
    data = os.urandom(40 * MIB + 5)
    pieces = [data[i:i + 3 * MIB + 1] for i in range(0, len(data), 3 * MIB + 1)]
    tmp = durable.write_temp(str(tmp_path / "f"), lambda f: [f.write(p) for p in pieces], direct=False)
    assert open(tmp, "rb").read() == data
    # Contiguous ranges from the start, each at least 16 MiB, each already in the file when started.
    assert [s[0] for s in started] == [0] + [s[0] + s[1] for s in started[:-1]]
    assert len(started) == 2 and all(n >= 16 * MIB and flags == 2 and offset + n <= size for offset, n, flags, size in started)


def test_the_checksum_is_isals_crc32_when_installed_and_the_same_as_zlibs():
    assert fastio.crc32.__module__ == "isal.isal_zlib"  # the set-up installs it
    rng = torch.Generator().manual_seed(1)
    for size, start in [(0, 0), (1, 0), (4095, 7), (MIB + 3, 0xFFFFFFFF), (5 * MIB, 12345)]:
        data = torch.randint(0, 256, (size,), dtype=torch.uint8, generator=rng).numpy().tobytes()
        assert fastio.crc32(data, start) == zlib.crc32(data, start), size


def test_without_isal_the_checksums_are_zlibs(tmp_path):
    """isal is an optional accelerator: without it, trainer_ckpt saves and verifies with zlib."""
    code = (
        "import sys; sys.modules['isal'] = None\n"  # as if not installed
        "import zlib, torch\n"
        "from trainer_ckpt.io import durable, fastio\n"
        "assert fastio.crc32 is zlib.crc32\n"
        "info = durable.atomic_save({'w': torch.arange(3 << 20)}, sys.argv[1])\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "assert (info['size'], info['crc32']) == (len(data), zlib.crc32(data)) == fastio.file_crc(sys.argv[1])\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "f.th")], capture_output=True, text=True, cwd=ROOT)
    assert run.stdout.strip() == "ok", run.stderr[-2000:]
