"""Damaged bags (issue 14 item 7): MCAP chunk CRCs written, a corrupted chunk or a damaged sqlite3
page skipped with reading going on after it, and the skip reported (where, why, messages lost)."""

from __future__ import annotations

import struct
import zlib

import apsw
import numpy as np
import pytest
from replay_bags import storage_file, truncate_bag, write_drive_bag

from ood_perception.data.bag_reader import BagReadError, BagSource
from ood_perception.data.mcap_chunks import MCAP_MAGIC, ChunkHeader, add_chunk_crcs, decompress

TOPICS = ["/camera/image", "/camera/camera_info", "/lidar/points", "/camera/labels"]


def chunks(path):
    """(offset, header, record end, [(channel id, log time)] of its messages) of every chunk."""
    data = path.read_bytes()
    assert data.startswith(MCAP_MAGIC)
    pos, out = len(MCAP_MAGIC), []
    while pos < len(data):
        op, (length,) = data[pos], struct.unpack_from("<Q", data, pos + 1)
        if op == 0x06:
            body = data[pos + 9 : pos + 9 + length]
            h = ChunkHeader.parse(body)
            inner = decompress(h, body[h.payload_offset :])
            msgs, p = [], 0
            while p < len(inner):
                iop, (ilen,) = inner[p], struct.unpack_from("<Q", inner, p + 1)
                if iop == 0x05:
                    msgs.append(struct.unpack_from("<HIQ", inner, p + 9)[::2])
                p += 9 + ilen
            out.append((pos, h, pos + 9 + length, inner, msgs))
        if op == 0x02:
            break
        pos += 9 + length
    return out


def read_all(bag):
    with BagSource(bag) as src:
        got = [(m.topic, m.timestamp_ns) for m in src.messages(TOPICS)]
        return got, list(src.skipped), src.damage_report()


