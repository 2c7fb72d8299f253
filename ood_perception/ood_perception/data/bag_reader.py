"""Reading rosbag2 recordings for replay: sqlite3 and mcap, any ROS 2 distro, damaged bags too.

:class:`BagSource` wraps rosbags' ``AnyReader``: messages come deserialised, in bag-time order,
for the topics asked for. Bags that carry their message definitions (jazzy/kilted, and every bag
written by rosbags) are read with their own types; older bags without definitions (humble sqlite3)
use the type store of ``distro``.

Damaged bags (a recorder killed mid-write, a copy cut short, flipped bits) are *salvaged*: when the
normal reader cannot open the bag, or fails part-way through it, the storage file is scanned record
by record (MCAP chunk by chunk, sqlite3 row by row) and reading goes on *after* the damage:

* an MCAP chunk whose CRC, size or compression does not check out is skipped (the messages lost are
  counted per topic from the chunk's message index records); bytes that are no record are skipped up
  to the next well-formed chunk;
* sqlite3 rows on a damaged page are skipped: the scan resumes at the next row id that reads;
* a message whose bytes do not deserialise is skipped.

Each skip is recorded in :attr:`BagSource.skipped` (:class:`Skipped`: what, where, why, how many
messages); :meth:`BagSource.damage_report` puts them in one line. Only when the rest of the file is
gone (cut short: no MCAP footer, a sqlite3 file shorter than its header says) is the end raised as
:class:`BagReadError` naming the bag, the topic and the position (message index, bag time, byte
offset), after every readable message was delivered, so callers keep their results.
"""

from __future__ import annotations

import heapq
import itertools
import struct
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw
import yaml
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from ood_perception.data.config import DatasetConfig
from ood_perception.data.mcap_chunks import ChunkError, ChunkHeader, decompress, verify

#: ROS 2 distros whose built-in message types can decode bags without embedded definitions.
DISTROS = ("humble", "jazzy", "kilted")

#: ``custom_data`` key of ``metadata.yaml`` holding the label space (``dataset.yaml`` text: labels,
#: learning map, OOD ids) of the bag's label topics; written by :class:`ood_perception.data.bag.BagWriter`.
LABEL_MAP_KEY = "ood_perception/label_map"

#: How many messages the salvage reader holds back to restore bag-time order of a file scan.
SALVAGE_REORDER_WINDOW = 32
#: A sqlite3 scan whose table maximum is unreadable gives up after this many unreadable row ids in a row.
SQLITE_PROBE_LIMIT = 100_000


class BagError(ValueError):
    """A bag cannot be used for replay; the message names the bag and what is wrong."""

    def __init__(self, bag: str | Path, message: str) -> None:
        self.bag = str(bag)
        super().__init__(f"bag {self.bag}: {message}")


class MissingTopicError(BagError):
    """A required topic is not in the bag; the message lists the topics that are."""

    def __init__(self, bag: str | Path, wanted: str, available: dict[str, str], hint: str = "") -> None:
        self.wanted = wanted
        self.available = dict(available)
        listing = ", ".join(f"{name} [{typ}]" for name, typ in sorted(available.items())) or "(none)"
        extra = f" ({hint})" if hint else ""
        super().__init__(bag, f"topic {wanted!r} not found{extra}; topics in the bag: {listing}")


class BagReadError(BagError):
    """The bag is damaged at a known position; messages before it were delivered.

    Attributes:
        topic: topic of the message being read when the damage was hit, or of the last good one
            when the storage cannot tell (a cut-off record has no readable topic).
        index: number of messages successfully read before the damage.
        timestamp_ns: bag time of the last good message (None if none was read).
        byte_offset: offset in the storage file where reading stopped, when known.
        reason: what the underlying reader reported.
    """

    def __init__(
        self,
        bag: str | Path,
        *,
        topic: str | None,
        index: int,
        timestamp_ns: int | None,
        reason: str,
        byte_offset: int | None = None,
        start_ns: int | None = None,
    ) -> None:
        self.topic = topic
        self.index = index
        self.timestamp_ns = timestamp_ns
        self.byte_offset = byte_offset
        self.reason = reason
        where = [f"topic {topic or '?'}", f"after message #{index}"]
        if timestamp_ns is not None:
            rel = f" (+{(timestamp_ns - start_ns) / 1e9:.3f} s)" if start_ns is not None else ""
            where.append(f"bag time {timestamp_ns} ns{rel}")
        if byte_offset is not None:
            where.append(f"byte {byte_offset}")
        super().__init__(bag, f"damaged at {', '.join(where)}: {reason}")


