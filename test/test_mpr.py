"""Multiplanar reformats: markers appear where the orientation letters say, physical scale, oblique planes."""
import numpy as np
import pytest

from ixgs_ros.core.geometry import rotation_x, rotation_z
from ixgs_ros.outputs.mpr import (Window, compute_mpr, direction_letters, edge_letters, oblique_plane, resample_plane,
                               sample_world, standard_plane, write_mpr)
from ixgs_ros.core.volume import Grid

GRIDS = {
    "ras_aniso": ([0.8, 1.0, 1.6], np.eye(3)),
    "lps_like": ([-0.8, -1.0, 1.6], np.eye(3)),  # DICOM-style axes: i toward patient left, j posterior
    "rotated_mirrored": ([0.9, -1.2, -1.1], rotation_z(0.3) @ rotation_x(0.2)),
}

# Patient left, anterior, superior in RAS+ world: -x, +y, +z.
LAS_OFFSET = np.array([-15.0, 12.0, 10.0])


def make_grid(diag, rot, shape=(64, 60, 50)):
    A = np.eye(4)
    A[:3, :3] = rot @ np.diag(diag)
    A[:3, 3] = [5.0, -7.0, 9.0]
    return Grid(shape, A)


def marker_volume(grid, point, radius=2.5):
    d = np.linalg.norm(grid.world_coords() - point, axis=-1)
    return np.where(d <= radius, 0.05, 0.0).astype(np.float32)


def bright_centroid(img):
    img = np.nan_to_num(img)
    rr, cc = np.nonzero(img > 0.5 * img.max())
    return rr.mean(), cc.mean()


def test_direction_letters():
    assert direction_letters([1, 0, 0]) == "R" and direction_letters([-1, 0, 0]) == "L"
    assert direction_letters([0, 1, 0]) == "A" and direction_letters([0, -1, 0]) == "P"
    assert direction_letters([0, 0, 1]) == "S" and direction_letters([0, 0, -1]) == "I"
    assert direction_letters([0.1, 0.8, 0.6]) == "AS"
    assert direction_letters([-0.05, -0.3, 0.95]) == "SP"
    assert edge_letters([-1, 0, 0], [0, -1, 0]) == {"left": "R", "right": "L", "top": "A", "bottom": "P"}


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_marker_appears_where_the_letters_say(name):
    g = make_grid(*GRIDS[name])
    marker = g.center + LAS_OFFSET  # patient left-anterior-superior of the centre
    vol = marker_volume(g, marker)
    slices = compute_mpr(vol, g, marker, obliques=[(0.15, 0.1, 1.0)])
    # expected (vertical edge, horizontal edge) the marker is closest to, radiological convention
    expected = {"axial": ("top", "right"), "coronal": ("top", "right"), "sagittal": ("top", "left"),
                "oblique_0": ("top", "right")}
    for plane_name, (img, plane) in slices.items():
        H, W = img.shape
        r, c = bright_centroid(img)
        # the marker sits in the plane, the image shows it where the plane mapping puts it
        pr, pc, dist = plane.world_to_pixel(marker)
        assert abs(dist) < 1e-9
        assert abs(r - pr) < 1.0 and abs(c - pc) < 1.0, (plane_name, (r, c), (pr, pc))
        # ...which is the quadrant the orientation letters name as left/anterior/superior
        vert = "top" if r < H / 2 else "bottom"
        horiz = "left" if c < W / 2 else "right"
        assert (vert, horiz) == expected[plane_name], (plane_name, vert, horiz)
        letters = plane.edge_letters()
        if plane_name == "axial":
            assert letters == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
        if plane_name == "coronal":
            assert letters == {"left": "R", "right": "L", "top": "S", "bottom": "I"}
        if plane_name == "sagittal":
            assert letters == {"left": "A", "right": "P", "top": "S", "bottom": "I"}
        # whatever the plane, the letters at the marker's edges name its true direction from the centre
        toward = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
        sign = {"R": 1, "L": -1, "A": 1, "P": -1, "S": 1, "I": -1}
        for edge in (vert, horiz):
            main = letters[edge][0]
            assert sign[main] * LAS_OFFSET[toward[main]] > 0, (plane_name, edge, letters[edge])


def test_neurological_convention_flips_left_right():
    g = make_grid(*GRIDS["ras_aniso"])
    radio = standard_plane("axial", g)
    neuro = standard_plane("axial", g, convention="neurological")
    assert radio.edge_letters()["left"] == "R" and neuro.edge_letters()["left"] == "L"


