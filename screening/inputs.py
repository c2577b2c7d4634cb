"""Inputs of a screening run: extxyz files, ASE databases and folders of them, cut into shards.

A *shard* is a run of consecutive structures of one source file (``shard_size`` of them, fewer
at the end of a file); it is the unit of work, of retries and of resume. Planning reads each
extxyz file once without parsing it (atom-count lines only) and records the byte offset where
each shard starts, so a worker reads its shard alone; an ASE database is cut by row order.

Every structure keeps its ``index`` in its source: the frame number (0-based) in an extxyz
file, the row id in an ASE database. A structure that cannot be read comes back as a
:class:`StructureRecord` with ``error`` set, so one bad frame fails alone.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path

import ase.io
from ase import Atoms

SOURCE_KINDS = {".xyz": "extxyz", ".extxyz": "extxyz", ".db": "ase-db"}
"""File suffix -> how it is read (ASE's extxyz reader, or an ASE database: SQLite ``.db``)."""


class InputError(ValueError):
    """An input that cannot be planned: missing, of an unknown kind, or not valid extxyz."""


@dataclass
class StructureRecord:
    """One structure on its way through a run.

    ``atoms`` is None where the structure could not be read; ``error`` says why it failed
    (reading, checks or the model); ``results`` holds the calculator's results (ASE units: eV,
    eV/Å, eV/Å^3) once it was evaluated.
    """

    index: int
    atoms: Atoms | None
    error: str | None = None
    results: dict | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Source:
    """An input file: ``path`` as shown in the outputs, how it is read, and what it looked like
    when planned (size and modification time: a changed file is not resumed)."""

    path: str
    kind: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> Source:
        stat = path.stat()
        return cls(str(path), SOURCE_KINDS[path.suffix.lower()], stat.st_size, stat.st_mtime_ns)

    def identity(self) -> dict:
        """What must not change between a run and its resumption."""
        return {"path": str(Path(self.path).resolve()), "size": self.size, "mtime_ns": self.mtime_ns}


@dataclass(frozen=True)
class Shard:
    """Structures ``start`` .. ``stop - 1`` (positions in the source, in file or row order) of
    ``source``; for extxyz, ``byte_offset`` is where the first of them starts."""

    shard_id: str
    source: str
    kind: str
    start: int
    stop: int
    byte_offset: int = 0

    @property
    def size(self) -> int:
        return self.stop - self.start

    def as_dict(self) -> dict:
        return asdict(self)


def find_sources(paths: Sequence[str | Path]) -> list[Source]:
    """The input files named by ``paths``: files as given, folders searched recursively (sorted,
    hidden files skipped) for ``.xyz``, ``.extxyz`` and ``.db`` files."""
    sources = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in SOURCE_KINDS and not p.name.startswith(".")
            )
            if not found:
                raise InputError(f"no {'/'.join(SOURCE_KINDS)} files under {path}")
            sources.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in SOURCE_KINDS:
                raise InputError(
                    f"input {path} is of an unknown kind; give extxyz files (.xyz, .extxyz), ASE databases (.db) "
                    "or folders of them"
                )
            sources.append(path)
        else:
            raise InputError(f"input {path} does not exist")
    return [Source.of(path) for path in sources]


def plan_shards(sources: Sequence[Source], shard_size: int) -> list[Shard]:
    """Cut every source into shards of ``shard_size`` structures; ids count up from ``00000``."""
    if shard_size < 1:
        raise InputError(f"shard size must be at least 1; got {shard_size}")
    shards = []
    for source in sources:
        if source.kind == "extxyz":
            ranges = _extxyz_shard_ranges(Path(source.path), shard_size)
        else:
            count = _database_count(source.path)
            ranges = [(start, min(start + shard_size, count), 0) for start in range(0, count, shard_size)]
        for start, stop, offset in ranges:
            shards.append(Shard(f"{len(shards):05d}", source.path, source.kind, start, stop, offset))
    return shards


def read_shard(shard: Shard, base: Path = Path()) -> list[StructureRecord]:
    """The structures of ``shard``, in source order; unreadable ones carry their error. A relative
    source path is taken relative to ``base`` (default: the current folder)."""
    path = base / shard.source
    if shard.kind == "extxyz":
        return _read_extxyz_shard(shard, path)
    return _read_database_shard(shard, path)


def _extxyz_frames(file: io.BufferedReader, path: Path) -> Iterator[tuple[int, bytes]]:
    """(byte offset, text) of each frame from the file's current position: a line holding the
    atom count N, a comment line, N atom lines. Blank lines between frames are skipped."""
    line_number = 0
    while True:
        offset = file.tell()
        count_line = file.readline()
        line_number += 1
        if not count_line:
            return
        if not count_line.strip():
            continue
        try:
            atom_count = int(count_line)
        except ValueError:
            raise InputError(
                f"{path}: line {line_number} (byte {offset}) should hold an atom count; "
                f"got {count_line[:60].decode(errors='replace').strip()!r}: is this an extxyz file?"
            ) from None
        lines = [count_line]
        for _ in range(atom_count + 1):
            line = file.readline()
            if not line:
                raise InputError(f"{path}: the file ends inside the frame starting at byte {offset}")
            lines.append(line)
        line_number += atom_count + 1
        yield offset, b"".join(lines)


def _extxyz_shard_ranges(path: Path, shard_size: int) -> list[tuple[int, int, int]]:
    offsets = []
    count = 0
    with path.open("rb") as file:
        for offset, _ in _extxyz_frames(file, path):
            if count % shard_size == 0:
                offsets.append(offset)
            count += 1
    return [(start, min(start + shard_size, count), offset) for start, offset in zip(range(0, count, shard_size), offsets)]


def _read_extxyz_shard(shard: Shard, path: Path) -> list[StructureRecord]:
    with path.open("rb") as file:
        file.seek(shard.byte_offset)
        frames = list(islice(_extxyz_frames(file, path), shard.size))
    if len(frames) != shard.size:
        raise InputError(f"{path} holds fewer frames than when the run was planned: was it changed?")
    records = []
    for index, (_, text) in enumerate(frames, start=shard.start):
        try:
            atoms = ase.io.read(io.StringIO(text.decode()), format="extxyz")
        except Exception as error:  # ASE raises many kinds for malformed frames: each fails alone
            records.append(StructureRecord(index, None, f"could not read frame {index}: {error}"))
            continue
        records.append(StructureRecord(index, atoms))
    return records


def _database_count(path: str) -> int:
    from ase.db import connect

    try:
        return connect(path).count()
    except Exception as error:  # sqlite3 and ASE raise several kinds for a file that is no database
        raise InputError(f"{path} is not an ASE database: {error}") from None


def _read_database_shard(shard: Shard, path: Path) -> list[StructureRecord]:
    from ase.db import connect

    records = []
    for row in connect(path).select(sort="id", offset=shard.start, limit=shard.size):
        atoms = row.toatoms()
        atoms.info.update(row.key_value_pairs)
        records.append(StructureRecord(row.id, atoms))
    if len(records) != shard.size:
        raise InputError(f"{path} holds fewer rows than when the run was planned: was it changed?")
    return records