@dataclass(frozen=True)
class BagMessage:
    """One deserialised message in bag-time order."""

    topic: str
    msgtype: str
    timestamp_ns: int  # bag (receive) time
    msg: Any  # a rosbags message dataclass (same field names as the rclpy message)
    index: int  # position in this bag's replayed stream, from 0


@dataclass
class Skipped:
    """Damaged data that reading stepped over (then went on).

    Attributes:
        kind: ``chunk`` (an MCAP chunk), ``bytes`` (MCAP bytes that are no record), ``rows``
            (sqlite3 rows), ``message`` (one message that does not deserialise).
        reason: what was wrong, as the check or the storage library reported it.
        after_index: messages delivered before the damage.
        byte_offset, byte_end: where in the MCAP file (end exclusive), when known.
        rows: first and last sqlite3 row id that could not be read.
        start_ns, end_ns: bag-time range of the lost messages, when known (a chunk's header).
        lost: topic -> messages lost, when known (MCAP message index, a skipped message).
        topic, timestamp_ns: of a skipped message.
    """

    kind: str
    reason: str
    after_index: int
    byte_offset: int | None = None
    byte_end: int | None = None
    rows: tuple[int, int] | None = None
    start_ns: int | None = None
    end_ns: int | None = None
    lost: dict[str, int] = field(default_factory=dict)
    topic: str | None = None
    timestamp_ns: int | None = None

    @property
    def messages_lost(self) -> int | None:
        """How many messages were lost (None when not known)."""
        if self.kind == "message":
            return 1
        if self.kind == "rows" and self.rows is not None:
            return self.rows[1] - self.rows[0] + 1  # rosbag2 row ids are consecutive
        return sum(self.lost.values()) if self.lost else None

    def describe(self, start_ns: int | None = None) -> str:
        """One phrase: what was skipped, where, why and what it cost."""
        def t(ns: int) -> str:
            return f"+{(ns - start_ns) / 1e9:.3f} s" if start_ns is not None else f"{ns} ns"

        if self.kind == "message":
            where = f"message #{self.after_index} on {self.topic}"
            if self.timestamp_ns is not None:
                where += f" at bag time {t(self.timestamp_ns)}"
        elif self.kind == "rows" and self.rows is not None:
            a, b = self.rows
            where = f"sqlite rows {a}-{b}" if b > a else f"sqlite row {a}"
        elif self.kind == "chunk":
            where = f"chunk at byte {self.byte_offset}"
            if self.start_ns is not None and self.end_ns is not None:
                where += f" (bag time {t(self.start_ns)} to {t(self.end_ns)})"
        else:
            where = f"bytes {self.byte_offset}-{self.byte_end}"
        n = self.messages_lost
        if self.kind == "message":
            cost = ""
        elif n is None:
            cost = "; messages lost: unknown"
        else:
            per = ", ".join(f"{k} {v}" for k, v in sorted(self.lost.items()))
            cost = f"; {n} message{'s' if n != 1 else ''} lost" + (f" ({per})" if per else "")
        return f"{where} after message #{self.after_index}: {self.reason}{cost}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (for metrics.json)."""
        d = {k: v for k, v in self.__dict__.items() if v is not None and v != {}}
        if self.rows is not None:
            d["rows"] = list(self.rows)
        d["messages_lost"] = self.messages_lost
        return d


def typestore_for(distro: str):
    """The rosbags type store of a ROS 2 ``distro`` (one of :data:`DISTROS`)."""

    if distro not in DISTROS:
        raise ValueError(f"unknown ROS distro {distro!r}; expected one of {', '.join(DISTROS)}")
    return get_typestore(getattr(Stores, f"ROS2_{distro.upper()}"))


_MCAP_MAGIC = b"\x89MCAP0\r\n"
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class _Truncated(Exception):
    """A storage file ends inside a record."""

    def __init__(self, offset: int, reason: str) -> None:
        self.offset = offset
        super().__init__(f"{reason} (record at byte {offset})")


def _mcap_str(buf: bytes) -> tuple[str, bytes]:
    (n,) = _U32.unpack_from(buf)
    return buf[4 : 4 + n].decode(), buf[4 + n :]


def _storage_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.suffix in (".mcap", ".db3"))
    return files


