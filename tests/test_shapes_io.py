"""PLY files: round trips, binary files, and one clear error type for every malformed input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from rgdm.domains.shapes.io import ShapeFileError, read_ply, write_ply, write_ply_files

CLOUD = np.array([[0.0, 1.5, -2.25], [1e-3, -7.0, 3.0], [123.456, 0.1, -0.0]], dtype=np.float32)


def binary_ply(points, vertex_type="float", extra_header="", trailing=b""):
    """A binary little-endian PLY with an extra uchar property after x, y, z, as scanners write them."""
    numpy_type = {"float": "<f4", "double": "<f8"}[vertex_type]
    record = np.dtype([("x", numpy_type), ("y", numpy_type), ("z", numpy_type), ("intensity", "u1")])
    rows = np.zeros(len(points), dtype=record)
    rows["x"], rows["y"], rows["z"] = points.T
    header = (
        f"ply\nformat binary_little_endian 1.0\ncomment made by a test\nelement vertex {len(points)}\n"
        f"property {vertex_type} x\nproperty {vertex_type} y\nproperty {vertex_type} z\nproperty uchar intensity\n"
        f"{extra_header}end_header\n"
    )
    return header.encode() + rows.tobytes() + trailing


def test_ascii_round_trip_is_exact(tmp_path):
    path = write_ply(CLOUD, tmp_path / "cloud.ply")
    assert path.read_text().startswith("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\n")
    restored = read_ply(path)
    assert restored.dtype == np.float32
    np.testing.assert_array_equal(restored, CLOUD)


@pytest.mark.parametrize("vertex_type", ["float", "double"])
def test_binary_file_is_read(tmp_path, vertex_type):
    faces = b"\x03" + np.array([0, 1, 2], dtype="<i4").tobytes()
    path = tmp_path / "binary.ply"
    path.write_bytes(binary_ply(CLOUD, vertex_type, "element face 1\nproperty list uchar int vertex_indices\n", faces))
    np.testing.assert_array_equal(read_ply(path), CLOUD)


def test_ascii_file_with_extra_properties_and_faces(tmp_path):
    path = tmp_path / "mesh.ply"
    path.write_text(
        "ply\nformat ascii 1.0\nelement vertex 3\nproperty double x\nproperty double y\nproperty double z\n"
        "property uchar red\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n"
        "0 0 0 255\n1 0 0 255\n0 1 0 255\n3 0 1 2\n"
    )
    np.testing.assert_array_equal(read_ply(path), [[0, 0, 0], [1, 0, 0], [0, 1, 0]])


def test_vertices_after_another_element_are_found(tmp_path):
    path = tmp_path / "camera_first.ply"
    path.write_text(
        "ply\nformat ascii 1.0\nelement camera 1\nproperty float view\nelement vertex 2\n"
        "property float z\nproperty float y\nproperty float x\nend_header\n9\n3 2 1\n6 5 4\n"
    )
    np.testing.assert_array_equal(read_ply(path), [[1, 2, 3], [4, 5, 6]])


def test_write_ply_files_names_files_in_order(tmp_path):
    clouds = np.stack([CLOUD, CLOUD + 1, CLOUD + 2])
    paths = write_ply_files(clouds, tmp_path / "out", prefix="shape")
    assert [path.name for path in paths] == ["shape_000.ply", "shape_001.ply", "shape_002.ply"]
    np.testing.assert_array_equal(read_ply(paths[2]), clouds[2])


def test_write_ply_rejects_bad_points(tmp_path):
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        write_ply(np.zeros((4, 2)), tmp_path / "bad.ply")
    with pytest.raises(ValueError, match="finite"):
        write_ply(np.array([[0.0, np.nan, 0.0]]), tmp_path / "bad.ply")


HEADER = "ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
MALFORMED = {
    "no-magic": (b"PLY\nformat ascii 1.0\n", "'ply' magic"),
    "no-end-header": (HEADER.replace("end_header\n", "").encode(), "end_header"),
    "no-vertex-element": (HEADER.replace("element vertex", "element point").encode() + b"0 0 0\n1 1 1\n", "vertex"),
    "no-z": (HEADER.replace("property float z\n", "").encode() + b"0 0\n1 1\n", r"\['z'\]"),
    "too-few-lines": (HEADER.encode() + b"0 0 0\n", "declares 2 vertices but only 1"),
    "too-few-values": (HEADER.encode() + b"0 0 0\n1 1\n", "vertex 2 has 2 values"),
    "non-numeric": (HEADER.encode() + b"0 0 0\n1 one 1\n", "non-numeric"),
    "nan": (HEADER.encode() + b"0 0 0\n1 nan 1\n", "NaN"),
    "inf": (HEADER.encode() + b"0 0 0\n1 -inf 1\n", "infinity"),
    "beyond-float32": (HEADER.encode() + b"0 0 0\n1 1e60 1\n", "float32"),
    "unsupported-format": (HEADER.replace("ascii", "binary_middle_endian").encode(), "unsupported format"),
    "no-format": (HEADER.replace("format ascii 1.0\n", "").encode(), "no format line"),
    "bad-property-type": (HEADER.replace("float y", "quad y").encode(), "bad property line"),
    "bad-count": (HEADER.replace("vertex 2", "vertex two").encode(), "bad element line"),
    "truncated-binary": (binary_ply(CLOUD)[:-5], "ends after"),
    "non-ascii-body": (HEADER.encode() + "0 0 0\n1 1 é\n".encode(), "non-ASCII"),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_files_raise_shape_file_error(tmp_path, name):
    data, message = MALFORMED[name]
    path = tmp_path / f"{name}.ply"
    path.write_bytes(data)
    with pytest.raises(ShapeFileError, match=message) as raised:
        read_ply(path)
    assert str(path) in str(raised.value)


PLY_LINES = st.sampled_from(
    [
        "format ascii 1.0", "format binary_little_endian 1.0", "format binary_big_endian 1.0", "element vertex 2",
        "element vertex 0", "element face 1", "property float x", "property double y", "property float z",
        "property list uchar int vertex_indices", "comment hi", "end_header", "0 0 0", "1 2 3", "nan 1 1", "x",
    ]
)  # fmt: skip
VALUES = st.sampled_from(["0", "1.5", "-2e3", "nan", "-inf", "1e60", "x", "\t"])
VALUE_LINES = st.lists(st.lists(VALUES, max_size=5).map(" ".join), max_size=5).map(lambda lines: "\n".join(lines))
BODIES = st.one_of(st.binary(max_size=80), VALUE_LINES.map(str.encode))
#: Headers assembled from random PLY lines: mostly wrong, in every way.
LINE_SOUP_FILES = st.builds(
    lambda lines, body: "\n".join(["ply", *lines, "end_header", ""]).encode() + body,
    st.lists(PLY_LINES, max_size=10),
    BODIES,
)
#: Headers with one vertex element: mostly right, so that the bodies get parsed.
VERTEX_FILES = st.builds(
    lambda file_format, count, properties, body: "\n".join(
        ["ply", f"format {file_format} 1.0", f"element vertex {count}", *properties, "end_header", ""]
    ).encode()
    + body,
    st.sampled_from(["ascii", "binary_little_endian", "binary_big_endian"]),
    st.integers(0, 3),
    st.lists(
        st.sampled_from(["property float x", "property double y", "property float z", "property uchar red"]),
        max_size=4,
        unique=True,
    ),
    BODIES,
)
FINITE_CLOUDS = arrays(
    np.float32,
    st.tuples(st.integers(0, 20), st.just(3)),
    elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=100, deadline=None)
@given(data=st.one_of(st.binary(max_size=300), LINE_SOUP_FILES, VERTEX_FILES))
def test_any_bytes_parse_or_raise_shape_file_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "input.ply"
    path.write_bytes(data)
    try:
        points = read_ply(path)
    except ShapeFileError:
        return
    assert points.dtype == np.float32 and points.ndim == 2 and points.shape[1] == 3 and np.isfinite(points).all()


@settings(max_examples=100, deadline=None)
@given(cloud=FINITE_CLOUDS)
def test_finite_clouds_round_trip(tmp_path_factory, cloud):
    path = write_ply(cloud, tmp_path_factory.mktemp("round") / "cloud.ply")
    np.testing.assert_array_equal(read_ply(path), cloud)
