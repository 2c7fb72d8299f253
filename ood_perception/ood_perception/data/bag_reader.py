"""Reading rosbag2 recordings for replay: sqlite3 and mcap, any ROS 2 distro, damaged bags too.

:class:`BagSource` wraps rosbags' ``AnyReader``: messages come deserialised, in bag-time order,
for the topics asked for. Bags that carry their message definitions (jazzy/kilted, and every bag
written by rosbags) are read with their own types; older bags without definitions (humble sqlite3)
use the type store of ``distro``.

Damaged bags (a recorder killed mid-write, a copy cut short) are *salvaged*: when the normal reader
cannot open the bag, the storage file is scanned record by record (MCAP with the ``mcap`` library,
sqlite3 row by row) and every message before the damage is still replayed. The damage itself is
raised as :class:`BagReadError` naming the bag, the topic and the position (message index, bag
time, byte offset), after the good messages were delivered, so callers keep their results.
"""

from __future__ import annotations

import heapq
import itertools
import struct
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw
import yaml
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from ood_perception.data.config import DatasetConfig

#: ROS 2 distros whose built-in message types can decode bags without embedded definitions.
DISTROS = ("humble", "jazzy", "kilted")

#: ``custom_data`` key of ``metadata.yaml`` holding the label space (``dataset.yaml`` text: labels,
#: learning map, OOD ids) of the bag's label topics; written by :class:`ood_perception.data.bag.BagWriter`.
LABEL_MAP_KEY = "ood_perception/label_map"