def custom_data_of(path: str | Path) -> dict[str, str]:
    """``custom_data`` of a bag directory's ``metadata.yaml`` (rosbag2 metadata version >= 6); empty
    for a bare storage file or a bag without it. Read from the file itself (no storage opened), so
    damaged bags have it too."""
    meta = Path(path) / "metadata.yaml"
    if not meta.is_file():
        return {}
    try:
        info = (yaml.safe_load(meta.read_text()) or {}).get("rosbag2_bagfile_information") or {}
    except (yaml.YAMLError, AttributeError, OSError):
        return {}
    custom = info.get("custom_data") or {}
    return {str(k): str(v) for k, v in custom.items()} if isinstance(custom, dict) else {}


def label_map_of(path: str | Path) -> DatasetConfig | None:
    """The label space a bag carries in ``custom_data`` :data:`LABEL_MAP_KEY`, or None.

    Raises:
        ValueError: the bag carries one that is not a valid ``dataset.yaml`` (names the bag).
    """
    text = custom_data_of(path).get(LABEL_MAP_KEY)
    if text is None:
        return None
    try:
        return DatasetConfig.from_dict(yaml.safe_load(text))
    except (yaml.YAMLError, ValueError) as exc:
        raise ValueError(f"bag {path}: metadata custom_data {LABEL_MAP_KEY} is not a label map: {exc}") from None


