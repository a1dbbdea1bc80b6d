"""gzip sizes of exported models, and the ``.gz`` files ``edgecnn export --gzip`` ships.

``gzip -9`` (zlib's default strategy) hunts for repeated strings. int8 weights hold few, and in a
pruned model its short matches across the zeros cost more bits than they save: zlib's
Huffman-only and filtered strategies code each byte by its frequency instead and compress a
50%-sparse int8 TFLite file about 10% further. All three write a standard gzip stream that
any ``gunzip`` (or Python's ``gzip``) reads, so edgecnn keeps the smallest.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from edgecnn.errors import EdgeCNNError
from edgecnn.fsutil import atomic_path, write_bytes

STRATEGIES = {"default": zlib.Z_DEFAULT_STRATEGY, "filtered": zlib.Z_FILTERED, "huffman": zlib.Z_HUFFMAN_ONLY}


def gzip_blob(blob: bytes, strategy: str = "default") -> bytes:
    """``blob`` as a gzip stream at level 9 with the given zlib strategy (no name, mtime 0)."""
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS, zlib.DEF_MEM_LEVEL, STRATEGIES[strategy])
    return c.compress(blob) + c.flush()


def smallest_gzip(blob: bytes) -> tuple[str, bytes]:
    """(strategy, gzip stream) with the fewest bytes among STRATEGIES."""
    return min(((name, gzip_blob(blob, name)) for name in STRATEGIES), key=lambda item: len(item[1]))


def sizes(blob: bytes) -> dict:
    """``gzip_bytes`` (as ``gzip -9``), ``gz_bytes`` and ``gz_strategy`` (the smallest stream)."""
    strategy, best = smallest_gzip(blob)
    return {"gzip_bytes": len(gzip_blob(blob)), "gz_bytes": len(best), "gz_strategy": strategy}


def write_gz(path: Path, strategy: str | None = None) -> Path:
    """Write ``path``.gz with ``strategy`` (default: the smallest), after checking it round-trips."""
    path = Path(path)
    blob = path.read_bytes()
    stream = gzip_blob(blob, strategy) if strategy else smallest_gzip(blob)[1]
    if gzip.decompress(stream) != blob:  # never ship a stream that does not round-trip
        raise EdgeCNNError(f"{path}: gzip round trip failed")
    out = path.with_name(path.name + ".gz")
    with atomic_path(out) as tmp:
        write_bytes(tmp, stream)
    return out
