"""Named shape profiles for TensorRT engines: ``MIN:OPT:MAX`` of atoms, neighbors and structures.

A :class:`ShapeProfile` fixes the range of the three sizes of the neighbor-table graph
(``num_atoms`` N, ``max_neighbors`` K, ``num_structures`` B); every graph input's dimensions
follow from them (:meth:`ShapeProfile.input_shapes`). Named profiles live in
``engines/profiles.json`` (documented in ``engines/README.md``); :func:`load_profiles` reads and
checks that file, :func:`select_profiles` picks profiles by name, :func:`profile_from_ranges`
makes one from command-line ranges.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlff_export.export.graph_layouts import NEIGHBOR_TABLE
from mlff_export.json_documents import read_json_document

PROFILES_FILE = Path(__file__).resolve().parent.parent / "engines" / "profiles.json"
PROFILES_FORMAT = "mlff-export-engine-profiles"
PROFILES_VERSION = 1
SIZE_KEYS = ("atoms", "neighbors", "structures")
# Graph axis name (export.graph_layouts) -> profile size key.
AXIS_SIZE_KEYS = {"num_atoms": "atoms", "max_neighbors": "neighbors", "num_structures": "structures"}


class ProfileSpecError(ValueError):
    """A profile range or profile file that cannot be used; the message names the field and the fix."""


@dataclass(frozen=True)
class SizeRange:
    """``minimum <= optimum <= maximum``, all >= 1: one dynamic size of an optimization profile."""

    minimum: int
    optimum: int
    maximum: int

    @classmethod
    def parse(cls, text: str, what: str) -> SizeRange:
        """``"MIN:OPT:MAX"`` (e.g. ``"1:32:256"``); ``what`` names the field in errors."""
        parts = str(text).split(":")
        try:
            values = [int(part) for part in parts]
        except ValueError:
            values = []
        if len(values) != 3:
            raise ProfileSpecError(f"{what} | received {text!r} | expected MIN:OPT:MAX, three integers such as 1:32:256")
        minimum, optimum, maximum = values
        if not 1 <= minimum <= optimum <= maximum:
            raise ProfileSpecError(f"{what} | received {text!r} | expected 1 <= MIN <= OPT <= MAX")
        return cls(minimum, optimum, maximum)

    def __str__(self) -> str:
        return f"{self.minimum}:{self.optimum}:{self.maximum}"


@dataclass(frozen=True)
class ShapeProfile:
    """One optimization profile: ranges of atoms N, neighbor-table width K and structures B."""

    name: str
    atoms: SizeRange
    neighbors: SizeRange
    structures: SizeRange

    def size_range(self, key: str) -> SizeRange:
        return getattr(self, key)

    def input_shapes(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """Graph input name -> (min, opt, max) shapes, from the neighbor-table layout's axes."""
        shapes = {}
        for name, axes in NEIGHBOR_TABLE.input_axes.items():
            shapes[name] = tuple(
                tuple(
                    getattr(self.size_range(AXIS_SIZE_KEYS[axis]), bound) if isinstance(axis, str) else axis
                    for axis in axes
                )
                for bound in ("minimum", "optimum", "maximum")
            )
        return shapes

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, **{key: str(self.size_range(key)) for key in SIZE_KEYS}}

    @classmethod
    def from_dict(cls, values: dict, name: str, where: str | None = None) -> ShapeProfile:
        """From ``{"atoms", "neighbors", "structures"}`` (``"MIN:OPT:MAX"`` strings; ``name`` and
        ``description`` keys are allowed); ``where`` names the source in errors."""
        where = where or f"profile {name}"
        if not isinstance(values, dict):
            raise ProfileSpecError(f"{where} | received {type(values).__name__} | expected an object")
        missing = [key for key in SIZE_KEYS if key not in values]
        unknown = sorted(set(values) - set(SIZE_KEYS) - {"name", "description"})
        if missing or unknown:
            raise ProfileSpecError(
                f"{where} | missing {missing}, unknown {unknown} | expected keys {list(SIZE_KEYS)} (+ description)"
            )
        ranges = {key: SizeRange.parse(values[key], f"{where}.{key}") for key in SIZE_KEYS}
        return cls(name=name, **ranges)


def load_profiles(path: str | Path = PROFILES_FILE) -> dict[str, ShapeProfile]:
    """Read and check a profiles file (``engines/profiles.json`` by default): name -> profile."""
    path = Path(path)
    document = read_json_document(
        path,
        kind="profiles file",
        format_name=PROFILES_FORMAT,
        version_key="version",
        version=PROFILES_VERSION,
        error=ProfileSpecError,
    )
    entries = document.get("profiles")
    if not isinstance(entries, dict) or not entries:
        raise ProfileSpecError(f"profiles file {path} | expected a non-empty \"profiles\" object")
    return {name: ShapeProfile.from_dict(values, name, where=f"{path.name}: {name}") for name, values in entries.items()}

def select_profiles(names: list[str], path: str | Path = PROFILES_FILE) -> list[ShapeProfile]:
    """The named profiles of ``path``, in the order given (each name at most once)."""
    available = load_profiles(path)
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ProfileSpecError(f"profile(s) {unknown} not in {path} | expected one of {sorted(available)}")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ProfileSpecError(f"profile(s) {duplicates} given more than once")
    return [available[name] for name in names]


def profile_from_ranges(atoms: str, neighbors: str, structures: str, name: str = "custom") -> ShapeProfile:
    """A profile from ``MIN:OPT:MAX`` strings (the ``--atoms --pairs --structures`` options)."""
    return ShapeProfile.from_dict({"atoms": atoms, "neighbors": neighbors, "structures": structures}, name)