class BagSource:
    """A rosbag2 recording opened for replay.

    Args:
        path: the bag directory (with ``metadata.yaml``) or a single ``.mcap``/``.db3`` file.
        distro: type store used when the bag has no embedded message definitions.
    """

    def __init__(self, path: str | Path, distro: str = "kilted") -> None:
        self.path = Path(path)
        self.distro = distro
        self._default_types = typestore_for(distro)
        if not self.path.exists():
            raise FileNotFoundError(f"bag {self.path} does not exist")
        self._reader = None
        self._salvage: _Salvage | None = None
        self.open_error: str | None = None
        self.read_error: str | None = None  # what stopped the normal reader part-way (then the file was scanned)
        self._resumed: _Salvage | None = None
        self.skipped: list[Skipped] = []  # damaged data stepped over, in reading order
        self._open()

    # -- opening --------------------------------------------------------------------------------
    def _open(self) -> None:

        if self.path.is_dir() and not (self.path / "metadata.yaml").is_file() and not _storage_files(self.path):
            raise BagError(self.path, "not a rosbag2 bag (the folder has no metadata.yaml and no .mcap/.db3 file)")
        if self.path.is_file() and self.path.suffix not in (".mcap", ".db3"):
            raise BagError(self.path, "not a rosbag2 bag (give a bag folder or a .mcap/.db3 file)")
        try:
            reader = AnyReader([self.path], default_typestore=self._default_types)
            reader.open()
            self._reader = reader
            return
        except Exception as exc:  # noqa: BLE001 - any reader failure falls back to salvage
            self.open_error = f"{type(exc).__name__}: {exc}"
        files = _storage_files(self.path) if self.path.is_dir() else [self.path]
        if not files:
            raise BagError(self.path, f"no .mcap or .db3 storage file found ({self.open_error})")
        if len(files) > 1:
            raise BagError(self.path, f"cannot open split bag for salvage ({self.open_error})")
        self._salvage = _Salvage(files[0], self._default_types, self.path)

    def close(self) -> None:
        """Release the storage files."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        for salvage in (self._salvage, self._resumed):
            if salvage is not None:
                salvage.close()

    def __enter__(self) -> BagSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- description ----------------------------------------------------------------------------
    @property
    def salvaged(self) -> bool:
        """True when the bag could not be opened normally and is read by scanning its file."""
        return self._salvage is not None

    @property
    def topics(self) -> dict[str, str]:
        """Topic name -> message type (``pkg/msg/Type``) of every topic in the bag."""
        if self._reader is not None:
            return {c.topic: c.msgtype for c in self._reader.connections}
        assert self._salvage is not None
        return dict(self._salvage.topics)

    @property
    def start_ns(self) -> int | None:
        """Bag time of the first message (None when unknown, e.g. an empty salvaged bag)."""
        if self._reader is not None:
            return self._reader.start_time if self._reader.message_count else None
        return self._salvage.start_ns if self._salvage else None

    @property
    def end_ns(self) -> int | None:
        """Bag time just after the last message, when known before reading."""
        if self._reader is not None:
            return self._reader.end_time if self._reader.message_count else None
        return None

    @property
    def custom_data(self) -> dict[str, str]:
        """``custom_data`` of the bag's ``metadata.yaml`` (see :func:`custom_data_of`)."""
        return custom_data_of(self.path)

    def label_map(self) -> DatasetConfig | None:
        """The label space the bag carries (see :func:`label_map_of`)."""
        return label_map_of(self.path)

    def first_message(self, topic: str) -> BagMessage | None:
        """The first message on ``topic`` (None when there is none or the bag breaks before it)."""
        gen = self.messages([topic])
        try:
            return next(gen, None)
        except BagReadError:
            return None
        finally:
            gen.close()

    def message_count(self, topics: Iterable[str] | None = None) -> int | None:
        """Number of messages on ``topics`` (all when None); None when not known in advance."""
        if self._reader is None:
            return None
        wanted = set(topics) if topics is not None else None
        return sum(c.msgcount for c in self._reader.connections if wanted is None or c.topic in wanted)

    def resolve(self, name: str, required: bool = True) -> str | None:
        """Find the bag topic for a logical topic ``name`` (e.g. ``camera/image``).

        Matches, in order: the exact name, the name with a leading ``/``, then a unique topic
        ending in ``/name`` (a namespaced driver, ``/vehicle/camera/image``). Absolute names
        (``/carla/ego_vehicle/lidar``) must match exactly.

        Raises:
            MissingTopicError: ``required`` and nothing (or more than one candidate) matches.
        """
        topics = self.topics
        if name in topics:
            return name
        if not name.startswith("/"):
            if "/" + name in topics:
                return "/" + name
            suffix = [t for t in topics if t.endswith("/" + name)]
            if len(suffix) == 1:
                return suffix[0]
            if len(suffix) > 1:
                raise MissingTopicError(
                    self.path, name, topics, hint=f"ambiguous: {', '.join(sorted(suffix))}; map it explicitly"
                )
        if required:
            raise MissingTopicError(self.path, name, topics)
        return None

    # -- damage ---------------------------------------------------------------------------------
    def damage_report(self) -> str | None:
        """One line naming the bag and every piece of damaged data skipped so far (None: none)."""
        if not self.skipped:
            return None
        lost = [s.messages_lost for s in self.skipped]
        total = "unknown" if any(n is None for n in lost) else str(sum(n for n in lost if n is not None))
        parts = "; ".join(s.describe(self.start_ns) for s in self.skipped)
        return (f"bag {self.path}: skipped {len(self.skipped)} damaged part{'s' if len(self.skipped) != 1 else ''} "
                f"and read on (messages lost: {total}): {parts}")

    # -- reading --------------------------------------------------------------------------------
    def messages(self, topics: Iterable[str]) -> Iterator[BagMessage]:
        """Deserialised messages on ``topics`` (bag topic names) in bag-time order.

        Damaged data is stepped over and recorded in :attr:`skipped` (see the module docstring).
        When the normal reader fails part-way (a chunk CRC mismatch, a malformed sqlite3 page), the
        storage file is scanned from there on; messages already delivered are not repeated.

        Raises:
            BagReadError: the file ends early (cut short), after every readable message was yielded.
        """
        wanted = set(topics)
        if self._salvage is not None:
            yield from self._salvage.messages(wanted, self.skipped)
            return
        reader = self._reader
        assert reader is not None
        conns = [c for c in reader.connections if c.topic in wanted]
        if not conns:
            return
        index = 0
        last_ts: int | None = None
        at_last: Counter[str] = Counter()  # messages delivered per topic at bag time last_ts
        it = reader.messages(connections=conns)
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - storage damage mid-stream: scan the file from there
                yield from self._resume(wanted, index, last_ts, at_last, f"{type(exc).__name__}: {exc}")
                return
            conn, ts, raw = item
            if ts != last_ts:
                last_ts, at_last = ts, Counter()
            at_last[conn.topic] += 1
            try:
                msg = reader.deserialize(raw, conn.msgtype)
            except Exception as exc:  # noqa: BLE001 - corrupt payload: skip this message
                self.skipped.append(Skipped("message", f"cannot deserialise {conn.msgtype}: {exc}", index,
                                            topic=conn.topic, timestamp_ns=ts, lost={conn.topic: 1}))
                continue
            yield BagMessage(conn.topic, conn.msgtype, ts, msg, index)
            index += 1

    def _resume(self, wanted: set[str], index: int, last_ts: int | None, at_last: Counter[str],
                reason: str) -> Iterator[BagMessage]:
        """After the normal reader failed: the file scan's messages not yet delivered (bag time
        after ``last_ts``, and at ``last_ts`` beyond the ones already counted per topic)."""
        files = _storage_files(self.path) if self.path.is_dir() else [self.path]
        if len(files) != 1:
            raise BagReadError(self.path, topic=None, index=index, timestamp_ns=last_ts,
                               reason=f"{reason} (split bag: cannot scan past the damage)", start_ns=self.start_ns)
        self.read_error = reason
        try:
            self._resumed = _Salvage(files[0], self._default_types, self.path)
        except BagError as exc:  # not even the topic table reads: the end of the bag for us
            raise BagReadError(self.path, topic=None, index=index, timestamp_ns=last_ts,
                               reason=f"{reason}; scanning the file failed too: {exc}", start_ns=self.start_ns) from exc
        seen: Counter[str] = Counter()

        def keep(topic: str, ts: int) -> bool:
            if last_ts is None or ts > last_ts:
                return True
            if ts < last_ts:
                return False
            seen[topic] += 1
            return seen[topic] > at_last[topic]

        yield from self._resumed.messages(wanted, self.skipped, first_index=index, keep=keep)


