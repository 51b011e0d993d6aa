"""PLY point cloud files: write ASCII ones, read ASCII and binary ones, and reject malformed ones with one error.

Any bytes handed to ``read_ply`` either give an (N, 3) float32 array or raise ``ShapeFileError`` naming
the file, the problem and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_SCALAR_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
#: Byte order of each PLY format (None: text).
_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}
_END_OF_HEADER = re.compile(rb"(?m)^end_header[ \t\r]*(?:\n|\Z)")
_COORDINATES = ("x", "y", "z")
#: Longest element count accepted (Python refuses to parse integers of thousands of digits).
_MAX_COUNT_DIGITS = 18


class ShapeFileError(ValueError):
    """A point cloud file that cannot be read; the message names the file, the problem and the fix."""


@dataclass
class _Property:
    name: str
    scalar_type: str | None  # numpy type code; None for a list property


@dataclass
class _Element:
    name: str
    count: int
    properties: list[_Property] = field(default_factory=list)


def _fail(source: str, problem: str, fix: str) -> ShapeFileError:
    return ShapeFileError(f"{source}: {problem}; {fix}")


def _parse_header(header: str, source: str) -> tuple[str, list[_Element]]:
    """The format name and the declared elements of a header's lines (after ``ply``, before ``end_header``)."""
    file_format = None
    elements: list[_Element] = []
    for number, line in enumerate(header.splitlines()[1:], start=2):
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        keyword = words[0]
        if keyword == "format":
            if len(words) != 3 or words[1] not in _FORMATS:
                raise _fail(source, f"unsupported format line {line.strip()!r}", f"save as one of {list(_FORMATS)}")
            file_format = words[1]
        elif keyword == "element":
            if len(words) != 3 or not words[2].isdigit() or len(words[2]) > _MAX_COUNT_DIGITS:
                raise _fail(source, f"bad element line {number}: {line.strip()!r}", "write 'element <name> <count>'")
            elements.append(_Element(words[1], int(words[2])))
        elif keyword == "property":
            if not elements:
                raise _fail(source, f"property on line {number} comes before any element", "declare the element first")
            if len(words) == 5 and words[1] == "list" and words[2] in _SCALAR_TYPES and words[3] in _SCALAR_TYPES:
                elements[-1].properties.append(_Property(words[4], None))
            elif len(words) == 3 and words[1] in _SCALAR_TYPES:
                elements[-1].properties.append(_Property(words[2], _SCALAR_TYPES[words[1]]))
            else:
                raise _fail(
                    source,
                    f"bad property line {number}: {line.strip()!r}",
                    f"write 'property <type> <name>' with a type among {sorted(_SCALAR_TYPES)}",
                )
        else:
            raise _fail(source, f"unknown header keyword {keyword!r} on line {number}", "fix or remove that line")
    if file_format is None:
        raise _fail(source, "the header has no format line", "add 'format ascii 1.0' after 'ply'")
    return file_format, elements


def _vertex_columns(elements: list[_Element], source: str) -> tuple[int, list[int]]:
    """Index of the vertex element and the positions of x, y, z among its properties."""
    names = [element.name for element in elements]
    if "vertex" not in names:
        raise _fail(source, "no 'element vertex' in the header", "declare 'element vertex <N>' with x, y, z properties")
    index = names.index("vertex")
    properties = elements[index].properties
    if any(prop.scalar_type is None for prop in properties):
        raise _fail(source, "the vertex element has list properties, which are not supported", "drop them")
    property_names = [prop.name for prop in properties]
    missing = [axis for axis in _COORDINATES if axis not in property_names]
    if missing:
        raise _fail(source, f"the vertex element lacks properties {missing}", "declare 'property float x' (and y, z)")
    return index, [property_names.index(axis) for axis in _COORDINATES]


def _read_ascii(body: bytes, elements: list[_Element], vertex: int, columns: list[int], source: str) -> np.ndarray:
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError as error:
        raise _fail(source, f"non-ASCII byte in an ascii PLY body ({error})", "save the file as ascii text") from None
    lines = [line for line in text.splitlines() if line.strip()]
    first = sum(element.count for element in elements[:vertex])
    count = elements[vertex].count
    rows = [line.split() for line in lines[first : first + count]]
    if len(rows) < count:
        problem = f"the header declares {count} vertices but only {len(rows)} vertex lines follow"
        raise _fail(source, problem, "fix the vertex count or restore the missing lines")
    expected = len(elements[vertex].properties)
    for number, row in enumerate(rows, start=1):
        if len(row) != expected:
            raise _fail(source, f"vertex {number} has {len(row)} values, expected {expected}", "one value per property")
    try:
        values = np.array(rows, dtype=np.float64).reshape(count, expected)
    except (ValueError, OverflowError):
        raise _fail(source, "a vertex line holds a non-numeric value", "write plain decimal numbers") from None
    return values[:, columns]


