"""lunakit.io.ct.Geometry: index <-> mm conversion against SimpleITK and hand-computed cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from lunakit.errors import LunakitError
from lunakit.io.geometry import Geometry, GeometryError


def random_oblique(rng: np.random.Generator) -> Geometry:
    """A random rotation, times random axis flips, with random spacing and origin."""
    rotation = Rotation.random(random_state=int(rng.integers(2**31))).as_matrix()
    flips = np.diag(rng.choice([-1.0, 1.0], size=3))
    return Geometry(
        origin_xyz=rng.uniform(-400, 400, size=3),
        spacing_xyz=rng.uniform(0.3, 5.0, size=3),
        direction=rotation @ flips,
    )


def sitk_image(geometry: Geometry) -> sitk.Image:
    return geometry.apply_to_sitk(sitk.Image([4, 4, 4], sitk.sitkInt16))


def test_round_trip_random_oblique() -> None:
    rng = np.random.default_rng(20240601)
    worst = 0.0
    for _ in range(50):
        g = random_oblique(rng)
        points_irc = rng.uniform(-50, 600, size=(1000, 3))
        points_xyz = g.irc_to_xyz(points_irc)
        assert points_xyz.shape == (1000, 3) and points_xyz.dtype == np.float64
        back_irc = g.xyz_to_irc(points_xyz)
        worst_irc_mm = np.max(np.abs(back_irc - points_irc) * g.spacing_xyz[::-1])
        # And the other way round, starting from patient coordinates.
        start_xyz = rng.uniform(-500, 500, size=(1000, 3))
        worst_xyz = np.max(np.abs(g.irc_to_xyz(g.xyz_to_irc(start_xyz)) - start_xyz))
        worst = max(worst, worst_irc_mm, worst_xyz)
    assert worst < 1e-9


def test_irc_to_xyz_matches_sitk() -> None:
    """SimpleITK's TransformContinuousIndexToPhysicalPoint is the independent reference
    (its index order is (c, r, i))."""
    rng = np.random.default_rng(7)
    for _ in range(20):
        g = random_oblique(rng)
        image = sitk_image(g)
        # The image carries exactly our numbers.
        np.testing.assert_array_equal(Geometry.from_sitk(image).direction, g.direction)
        for point_irc in rng.uniform(-10, 300, size=(25, 3)):
            reference_xyz = image.TransformContinuousIndexToPhysicalPoint(tuple(point_irc[::-1].tolist()))
            np.testing.assert_allclose(g.irc_to_xyz(point_irc), reference_xyz, rtol=0, atol=1e-9)
            reference_cri = image.TransformPhysicalPointToContinuousIndex(tuple(g.irc_to_xyz(point_irc).tolist()))
            np.testing.assert_allclose(g.xyz_to_irc(g.irc_to_xyz(point_irc)), reference_cri[::-1], rtol=0, atol=1e-9)


def test_hand_computed_example() -> None:
    """The worked example of docs/geometry.md."""
    g = Geometry(
        origin_xyz=np.array([-100.0, 50.0, 20.0]),
        spacing_xyz=np.array([0.5, 0.75, 2.0]),
        # column 0 (index axis c) points to -y, column 1 (r) to +x, column 2 (i) to -z
        direction=np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]),
    )
    point_irc = np.array([3.0, 10.0, 4.0])  # i=3, r=10, c=4
    # cri * spacing = (2.0, 7.5, 6.0); direction @ that = (7.5, -2.0, -6.0)
    np.testing.assert_array_equal(g.irc_to_xyz(point_irc), [-92.5, 48.0, 14.0])
    np.testing.assert_array_equal(g.xyz_to_irc([-92.5, 48.0, 14.0]), point_irc)


def test_identity_axis_order() -> None:
    g = Geometry.identity((0.5, 0.7, 3.0))
    np.testing.assert_array_equal(g.irc_to_xyz([1.0, 0.0, 0.0]), [0.0, 0.0, 3.0])  # slice -> z
    np.testing.assert_array_equal(g.irc_to_xyz([0.0, 1.0, 0.0]), [0.0, 0.7, 0.0])  # row -> y
    np.testing.assert_array_equal(g.irc_to_xyz([0.0, 0.0, 1.0]), [0.5, 0.0, 0.0])  # column -> x


def test_from_sitk_direction_is_row_major() -> None:
    image = sitk.Image([2, 2, 2], sitk.sitkInt16)
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))  # row-major flat 9
    g = Geometry.from_sitk(image)
    np.testing.assert_array_equal(g.direction, [[0, 1, 0], [-1, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(g.direction[:, 0], [0, -1, 0])  # column 0 = direction of c
    np.testing.assert_array_equal(g.irc_to_xyz([0, 0, 1]), image.TransformIndexToPhysicalPoint((1, 0, 0)))


def test_single_point_and_array_shapes() -> None:
    g = random_oblique(np.random.default_rng(1))
    one = g.irc_to_xyz([1, 2, 3])
    assert one.shape == (3,) and one.dtype == np.float64
    many = g.irc_to_xyz([[1, 2, 3], [4, 5, 6]])
    assert many.shape == (2, 3)
    np.testing.assert_array_equal(many[0], one)
    assert g.xyz_to_irc(one).shape == (3,)
    assert g.xyz_to_irc(np.zeros((0, 3))).shape == (0, 3)
    assert g.round_irc([0.5, 1.5, 2.5]).shape == (3,)
    assert g.round_irc(np.zeros((4, 3))).shape == (4, 3)


@pytest.mark.parametrize("bad", [[1, 2], [1, 2, 3, 4], [[1, 2, 3, 4]], np.zeros((2, 3, 1)), np.zeros((3, 2)), 5.0])
def test_bad_shapes_raise(bad) -> None:
    g = Geometry.identity()
    for method in (g.irc_to_xyz, g.xyz_to_irc, g.round_irc):
        with pytest.raises(GeometryError, match="shape"):
            method(bad)


def test_round_irc_half_to_even() -> None:
    got = Geometry.round_irc([[0.5, 1.5, 2.5], [-0.5, -1.5, 3.5], [0.49999, 0.50001, -2.5]])
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, [[0, 2, 2], [0, -2, 4], [0, 1, -2]])
    with pytest.raises(GeometryError, match="finite"):
        Geometry.round_irc([np.nan, 0, 0])


def test_validation() -> None:
    with pytest.raises(GeometryError, match="direction matrix is singular"):
        Geometry(np.zeros(3), np.ones(3), np.array([[1.0, 0, 0], [0, 1.0, 0], [1.0, 1.0, 0]]))
    with pytest.raises(LunakitError, match="spacing_xyz must be > 0"):
        Geometry(np.zeros(3), np.array([1.0, 0.0, 1.0]), np.eye(3))
    with pytest.raises(LunakitError, match="spacing_xyz must be > 0"):
        Geometry(np.zeros(3), np.array([1.0, -1.0, 1.0]), np.eye(3))
    with pytest.raises(LunakitError, match="finite"):
        Geometry(np.array([0.0, np.nan, 0.0]), np.ones(3), np.eye(3))
    with pytest.raises(LunakitError, match="finite"):
        Geometry(np.zeros(3), np.ones(3), np.full((3, 3), np.inf))
    with pytest.raises(LunakitError, match="3 values"):
        Geometry(np.zeros(2), np.ones(3), np.eye(3))
    with pytest.raises(LunakitError, match="3x3"):
        Geometry(np.zeros(3), np.ones(3), np.eye(2))
    # Validation errors are one line.
    with pytest.raises(GeometryError) as info:
        Geometry(np.zeros(3), np.ones(3), np.zeros((3, 3)))
    assert "\n" not in str(info.value)


def test_frozen_and_read_only() -> None:
    g = Geometry.identity()
    with pytest.raises(AttributeError):
        g.origin_xyz = np.ones(3)  # type: ignore[misc]
    with pytest.raises(ValueError):
        g.origin_xyz[0] = 5.0
    # Arrays passed in are copied: changing the caller's array does not move the geometry.
    origin = np.zeros(3)
    g2 = Geometry(origin, np.ones(3), np.eye(3))
    origin[0] = 9.0
    assert g2.origin_xyz[0] == 0.0


def test_dict_round_trip_and_equality() -> None:
    g = random_oblique(np.random.default_rng(3))
    d = g.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert len(d["direction"]) == 3 and all(len(row) == 3 for row in d["direction"])
    back = Geometry.from_dict(json.loads(json.dumps(d)))
    assert back == g and hash(back) == hash(g)
    assert back != Geometry.identity()
    flat = dict(d, direction=np.asarray(d["direction"]).reshape(-1).tolist())
    assert Geometry.from_dict(flat) == g
    with pytest.raises(GeometryError, match="spacing_xyz"):
        Geometry.from_dict({"origin_xyz": [0, 0, 0], "direction": d["direction"]})


def test_sitk_round_trip() -> None:
    g = random_oblique(np.random.default_rng(11))
    image = sitk_image(g)
    assert Geometry.from_sitk(image) == g
    with pytest.raises(GeometryError, match="3D"):
        Geometry.from_sitk(sitk.Image([2, 2], sitk.sitkInt16))