class _Salvage:
    """Record-by-record reading of a damaged storage file (no index, no metadata needed)."""

    def __init__(self, file: Path, default_types: Any, bag: Path) -> None:
        self.file = file
        self.bag = bag
        self.default_types = default_types
        self.topics: dict[str, str] = {}
        self.start_ns: int | None = None
        self._msgdefs: dict[str, str] = {}  # msgtype -> ros2msg text
        if file.suffix == ".mcap":
            self._scan_channels_mcap()
        elif file.suffix == ".db3":
            self._read_topics_sqlite()
        else:
            raise BagError(bag, f"unknown storage file {file.name} (expected .mcap or .db3)")
        self.typestore = self._build_typestore()

    # type store: the bag's own definitions where present, the distro's otherwise
    def _build_typestore(self) -> Any:

        store = get_typestore(Stores.EMPTY)
        store.register(self.default_types.fielddefs)
        for msgtype, text in self._msgdefs.items():
            try:
                store.register(get_types_from_msg(text, msgtype))
            except Exception:  # noqa: BLE001,S112 - keep the distro's definition
                continue
        return store

    # ---- MCAP
    def _records(self, strict: bool = True) -> Iterator[tuple[int, bytes, int] | Skipped]:
        """(opcode, content, end offset) of every readable record, chunks opened, in file order,
        and a :class:`Skipped` for each damaged chunk or run of bytes that is no record.

        A chunk whose header, compression, size or CRC does not check out is skipped whole; the
        message index records after it count its messages into the :class:`Skipped` (per topic,
        once the channels are known). Bytes that do not start a record are skipped up to the next
        well-formed chunk. When no well-formed chunk follows, the file was cut short: the scan
        ends with :class:`_Truncated` (carrying the byte offset), after delivering the readable
        part of a cut-off uncompressed or zstd/lz4 chunk. Sets ``self._complete`` at the footer.
        With ``strict`` False (the scan for schemas and channels), the schema and channel records of a
        chunk that fails its CRC are still delivered when it decompresses: rosbags writes them into
        the first chunk, and one bad byte in a message must not make every topic unknown.
        """
        with self.file.open("rb") as fh:
            data = fh.read()
        if not data.startswith(_MCAP_MAGIC):
            raise _Truncated(0, "not an MCAP file (bad magic)")
        view = memoryview(data)
        pos = len(_MCAP_MAGIC)
        pending: Skipped | None = None  # the skipped chunk whose message index records come next
        while pos < len(data):
            if pos + 9 > len(data):
                raise _Truncated(pos, "record header cut off")
            op = data[pos]
            (length,) = _U64.unpack_from(data, pos + 1)
            end = pos + 9 + length
            if not 0x01 <= op <= 0x0F or (end > len(data) and op != 0x06):
                nxt = _next_chunk(data, pos + 1)
                if nxt is None:
                    if end > len(data):
                        raise _Truncated(pos, f"record (opcode 0x{op:02x}) of {length} bytes cut off at {len(data)}")
                    raise _Truncated(pos, f"no MCAP record at byte {pos} (opcode 0x{op:02x}) and no chunk after it")
                yield Skipped("bytes", f"no MCAP record there (opcode 0x{op:02x}, length {length}); resumed at the "
                              "next well-formed chunk", 0, byte_offset=pos, byte_end=nxt)
                pos, pending = nxt, None
                continue
            if op == 0x06:
                if end > len(data):
                    nxt = _next_chunk(data, pos + 1)
                    if nxt is not None:  # a damaged length, not a cut-off file
                        yield Skipped("chunk", f"chunk length {length} runs past the end of the file", 0,
                                      byte_offset=pos, byte_end=nxt)
                        pos, pending = nxt, None
                        continue
                    yield from self._partial_chunk_records(bytes(view[pos + 9 :]), pos)
                    raise _Truncated(pos, f"record (opcode 0x06) of {length} bytes cut off at {len(data)}")
                header, inner = None, None
                try:
                    header = ChunkHeader.parse(view[pos + 9 : end])
                    if not header.consistent(length):
                        raise ChunkError("chunk header does not match its record length")
                    payload = view[pos + 9 + header.payload_offset : end]
                    inner = decompress(header, payload)
                    verify(header, inner)
                except ChunkError as exc:
                    if not strict and inner is not None:
                        yield from (r for r in _inner_records(inner, pos) if r[0] in (0x03, 0x04))
                    pending = Skipped("chunk", str(exc), 0, byte_offset=pos, byte_end=end,
                                      start_ns=header.start_ns if header else None,
                                      end_ns=header.end_ns if header else None)
                    yield pending
                    pos = end
                    continue
                pending = None
                yield from _inner_records(inner, pos)
            elif op == 0x07:
                if pending is not None and length >= 6:
                    (cid,) = _U16.unpack_from(data, pos + 9)
                    (n,) = _U32.unpack_from(data, pos + 11)
                    topic = getattr(self, "_channels", {}).get(cid, f"channel {cid}")
                    pending.lost[topic] = pending.lost.get(topic, 0) + n // 16
            elif op in (0x03, 0x04, 0x05):
                yield op, bytes(view[pos + 9 : end]), end
            if op != 0x07:
                pending = None
            if op == 0x02:  # footer
                self._complete = True
                return
            pos = end

    def _partial_chunk_records(self, body: bytes, offset: int) -> Iterator[tuple[int, bytes, int]]:
        """The records of a chunk cut off by the end of the file, as far as they decode."""
        if len(body) < 32:
            raise _Truncated(offset, "chunk header cut off")
        (clen,) = _U32.unpack_from(body, 28)
        compression = body[32 : 32 + clen].decode(errors="replace")
        payload = body[32 + clen + 8 :]
        if compression == "":
            inner = payload
        elif compression == "zstd":
            from backports.zstd import ZstdDecompressor  # rosbags' own zstd dependency

            inner = ZstdDecompressor().decompress(payload)
        elif compression == "lz4":
            import lz4.frame

            inner = lz4.frame.LZ4FrameDecompressor().decompress(payload)
        else:
            raise _Truncated(offset, f"unsupported chunk compression {compression!r}")
        yield from _inner_records(inner, offset)

    def _scan_channels_mcap(self) -> None:
        self._channels: dict[int, str] = {}
        schemas: dict[int, tuple[str, str, bytes]] = {}
        try:
            for rec in self._records(strict=False):
                if isinstance(rec, Skipped):
                    continue
                op, body, _ = rec
                if op == 0x03:
                    sid, rest = _U16.unpack_from(body)[0], body[2:]
                    name, rest = _mcap_str(rest)
                    encoding, rest = _mcap_str(rest)
                    (dlen,) = _U32.unpack_from(rest)
                    schemas[sid] = (name, encoding, rest[4 : 4 + dlen])
                elif op == 0x04:
                    cid, sid = _U16.unpack_from(body)[0], _U16.unpack_from(body, 2)[0]
                    topic, _ = _mcap_str(body[4:])
                    name, encoding, text = schemas.get(sid, ("", "", b""))
                    self.topics[topic] = name
                    self._channels[cid] = topic
                    if encoding == "ros2msg" and text:
                        self._msgdefs[name] = text.decode()
                elif op == 0x05 and self.start_ns is None:
                    (self.start_ns,) = _U64.unpack_from(body, 6)
        except _Truncated:
            pass  # reported when the messages are read

    def _mcap_raw(self, wanted: set[str]) -> Iterator[tuple[str, int, bytes, int] | Skipped]:
        self._complete = False
        for rec in self._records():
            if isinstance(rec, Skipped):
                yield rec
                continue
            op, body, offset = rec
            if op == 0x05:
                topic = self._channels.get(_U16.unpack_from(body)[0])
                if topic in wanted:
                    (log_time,) = _U64.unpack_from(body, 6)
                    yield topic, log_time, body[22:], offset

    # ---- sqlite3
    def _connect(self):

        path = self._db_file or self.file
        return apsw.Connection(f"file:{path}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)

    def _patched_copy(self) -> Path:
        """A temporary copy of a cut-short database whose header page count matches its length.

        SQLite trusts the page count in the file header; after truncation it points past the end
        and every query fails as "malformed". With the count fixed, the pages that survived
        (the schema, the topic table and the earlier messages) read normally.
        """

        data = self.file.read_bytes()
        if len(data) < 100 or not data.startswith(b"SQLite format 3\0"):
            raise BagError(self.bag, f"{self.file.name} is not an SQLite database")
        (page_size,) = struct.unpack(">H", data[16:18])
        page_size = 65536 if page_size == 1 else page_size
        pages = len(data) // page_size
        fd, name = tempfile.mkstemp(suffix=".db3", prefix="ood_replay_salvage_")
        with open(fd, "wb") as fh:
            fh.write(data[:28] + struct.pack(">I", pages) + data[32 : pages * page_size])
        self._tmp_files.append(Path(name))
        return Path(name)

    def _read_topics_sqlite(self) -> None:
        self._db_file: Path | None = None
        self._tmp_files: list[Path] = []
        try:
            try:
                self._connect().execute("SELECT count(*) FROM topics").fetchall()
            except Exception:  # noqa: BLE001 - retry on a copy with a repaired header
                self._db_file = self._patched_copy()
            db = self._connect()
            self._topic_ids = {}
            for tid, name, typ in db.execute("SELECT id, name, type FROM topics"):
                self.topics[name] = typ
                self._topic_ids[tid] = name
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "message_definitions" in tables:
                for typ, enc, text in db.execute(
                    "SELECT topic_type, encoding, encoded_message_definition FROM message_definitions"
                ):
                    if enc == "ros2msg" and text:
                        self._msgdefs[typ] = text
            db.close()
        except Exception as exc:  # noqa: BLE001
            raise BagError(self.bag, f"cannot read the topic table of {self.file.name}: {exc}") from exc

    def _sqlite_raw(self, wanted: set[str]) -> Iterator[tuple[str, int, bytes, int] | Skipped]:
        """Rows in id order; rows that cannot be read are skipped (one :class:`Skipped` per run).

        A scan ``WHERE id >= next`` runs until SQLite reports damage; then ids are probed one by
        one until a row reads again (or the table's maximum id is passed), and the scan resumes
        there. Rows on a damaged page are lost; every other row is delivered.
        """
        db = self._connect()
        query = "SELECT id, topic_id, timestamp, data FROM messages"

        def one(sql: str) -> Any:
            try:
                return db.execute(sql).fetchone()[0]
            except Exception:  # noqa: BLE001 - a damaged page on that path
                return None

        try:
            max_id = one("SELECT max(id) FROM messages")
            start = one("SELECT min(id) FROM messages")
            start = 1 if start is None else int(start)
            while True:
                try:
                    for row in db.execute(f"{query} WHERE id >= ? ORDER BY id", (start,)):
                        start = int(row[0]) + 1
                        yield from self._sqlite_row(row, wanted)
                    return
                except Exception as exc:  # noqa: BLE001 - a damaged page: probe past it
                    reason = f"{type(exc).__name__}: {exc}"
                first_bad, found, k = start, None, start
                while (max_id is None and k - first_bad < SQLITE_PROBE_LIMIT) or (max_id is not None and k <= max_id):
                    try:
                        found = db.execute(f"{query} WHERE id = ?", (k,)).fetchone()
                    except Exception:  # noqa: BLE001, S112 - this row is unreadable too
                        found = None
                    if found is not None:
                        break
                    k += 1
                if found is None:
                    last = max_id if max_id is not None else first_bad
                    yield Skipped("rows", reason + ("" if max_id is not None else "; the rest of the table is unreadable"),
                                  0, rows=(first_bad, max(first_bad, int(last))))
                    return
                if int(found[0]) > first_bad:
                    yield Skipped("rows", reason, 0, rows=(first_bad, int(found[0]) - 1))
                yield from self._sqlite_row(found, wanted)
                start = int(found[0]) + 1
        finally:
            db.close()

    def _sqlite_row(self, row: Any, wanted: set[str]) -> Iterator[tuple[str, int, bytes, int]]:
        rowid, tid, ts, data = row
        topic = self._topic_ids.get(tid)
        if self.start_ns is None:
            self.start_ns = ts
        if topic in wanted:
            yield topic, ts, bytes(data), rowid

    def close(self) -> None:
        """Delete temporary repaired copies."""
        for tmp in getattr(self, "_tmp_files", []):
            tmp.unlink(missing_ok=True)

    def messages(self, wanted: set[str], skipped: list[Skipped], first_index: int = 0,
                 keep: Callable[[str, int], bool] | None = None) -> Iterator[BagMessage]:
        """Messages on ``wanted`` in (nearly) bag-time order; damage stepped over is appended to
        ``skipped``. ``keep(topic, bag_time)``, called in delivery order, can drop messages before
        they are deserialised (those already delivered by the normal reader); indices count from
        ``first_index``. Raises :class:`BagReadError` at the end when the file was cut short."""
        is_mcap = self.file.suffix == ".mcap"
        raw = self._mcap_raw(wanted) if is_mcap else self._sqlite_raw(wanted)
        heap: list[tuple[int, int, str, bytes]] = []
        counter = itertools.count()
        index = first_index
        last_topic: str | None = None
        last_ts: int | None = None
        position: int | None = None
        failure: Exception | None = None

        pending: list[tuple[int, Skipped]] = []  # skips whose after_index waits for the next message read after them

        def emit(item: tuple[int, int, str, bytes]) -> BagMessage | None:
            nonlocal index, last_topic, last_ts
            ts, seq, topic, data = item
            while pending and pending[0][0] < seq:  # the first message read after the damage comes out now
                pending.pop(0)[1].after_index = index
            if keep is not None and not keep(topic, ts):
                return None
            msgtype = self.topics[topic]
            try:
                msg = self.typestore.deserialize_cdr(data, msgtype)
            except Exception as exc:  # noqa: BLE001 - a damaged message: skip it
                skipped.append(Skipped("message", f"cannot deserialise {msgtype}: {exc}", index,
                                       topic=topic, timestamp_ns=ts, lost={topic: 1}))
                return None
            out = BagMessage(topic, msgtype, ts, msg, index)
            index += 1
            last_topic, last_ts = topic, ts
            return out

        try:
            for item in raw:
                if isinstance(item, Skipped):
                    pending.append((next(counter), item))
                    skipped.append(item)
                    continue
                topic, ts, data, pos = item
                position = pos
                heapq.heappush(heap, (ts, next(counter), topic, data))
                if len(heap) > SALVAGE_REORDER_WINDOW and (m := emit(heapq.heappop(heap))) is not None:
                    yield m
        except Exception as exc:  # noqa: BLE001 - the file ends here
            failure = exc
        while heap:
            if (m := emit(heapq.heappop(heap))) is not None:
                yield m
        for _, skip in pending:
            skip.after_index = index
        complete = self._complete if is_mcap else self._db_file is None
        if failure is None and complete:
            return
        if isinstance(failure, _Truncated):
            position = failure.offset
        reason = str(failure) if failure else "the bag is incomplete (no index/metadata)"
        if failure and not isinstance(failure, _Truncated):
            reason = f"{type(failure).__name__}: {failure}"
        raise BagReadError(
            self.bag, topic=last_topic, index=index, timestamp_ns=last_ts, reason=reason,
            byte_offset=position if is_mcap else None, start_ns=self.start_ns,
        )


def _inner_records(inner: bytes, offset: int) -> Iterator[tuple[int, bytes, int]]:
    """Schema, channel and message records inside a chunk's uncompressed bytes (up to a cut)."""
    pos = 0
    while pos + 9 <= len(inner):
        op = inner[pos]
        (length,) = _U64.unpack_from(inner, pos + 1)
        if pos + 9 + length > len(inner):
            break
        if op in (0x03, 0x04, 0x05):
            yield op, inner[pos + 9 : pos + 9 + length], offset
        pos += 9 + length


def _next_chunk(data: bytes, start: int) -> int | None:
    """Offset of the next well-formed chunk record at or after ``start`` (header consistent with
    its length, inside the file), or None."""
    p = data.find(b"\x06", start)
    while p != -1 and p + 9 + 40 <= len(data):
        (length,) = _U64.unpack_from(data, p + 1)
        if 40 <= length <= len(data) - p - 9:
            try:
                if ChunkHeader.parse(memoryview(data)[p + 9 : p + 9 + length]).consistent(length):
                    return p
            except ChunkError:
                pass
        p = data.find(b"\x06", p + 1)
    return None