def test_pixels_have_physical_size():
    g = make_grid(*GRIDS["rotated_mirrored"])
    a, b = g.center + [-10.0, 0, 0], g.center + [12.0, 0, 0]  # 22 mm apart along L-R
    vol = np.maximum(marker_volume(g, a, 2.0), marker_volume(g, b, 2.0))
    plane = standard_plane("coronal", g, g.center, pixel_mm=0.5)
    img = np.nan_to_num(resample_plane(vol, g, plane))
    cols = np.nonzero(img.max(0) > 0.025)[0]
    left, right = cols[cols < cols.mean()].mean(), cols[cols > cols.mean()].mean()
    assert (right - left) * plane.pixel_mm == pytest.approx(22.0, abs=0.5)
    assert plane.pixel_mm == 0.5


def test_trilinear_sampling_is_exact_for_linear_fields():
    g = make_grid(*GRIDS["rotated_mirrored"])
    w = g.world_coords()
    field = (0.3 * w[..., 0] - 0.2 * w[..., 1] + 0.1 * w[..., 2]).astype(np.float64)
    rng = np.random.default_rng(0)
    pts = g.center + rng.uniform(-15, 15, size=(500, 3))
    vals = sample_world(field, g, pts)
    np.testing.assert_allclose(vals, pts @ [0.3, -0.2, 0.1], atol=1e-3)
    outside = sample_world(field, g, np.array([[1e4, 0, 0]]))
    assert np.isnan(outside[0])


def test_oblique_plane_is_orthonormal_and_readable():
    g = make_grid(*GRIDS["ras_aniso"])
    p = g.center + [1.0, 2.0, 3.0]
    pl = oblique_plane(g, p, [0.0, -0.34, 0.94])  # axial tilted about the L-R axis
    assert abs(pl.right @ pl.down) < 1e-12
    assert np.linalg.norm(pl.right) == pytest.approx(1.0) and np.linalg.norm(pl.down) == pytest.approx(1.0)
    n = np.array([0.0, -0.34, 0.94]) / np.linalg.norm([0.0, -0.34, 0.94])
    assert abs(abs(pl.normal @ n) - 1.0) < 1e-9
    assert abs(pl.world_to_pixel(p)[2]) < 1e-9
    letters = pl.edge_letters()
    assert letters["left"] == "R" and letters["right"] == "L"
    assert letters["top"][0] == "A" and letters["bottom"][0] == "P"
    # the normal's sign does not change the display; "up" overrides the top direction
    flipped = oblique_plane(g, p, -n)
    np.testing.assert_allclose(flipped.right, pl.right, atol=1e-12)
    up = oblique_plane(g, p, [1.0, 0.0, 0.0], up=[0.0, 1.0, 0.0])
    assert up.edge_letters()["top"] == "A"
    with pytest.raises(ValueError):
        oblique_plane(g, p, [0.0, 0.0, 0.0])


def test_window():
    lo, hi = Window(400, 1800, "hu").mu_range()
    assert lo == pytest.approx(0.0195 * (1 - 0.5)) and hi == pytest.approx(0.0195 * (1 + 1.3))
    assert Window(0.02, 0.01, "mu").mu_range() == pytest.approx((0.015, 0.025))
    with pytest.raises(ValueError):
        Window(0, 1, "kelvin").mu_range()


def test_unknown_plane():
    with pytest.raises(ValueError):
        standard_plane("transverse", make_grid(*GRIDS["ras_aniso"]))


def test_write_mpr_pngs(tmp_path):
    from matplotlib.image import imread

    g = make_grid(*GRIDS["lps_like"], shape=(40, 36, 30))
    marker = g.center + LAS_OFFSET / 2
    paths = write_mpr(marker_volume(g, marker), g, tmp_path, marker, obliques=[("tilted", (0, 0.3, 1.0))])
    assert sorted(paths) == ["axial", "coronal", "sagittal", "tilted"]
    for p in paths.values():
        img = imread(str(p))
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200


def test_montage_label_leaves_the_bottom_letter_visible():
    """The row/plane label of a montage cell (bottom left) must neither cover nor run into the bottom
    orientation letter (the demo's "ground truth (CT) coronal" once hid the "I")."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ixgs_ros.outputs.mpr import annotate, montage_label

    fig = Figure(figsize=(3.2, 3.2), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(np.zeros((128, 128)))
    ax.set_axis_off()
    letters = annotate(ax, (0, 1, 0), (0, 0, -1), 1.0, (128, 128), info=montage_label("ground truth (CT)", "coronal"))
    canvas.draw()
    r = canvas.get_renderer()
    texts = {t.get_text(): t for t in ax.texts}
    bottom, info = texts[letters["bottom"]], texts["ground truth (CT)\ncoronal"]
    assert not bottom.get_window_extent(r).overlaps(info.get_window_extent(r))
    assert bottom.get_zorder() > info.get_zorder()
    assert montage_label("", "axial") == "axial"