def _read_binary(
    body: bytes, elements: list[_Element], vertex: int, columns: list[int], byte_order: str, source: str
) -> np.ndarray:
    offset = 0
    for element in elements[:vertex]:
        if any(prop.scalar_type is None for prop in element.properties):
            problem = f"element {element.name!r} comes before the vertices and has list properties"
            raise _fail(source, problem, "write the vertex element first")
        offset += element.count * sum(np.dtype(prop.scalar_type).itemsize for prop in element.properties)
    record = np.dtype([(f"p{i}", byte_order + prop.scalar_type) for i, prop in enumerate(elements[vertex].properties)])
    count = elements[vertex].count
    needed = offset + count * record.itemsize
    if len(body) < needed:
        raise _fail(source, f"binary data ends after {len(body)} bytes, {needed} needed", "the file is truncated")
    records = np.frombuffer(body, dtype=record, count=count, offset=offset)
    return np.stack([records[f"p{column}"].astype(np.float64) for column in columns], axis=1)


def _parse_ply(data: bytes, source: str) -> np.ndarray:
    if data.split(b"\n", 1)[0].rstrip(b"\r") != b"ply":
        raise _fail(source, "missing the 'ply' magic first line", "is this a PLY file? It must start with 'ply'")
    end = _END_OF_HEADER.search(data)
    if end is None:
        raise _fail(source, "no 'end_header' line", "end the header with 'end_header'")
    try:
        header = data[: end.start()].decode("ascii")
    except UnicodeDecodeError:
        raise _fail(source, "the header is not ASCII text", "write the header in ASCII") from None
    file_format, elements = _parse_header(header, source)
    vertex, columns = _vertex_columns(elements, source)
    body = data[end.end() :]
    byte_order = _FORMATS[file_format]
    if byte_order is None:
        values = _read_ascii(body, elements, vertex, columns, source)
    else:
        values = _read_binary(body, elements, vertex, columns, byte_order, source)
    with np.errstate(over="ignore"):
        points = values.astype(np.float32)
    if not np.isfinite(points).all():
        raise _fail(source, "coordinates include NaN, infinity or values beyond float32 range", "remove those points")
    return points


def read_ply(path: str | Path) -> np.ndarray:
    """The (N, 3) float32 x, y, z of a PLY file's vertices (ascii or binary); other properties and elements ignored."""
    path = Path(path)
    return _parse_ply(path.read_bytes(), str(path))


def _as_cloud(points: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        cloud = np.asarray(points, dtype=np.float32)
    if cloud.ndim != 2 or cloud.shape[1] != 3:
        raise ValueError(f"expected points of shape (N, 3), got {cloud.shape}")
    if not np.isfinite(cloud).all():
        raise ValueError("points must be finite float32 values to be written to PLY")
    return cloud


def write_ply(points: np.ndarray, path: str | Path) -> Path:
    """Write an (N, 3) cloud as ASCII PLY with float x, y, z (9 significant digits: float32 round-trips exactly)."""
    cloud = _as_cloud(points)
    path = Path(path)
    header = f"ply\nformat ascii 1.0\nelement vertex {len(cloud)}\n"
    header += "".join(f"property float {axis}\n" for axis in _COORDINATES) + "end_header\n"
    with path.open("w", encoding="ascii", newline="\n") as file:
        file.write(header)
        np.savetxt(file, cloud, fmt="%.9g")
    return path


def write_ply_files(
    clouds: Sequence[np.ndarray] | np.ndarray, folder: str | Path, prefix: str = "sample"
) -> list[Path]:
    """One ASCII PLY file per cloud in ``folder`` (created if needed), named ``<prefix>_000.ply`` and on."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(len(clouds) - 1)))
    return [write_ply(cloud, folder / f"{prefix}_{index:0{width}d}.ply") for index, cloud in enumerate(clouds)]