#: How many messages the salvage reader holds back to restore bag-time order of a file scan.
SALVAGE_REORDER_WINDOW = 32


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
        if self._salvage is not None:
            self._salvage.close()

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

    # -- reading --------------------------------------------------------------------------------
    def messages(self, topics: Iterable[str]) -> Iterator[BagMessage]:
        """Deserialised messages on ``topics`` (bag topic names) in bag-time order.

        Raises:
            BagReadError: at the first damaged record, after every message before it was yielded.
        """
        wanted = set(topics)
        if self._salvage is not None:
            yield from self._salvage.messages(wanted)
            return
        reader = self._reader
        assert reader is not None
        conns = [c for c in reader.connections if c.topic in wanted]
        if not conns:
            return
        index = 0
        last_topic: str | None = None
        last_ts: int | None = None
        it = reader.messages(connections=conns)
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - storage damage mid-stream
                raise BagReadError(
                    self.path, topic=last_topic, index=index, timestamp_ns=last_ts,
                    reason=f"{type(exc).__name__}: {exc}", start_ns=self.start_ns,
                ) from exc
            conn, ts, raw = item
            try:
                msg = reader.deserialize(raw, conn.msgtype)
            except Exception as exc:  # noqa: BLE001 - corrupt payload
                raise BagReadError(
                    self.path, topic=conn.topic, index=index, timestamp_ns=ts,
                    reason=f"cannot deserialise {conn.msgtype}: {exc}", start_ns=self.start_ns,
                ) from exc
            yield BagMessage(conn.topic, conn.msgtype, ts, msg, index)
            index += 1
            last_topic, last_ts = conn.topic, ts


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
    def _records(self) -> Iterator[tuple[int, bytes, int]]:
        """(opcode, content, end offset) of every readable record, chunks opened, in file order.

        A cut-off record ends the scan with :class:`_Truncated` (carrying the byte offset); the
        readable part of a cut-off uncompressed or zstd/lz4 chunk is still delivered.
        """
        with self.file.open("rb") as fh:
            data = fh.read()
        if not data.startswith(_MCAP_MAGIC):
            raise _Truncated(0, "not an MCAP file (bad magic)")
        pos = len(_MCAP_MAGIC)
        while pos < len(data):
            if pos + 9 > len(data):
                raise _Truncated(pos, "record header cut off")
            op = data[pos]
            (length,) = _U64.unpack_from(data, pos + 1)
            body = data[pos + 9 : pos + 9 + length]
            complete = len(body) == length
            if op == 0x06:  # chunk: deliver what can be decoded, even when cut off
                yield from self._chunk_records(body, pos)
            elif complete and op in (0x03, 0x04, 0x05):
                yield op, body, pos + 9 + length
            if not complete:
                raise _Truncated(pos, f"record (opcode 0x{op:02x}) of {length} bytes cut off at {len(data)}")
            if op == 0x02:  # footer
                return
            pos += 9 + length

    def _chunk_records(self, body: bytes, offset: int) -> Iterator[tuple[int, bytes, int]]:
        if len(body) < 32:
            raise _Truncated(offset, "chunk header cut off")
        (clen,) = _U32.unpack_from(body, 28)
        compression = body[32 : 32 + clen].decode()
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
        pos = 0
        while pos + 9 <= len(inner):
            op = inner[pos]
            (length,) = _U64.unpack_from(inner, pos + 1)
            if pos + 9 + length > len(inner):
                break
            if op in (0x03, 0x04, 0x05):
                yield op, inner[pos + 9 : pos + 9 + length], offset
            pos += 9 + length

    def _scan_channels_mcap(self) -> None:
        self._channels: dict[int, str] = {}
        schemas: dict[int, tuple[str, str, bytes]] = {}
        try:
            for op, body, _ in self._records():
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

    def _mcap_raw(self, wanted: set[str]) -> Iterator[tuple[str, int, bytes, int]]:
        for op, body, offset in self._records():
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

    def _sqlite_raw(self, wanted: set[str]) -> Iterator[tuple[str, int, bytes, int]]:
        db = self._connect()
        try:
            for rowid, tid, ts, data in db.execute("SELECT id, topic_id, timestamp, data FROM messages ORDER BY id"):
                topic = self._topic_ids.get(tid)
                if self.start_ns is None:
                    self.start_ns = ts
                if topic in wanted:
                    yield topic, ts, bytes(data), rowid
        finally:
            db.close()

    def close(self) -> None:
        """Delete temporary repaired copies."""
        for tmp in getattr(self, "_tmp_files", []):
            tmp.unlink(missing_ok=True)

    def messages(self, wanted: set[str]) -> Iterator[BagMessage]:
        raw = self._mcap_raw(wanted) if self.file.suffix == ".mcap" else self._sqlite_raw(wanted)
        heap: list[tuple[int, int, str, bytes]] = []
        counter = itertools.count()
        index = 0
        last_topic: str | None = None
        last_ts: int | None = None
        position: int | None = None
        failure: Exception | None = None

        def emit(item: tuple[int, int, str, bytes]) -> BagMessage:
            nonlocal index, last_topic, last_ts
            ts, _, topic, data = item
            msgtype = self.topics[topic]
            try:
                msg = self.typestore.deserialize_cdr(data, msgtype)
            except Exception as exc:  # noqa: BLE001
                raise BagReadError(
                    self.bag, topic=topic, index=index, timestamp_ns=ts,
                    reason=f"cannot deserialise {msgtype}: {exc}", start_ns=self.start_ns,
                ) from exc
            out = BagMessage(topic, msgtype, ts, msg, index)
            index += 1
            last_topic, last_ts = topic, ts
            return out

        try:
            for topic, ts, data, pos in raw:
                position = pos
                heapq.heappush(heap, (ts, next(counter), topic, data))
                if len(heap) > SALVAGE_REORDER_WINDOW:
                    yield emit(heapq.heappop(heap))
        except Exception as exc:  # noqa: BLE001 - the damage
            failure = exc
        while heap:
            yield emit(heapq.heappop(heap))
        if isinstance(failure, _Truncated):
            position = failure.offset
        reason = str(failure) if failure else "the bag is incomplete (no index/metadata)"
        if failure and not isinstance(failure, _Truncated):
            reason = f"{type(failure).__name__}: {failure}"
        is_mcap = self.file.suffix == ".mcap"
        raise BagReadError(
            self.bag, topic=last_topic, index=index, timestamp_ns=last_ts, reason=reason,
            byte_offset=position if is_mcap else None, start_ns=self.start_ns,
        )
