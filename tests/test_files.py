"""kit/files.py and kit/config.py in process: writes that never leave half a file, zips unpacked
without surprises, config.json read back or refused. Through data.py: test_data.py, test_errors.py
(slow)."""

import zipfile

import numpy as np
import pytest

from kit import config as config_file
from kit import files
from kit.files import UserError


def test_a_write_that_fails_leaves_the_earlier_file_and_no_temporary(tmp_path):
    path = tmp_path / "a" / "config.json"
    files.write_text(path, "first")
    with pytest.raises(RuntimeError):
        with files.atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "first"
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temporary
    files.save_npy(tmp_path / "x.npy", np.arange(3))
    assert files.load_npy(tmp_path / "x.npy", "array", "fix").tolist() == [0, 1, 2]
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(UserError, match="bad.npy is not a readable array .*: fix it"):
        files.load_npy(tmp_path / "bad.npy", "array", "fix it")


def test_nested_competition_zips_unpack_into_raw(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    inner = tmp_path / "train.zip"
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("train/1_1.tif", b"tiff")
    with zipfile.ZipFile(raw / "competition.zip", "w") as z:
        z.write(inner, "train.zip")
        z.writestr("test/1.tif", b"tiff")
    assert files.unpack_zips(raw, tmp_path / "work") == raw
    assert (raw / "train/1_1.tif").read_bytes() == b"tiff" and (raw / "test/1.tif").exists()
    assert not list(raw.glob(".unpack-*")) and not list(raw.rglob("train.zip"))


@pytest.mark.parametrize("member, data, words", [
    ("../escaped.txt", b"x", "would land outside"),
    ("/abs.txt", b"x", "would land outside"),
    ("train/1_1.tif", bytes(4 * 2**20), "zip bomb"),  # 4 MB of zeros in a few kB
])
def test_suspicious_zips_are_refused_and_nothing_is_extracted(tmp_path, member, data, words):
    raw = tmp_path / "raw"
    raw.mkdir()
    with zipfile.ZipFile(raw / "evil.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("test/1.tif", b"tiff")
        z.writestr(member, data)
    with pytest.raises(UserError, match=words):
        files.unpack_zips(raw, tmp_path / "work")
    assert [p.name for p in raw.iterdir()] == ["evil.zip"]
    assert not (tmp_path / "escaped.txt").exists()
    (raw / "evil.zip").write_bytes(b"PK\x03\x04" + bytes(50))
    with pytest.raises(UserError, match="is corrupt or truncated"):
        files.unpack_zips(raw, tmp_path / "work")


def test_config_json_reads_back_what_was_saved_or_says_it_is_damaged(tmp_path):
    saved = config_file.Config(folds=["fold0.keras", "fold1.keras"], threshold=0.35, min_area=120,
                               tta=False, scale=[0.5, 0.25], recipe={"width": 8})
    config_file.save(tmp_path, saved)
    assert config_file.load(tmp_path) == saved
    (tmp_path / "config.json").write_text('{"folds": ["fold0.keras"], "threshold": "0.4", '
                                          '"min_area": 7.0, "future_field": 1}')
    loaded = config_file.load(tmp_path)  # numbers as older runs wrote them; unknown fields ignored
    assert (loaded.threshold, loaded.min_area, loaded.tta) == (0.4, 7, True)
    for text in ('{"folds": []}', '{"folds": [3]}', '{"folds": ', '{"threshold": 0.5}'):
        (tmp_path / "config.json").write_text(text)
        with pytest.raises(UserError, match=r"config.json is damaged .*: run `python train.py`"):
            config_file.load(tmp_path)
    with pytest.raises(UserError, match="not found: run `python train.py` first"):
        config_file.load(tmp_path / "nowhere")
