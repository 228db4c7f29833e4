"""Rendered frames (WADO-RS /rendered, /thumbnail): windowing, formats, Accept."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, RLELossless

from sensecare.dicom.rendering import (
    Window,
    choose_rendered_media_type,
    default_window,
    render_frame,
)
from sensecare.errors import InvalidRequestError, NotAcceptableError, NotFoundError
from tests.helpers.synthetic_ct import make_ct_series


def _ct(rows: int = 32, cols: int = 48):
    return make_ct_series(n_slices=1, rows=rows, cols=cols, seed=5)[0]


def _set_hu(ds, hu: np.ndarray) -> None:
    """Replace the pixels of a synthetic CT slice (slope 1, intercept -1024)."""
    ds.set_pixel_data((hu + 1024).astype(np.int16), "MONOCHROME2", 16, generate_instance_uid=False)


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(_decode(data))


# --- Window ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("40,400", Window(40, 400, "linear")),
        ("-600, 1500, sigmoid", Window(-600, 1500, "sigmoid")),
        ("40,400,LINEAR-EXACT", Window(40, 400, "linear_exact")),
        ("40,0.5,linear_exact", Window(40, 0.5, "linear_exact")),
        ("1e2,2e3,linear", Window(100, 2000, "linear")),
    ],
)
def test_window_parse(text, expected):
    assert Window.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "40", "a,b", "40,400,cubic", "40,0", "40,-5,sigmoid", "40,400,linear,x", "40,0.5,linear", "nan,400"],
)
def test_window_parse_rejects(text):
    with pytest.raises(InvalidRequestError, match="window"):
        Window.parse(text)


def test_window_functions_follow_ps3_3_formulas():
    x = np.array([-1000.0, -60.0, 0.0, 60.0, 1000.0])
    exact = Window(0, 100, "linear_exact").apply(x)
    np.testing.assert_allclose(exact, [0, 0, 127.5, 255, 255])
    # LINEAR: ((x - (c - 0.5)) / (w - 1) + 0.5) * 255 between c-0.5 -/+ (w-1)/2
    linear = Window(0, 101, "linear").apply(np.array([-51.0, -50.0, 0.0, 49.5, 50.0]))
    np.testing.assert_allclose(linear, [0, (0.5 - 0.495) * 255, (0.5 / 100 + 0.5) * 255, 255, 255])
    sigmoid = Window(0, 100, "sigmoid").apply(x)
    assert sigmoid[2] == pytest.approx(127.5)
    assert sigmoid[0] < 1 and sigmoid[-1] > 254
    assert np.all(np.diff(sigmoid) > 0)


def test_default_window_takes_first_of_multiple_values():
    ds = _ct()
    assert list(ds.WindowCenter) == [40, -600]
    assert default_window(ds) == Window(40, 400, "linear")
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = "-600", "1500", "SIGMOID"
    assert default_window(ds) == Window(-600, 1500, "sigmoid")
    del ds.WindowCenter, ds.WindowWidth
    assert default_window(ds) is None


# --- rendering -----------------------------------------------------------------------


def test_png_and_jpeg_have_the_frame_size():
    ds = _ct(rows=32, cols=48)
    png = _decode(render_frame(ds))
    assert (png.format, png.size, png.mode) == ("PNG", (48, 32), "L")
    jpeg = _decode(render_frame(ds, media_type="image/jpeg", quality=75))
    assert (jpeg.format, jpeg.size) == ("JPEG", (48, 32))
    assert _decode(render_frame(ds, media_type="image/jpeg; q=0.9")).format == "JPEG"


def test_window_changes_output_and_maps_hu_exactly():
    ds = _ct(rows=4, cols=4)
    hu = np.array([[-1000, -160, 40, 240]] * 4)
    _set_hu(ds, hu)

    soft = _pixels(render_frame(ds, window=Window(40, 400, "linear_exact")))
    np.testing.assert_array_equal(soft[0], [0, 0, 128, 255])
    lung = _pixels(render_frame(ds, window=Window(-600, 1600, "linear_exact")))
    np.testing.assert_array_equal(lung[0], [64, 198, 230, 255])
    assert not np.array_equal(soft, lung)


def test_header_window_then_min_max_fallback():
    ds = _ct()
    assert render_frame(ds) == render_frame(ds, window=Window(40, 400))
    del ds.WindowCenter, ds.WindowWidth
    grey = _pixels(render_frame(ds))
    assert grey.min() == 0 and grey.max() == 255


def test_voi_lut_sequence_used_when_no_window():
    from pydicom.dataset import Dataset

    ds = _ct(rows=2, cols=2)
    _set_hu(ds, np.array([[-1000, 0], [1, 3]]))
    del ds.WindowCenter, ds.WindowWidth
    lut = Dataset()
    lut.LUTDescriptor = [4, 0, 12]  # 4 entries, first maps HU 0, 12-bit output
    lut.LUTData = [0, 1000, 2000, 4095]
    ds.VOILUTSequence = [lut]
    np.testing.assert_array_equal(_pixels(render_frame(ds)), [[0, 0], [62, 255]])


def test_monochrome1_is_inverted():
    ds = _ct()
    mono2 = _pixels(render_frame(ds))
    ds1 = copy.deepcopy(ds)
    ds1.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_array_equal(_pixels(render_frame(ds1)), 255 - mono2)


def test_thumbnail_fits_box_and_keeps_aspect():
    ds = _ct(rows=64, cols=128)
    assert _decode(render_frame(ds, size=(32, 32), media_type="image/jpeg")).size == (32, 16)
    assert _decode(render_frame(ds, size=(128, 128))).size == (128, 64)  # never enlarged
    with pytest.raises(InvalidRequestError):
        render_frame(ds, size=(0, 10))


def test_frame_out_of_range_and_missing_pixels():
    ds = _ct()
    with pytest.raises(NotFoundError, match="frame 2"):
        render_frame(ds, 1)
    with pytest.raises(NotFoundError):
        render_frame(ds, -1)
    del ds.PixelData
    with pytest.raises(NotFoundError, match="instance has no pixel data"):
        render_frame(ds)


def test_bad_media_type_and_quality():
    ds = _ct()
    with pytest.raises(NotAcceptableError):
        render_frame(ds, media_type="image/gif")
    with pytest.raises(InvalidRequestError):
        render_frame(ds, media_type="image/jpeg", quality=0)


def test_multiframe_picks_the_frame():
    ds = _ct(rows=8, cols=8)
    frames = np.stack([np.full((8, 8), hu) for hu in (-1000, 0, 1000)]) + 1024
    ds.set_pixel_data(frames.astype(np.int16), "MONOCHROME2", 16, generate_instance_uid=False)
    assert int(ds.NumberOfFrames) == 3
    window = Window(0, 1000, "linear_exact")
    assert set(_pixels(render_frame(ds, 0, window=window)).ravel()) == {0}
    assert set(_pixels(render_frame(ds, 1, window=window)).ravel()) == {128}
    assert set(_pixels(render_frame(ds, 2, window=window)).ravel()) == {255}
    with pytest.raises(NotFoundError, match="frame 4"):
        render_frame(ds, 3)


def test_rle_compressed_renders_like_native():
    ds = _ct()
    rle = copy.deepcopy(ds)
    rle.compress(RLELossless, generate_instance_uid=False)
    assert rle.file_meta.TransferSyntaxUID == RLELossless
    assert render_frame(rle) == render_frame(ds)


def test_jpeg_baseline_compressed_renders():
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (32, 1))
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="JPEG", quality=95)
    ds = _ct(rows=32, cols=64)
    for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth"):
        delattr(ds, keyword)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.LossyImageCompression = "01"

    grey = _pixels(render_frame(ds))  # min..max window over a 0..255 ramp
    assert grey.shape == (32, 64)
    assert np.abs(grey.astype(int) - ramp.astype(int)).max() <= 8


def test_rgb_passes_through_unwindowed():
    ds = _ct(rows=8, cols=8)
    rgb = np.random.default_rng(1).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    ds.set_pixel_data(rgb, "RGB", 8, generate_instance_uid=False)
    image = _decode(render_frame(ds, window=Window(40, 400)))
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), rgb)


# --- Accept --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "image/jpeg"),
        ("", "image/jpeg"),
        ("*/*", "image/jpeg"),
        ("image/*", "image/jpeg"),
        ("image/png", "image/png"),
        ("IMAGE/PNG", "image/png"),
        ("image/png, */*", "image/png"),
        ("*/*, image/png", "image/png"),
        ("image/png, image/jpeg", "image/png"),
        ("image/jpeg, image/png", "image/jpeg"),
        ("image/jpeg;q=0.4, image/png;q=0.8", "image/png"),
        ("image/png;q=0.5, image/jpeg", "image/jpeg"),
        ("image/jpeg;q=0, */*", "image/png"),
        ("image/gif, image/png;q=0.1", "image/png"),
        ("text/html, application/xhtml+xml, image/png;q=0.9, */*;q=0.8", "image/png"),
        ("image/png;q=bogus, image/jpeg;q=0.2", "image/jpeg"),
    ],
)
def test_choose_rendered_media_type(accept, expected):
    assert choose_rendered_media_type(accept) == expected


@pytest.mark.parametrize(
    "accept",
    ["application/json", "image/png;q=0, image/jpeg;q=0", "image/*;q=0", "image/gif", "multipart/related"],
)
def test_choose_rendered_media_type_not_acceptable(accept):
    with pytest.raises(NotAcceptableError):
        choose_rendered_media_type(accept)


# --- real data -----------------------------------------------------------------------


def test_real_ct_slice_renders_with_header_window(chest_ct):
    import pydicom

    path = chest_ct / "Lung_Dx-A0002" / "series-B40f" / "1-15.dcm"
    ds = pydicom.dcmread(path)
    assert default_window(ds) == Window(float(ds.WindowCenter[0]), float(ds.WindowWidth[0]))
    thumb = _decode(render_frame(ds, media_type="image/jpeg", size=(128, 128)))
    assert (thumb.format, thumb.size) == ("JPEG", (128, 128))
    full = _pixels(render_frame(ds, window=Window.parse("-600,1500")))
    assert full.shape == (512, 512)
    assert full[5, 256] < 80  # air (about -1000 HU) is dark in a -600/1500 window
