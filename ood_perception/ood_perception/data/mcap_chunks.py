"""MCAP chunk records: parsing, decompression and chunk CRCs.

rosbags' MCAP writer (0.11) leaves every chunk's ``uncompressed_crc`` at 0, which the MCAP
specification defines as "no checksum": a flipped bit inside a chunk then replays silently with
changed data. :func:`add_chunk_crcs` fills in the CRC-32 of each chunk's uncompressed records
after the file is written (the field has a fixed place in the chunk header, so nothing else in the
file moves). Readers then detect a damaged chunk: rosbags' reader raises "Chunk checksum mismatch",
and the salvage scan of :mod:`ood_perception.data.bag_reader` skips the chunk and reports it.

The CRC is zlib's CRC-32 (polynomial 0x04C11DB7, as the MCAP specification asks), computed over the
decompressed ``records`` bytes.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

MCAP_MAGIC = b"\x89MCAP0\r\n"
OP_FOOTER, OP_CHUNK, OP_MESSAGE_INDEX = 0x02, 0x06, 0x07
#: Chunk compressions a reader here can open.
COMPRESSIONS = ("", "zstd", "lz4")

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
#: Offset of ``uncompressed_crc`` inside a chunk record's body (after start, end, uncompressed size).
CRC_OFFSET = 24


class ChunkError(Exception):
    """A chunk's bytes cannot be used (bad header, unknown compression, failed decompression,
    size or CRC mismatch)."""


@dataclass(frozen=True)
class ChunkHeader:
    """The fixed part of a chunk record (``body`` = the record without opcode and length)."""

    start_ns: int
    end_ns: int
    uncompressed_size: int
    crc: int
    compression: str
    payload_offset: int  # of the compressed records inside the body
    payload_length: int

    @classmethod
    def parse(cls, body: bytes | memoryview) -> ChunkHeader:
        """Parse a chunk body's header; raises :class:`ChunkError` when it is not one."""
        if len(body) < 40:
            raise ChunkError(f"chunk header cut off ({len(body)} bytes)")
        start, end, size = (_U64.unpack_from(body, k)[0] for k in (0, 8, 16))
        (crc,) = _U32.unpack_from(body, CRC_OFFSET)
        (clen,) = _U32.unpack_from(body, 28)
        if clen > 16 or 32 + clen + 8 > len(body):
            raise ChunkError(f"chunk compression name of {clen} bytes does not fit")
        try:
            compression = bytes(body[32 : 32 + clen]).decode()
        except UnicodeDecodeError as exc:
            raise ChunkError(f"chunk compression name is not text: {exc}") from None
        (plen,) = _U64.unpack_from(body, 32 + clen)
        return cls(start, end, size, crc, compression, 32 + clen + 8, plen)

    def consistent(self, body_length: int) -> bool:
        """True when the header describes exactly a chunk of ``body_length`` bytes (used to find
        the next chunk after damaged bytes)."""
        return (self.compression in COMPRESSIONS and self.start_ns <= self.end_ns
                and self.payload_offset + self.payload_length == body_length)


def decompress(header: ChunkHeader, payload: bytes | memoryview) -> bytes:
    """The chunk's uncompressed records; raises :class:`ChunkError` on any mismatch."""
    try:
        if header.compression == "":
            inner = bytes(payload)
        elif header.compression == "zstd":
            from backports.zstd import ZstdDecompressor  # rosbags' own zstd dependency; only for zstd chunks

            inner = ZstdDecompressor().decompress(bytes(payload))
        elif header.compression == "lz4":
            import lz4.frame  # only for lz4 chunks (rosbags' dependency)

            inner = lz4.frame.LZ4FrameDecompressor().decompress(bytes(payload))
        else:
            raise ChunkError(f"unsupported chunk compression {header.compression!r}")
    except ChunkError:
        raise
    except Exception as exc:  # noqa: BLE001 - each decompressor has its own error types
        raise ChunkError(f"{header.compression} decompression failed: {exc}") from None
    return inner


def verify(header: ChunkHeader, inner: bytes) -> None:
    """Check the uncompressed size and (when the chunk carries one) the CRC; raises :class:`ChunkError`."""
    if len(inner) != header.uncompressed_size:
        raise ChunkError(f"chunk size mismatch: header says {header.uncompressed_size} bytes, got {len(inner)}")
    if header.crc and zlib.crc32(inner) != header.crc:
        raise ChunkError(f"chunk CRC mismatch (stored 0x{header.crc:08x}, computed 0x{zlib.crc32(inner):08x})")


def add_chunk_crcs(path: str | os.PathLike[str]) -> int:
    """Write the CRC-32 of every chunk's uncompressed records into its header, in place.

    Chunks that already carry a CRC are left as they are. Returns the number of chunks updated.

    Raises:
        ValueError: ``path`` is not a complete MCAP file (bad magic, a record running past the end).
    """
    path = Path(path)
    updated = 0
    with open(path, "r+b") as fh:
        if fh.read(len(MCAP_MAGIC)) != MCAP_MAGIC:
            raise ValueError(f"{path}: not an MCAP file")
        size = os.fstat(fh.fileno()).st_size
        pos = len(MCAP_MAGIC)
        while pos + 9 <= size:
            fh.seek(pos)
            head = fh.read(9)
            op, (length,) = head[0], _U64.unpack_from(head, 1)
            if pos + 9 + length > size:
                raise ValueError(f"{path}: record at byte {pos} runs past the end of the file")
            if op == OP_CHUNK:
                body = fh.read(length)
                header = ChunkHeader.parse(body)
                if header.crc == 0:
                    payload = body[header.payload_offset : header.payload_offset + header.payload_length]
                    crc = zlib.crc32(decompress(header, payload))
                    fh.seek(pos + 9 + CRC_OFFSET)
                    fh.write(_U32.pack(crc))
                    updated += 1
            elif op == OP_FOOTER:
                break
            pos += 9 + length
    return updated