def flip_byte(path, offset):
    with path.open("r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))


def test_writers_put_chunk_crcs(tmp_path):
    """synth --bag's writer (BagWriter, mcap) and replay's OutputBag: every chunk carries the CRC-32
    of its uncompressed records (rosbags alone writes 0 = no checksum)."""
    from ood_perception.data.bag import BagWriter
    from ood_perception.data.bag_output import OutputBag
    from ood_perception.data.frame import Frame
    from ood_perception.geometry import Calibration

    calib = Calibration(K=np.array([[40.0, 0, 32], [0, 40, 16], [0, 0, 1]]), T_cam_lidar=np.eye(4), width=64, height=32)
    with BagWriter(tmp_path / "synth", storage="mcap") as w:
        for i in range(3):
            w.write_frame(Frame(sequence="00", frame_id=f"{i:06d}", image=np.zeros((32, 64, 3), np.uint8),
                                points=np.zeros((5, 4), np.float32), point_labels=None, pixel_labels=None, calib=calib,
                                stamp=0.1 * (i + 1)))
    with OutputBag(tmp_path / "output") as out:
        out.write_message("alerts", "std_msgs/msg/String", out.store.types["std_msgs/msg/String"](data="x"), 1)
    output_mcap = storage_file(tmp_path / "output")
    for f in (storage_file(tmp_path / "synth"), output_mcap):
        cs = chunks(f)
        assert cs and all(h.crc != 0 and h.crc == zlib.crc32(inner) for _, h, _, inner, _ in cs)
    assert add_chunk_crcs(output_mcap) == 0  # already there: nothing to do


def test_corrupted_chunk_is_skipped_and_reading_goes_on(tmp_path):
    """The case: one flipped byte inside the second of several chunks. Before: replayed with rc 0
    and changed data. Now: the CRC mismatch is detected, that chunk's messages (and only those) are
    dropped, every later chunk is read, and the report names the chunk, the reason and the loss."""
    bag = write_drive_bag(tmp_path / "b", storage="mcap", frames=160)
    f = storage_file(bag)
    assert add_chunk_crcs(f) >= 3
    full, skipped, _ = read_all(bag)
    assert not skipped
    cs = chunks(f)
    off, h, end, _, msgs = cs[1]
    lost_times = sorted(t for _, t in msgs)
    flip_byte(f, end - 100)  # inside a message's payload near the end of the chunk
    got, skipped, report = read_all(bag)
    expected = [m for m in full if not (h.start_ns <= m[1] <= h.end_ns and m[1] in set(lost_times))]
    assert got == expected and len(got) == len(full) - len(msgs)
    assert got[-1] == full[-1]  # read to the end
    (skip,) = skipped
    assert skip.kind == "chunk" and skip.byte_offset == off and "CRC mismatch" in skip.reason
    k = skip.after_index  # messages delivered before the first one after the damaged chunk
    assert got[:k] == full[:k] and got[k - 1][1] <= h.start_ns and got[k][1] >= h.end_ns
    assert skip.messages_lost == len(msgs)
    assert f"chunk at byte {off}" in report and "CRC mismatch" in report and f"{len(msgs)} messages lost" in report
    assert report.startswith(f"bag {bag}: skipped 1 damaged part and read on")


def test_damaged_chunk_in_a_cut_short_file(tmp_path):
    """Salvage from the start (no footer) also steps over a damaged chunk, then stops at the cut."""
    bag = write_drive_bag(tmp_path / "b", storage="mcap", frames=160)
    f = storage_file(bag)
    add_chunk_crcs(f)
    full, _, _ = read_all(bag)
    cs = chunks(f)
    flip_byte(f, cs[0][2] - 100)
    cut = (cs[2][0] + cs[2][2]) // 2  # in the middle of the third chunk
    truncate_bag(bag, cut / f.stat().st_size)
    got = []
    with BagSource(bag) as src:
        assert src.salvaged
        with pytest.raises(BagReadError) as err:
            for m in src.messages(TOPICS):
                got.append((m.topic, m.timestamp_ns))
        (skip,) = src.skipped
    first = set(t for _, t in cs[0][4])
    assert skip.kind == "chunk" and skip.byte_offset == cs[0][0] and skip.messages_lost == len(cs[0][4])
    assert got[0] == next(m for m in full if m[1] not in first)  # resumed right after chunk 1
    n2 = len(cs[1][4])
    assert len(got) > n2 and set(got) <= set(full)
    assert "cut off" in str(err.value) and err.value.byte_offset == cs[2][0]


def test_bytes_that_are_no_record_are_skipped_to_the_next_chunk(tmp_path):
    """A scanned file (cut short: no summary) whose second chunk's record header is damaged: the
    scan resumes at the next well-formed chunk and says the loss is unknown."""
    bag = write_drive_bag(tmp_path / "b", storage="mcap", frames=160)
    f = storage_file(bag)
    add_chunk_crcs(f)
    full, _, _ = read_all(bag)
    cs = chunks(f)
    truncate_bag(bag, cs[-1][2] / f.stat().st_size)  # drop the summary and footer only
    with f.open("r+b") as fh:  # opcode 0x06 -> 0xf9: no record type
        fh.seek(cs[1][0])
        fh.write(b"\xf9")
    got = []
    with BagSource(bag) as src, pytest.raises(BagReadError, match="incomplete"):
        for m in src.messages(TOPICS):
            got.append((m.topic, m.timestamp_ns))
    (skip,) = src.skipped
    assert skip.kind == "bytes" and (skip.byte_offset, skip.byte_end) == (cs[1][0], cs[2][0])
    assert skip.messages_lost is None and "resumed at the next well-formed chunk" in skip.describe()
    lost = {t for _, t in cs[1][4]}
    assert got == [m for m in full if m[1] not in lost]


def damage_sqlite_page(db, which=0.5, pagetype="leaf"):
    """Overwrite a ``pagetype`` page of table ``messages`` (about ``which`` through the file) with zeros."""
    con = apsw.Connection(str(db))
    leaves = [p for (p,) in con.execute(
        "SELECT pageno FROM dbstat WHERE name='messages' AND pagetype=? ORDER BY pageno", (pagetype,))]
    (page_size,) = con.execute("PRAGMA page_size").fetchone()
    con.close()
    if pagetype == "overflow":  # one with a successor: zeroing the last page of a chain is not detectable
        data = db.read_bytes()
        leaves = [p for p in leaves if data[(p - 1) * page_size : (p - 1) * page_size + 4] != b"\0" * 4]
    page = leaves[int(len(leaves) * which)]
    with db.open("r+b") as fh:
        fh.seek((page - 1) * page_size)
        fh.write(b"\0" * page_size)
    return page


@pytest.mark.parametrize("pagetype", ["leaf", "overflow"])
def test_damaged_sqlite_page_rows_skipped_rest_read(tmp_path, pagetype):
    """The case: one damaged page in the middle of a sqlite3 bag - a table leaf (the bag no longer
    opens normally: scanned from the start) or a large message's overflow page (the normal reader
    fails part-way: scanned from there). Before: replay stopped there although most later rows were
    intact. Now: the rows on that page are skipped (reported as a row-id range) and every other
    row is read, to the end of the bag, with no error."""
    bag = write_drive_bag(tmp_path / "b", storage="sqlite3", frames=40)
    db = storage_file(bag)
    con = apsw.Connection(str(db))
    topics = dict(con.execute("SELECT id, name FROM topics"))
    rows = {i: (topics[t], ts) for i, t, ts in con.execute("SELECT id, topic_id, timestamp FROM messages")}
    con.close()
    damage_sqlite_page(db, pagetype=pagetype)
    with BagSource(bag) as src:
        assert src.salvaged == (pagetype == "leaf")
    got, skipped, report = read_all(bag)
    (skip,) = skipped
    a, b = skip.rows
    lost = {rows[i] for i in range(a, b + 1)}
    assert 1 <= len(lost) <= 8
    assert sorted(got, key=lambda m: m[1]) == sorted((v for i, v in rows.items() if v not in lost), key=lambda m: m[1])
    assert len(got) == len(rows) - len(lost) and max(t for _, t in got) == max(t for _, t in rows.values())
    assert skip.kind == "rows" and ("malformed" in skip.reason.lower() or "corrupt" in skip.reason.lower())
    assert f"sqlite rows {a}-{b}" in report or f"sqlite row {a}" in report
    assert f"{len(lost)} message" in report
