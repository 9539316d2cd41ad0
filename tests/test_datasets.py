import re
import shlex
import struct
import subprocess
import sys
import tracemalloc
import zipfile
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import datasets
from config import DEFAULT_CLASSES, ClassConfig, voc_palette
from conftest import ROOT
from datasets import (
    DataError,
    DatasetError,
    SegmentationDataset,
    check_dataset,
    convert_penn_fudan,
    read_image,
    read_mask,
    resize_mask,
)
from synthetic import make_dataset, penn_fudan_zip
from utils import UserError

THREE = ClassConfig(
    names=("background", "person", "car"),
    mask_colors=((0, 0, 0), (0, 255, 0), (255, 0, 0)),
    vis_colors=((0, 0, 0), (0, 255, 0), (255, 0, 0)),
)


def save(array: np.ndarray, path, **kwargs):
    Image.fromarray(array).save(path, **kwargs)
    return path


# --- masks ---------------------------------------------------------------------------------


def test_index_mask_keeps_ids_and_ignore(tmp_path):
    mask = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    out = read_mask(save(mask, tmp_path / "m.png"), THREE)
    assert out.tolist() == [[0, 1], [2, 255]]


def test_colour_mask_maps_config_colours(tmp_path):
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[0, 1] = (0, 255, 0)
    rgb[1, 2] = (255, 0, 0)
    out = read_mask(save(rgb, tmp_path / "m.png"), THREE)
    assert out.tolist() == [[0, 1, 0], [0, 0, 2]]


def test_colour_mask_maps_colours_listed_in_any_order(tmp_path):
    # red is listed before blue, though blue's code (0x0000FF) sorts before red's (0xFF0000)
    classes = ClassConfig(
        names=("background", "person", "car"),
        mask_colors=((0, 0, 0), (255, 0, 0), (0, 0, 255)),
        vis_colors=((0, 0, 0), (255, 0, 0), (0, 0, 255)),
    )
    rgb = np.zeros((1, 3, 3), dtype=np.uint8)
    rgb[0, 1] = (255, 0, 0)
    rgb[0, 2] = (0, 0, 255)
    assert read_mask(save(rgb, tmp_path / "m.png"), classes).tolist() == [[0, 1, 2]]


def test_a_gray_colour_mask_saved_as_grayscale_is_read_by_its_colours(tmp_path):
    # the same mask in RGB was read by its colours; as grayscale, 128 was "not a class id"
    classes = ClassConfig(
        names=("background", "person", "car"),
        mask_colors=((0, 0, 0), (128, 128, 128), (255, 255, 255)),
        vis_colors=((0, 0, 0), (0, 255, 0), (255, 0, 0)),
    )
    gray = np.array([[0, 128, 255]], dtype=np.uint8)
    assert read_mask(save(gray, tmp_path / "m.png"), classes).tolist() == [[0, 1, 2]]
    assert read_mask(
        save(np.repeat(gray[..., None], 3, 2), tmp_path / "rgb.png"), classes
    ).tolist() == [[0, 1, 2]]
    # ids stay ids, and values of neither kind are named as before
    assert read_mask(save(gray // 128, tmp_path / "ids.png"), classes).tolist() == [[0, 1, 1]]
    with pytest.raises(DataError, match=r"values \[100\] are not class ids"):
        read_mask(save(np.array([[0, 100]], np.uint8), tmp_path / "bad.png"), classes)


def test_a_grayscale_mask_read_as_ids_among_gray_colour_masks_is_named(fresh_data):
    """A 0/255 mask among 0/128/255 gray colour masks was read as background and ignore, while
    in the others 255 was car: one value, two meanings in one dataset, without a word."""
    grays = ClassConfig(
        names=("background", "person", "car"),
        mask_colors=((0, 0, 0), (128, 128, 128), (255, 255, 255)),
        vis_colors=((0, 0, 0), (0, 255, 0), (255, 0, 0)),
    )
    masks = sorted(fresh_data.glob("*_masks/*.png"))
    for path in masks:
        mask = np.asarray(Image.open(path)) * 128  # person 128
        mask[-4:] = 255  # a car strip along the bottom
        save(mask, path)
    check_dataset(fresh_data, grays)  # every mask read by its colours
    assert (read_mask(masks[0], grays)[-4:] == 2).all()
    without_person = np.asarray(Image.open(masks[1])).copy()
    without_person[without_person == 128] = 0  # 0/255 alone also reads as ids
    save(without_person, masks[1])
    with pytest.raises(DatasetError) as err:
        check_dataset(fresh_data, grays)
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith(f"{masks[1]}: a grayscale mask read as class ids")
    assert "255 (ignore as a class id, car as the colour [255, 255, 255])" in str(err.value)
    # class ids that are not all gray colours read one way only
    for path in masks:
        save(np.minimum(np.asarray(Image.open(path)), 2), path)
    check_dataset(fresh_data, grays)


def test_colour_mask_with_unknown_colour_names_it(tmp_path):
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (10, 20, 30)
    with pytest.raises(DataError, match=r"\[10, 20, 30\].*list each class's colour") as err:
        read_mask(save(rgb, tmp_path / "m.png"), THREE)
    # a PNG was told to be saved as PNG
    assert "list each class's colour there (--config)" in str(err.value)
    assert "save masks as PNG" not in str(err.value)


def test_unknown_colours_are_named_with_their_pixels_and_where_the_first_is(tmp_path):
    # a class left out of the list (most pixels, first) and its blended edges, apart: the
    # advice on blends needs the counts; the counts and places are the reader's own
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[2:5, 3:7] = (0, 0, 255)  # an unlisted class: 12 pixels from x=3, y=2
    rgb[1, 5] = rgb[5, 2] = (0, 250, 0)  # a blended green, twice
    rgb[4, 7] = (250, 0, 0)
    with pytest.raises(datasets.OtherClasses) as err:
        read_mask(save(rgb, tmp_path / "m.tif"), THREE)
    assert str(err.value).startswith(
        f"{tmp_path / 'm.tif'}: a colour mask with 3 colours not in LABEL_COLORS_LIST "
        "[[0, 0, 0], [0, 255, 0], [255, 0, 0]]: [0, 0, 255] in 12 pixels (the first at x=3, "
        "y=2), [0, 250, 0] in 2 pixels (the first at x=5, y=1), [250, 0, 0] in 1 pixel (the "
        "first at x=7, y=4); list each class's colour there (--config)."
    )
    assert "PNG" not in str(err.value)  # it said "the file is a PNG already" of a TIFF


def test_without_label_colors_list_masks_are_class_ids_and_a_colour_mask_is_refused(
    tmp_path, fresh_data
):
    names_only = ClassConfig.from_dict({"ALL_CLASSES": ["background", "person", "car"]})
    assert names_only.mask_colors is None
    # ids as grayscale, gray RGB and palette PNGs, whatever colours the palette shows
    ids = np.array([[0, 1], [2, 255]], np.uint8)
    palette = Image.fromarray(ids, mode=None).convert("P")
    # classes 1 and 2 in the colours of THREE's 2 and 1, which that config would read
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [224, 224, 192] * 253)
    palette.save(tmp_path / "p.png")
    for path in (save(ids, tmp_path / "l.png"), save(np.stack([ids] * 3, -1), tmp_path / "g.png"),
                 tmp_path / "p.png"):  # fmt: skip
        assert read_mask(path, names_only).tolist() == ids.tolist(), path.name
    # colours made up for the classes would read a colour mask silently wrong: refused, naming
    # the mask and the key that reads it
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (0, 255, 0)
    mask = fresh_data / "valid_masks" / "img001.png"
    height, width = np.asarray(Image.open(mask)).shape
    save(np.repeat(rgb, 60, 0).repeat(60, 1)[:height, :width], mask)
    with pytest.raises(DatasetError) as err:
        check_dataset(fresh_data, names_only)
    assert err.value.problems == [
        f"{mask}: a colour mask (colours [[0, 0, 0], [0, 255, 0]]), but the class config has "
        "no LABEL_COLORS_LIST, so masks are read as class ids only: add LABEL_COLORS_LIST to "
        "the --config YAML, each class's colour in these masks in the order of ALL_CLASSES"
    ]
    # with the key given, the same mask reads by its colours, as before
    assert len(check_dataset(fresh_data, THREE)["valid"]) == 2


def test_a_gray_rgb_colour_mask_with_a_colour_not_listed_is_named_by_its_colours(tmp_path):
    # RGB masks are read by their colours; with a blended gray one, the mask was read as class
    # ids instead, their 127 and 128 "not class ids"
    grays = ClassConfig(
        names=("background", "person", "car"),
        mask_colors=((0, 0, 0), (128, 128, 128), (255, 255, 255)),
        vis_colors=((0, 0, 0), (0, 255, 0), (255, 0, 0)),
    )
    rgb = np.repeat(np.array([[0, 128, 127, 255]], np.uint8)[..., None], 3, 2)
    with pytest.raises(
        datasets.OtherClasses,
        match=r"m.png: a colour mask with 1 colour not in LABEL_COLORS_LIST .*: "
        r"\[127, 127, 127\] in 1 pixel \(the first at x=2, y=0\)",
    ):
        read_mask(save(rgb, tmp_path / "m.png"), grays)
    # gray class ids stored as RGB still read as ids
    ids = np.repeat(np.array([[0, 1, 2, 255]], np.uint8)[..., None], 3, 2)
    assert read_mask(save(ids, tmp_path / "ids.png"), grays).tolist() == [[0, 1, 2, 255]]


def test_colour_masks_saved_with_palettes_of_their_own_order_need_label_colors_list(fresh_data):
    # Without LABEL_COLORS_LIST palette masks are read by their indices; colour masks that an
    # optimizer saved with a palette number their colours per file (here green 1 in one mask,
    # 0 in the other), and their classes were swapped from one mask to the next, silently
    names_only = ClassConfig.from_dict({"ALL_CLASSES": ["background", "person"]})
    masks = sorted(fresh_data.glob("*_masks/*.png"))
    for k, path in enumerate(masks):
        ids = np.asarray(Image.open(path))
        img = Image.fromarray(ids if k else 1 - ids).convert("P")
        # background black and person green, in either order
        img.putpalette([0, 0, 0, 0, 255, 0] if k else [0, 255, 0, 0, 0, 0])
        img.save(path)
    with pytest.raises(DatasetError) as err:
        check_dataset(fresh_data, names_only)
    assert err.value.problems == [
        f"{masks[1]}: palette index 0 is the colour [0, 0, 0], which is index 1 in {masks[0]}: "
        "colour masks saved with a palette (a PNG optimizer, PNG-8), each numbering its colours "
        "its own way, so their indices are no class ids: add LABEL_COLORS_LIST to the --config "
        "YAML, each class's colour in these masks in the order of ALL_CLASSES"
    ]
    # with the colours listed, every mask reads by them; one palette for all reads as ids
    assert len(check_dataset(fresh_data, DEFAULT_CLASSES)["train"]) == 4
    for path in masks[:1]:
        img = Image.fromarray(1 - np.asarray(Image.open(path))).convert("P")
        img.putpalette([0, 0, 0, 0, 255, 0])
        img.save(path)
    assert len(check_dataset(fresh_data, names_only)["train"]) == 4
    # a palette that gives its ids no colours of their own (all black) is no colour code
    for path in masks:
        img = Image.open(path)
        img.putpalette([0, 0, 0] * 256)
        img.save(path)
    assert len(check_dataset(fresh_data, names_only)["train"]) == 4


def test_gray_index_mask_stored_as_rgb(tmp_path):
    rgb = np.stack([np.array([[0, 1], [1, 0]], dtype=np.uint8)] * 3, axis=-1)
    out = read_mask(save(rgb, tmp_path / "m.png"), DEFAULT_CLASSES)
    assert out.tolist() == [[0, 1], [1, 0]]


def test_palette_mask_uses_indices(tmp_path):
    img = Image.fromarray(np.array([[0, 2], [1, 255]], dtype=np.uint8), mode=None).convert("P")
    img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [224, 224, 192] * 253)
    img.save(tmp_path / "m.png")
    out = read_mask(tmp_path / "m.png", THREE)
    assert out.tolist() == [[0, 2], [1, 255]]


@pytest.mark.parametrize("palette", [[0, 0, 0, 255, 255, 255], [0, 0, 0, 0, 255, 0], [0, 0, 0]])
def test_a_class_index_mask_with_a_short_palette_keeps_its_indices(tmp_path, palette):
    # Pillow's palette past its listed colours is black, background's colour: those indices
    # are unused, and the used ones (black and white, or the classes' own colours) are the ids.
    # Image.fromarray(ids, "P").save() lists one colour, black: index 1, past it, was read as
    # black, and every mask as background alone.
    img = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8)).convert("P")
    img.putpalette(palette)
    img.save(tmp_path / "m.png")  # a 1-bit PNG
    assert read_mask(tmp_path / "m.png", DEFAULT_CLASSES).tolist() == [[0, 1], [1, 0]]


def test_a_colour_mask_saved_with_a_palette_is_read_by_its_colours(tmp_path):
    # PIL's convert("P") (like PNG optimizers) numbers a colour mask's colours in any order:
    # here green (person) gets index 0 and black (background) index 1
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[1:3, 1:5] = (0, 255, 0)
    img = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=2)
    assert img.getpalette()[:3] == [0, 255, 0]
    img.save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png", DEFAULT_CLASSES).tolist() == (rgb[..., 1] > 0).tolist()


def test_a_palette_colour_mask_with_a_colour_not_listed_is_named_not_read_by_its_indices(
    tmp_path,
):
    # A colour mask saved with a palette (green index 0, black 1) and a blended edge colour:
    # its indices are not class ids, and read as instance ids they swapped person and background
    img = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8)).convert("P")
    img.putpalette([0, 255, 0, 0, 0, 0, 0, 250, 0])
    img.save(tmp_path / "m.png")
    with pytest.raises(
        datasets.OtherClasses,
        match=r"m.png: a palette mask read by its colours \(index 0 is \[0, 255, 0\], the "
        r"colour of person, .* with 1 colour not in LABEL_COLORS_LIST .*: \[0, 250, 0\] in 1 "
        r"pixel \(the first at x=0, y=1\)",
    ):
        read_mask(tmp_path / "m.png", DEFAULT_CLASSES)


@pytest.mark.parametrize("values", [[0, 1, -1, -255], [0.0, 1.0, 0.6, 1.9]])
def test_negative_or_fractional_mask_values_are_an_error(tmp_path, values):
    # 32-bit integer and float TIFF masks: uint8 wrapped -255 to 1 and -1 to 255, cut 1.9 to 1
    mask = np.array([values], np.int32 if isinstance(values[0], int) else np.float32)
    with pytest.raises(DataError, match=r"are not class ids 0-1"):
        read_mask(save(mask, tmp_path / "m.tif"), DEFAULT_CLASSES)


def test_a_grayscale_mask_with_alpha_reads_its_gray_values(tmp_path):
    # "LA" PNGs, as image editors save a gray layer with transparency
    la = np.stack([np.array([[0, 1], [1, 255]], np.uint8), np.full((2, 2), 7, np.uint8)], -1)
    assert read_mask(save(la, tmp_path / "m.png"), DEFAULT_CLASSES).tolist() == [[0, 1], [1, 255]]


def test_a_mask_of_an_unsupported_mode_is_named(tmp_path):
    Image.new("CMYK", (4, 3)).save(tmp_path / "m.tif")
    with pytest.raises(DataError, match=r"m.tif: unsupported mask mode CMYK"):
        read_mask(tmp_path / "m.tif", DEFAULT_CLASSES)


def test_instance_ids_map_to_person_with_two_classes(tmp_path):
    mask = np.array([[0, 1], [2, 3]], dtype=np.uint8)  # Penn-Fudan: three people
    assert read_mask(save(mask, tmp_path / "m.png"), DEFAULT_CLASSES).tolist() == [[0, 1], [1, 1]]


@pytest.mark.parametrize("values", [[0, 7], [0, 1, 3], [0, 254]])
def test_values_that_are_not_consecutive_instance_ids_are_an_error(tmp_path, values):
    mask = np.array([values], dtype=np.uint8)
    with pytest.raises(DataError, match=r"are not class ids 0-1 .*without gaps"):
        read_mask(save(mask, tmp_path / "m.png"), DEFAULT_CLASSES)


def test_a_16_bit_mask_of_0_and_65535_is_told_to_save_class_ids(tmp_path):
    # white in a 16-bit PNG: it was told that instance ids number objects without gaps
    mask = np.array([[0, 65535], [65535, 0]], np.uint16)
    with pytest.raises(DataError) as err:
        read_mask(save(mask, tmp_path / "m.png"), DEFAULT_CLASSES)
    assert not isinstance(err.value, datasets.OtherClasses)  # no other classes: a new format
    assert str(err.value) == (
        f"{tmp_path / 'm.png'}: values [65535] are not class ids 0-1 of ['background', "
        "'person'] or 255 (ignore); a 16-bit mask whose 65535 (white) marks a class? Save its "
        "class ids 0-1 as an 8-bit PNG"
    )


def test_values_outside_classes_are_an_error_with_three_classes(tmp_path):
    mask = np.array([[0, 1], [2, 7]], dtype=np.uint8)
    with pytest.raises(DataError, match=r"values \[7\] are not class ids 0-2"):
        read_mask(save(mask, tmp_path / "m.png"), THREE)


def test_pixel_counts_are_exact_past_the_float32_range_of_opencvs_histogram():
    # past 2**24 pixels of 0, where float32 counts stop being exact; every other value once
    mask = np.zeros((4352, 4096), np.uint8)  # 2**24 + 2**20 pixels
    mask[-1, -255:] = np.arange(1, 256)
    assert datasets.pixel_counts(mask).tolist() == [2**24 + 2**20 - 255] + [1] * 255


def test_the_dataset_check_counts_each_masks_pixels_once(fresh_data, monkeypatch):
    calls = []
    counted = datasets.pixel_counts
    monkeypatch.setattr(datasets, "pixel_counts", lambda mask: calls.append(1) or counted(mask))
    check_dataset(fresh_data, DEFAULT_CLASSES)
    assert len(calls) == 6  # 4 train and 2 valid masks


@pytest.mark.parametrize(
    ("values", "mode", "classes"),
    [
        ([0, 1, 255], "L", DEFAULT_CLASSES),  # class ids with ignore
        ([0, 1, 2, 3], "L", DEFAULT_CLASSES),  # instance ids
        ([0, 1, 2], "P", THREE),  # palette indices
        ([0, 1, 255], "I;16", DEFAULT_CLASSES),  # 16-bit ids: counted after reading
        ([0, 2, 1], "RGB", THREE),  # colours: counted after mapping
    ],
)
def test_the_check_counts_the_pixels_of_the_ids_read(tmp_path, values, mode, classes):
    ids = np.array(values, np.uint8)[np.random.default_rng(0).integers(0, len(values), (9, 11))]
    if mode == "RGB":
        mask = Image.fromarray(np.array(classes.mask_colors, np.uint8)[ids])
    elif mode == "I;16":
        mask = Image.fromarray(ids.astype(np.uint16))
    else:
        mask = Image.fromarray(ids).convert(mode) if mode == "P" else Image.fromarray(ids)
    mask.save(tmp_path / "m.png")
    save(np.zeros((9, 11, 3), np.uint8), tmp_path / "i.png")
    problems, counts, _ = datasets.check_pair((tmp_path / "i.png", tmp_path / "m.png"), classes)
    expected = np.bincount(read_mask(tmp_path / "m.png", classes).ravel(), minlength=256)
    assert problems == [] and counts.dtype == np.int64 and counts.tolist() == expected.tolist()


@pytest.mark.parametrize(
    ("values", "valid"), [([0, 2, 255], True), ([0, 3, 255], False), ([254], False)]
)
def test_training_reads_class_ids_without_counting_them(tmp_path, monkeypatch, values, valid):
    calls = []
    counted = datasets.pixel_counts
    monkeypatch.setattr(datasets, "pixel_counts", lambda mask: calls.append(1) or counted(mask))
    ids = np.array(values, np.uint8)[np.random.default_rng(0).integers(0, len(values), (9, 11))]
    path = save(ids, tmp_path / "m.png")
    if valid:
        out = read_mask(path, THREE)
        assert np.array_equal(out, ids) and out.flags.writeable and calls == []
    else:  # the histogram names the values
        with pytest.raises(DataError, match=r"values \[(3|254)\] are not class ids 0-2"):
            read_mask(path, THREE)


@pytest.mark.parametrize("classes", [DEFAULT_CLASSES, THREE])
def test_a_jpeg_mask_is_refused(tmp_path, classes):
    # JPEG changes ids near edges: a 2-class mask was read without a word (as instance ids when
    # compression added 2s), a 3-class one with ids swapped where they stay in range
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:50] = 1
    mask[15:25, 25:35] = classes.num_classes - 1
    path = save(mask, tmp_path / "m.jpg", quality=75)
    assert (np.asarray(Image.open(path)) != mask).any(), "JPEG changed some ids"
    with pytest.raises(DataError, match=r"m.jpg: a JPEG mask: .* save masks as PNG"):
        read_mask(path, classes)


# --- images --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_read_image_modes_give_rgb(tmp_path, mode):
    rgb = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    img = Image.fromarray(rgb).convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    img.save(path)
    out = read_image(path)
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    assert out.flags.writeable  # torch.from_numpy warns about read-only arrays


def test_read_16bit_image_scales_to_8bit(tmp_path):
    arr = np.array([[0, 65535], [32896, 257]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "x.png")
    out = read_image(tmp_path / "x.png")
    assert out[..., 0].tolist() == [[0, 255], [128, 1]]


def test_a_dark_16bit_image_stays_dark(tmp_path):
    # values that would fit in 8 bits are still 16-bit data: 250 is 0.4% of full scale
    Image.fromarray(np.array([[0, 100, 200, 250]], np.uint16)).save(tmp_path / "x.png")
    assert read_image(tmp_path / "x.png")[..., 0].tolist() == [[0, 0, 1, 1]]


def test_a_float_image_in_0_to_1_scales_to_8bit(tmp_path):
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)).save(tmp_path / "x.tif")
    assert read_image(tmp_path / "x.tif")[..., 0].tolist() == [[0, 128, 255]]


@pytest.mark.parametrize(
    ("values", "dtype", "expected"),
    [([0, 128, 255], np.int32, [0, 128, 255]),  # 8-bit values stored wide keep their scale
     ([0, 32768, 65535], np.int32, [0, 128, 255]),  # 16-bit data in 32 bits
     ([0.0, 128.0, 255.0], np.float32, [0, 128, 255])],  # floats past 1 on the 8-bit scale
)  # fmt: skip
def test_32bit_images_are_scaled_by_the_range_of_their_values(tmp_path, values, dtype, expected):
    Image.fromarray(np.array([values], dtype)).save(tmp_path / "x.tif")
    assert read_image(tmp_path / "x.tif")[..., 0].tolist() == [expected]


@pytest.mark.parametrize(
    ("mode", "values"),
    [("I;16", np.arange(65536, dtype=np.uint16)),  # every 16-bit value
     ("I;16B", np.arange(65536, dtype=">u2")),
     ("I", np.arange(-70000, 70000, 7, dtype=np.int32)),  # clipped below 0 and past 65535
     ("I", np.arange(-20, 300, dtype=np.int32) % 256),
     ("F", np.linspace(-0.1, 1.0, 5000, dtype=np.float32)),
     ("F", np.linspace(-3.0, 300.0, 5000, dtype=np.float32))],
)  # fmt: skip
def test_wide_images_scaled_a_band_of_rows_at_a_time_as_all_at_once(monkeypatch, mode, values):
    # A 48-megapixel 16-bit scan took three float64 copies at once (1.2 GB): the values are
    # scaled a few rows at a time (7 here, the last band shorter), to the same pixels
    values = np.resize(values, (len(values) // 100 + 2) * 100).reshape(-1, 100).astype(values.dtype)
    img = Image.fromarray(values)
    assert img.mode == mode, "the premise: Pillow's mode for these values"
    monkeypatch.setattr(datasets, "WIDE_BAND_PIXELS", 7 * 100 + 99)
    wide = np.asarray(img, dtype=np.float64)
    if mode.startswith("I;16"):
        top = 65535.0
    elif mode == "F" and wide.max() <= 1:
        top = 1.0
    else:
        top = 65535.0 if wide.max() > 255 else 255.0
    want = np.clip(wide / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    got = datasets._pillow_rgb(img)
    assert got.shape == (*want.shape, 3) and got.dtype == np.uint8
    assert all(np.array_equal(got[..., c], want) for c in range(3))


def test_a_16bit_image_is_read_without_a_float64_copy_of_it(tmp_path, monkeypatch):
    # Python's allocation tracer sees NumPy's arrays and Pillow's bytes: reading a 16-bit PNG
    # peaked at three float64 copies of its pixels, now under one (2-byte pixels, the 8-bit
    # gray and the RGB result, and bands of 3 rows)
    arr = np.random.default_rng(0).integers(0, 65535, (200, 300), dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "x.png")
    monkeypatch.setattr(datasets, "WIDE_BAND_PIXELS", 1000)
    tracemalloc.start()
    try:
        out = read_image(tmp_path / "x.png")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (200, 300, 3)
    assert peak < arr.size * 8


def test_read_image_applies_exif_rotation(tmp_path):
    img = Image.new("RGB", (30, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: displayed 20 wide, 30 high
    img.save(tmp_path / "x.jpg", exif=exif)
    assert read_image(tmp_path / "x.jpg").shape == (30, 20, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_read_image_turns_pixels_as_exif_transpose_does(tmp_path, orientation):
    rgb = np.random.default_rng(orientation).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(tmp_path / "x.png", exif=exif)
    expected = np.array(ImageOps.exif_transpose(Image.open(tmp_path / "x.png")))
    assert np.array_equal(read_image(tmp_path / "x.png"), expected)


def test_an_exif_block_pillow_cannot_parse_leaves_the_pixels_as_stored(tmp_path, monkeypatch):
    # camera firmware writes EXIF that some Pillow versions fail on: the photo is still good
    rgb = np.random.default_rng(2).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")

    def unparsable(self):
        raise SyntaxError("not a TIFF file (header b'\\x00\\x00' not valid)")

    monkeypatch.setattr(Image.Image, "getexif", unparsable)
    assert np.array_equal(read_image(tmp_path / "x.png"), rgb)
    assert datasets.image_size(tmp_path / "x.png") == (30, 20)


def test_read_image_with_a_malformed_exif_tag_still_rotates(tmp_path):
    # Big-endian EXIF: orientation 6, and tag 336 (DotRange, a SHORT) stored as text, as damaged
    # or odd camera firmware writes. Pillow reads it, but cannot write it back.
    ifd = struct.pack(">2sHIH", b"MM", 42, 8, 2) + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0)
    ifd += struct.pack(">HHI4sI", 0x0150, 2, 4, b"ab\0\0", 0)
    Image.new("RGB", (30, 20)).save(tmp_path / "x.jpg", exif=b"Exif\0\0" + ifd)
    with pytest.raises(struct.error):  # the premise: Pillow's exif_transpose fails on it
        ImageOps.exif_transpose(Image.open(tmp_path / "x.jpg"))
    assert read_image(tmp_path / "x.jpg").shape == (30, 20, 3)


def _read_image_as_before(path) -> np.ndarray:
    """read_image's pixels as they were read before OpenCV decoded JPEGs: Pillow throughout."""
    return np.array(datasets.open_image(path).convert("RGB"))


@pytest.mark.parametrize("orientation", [1, 3, 6, 7, 8])
@pytest.mark.parametrize(
    ("mode", "ext", "options"),
    [
        ("RGB", ".jpg", {"subsampling": 2}),  # 4:2:0, as phones and cameras save
        ("RGB", ".jpg", {"subsampling": 1, "quality": 75}),
        ("RGB", ".jpg", {"subsampling": 0, "quality": 100}),
        ("RGB", ".jpg", {"progressive": True, "optimize": True}),
        ("RGB", ".png", {}),
        ("L", ".jpg", {}),
        ("L", ".png", {}),
        ("P", ".png", {}),
        ("RGBA", ".png", {}),
        ("CMYK", ".jpg", {}),
    ],
)
def test_read_image_gives_the_pixels_pillow_gave(tmp_path, mode, ext, options, orientation):
    # odd sides, so that a transpose or a chroma block off by one shows
    rgb = np.random.default_rng(orientation).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"x{ext}"
    Image.fromarray(rgb).convert(mode).save(path, exif=exif, **options)
    out = read_image(path)
    assert np.array_equal(out, _read_image_as_before(path))
    assert out.dtype == np.uint8 and out.flags.writeable and out.flags.c_contiguous


def test_a_jpeg_with_corrupt_data_fails_in_read_image(tmp_path):
    """OpenCV's decoder reads such a file (a "Corrupt JPEG data: bad Huffman code" warning on
    stderr, and garbage pixels) where Pillow fails: read_image decodes with Pillow."""
    rgb = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    data = bytearray(save(rgb, tmp_path / "full.jpg", quality=90).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 200] = bytes([0x00, 0xFF] * 100)
    (tmp_path / "x.jpg").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"x\.jpg: unreadable or corrupt image"):
        read_image(tmp_path / "x.jpg")


def test_a_truncated_jpeg_fails_in_read_image_as_with_pillow(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = save(rgb, tmp_path / "full.jpg", quality=95).read_bytes()
    (tmp_path / "x.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"x\.jpg: unreadable or corrupt image .*truncated"):
        read_image(tmp_path / "x.jpg")


# --- whole-dataset check -------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("size", [(203, 101), (5, 3)])
def test_image_size_is_the_displayed_size_of_a_jpeg_decoded_at_a_smaller_scale(
    tmp_path, orientation, size
):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.new("RGB", size, (40, 90, 200)).save(tmp_path / "x.jpg", exif=exif)
    h, w = read_image(tmp_path / "x.jpg").shape[:2]
    assert datasets.image_size(tmp_path / "x.jpg") == (w, h)


def test_a_truncated_jpeg_is_found_though_its_size_needs_only_the_header(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    data = save(rgb, tmp_path / "x.jpg", quality=95).read_bytes()
    (tmp_path / "x.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"x\.jpg: unreadable or corrupt image"):
        datasets.image_size(tmp_path / "x.jpg")


def test_images_past_pillows_bomb_guard_are_read(tmp_path, monkeypatch):
    """Aerial and satellite photos of over 179 megapixels were refused as "unreadable or
    corrupt" by Pillow's decompression-bomb guard; here that guard is lowered to 50 pixels."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # Pillow refuses over twice this
    Image.new("RGB", (20, 10), (40, 90, 200)).save(tmp_path / "x.png")
    assert read_image(tmp_path / "x.png").shape == (10, 20, 3)
    assert datasets.image_size(tmp_path / "x.png") == (20, 10)
    assert Image.MAX_IMAGE_PIXELS == 50  # lifted only for our own reads


def test_an_image_past_our_bound_names_its_size_and_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "MAX_IMAGE_PIXELS", 150)
    Image.new("RGB", (20, 10), (40, 90, 200)).save(tmp_path / "x.png")
    with pytest.raises(
        DataError, match=r"x\.png: a 20x10 image \(200 pixels\), over the limit of 150"
    ) as err:
        read_image(tmp_path / "x.png")
    assert "corrupt" not in str(err.value) and "tiles" in str(err.value)


def test_check_dataset_pairs_by_stem_across_extensions(tiny_data):
    pairs = check_dataset(tiny_data, DEFAULT_CLASSES)
    assert len(pairs["train"]) == 8 and len(pairs["valid"]) == 4
    assert {p[0].suffix for p in pairs["train"]} == {".jpg", ".png"}
    assert all(img.stem == mask.stem for img, mask in pairs["train"])


def test_hidden_files_such_as_macos_metadata_are_not_read(fresh_data):
    # macOS writes ._NAME beside every file it copies to a USB drive or a network share: each
    # failed as a corrupt image, and the dataset was refused
    for folder in ("train_images", "train_masks"):
        (fresh_data / folder / "._img000.png").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    pairs = check_dataset(fresh_data, DEFAULT_CLASSES)
    assert [m.name for _, m in pairs["train"]] == [f"img{i:03d}.png" for i in range(4)]


def test_check_dataset_reports_every_problem_at_once(fresh_data):
    (fresh_data / "train_masks" / "img000.png").unlink()  # image without mask
    save(np.zeros((4, 4), np.uint8), fresh_data / "train_masks" / "stray.png")  # mask, no image
    (fresh_data / "train_images" / "img001.jpg").write_bytes(b"not an image")  # corrupt
    save(np.zeros((9, 9), np.uint8), fresh_data / "train_masks" / "img002.png")  # wrong size
    save(np.zeros((84, 112), np.uint8), fresh_data / "train_masks" / "img003.png")  # turned
    bad = np.full((72, 96), 3, np.uint8)
    save(bad, fresh_data / "valid_masks" / "img000.png")
    with pytest.raises(DatasetError) as info:
        check_dataset(fresh_data, THREE)
    problems = info.value.problems
    assert len(problems) == 6, problems
    text = "\n".join(problems)
    assert "train_images/img000.png: image without a mask" in text
    assert "stray.png: mask without an image" in text
    assert "img001.jpg: unreadable or corrupt image" in text
    assert "img002.png: mask is 9x9 but its image img002.png is 96x72" in text
    assert "img002.png is 96x72\n" in text + "\n"  # no hint where the sides do not swap
    assert "img003.png: mask is 112x84 but its image img003.jpg is 84x112 (sides swapped: " in text
    assert "valid_masks/img000.png: values [3] are not class ids" in text


def test_a_mask_with_swapped_sides_is_told_the_cause_its_files_show(tmp_path):
    # the EXIF cause was given for every swapped mask, also where no file has an orientation
    image, mask = tmp_path / "a.png", save(np.zeros((30, 20), np.uint8), tmp_path / "m.png")
    save(np.zeros((20, 30, 3), np.uint8), image)
    (problem,) = datasets.size_mismatch((image, mask), datasets.image_size(image), (30, 20))
    assert problem.endswith(
        "m.png: mask is 20x30 but its image a.png is 30x20 (sides swapped: neither file has an "
        "EXIF orientation; the mask of a copy of the image turned a quarter turn? Masks must "
        "match the image as displayed)"
    )
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 20x30, displayed 30x20
    Image.new("RGB", (20, 30)).save(image, exif=exif)
    (problem,) = datasets.size_mismatch((image, mask), datasets.image_size(image), (30, 20))
    assert "(sides swapped: a phone photo turned upright by its EXIF orientation" in problem
    # a mask turned by an orientation of its own, beside an image without one
    save(np.zeros((20, 30, 3), np.uint8), image)
    Image.new("L", (30, 20)).save(mask, exif=exif)
    shape = datasets.read_mask(mask, DEFAULT_CLASSES).shape
    (problem,) = datasets.size_mismatch((image, mask), datasets.image_size(image), shape)
    assert problem.endswith(
        "(sides swapped: the mask is turned by an EXIF orientation of its own, its image by "
        "none; save the mask without EXIF)"
    )


def test_masks_of_other_classes_than_a_kept_checkpoints_say_config_cannot_change_them(
    fresh_data,
):
    # --eval-only and --resume keep the checkpoint's classes, so the per-mask advice to list the
    # classes with --config (which is then ignored) needs the way out: a new model
    red = np.zeros((72, 96, 3), np.uint8)
    red[10:20, 10:20] = (255, 0, 0)
    save(red, fresh_data / "valid_masks" / "img000.png")  # a colour of no class
    save(np.full((72, 96), 2, np.uint8), fresh_data / "valid_masks" / "img001.png")  # class 2
    kept = "--eval-only scores best.pth with the classes it was trained with"
    with pytest.raises(DatasetError) as info:
        check_dataset(fresh_data, DEFAULT_CLASSES, ("valid",), kept)
    assert len(info.value.problems) == 2
    assert str(info.value).endswith(
        f"2 masks hold other classes than ['background', 'person']: {kept}, and --config does "
        "not change them. Train a new model on their classes, with --config"
    )
    with pytest.raises(DatasetError) as info:  # a new run's --config does change them
        check_dataset(fresh_data, DEFAULT_CLASSES, ("valid",))
    assert "--config does not change them" not in str(info.value)
    save(np.zeros((72, 96), np.uint8), fresh_data / "valid_masks" / "img000.png")
    with pytest.raises(DatasetError, match="\n1 mask holds other classes than"):
        check_dataset(fresh_data, DEFAULT_CLASSES, ("valid",), kept)
    with pytest.raises(DatasetError) as info:
        check_dataset(fresh_data, DEFAULT_CLASSES, ("valid",))
    assert "--config does not change them" not in str(info.value)
    # other problems are not about the classes
    save(np.zeros((72, 96), np.uint8), fresh_data / "valid_masks" / "img000.png")
    save(np.zeros((9, 9), np.uint8), fresh_data / "valid_masks" / "img001.png")
    with pytest.raises(DatasetError) as info:
        check_dataset(fresh_data, DEFAULT_CLASSES, ("valid",), kept)
    assert "--config does not change them" not in str(info.value)


def test_colour_masks_under_a_kept_checkpoint_without_colours_need_no_config_advice(fresh_data):
    # --eval-only and --resume read masks by the checkpoint's classes and ignore --config: where
    # those list no LABEL_COLORS_LIST, adding it to --config (the advice of a new run) cannot
    # help; saving the masks as class ids, or a new model, can
    names_only = ClassConfig.from_dict({"ALL_CLASSES": ["background", "person"]})
    masks = sorted((fresh_data / "valid_masks").iterdir())
    for k, path in enumerate(masks):  # colour masks saved with palettes of their own order
        ids = np.asarray(Image.open(path))
        img = Image.fromarray(ids if k else 1 - ids).convert("P")
        img.putpalette([0, 0, 0, 0, 255, 0] if k else [0, 255, 0, 0, 0, 0])
        img.save(path)
    red = np.zeros((72, 96, 3), np.uint8)
    red[10:20, 10:20] = (255, 0, 0)
    save(red, fresh_data / "valid_masks" / "img002.png")  # an RGB colour mask
    (fresh_data / "valid_images" / "img002.png").write_bytes(
        (fresh_data / "valid_images" / "img000.png").read_bytes()
    )
    kept = "--eval-only scores best.pth with the classes it was trained with"
    with pytest.raises(DatasetError) as info:
        check_dataset(fresh_data, names_only, ("valid",), kept)
    assert len(info.value.problems) == 2
    advice = (
        f"{kept}, which list no LABEL_COLORS_LIST, and --config does not change them: save "
        "these masks as class ids (each pixel its class's index in ALL_CLASSES), or train a new "
        "model with a --config whose LABEL_COLORS_LIST gives each class's colour in these masks"
    )
    assert all(problem.endswith(advice) for problem in info.value.problems)
    assert "to the --config YAML" not in str(info.value)
    assert "other classes" not in str(info.value)  # the note on classes the masks do not hold
    with pytest.raises(DatasetError) as info:  # a new run's --config does add the colours
        check_dataset(fresh_data, names_only, ("valid",))
    assert str(info.value).count("add LABEL_COLORS_LIST to the --config YAML") == 2


def test_soft_edged_masks_under_a_kept_checkpoint_are_not_called_other_classes(fresh_data):
    # a 0/255 mask through JPEG holds values in between: its fix is prepare_data.py binary, not
    # a new model trained on other classes
    mask = np.zeros((72, 96), np.uint8)
    mask[10:20, 10:20], mask[20:22, 10:20] = 255, 128
    save(mask, fresh_data / "valid_masks" / "img000.png")
    kept = "--eval-only scores best.pth with the classes it was trained with"
    with pytest.raises(DatasetError) as info:
        check_dataset(fresh_data, DEFAULT_CLASSES, ("valid",), kept)
    assert "prepare_data.py binary" in str(info.value)
    assert "--config does not change them" not in str(info.value)


def test_a_missing_folder_and_two_images_of_one_stem_are_named(fresh_data):
    for f in (fresh_data / "valid_masks").iterdir():
        f.unlink()
    (fresh_data / "valid_masks").rmdir()
    # img000 as PNG and JPEG: which one the mask belongs to cannot be told
    save(np.zeros((72, 96, 3), np.uint8), fresh_data / "train_images" / "img000.jpg")
    with pytest.raises(DatasetError) as info:
        check_dataset(fresh_data, DEFAULT_CLASSES)
    text = "\n".join(info.value.problems)
    assert "valid_masks: folder missing" in text
    assert "valid_images/img000.png: image without a mask" in text  # each image, named
    assert "img000.png: same stem as img000.jpg; keep one of them" in text


def test_a_dataset_folder_that_is_a_file_is_named_as_such(fresh_data):
    # "folder missing" sent the user looking for a folder beside the file that took its name
    for f in (fresh_data / "valid_masks").iterdir():
        f.unlink()
    (fresh_data / "valid_masks").rmdir()
    (fresh_data / "valid_masks").write_text("")
    with pytest.raises(DatasetError) as info:
        check_dataset(fresh_data, DEFAULT_CLASSES)
    text = "\n".join(info.value.problems)
    assert "valid_masks: a file, not a folder" in text and "folder missing" not in text


@pytest.mark.parametrize(
    ("layout", "data", "advice"),
    [
        # --data one of the four folders: four "folder missing" inside it named no fix
        (["train_images/", "train_masks/", "valid_images/", "valid_masks/"], "train_images",
         r"one of a dataset's four folders: pass the folder that holds them, --data .*/d$"),
        # images and masks not yet split, the layout most home-made datasets have
        (["images/", "masks/"], "",
         r"is a folder of images/ and masks/, not yet split .*python prepare_data.py folder "
         r"--images .*/d/images --masks .*/d/masks --out .*/d_prepared, then --data "
         r".*/d_prepared$"),
        (["train/_classes.csv", "valid/"], "",
         r"a Roboflow export: .*python prepare_data.py roboflow --root .*/d --out .*/d_prepared"),
        (["labelmap.txt", "SegmentationClass/"], "",
         r"a CVAT export: .*python prepare_data.py cvat --root .*/d --out .*/d_prepared"),
        (["leftImg8bit/train/", "gtFine/train/"], "",
         r"Cityscapes as unzipped: .*python prepare_data.py cityscapes --root .*/d --out "
         r".*/d_prepared"),
        (["images/training/", "annotations/training/", "objectInfo150.txt"], "",
         r"ADE20K \(ADEChallengeData2016\) as unzipped: .*python prepare_data.py ade20k --root "
         r".*/d --out .*/d_prepared"),
        # PennFudanPed.zip unzipped by hand (downloaded elsewhere, as offline runs are told to)
        (["PNGImages/", "PedMasks/", "Annotation/"], "",
         r"is Penn-Fudan as unzipped, not yet split .*python prepare_data.py folder --images "
         r".*/d/PNGImages --masks .*/d/PedMasks --mask-suffix _mask --out .*/d_prepared, then "
         r"--data .*/d_prepared$"),
    ],
)  # fmt: skip
def test_a_data_folder_of_another_layout_is_named_with_the_command_that_converts_it(
    tmp_path, layout, data, advice
):
    root = tmp_path / "d"
    for entry in layout:
        path = root / entry
        if entry.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")
    with pytest.raises(UserError, match=advice):
        check_dataset(root / data, DEFAULT_CLASSES)
    # only the valid split, as --eval-only checks it
    with pytest.raises(UserError, match=advice):
        check_dataset(root / data, DEFAULT_CLASSES, splits=("valid",))


def test_the_binary_command_offered_names_the_class_and_runs_as_printed(tmp_path):
    """The fix printed for 0/255 masks, pasted into a shell: it named no --name, so a class
    other than person came out as person in the new dataset's classes.yaml, and a folder with a
    space in its name split into two arguments."""
    data = make_dataset(tmp_path / "my data", n_train=2, n_valid=1)
    for mask in data.glob("*_masks/*.png"):
        save(np.asarray(Image.open(mask)) * np.uint8(255), mask)
    cats = ClassConfig.from_dict({"ALL_CLASSES": ["background", "cat"]})
    with pytest.raises(UserError) as info:
        check_dataset(data, cats)
    command = str(info.value).split("Convert them to 0/1 masks with: ")[1]
    assert command.startswith("python prepare_data.py binary") and "--name cat" in command
    argv = [sys.executable, *shlex.split(command)[1:]]
    subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, timeout=300)
    converted = tmp_path / "my data_01"
    assert "cat" in (converted / "classes.yaml").read_text()
    check_dataset(converted, cats)


def test_masks_saved_as_0_and_255_are_refused_with_the_fix(fresh_data):
    for mask in (fresh_data / "train_masks").iterdir():
        binary = np.asarray(Image.open(mask))
        save(np.where(binary == 1, 255, 0).astype(np.uint8), mask)
    for mask in (fresh_data / "valid_masks").iterdir():
        save(np.zeros_like(np.asarray(Image.open(mask))), mask)
    with pytest.raises(UserError, match=r"masks saved as 0/255\?.* prepare_data.py binary --root"):
        check_dataset(fresh_data, DEFAULT_CLASSES)


def test_0_255_masks_with_values_in_between_point_to_prepare_data_binary(fresh_data):
    # masks that went through JPEG and were saved again as PNG: 0, 255 and values near edges;
    # the instance-id hint, the only one given before, does not apply to them
    for mask in (fresh_data / "train_masks").iterdir():
        soft = np.asarray(Image.open(mask)).astype(np.uint8) * 255
        soft[:, 1:][soft[:, 1:] != soft[:, :-1]] = 131  # a soft edge
        save(soft, mask)
    with pytest.raises(DatasetError) as err:
        check_dataset(fresh_data, DEFAULT_CLASSES)
    assert "values [131] are not class ids" in str(err.value)
    assert "a 0/255 mask with values in between" in str(err.value)
    assert "prepare_data.py binary" in str(err.value) and "instance-id" not in str(err.value)


def test_webp_and_jfif_images_train_and_lossless_webp_masks_are_read(fresh_data):
    # photos saved from a browser: WebP, and JPEG under Chrome's .jfif; were named, not read
    images, masks = fresh_data / "train_images", fresh_data / "train_masks"
    image, mask = (
        read_image(images / "img000.png"),
        read_mask(masks / "img000.png", DEFAULT_CLASSES),
    )
    Image.fromarray(image).save(images / "web.webp", lossless=True)
    Image.fromarray(image).save(images / "chrome.jfif", format="JPEG", quality=95)
    for stem in ("web", "chrome"):
        Image.fromarray(mask).save(masks / f"{stem}.webp", lossless=True)
    pairs = check_dataset(fresh_data, DEFAULT_CLASSES)
    assert {"chrome.jfif", "web.webp"} < {image.name for image, _ in pairs["train"]}
    assert np.array_equal(read_image(images / "web.webp"), image)
    assert np.array_equal(read_mask(masks / "web.webp", DEFAULT_CLASSES), mask)


@pytest.mark.parametrize("alpha", [False, True])
def test_a_lossy_webp_mask_is_refused_as_a_jpeg_one_is(tmp_path, alpha):
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 20:50] = 1
    img = Image.fromarray(np.dstack([mask] * 3 + [np.full_like(mask, 255)] * alpha))
    img.save(tmp_path / "m.webp", quality=90)  # with alpha, a "VP8X" file: "ALPH", then "VP8 "
    with pytest.raises(DataError, match=r"m.webp: a lossy WebP mask: lossy WebP compression"):
        read_mask(tmp_path / "m.webp", DEFAULT_CLASSES)


def test_subfolders_and_images_of_other_formats_are_named_not_skipped_silently(fresh_data, caplog):
    # a .gif pair, or a pair in a subfolder, was left out of training without a word
    images, masks = fresh_data / "train_images", fresh_data / "train_masks"
    Image.open(images / "img000.png").save(images / "extra.gif")
    Image.open(masks / "img000.png").save(masks / "extra.gif")
    for folder in ("train_images", "train_masks"):
        (fresh_data / folder / "batch2").mkdir()
        (fresh_data / folder / ".hidden").mkdir()
    (fresh_data / "train_images" / "notes.txt").write_text("not an image")
    pairs = check_dataset(fresh_data, DEFAULT_CLASSES)
    assert len(pairs["train"]) == 4
    assert (
        "train_images: 2 subfolders or files of other formats are not read: batch2/, "
        "extra.gif (images and masks sit directly in the folder, as .jpg" in caplog.text
    )
    assert "train_masks: 2 subfolders" in caplog.text
    assert ".hidden" not in caplog.text and "notes.txt" not in caplog.text


@pytest.mark.parametrize("split", ["train", "valid"])
def test_a_split_whose_masks_are_all_ignore_is_refused(fresh_data, split):
    # a valid split without a labelled pixel trained on with mIoU nan, loss 0 and no best model
    for mask in (fresh_data / f"{split}_masks").iterdir():
        save(np.full_like(np.asarray(Image.open(mask)), 255), mask)
    with pytest.raises(UserError, match=f"every mask pixel of the {split} split of .* is 255"):
        check_dataset(fresh_data, THREE)
    with pytest.raises(UserError, match=f"every mask pixel of the {split} split"):
        check_dataset(fresh_data, THREE, splits=(split,))


def test_a_class_absent_from_the_train_split_is_a_warning(fresh_data, caplog):
    check_dataset(fresh_data, THREE)  # the synthetic masks hold classes 0 and 1 only
    assert "the train split of" in caplog.text and "has no pixel of car" in caplog.text


def test_a_class_absent_from_the_valid_split_is_a_warning_that_says_how_miou_counts_it(
    fresh_data, caplog
):
    # its IoU is 0 in an epoch that predicts it anywhere, and left out of the mean otherwise:
    # the valid mIoU then averages over a number of classes that changes from epoch to epoch
    check_dataset(fresh_data, THREE, splits=("valid",))  # as --eval-only checks it
    assert "the valid split of" in caplog.text and "has no pixel of car" in caplog.text
    assert "left out of the valid mIoU" in caplog.text
    caplog.clear()
    check_dataset(fresh_data, DEFAULT_CLASSES)  # every class in both splits: nothing to say
    assert "has no pixel of" not in caplog.text


def test_many_absent_classes_are_named_ten_and_counted(fresh_data, caplog):
    """A few ADE20K images (150 classes) listed the 148 absent from each split on one line of
    about 1,500 characters."""
    names = ("background", "person", *(f"thing{i}" for i in range(2, 150)))
    check_dataset(fresh_data, ClassConfig.from_dict({"ALL_CLASSES": list(names)}))
    lines = [r.getMessage() for r in caplog.records if "has no pixel of" in r.getMessage()]
    assert len(lines) == 2 and all(len(line) < 400 for line in lines)
    for line in lines:
        assert "has no pixel of thing2, thing3, " in line and "thing11 and 138 more" in line
        assert "thing12" not in line


def test_masks_of_other_classes_name_the_classes_yaml_beside_them(fresh_data):
    """prepare_data.py cityscapes, then train.py without its --config: each mask's problem
    advised the binary importer (0/255 masks), and nothing named the classes.yaml it wrote."""
    names = ["road", "sidewalk", "building", "wall", "car"]
    (fresh_data / "classes.yaml").write_text(f"ALL_CLASSES: [{', '.join(names)}]\n")
    for mask in (fresh_data / "train_masks").iterdir():
        ids = np.asarray(Image.open(mask)).copy()
        ids[:2, :3] = (2, 4, 255)
        save(ids, mask)
    note = rf"\n{re.escape(str(fresh_data / 'classes.yaml'))} lists 5 classes \(road, " + (
        rf"sidewalk, building, wall, car\): pass --config {re.escape(str(fresh_data))}/classes"
        r"\.yaml$"
    )
    with pytest.raises(DatasetError, match=note):
        check_dataset(fresh_data, DEFAULT_CLASSES)
    # a checkpoint's classes, which --config does not change, are told to train a new model
    with pytest.raises(DatasetError) as raised:
        check_dataset(fresh_data, DEFAULT_CLASSES, kept_classes="--model M keeps its classes")
    assert "pass --config" not in str(raised.value)


def test_an_imported_datasets_other_names_for_as_many_classes_are_a_warning(fresh_data, caplog):
    """prepare_data.py binary --name cat, then train.py without its --config: the run trained
    silently as background and person, and its checkpoint called the cats people."""
    check_dataset(fresh_data, DEFAULT_CLASSES)  # no classes.yaml: nothing to say
    (fresh_data / "classes.yaml").write_text("ALL_CLASSES: [background, person]\n")
    check_dataset(fresh_data, DEFAULT_CLASSES)  # the same names
    assert "names the classes" not in caplog.text
    (fresh_data / "classes.yaml").write_text("ALL_CLASSES: [background, cat]\n")
    check_dataset(fresh_data, DEFAULT_CLASSES)
    yaml_path = fresh_data / "classes.yaml"
    assert (
        f"{yaml_path} names the classes background, cat, but this run's are background, person, "
        "the names the checkpoint and its overlays will give them; to train with the dataset's "
        f"names, pass --config {yaml_path}"
    ) in caplog.text
    caplog.clear()
    check_dataset(fresh_data, DEFAULT_CLASSES, kept_classes="--resume R keeps its classes")
    assert "names the classes" not in caplog.text  # --config could not change them


def test_class_ids_above_1_read_as_instance_ids_are_a_warning(fresh_data, caplog):
    """3-class index masks with the default 2-class config trained silently as one class: the
    0/1/2 values also read as Penn-Fudan instance ids."""
    check_dataset(fresh_data, DEFAULT_CLASSES)  # 0/1 class ids: nothing to say
    assert "instance ids" not in caplog.text
    masks = sorted((fresh_data / "train_masks").iterdir())
    for path in masks[:3]:
        mask = np.asarray(Image.open(path)).copy()
        mask[-4:] = 2  # a "road" strip along the bottom
        save(mask, path)
    check_dataset(fresh_data, DEFAULT_CLASSES)
    assert "3 masks in" in caplog.text and "read as instance ids" in caplog.text
    # the names alone make a class config for class-index masks: the hint shows that form
    assert "--config" in caplog.text and "(ALL_CLASSES: [background, cat, dog])" in caplog.text


def test_0_255_masks_among_0_1_ones_are_a_warning_naming_them(fresh_data, caplog):
    """Masks of two tools, 0/1 and 0/255, in one dataset: each 0/255 mask's person read as
    ignore, and training learned from the 0/1 masks alone, without a word."""
    masks = sorted((fresh_data / "train_masks").iterdir())
    for path in [*masks[:3], fresh_data / "valid_masks" / "img001.png"]:
        save(np.asarray(Image.open(path)) * np.uint8(255), path)
    check_dataset(fresh_data, DEFAULT_CLASSES)
    [said] = [r.getMessage() for r in caplog.records if "0/1 ones" in r.getMessage()]
    assert said.startswith(f"4 masks in {fresh_data} hold 0 and 255 (ignore) but no pixel of")
    assert "while 2 hold person as 1" in said
    assert "train_masks/img000.png, train_masks/img001.png" in said
    assert "valid_masks/img001.png" in said
    assert f"binary --root {fresh_data} --out {fresh_data}_01 --name person" in said
    # one mask holding person and ignore: 255 means ignore in this dataset, as in VOC's
    mask = np.asarray(Image.open(masks[3])).copy()
    mask[:2] = 255
    save(mask, masks[3])
    caplog.clear()
    check_dataset(fresh_data, DEFAULT_CLASSES)
    assert "0/1 ones" not in caplog.text


def test_masks_of_1_and_of_ignore_regions_alone_are_not_called_0_255(fresh_data, caplog):
    """Ignore alone (a whole image left out) or beside person is no sign of 0/255 masks."""
    masks = sorted((fresh_data / "train_masks").iterdir())
    save(np.full((72, 96), 255, np.uint8), masks[0])  # no background: an image left out
    check_dataset(fresh_data, DEFAULT_CLASSES)
    assert "0/1 ones" not in caplog.text
    assert (
        datasets.binary_kind(datasets.pixel_counts(np.full((2, 2), 255, np.uint8)), "ids") is None
    )


def test_instance_id_warning_names_the_classes_yaml_beside_the_data(fresh_data, caplog):
    """prepare_data.py writes classes.yaml into --data and says to pass it; trained without it,
    3-class masks merged into person and the warning said to write a YAML file, not which."""
    for path in sorted((fresh_data / "train_masks").iterdir())[:2]:
        mask = np.asarray(Image.open(path)).copy()
        mask[-4:] = 2
        save(mask, path)
    (fresh_data / "classes.yaml").write_text(
        "ALL_CLASSES: [background, cat, dog]\n"
        "LABEL_COLORS_LIST: [[0, 0, 0], [0, 255, 0], [255, 0, 0]]\n"
        "VIS_LABEL_MAP: [[0, 0, 0], [0, 255, 0], [255, 0, 0]]\n"
    )
    check_dataset(fresh_data, DEFAULT_CLASSES)
    assert f"pass --config {fresh_data / 'classes.yaml'} (background, cat, dog)" in caplog.text


def test_a_train_image_copied_into_valid_under_another_name_is_one_warning(fresh_data, caplog):
    """Validation would score an image the model trained on, and flatter it: said once, with
    the two names and the fix; training still goes on (a warning, not a refusal)."""
    check_dataset(fresh_data, DEFAULT_CLASSES)  # every image its own: nothing to say
    assert "identical" not in caplog.text
    train_image = fresh_data / "train_images" / "img003.jpg"
    (fresh_data / "valid_images" / "copy.jpg").write_bytes(train_image.read_bytes())
    mask = (fresh_data / "train_masks" / "img003.png").read_bytes()
    (fresh_data / "valid_masks" / "copy.png").write_bytes(mask)
    caplog.clear()
    pairs = check_dataset(fresh_data, DEFAULT_CLASSES)
    assert len(pairs["valid"]) == 3  # the copy is checked and kept
    said = [r.getMessage() for r in caplog.records if "identical" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("1 pair(s) of identical files in")
    assert "train_images/img003.jpg = valid_images/copy.jpg" in said[0]
    assert "scores images the model trained on" in said[0]
    assert "remove each copy from one of the two splits" in said[0]
    caplog.clear()
    check_dataset(fresh_data, DEFAULT_CLASSES, splits=("valid",))  # --eval-only: no train split
    assert "identical" not in caplog.text


def test_the_copy_warning_names_five_copies_and_counts_the_rest(fresh_data, caplog):
    for image in sorted((fresh_data / "train_images").iterdir()):  # 4 images, 2 copies each
        for copy in (f"dup_{image.stem}_a", f"dup_{image.stem}_b"):
            (fresh_data / "valid_images" / f"{copy}{image.suffix}").write_bytes(image.read_bytes())
            mask = (fresh_data / "train_masks" / f"{image.stem}.png").read_bytes()
            (fresh_data / "valid_masks" / f"{copy}.png").write_bytes(mask)
    check_dataset(fresh_data, DEFAULT_CLASSES)
    [said] = [r.getMessage() for r in caplog.records if "identical" in r.getMessage()]
    assert said.startswith("8 pair(s)") and said.count(" = valid_images/dup") == 5
    assert "and 3 more" in said


def test_identical_images_compares_bytes_not_names_or_sizes(tmp_path):
    train, valid = tmp_path / "train", tmp_path / "valid"
    train.mkdir()
    valid.mkdir()
    head = datasets.HEAD_BYTES
    rng = np.random.default_rng(0)
    files = {  # name: (train bytes, valid bytes); each pair of one size
        "copy": (blob := rng.bytes(3 * head), blob),
        "small": (b"tiny", b"tiny"),
        "first_byte": (b"a" + (rest := rng.bytes(head)), b"b" + rest),
        "last_byte": ((start := rng.bytes(2 * head)) + b"a", start + b"b"),  # past the head
        "just_the_head": (b"x" * head, b"y" * head),
    }
    for name, (in_train, in_valid) in files.items():
        (train / f"{name}.png").write_bytes(in_train)
        (valid / f"other_{name}.png").write_bytes(in_valid)
    found = datasets.identical_images(sorted(train.iterdir()), sorted(valid.iterdir()))
    assert found == [
        (train / "copy.png", valid / "other_copy.png"),
        (train / "small.png", valid / "other_small.png"),
    ]
    # a missing file matches nothing (check_pair names it); no split, no pair
    assert datasets.identical_images([train / "gone.png"], [valid / "gone.png"]) == []
    assert datasets.identical_images([], sorted(valid.iterdir())) == []


def test_identical_images_reads_no_file_whose_size_the_other_split_lacks(tmp_path, monkeypatch):
    """A large dataset without copies costs a stat per file: nothing is read."""
    paths = []
    for i in range(40):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(bytes(i + 1))  # 40 sizes
    read = []
    monkeypatch.setattr(datasets, "_digest", lambda path, *a: read.append(path))
    assert datasets.identical_images(paths[::2], paths[1::2]) == []
    assert read == []


def test_check_dataset_reports_empty_split(fresh_data):
    for f in (fresh_data / "valid_images").iterdir():
        f.unlink()
    for f in (fresh_data / "valid_masks").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match="the valid split has no image-mask pairs"):
        check_dataset(fresh_data, DEFAULT_CLASSES)


def test_train_script_stops_on_bad_dataset_with_exit_2(fresh_data, tmp_path):
    (fresh_data / "valid_masks" / "img001.png").unlink()
    (fresh_data / "train_images" / "img000.png").write_bytes(b"junk")
    out = tmp_path / "out"
    cmd = [sys.executable, "train.py", "--data", str(fresh_data), "--out-dir", str(out),
           "--backbone-source", "timm", "--weights", "random"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "2 problem(s)" in proc.stderr
    assert "img001.jpg: image without a mask" in proc.stderr
    assert "img000.png: unreadable or corrupt image" in proc.stderr
    assert not any(out.glob("*.pth")), "nothing may be trained"


# --- augmentation --------------------------------------------------------------------------


def test_train_items_are_augmented_to_imgsz_and_valid_masks_keep_their_size(tiny_data):
    pairs = check_dataset(tiny_data, DEFAULT_CLASSES)
    train = SegmentationDataset(pairs["train"], DEFAULT_CLASSES, (70, 56), train=True)
    image, mask, _ = train[0]
    assert image.shape == (3, 56, 70) and image.dtype == torch.uint8
    assert mask.shape == (56, 70) and set(mask.unique().tolist()) <= {0, 1}
    valid = SegmentationDataset(pairs["valid"], DEFAULT_CLASSES, (70, 56), train=False)
    image, mask, _ = valid[1]
    assert image.shape == (3, 56, 70)
    assert mask.shape == (112, 84)  # original resolution, for honest metrics


# --- Penn-Fudan ----------------------------------------------------------------------------


def test_penn_fudan_conversion(tmp_path):
    zip_path = penn_fudan_zip(tmp_path / "PennFudanPed.zip")
    out = tmp_path / "PennFudanPed"
    counts = convert_penn_fudan(zip_path, out)
    assert counts == {"train": 8, "valid": 2}
    # every fifth image, in name order, is a valid image
    assert sorted(p.name for p in (out / "valid_images").iterdir()) == [
        "FudanPed00005.png",
        "PennPed00010.png",
    ]
    mask = np.asarray(Image.open(out / "train_masks" / "FudanPed00001.png"))
    assert set(np.unique(mask)) == {0, 1}  # instance ids became the person class
    pairs = check_dataset(out, DEFAULT_CLASSES)
    assert len(pairs["train"]) == 8
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp left"


def test_penn_fudan_conversion_refuses_a_non_penn_fudan_zip(tmp_path):
    with zipfile.ZipFile(tmp_path / "x.zip", "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(UserError, match="not the Penn-Fudan zip"):
        convert_penn_fudan(tmp_path / "x.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_penn_fudan_conversion_refuses_an_existing_folder_a_broken_zip_and_missing_masks(
    tmp_path,
):
    good = penn_fudan_zip(tmp_path / "PennFudanPed.zip")
    (tmp_path / "there").mkdir()
    with pytest.raises(UserError, match=r"there already exists; remove it"):
        convert_penn_fudan(good, tmp_path / "there")
    (tmp_path / "cut.zip").write_bytes(good.read_bytes()[:100])  # an interrupted download
    with pytest.raises(UserError, match=r"cut.zip is not a readable zip file"):
        convert_penn_fudan(tmp_path / "cut.zip", tmp_path / "out")
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(tmp_path / "part.zip", "w") as dst:
        for name in src.namelist():
            if not name.endswith("PennPed00010_mask.png"):
                dst.writestr(name, src.read(name))
    with pytest.raises(
        UserError, match=r"1 images have no PedMasks/\*_mask.png, e.g. .*PennPed00010"
    ):
        convert_penn_fudan(tmp_path / "part.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_download_is_converted_into_the_data_folder(tmp_path, monkeypatch):
    def download(url, dst, progress=True):
        penn_fudan_zip(dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    data = tmp_path / "data" / "PennFudanPed"
    datasets.download_penn_fudan(data)
    assert len(check_dataset(data, DEFAULT_CLASSES)["valid"]) == 2
    assert sorted(p.name for p in data.parent.iterdir()) == ["PennFudanPed"], "no zip is left"


def test_offline_download_fails_with_a_clear_message(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError, match=r"could not download Penn-Fudan .* --data DIR"):
        datasets.download_penn_fudan(tmp_path / "data" / "PennFudanPed")
    assert not (tmp_path / "data" / "PennFudanPed").exists()


def test_shrunk_images_average_their_pixels_and_enlarged_ones_blend_them():
    # area averaging when shrinking: a 1-pixel checkerboard shrunk 3 times is an even gray, not
    # every third pixel (black or white, as bilinear sampling gives at an integer factor)
    checker = np.indices((84, 84)).sum(0) % 2 * 255
    small = datasets.resize_image(np.repeat(checker[..., None], 3, 2).astype(np.uint8), (28, 28))
    assert small.shape == (28, 28, 3) and small.min() >= 100 and small.max() <= 155
    # bilinear when enlarging: values in between appear, not blocks of the old pixels
    ramp = np.array([[[0] * 3, [200] * 3]], np.uint8)  # (1, 2, 3)
    row = datasets.resize_image(ramp, (8, 1))[0, :, 0]
    assert len(set(row.tolist()) - {0, 200}) >= 2, row


def test_an_image_shrunk_one_way_and_enlarged_the_other_averages_and_blends_each_way():
    # 854x480 video at 640x640: OpenCV's area resampling, chosen by the smaller area, repeated
    # the rows of the enlarged side (nearest neighbour); bilinear, chosen by the larger area,
    # sampled every third pixel of the shrunk side
    ramp = np.repeat(np.repeat((np.arange(10) * 25).astype(np.uint8), 84)[:, None], 3, 1)
    column = datasets.resize_image(ramp.reshape(10, 84, 3), (28, 20))[:, 0, 0]  # W / 3, H x 2
    assert len(set(column.tolist()) - set(range(0, 250, 25))) >= 5, column
    checker = np.tile(np.arange(84) % 2 * 255, (10, 1)).astype(np.uint8)
    row = datasets.resize_image(np.repeat(checker[..., None], 3, 2), (28, 40))[0, :, 0]
    assert row.min() >= 80 and row.max() <= 175, row  # 3 pixels averaged: 85 or 170


def test_resized_masks_keep_their_ids():
    # nearest neighbour only: blending 0 and 2 would invent class 1, blending 255 a class 127
    mask = np.array([[0, 2, 2], [255, 255, 1]], dtype=np.uint8)
    assert resize_mask(mask, (6, 4)).tolist() == [
        [0, 0, 2, 2, 2, 2],
        [0, 0, 2, 2, 2, 2],
        [255, 255, 255, 255, 1, 1],
        [255, 255, 255, 255, 1, 1],
    ]
    rng = np.random.default_rng(0)
    mask = rng.choice(np.array([0, 2, 255], np.uint8), size=(37, 53))
    for size in ((20, 15), (90, 66), (53, 80)):
        assert set(np.unique(resize_mask(mask, size))) <= {0, 2, 255}


def test_augmented_masks_keep_their_ids_and_stay_on_their_pixels(tmp_path):
    # three classes and ignore, each drawn in its own colour: after crops, flips and resizing
    # the mask must hold only those ids, and each id must still sit on its colour
    colors = np.array([(0, 0, 0), (0, 255, 0), (255, 0, 0)] + [(0, 0, 255)] * 253, np.uint8)
    mask = np.zeros((60, 80), np.uint8)
    mask[:, 40:] = 1
    mask[10:50, 10:30] = 2
    mask[30:60, 50:80] = 255
    for d in ("images", "masks"):
        (tmp_path / d).mkdir()
    save(colors[mask], tmp_path / "images" / "a.png")
    save(mask, tmp_path / "masks" / "a.png")
    pairs = [(tmp_path / "images" / "a.png", tmp_path / "masks" / "a.png")]
    data = SegmentationDataset(pairs, THREE, (42, 28), train=True)
    for epoch in range(6):
        data.set_epoch(epoch)
        image, target, _ = data[0]
        assert target.shape == (28, 42)
        assert set(target.unique().tolist()) <= {0, 1, 2, 255}
        # each pixel's nearest class colour (colour jitter moves the colours a little)
        palette = torch.tensor(colors[[0, 1, 2, 255]], dtype=torch.float32)  # (4, 3)
        pixels = image.permute(1, 2, 0).reshape(-1, 3).float()
        seen = torch.tensor([0, 1, 2, 255])[torch.cdist(pixels, palette).argmin(1)]
        agree = (seen == target.flatten()).float().mean()
        assert agree > 0.8, (epoch, agree)  # all but the blended edges (a flip scores 0.05)


def test_training_masks_keep_their_edges_where_the_resized_image_has_them(tmp_path):
    # A 100x75 rectangle: after each training resize (plain, or crop + flip + jitter), every
    # pixel that is clearly inside or outside it in the image must be so in the mask. OpenCV's
    # INTER_NEAREST put the masks half a pixel right of and below their images: 30-200 pixels
    # off per item here, one column or row along each edge.
    mask = np.zeros((75, 100), np.uint8)
    mask[23:61, 31:78] = 1
    image = np.where(mask[..., None] == 1, 180, 60).repeat(3, 2).astype(np.uint8)
    pairs = [(save(image, tmp_path / "a.png"), save(mask, tmp_path / "a_mask.png"))]
    for size in ((56, 70), (112, 56), (64, 42)):  # shrinking, enlarging, both
        for augment in (False, True):
            data = SegmentationDataset(pairs, DEFAULT_CLASSES, size, train=True, augment=augment)
            for epoch in range(6 if augment else 1):
                data.set_epoch(epoch)
                image_seen, target, _ = data[0]
                gray = image_seen.float().mean(0)
                inside = (gray - gray.min()) / (gray.max() - gray.min())  # 0 outside, 1 inside
                sure = (inside - 0.5).abs() > 0.2  # not a pixel the edge blends
                wrong = ((inside > 0.5) != (target == 1)) & sure
                assert not wrong.any(), (size, augment, epoch, int(wrong.sum()))


def test_a_crop_shrunk_one_way_and_enlarged_the_other_is_blended_as_resize_image_does(tmp_path):
    # An 84x10 image whose 10 rows each have their own gray, cropped (8:1 or so, half the area
    # or more) and resized to 28x20: the width shrinks, the height grows. The crop resampled by
    # area, which repeats rows along a side that grows, so a column held at most the 10 grays
    # of the image; bilinear blending gives about 20. Colour jitter maps each gray to one gray
    # and cannot add any. Each row is a class of its own, so the mask must keep exact ids.
    rows = np.arange(10, dtype=np.uint8)
    image = np.repeat((rows * 25)[:, None, None], 84, 1).repeat(3, 2)  # (10, 84, 3)
    mask = np.repeat(np.where(rows < 5, rows % 3, 255).astype(np.uint8)[:, None], 84, 1)
    pairs = [(save(image, tmp_path / "a.png"), save(mask, tmp_path / "a_mask.png"))]
    data = SegmentationDataset(pairs, THREE, (28, 20), train=True)
    for epoch in range(6):
        data.set_epoch(epoch)
        image_seen, target, _ = data[0]
        grays = set(image_seen[0, :, 14].tolist())
        assert len(grays) > 10, (epoch, sorted(grays))
        assert set(target.unique().tolist()) <= {0, 1, 2, 255}, epoch


@pytest.mark.parametrize("size", [(800, 100), (100, 800)])  # a panorama, a tall scan
def test_random_crops_of_a_far_from_square_image_reach_its_ends(tmp_path, size):
    # Crops of aspect 3/4 to 4/3 and half the area or more cannot fit in an 8:1 image: every
    # draw fell back to the same central 4:3 crop, so the two outer thirds (classes 0 and 2
    # here) were never trained on, while validation scores the whole image.
    w, h = size
    along = np.arange(max(size)) * 3 // max(size)  # 0, 1, 2 in thirds along the long side
    mask = np.tile(along, (h, 1)) if w > h else np.tile(along[:, None], (1, w))
    mask = mask.astype(np.uint8)
    image = np.full((h, w, 3), 100, np.uint8)
    pairs = [(save(image, tmp_path / "a.png"), save(mask, tmp_path / "a_mask.png"))]
    data = SegmentationDataset(pairs, THREE, (56, 56), train=True)
    seen = set()
    for epoch in range(12):
        data.set_epoch(epoch)
        seen |= set(data[0][1].unique().tolist())
    assert seen == {0, 1, 2}


def test_each_item_and_seed_draws_its_own_augmentation(tiny_data):
    # sample_seed mixes (seed, epoch, index): without the index every item of an epoch would be
    # cropped and flipped alike, without the seed --seed would change nothing
    pair = check_dataset(tiny_data, DEFAULT_CLASSES)["train"][0]
    data = SegmentationDataset([pair] * 4, DEFAULT_CLASSES, (56, 42), train=True, seed=3)
    images = [data[i][0] for i in range(4)]
    assert any(not torch.equal(images[0], image) for image in images[1:])
    other = SegmentationDataset([pair] * 4, DEFAULT_CLASSES, (56, 42), train=True, seed=4)
    assert any(not torch.equal(images[i], other[i][0]) for i in range(4))


def test_the_flip_and_the_colour_jitter_are_drawn_apart(tmp_path):
    # albumentations' Compose.set_random_seed gives every transform the item's seed, so each
    # drew the same numbers: the flip and the jitter (both p=0.5) came together or not at all.
    # Class 0 on the left half, 1 on the right: every crop (half the area, 3:4 to 4:3) spans
    # the middle, so the mask's first column says whether the item was flipped. Without
    # jitter, a pixel inside a half keeps its colour exactly.
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 1
    image = np.where(mask[..., None] == 1, (200, 150, 100), (100, 150, 200)).astype(np.uint8)
    pairs = [(save(image, tmp_path / "a.png"), save(mask, tmp_path / "a_mask.png"))]
    data = SegmentationDataset(pairs * 64, DEFAULT_CLASSES, (28, 28), train=True)
    seen = set()
    for index in range(64):
        image_seen, target, _ = data[index]
        flipped = bool(target[0, 0] == 1)
        unchanged = image[0, 63 if flipped else 0]
        jittered = image_seen[:, 0, 0].tolist() != unchanged.tolist()
        seen.add((flipped, jittered))
    assert seen == {(False, False), (False, True), (True, False), (True, True)}


def test_inference_and_the_benchmarks_import_without_albumentations():
    # A GPU machine may lack albumentations: only training augmentation may need it.
    code = (
        "import sys; sys.modules['albumentations'] = None; sys.path[:0] = ['tests', 'benchmarks']\n"
        "import bench_attention, bench_inference, bench_train, engine, infer_image, infer_video\n"
        "import datasets\n"
        "try:\n    datasets.train_transform((56, 56))\nexcept ImportError:\n    print('needed')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "needed"


# --- MASK_IDS: label ids mapped to class ids ---------------------------------------------------

# Cityscapes' 19 training classes by their label ids in gtFine_labelIds.png
CITYSCAPES_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]


def cityscapes_classes() -> ClassConfig:
    names = [f"class{i}" for i in range(len(CITYSCAPES_IDS))]
    return ClassConfig.from_dict({"ALL_CLASSES": names, "MASK_IDS": CITYSCAPES_IDS})


def expected_ids(label_ids: np.ndarray, mask_ids: list) -> np.ndarray:
    """The class ids of MASK_IDS computed pixel by pixel, independently of datasets.py."""
    by_value = {}
    for class_id, values in enumerate(mask_ids):
        for v in values if isinstance(values, list) else [values]:
            by_value[v] = class_id
    return np.vectorize(lambda v: by_value.get(int(v), 255), otypes=[np.uint8])(label_ids)


def test_mask_ids_map_cityscapes_label_ids_to_train_ids_and_the_rest_to_ignore(tmp_path):
    rng = np.random.default_rng(0)
    label_ids = rng.integers(0, 34, (24, 40)).astype(np.uint8)
    label_ids[:3, :3] = 255  # the license plate's id -1, as an 8-bit file holds it
    out = read_mask(save(label_ids, tmp_path / "m.png"), cityscapes_classes())
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected_ids(label_ids, CITYSCAPES_IDS))


def test_mask_ids_read_16_bit_masks_and_merge_several_values_into_one_class(tmp_path):
    # 300 label ids of a 16-bit mask, more than 8 bits hold, merged into three classes
    mask_ids = [list(range(0, 100)), list(range(100, 280)), [280, 299, 1000]]
    classes = ClassConfig.from_dict({"ALL_CLASSES": ["a", "b", "c"], "MASK_IDS": mask_ids})
    rng = np.random.default_rng(1)
    label_ids = rng.integers(0, 300, (20, 30)).astype(np.uint16)
    label_ids[0, :3] = 1000, 2000, 65535  # listed; past the table; the largest 16-bit value
    out = read_mask(save(label_ids, tmp_path / "m.png"), classes)
    np.testing.assert_array_equal(out, expected_ids(label_ids, mask_ids))
    assert out[0, :3].tolist() == [2, 255, 255]


def test_mask_ids_ignore_the_negative_values_of_a_32_bit_mask(tmp_path):
    # A signed 32-bit mask (a TIFF in Pillow's mode I) may hold -1, Cityscapes' id for the
    # license plate, which no class lists: as an index into the table, -1 would read the
    # class of the table's last value (299 here) and -300 that of its first
    classes = ClassConfig.from_dict({"ALL_CLASSES": ["a", "b"], "MASK_IDS": [[0, 1], 299]})
    label_ids = np.array([[0, 299, -1, -300], [1, 5, 299, 0]], np.int32)
    path = save(label_ids, tmp_path / "m.tif")
    assert Image.open(path).mode == "I"  # the premise: read as signed 32-bit values
    assert read_mask(path, classes).tolist() == [[0, 1, 255, 255], [0, 255, 1, 0]]


def test_mask_ids_make_ade20k_other_ignored_and_shift_its_150_classes(tmp_path):
    classes = ClassConfig.from_dict(
        {"ALL_CLASSES": [f"c{i}" for i in range(1, 151)], "MASK_IDS": list(range(1, 151))}
    )
    label_ids = np.arange(151, dtype=np.uint8).reshape(1, -1).repeat(3, axis=0)
    out = read_mask(save(label_ids, tmp_path / "m.png"), classes)
    assert out[0, 0] == 255  # 0, "other", is ignored
    np.testing.assert_array_equal(out[:, 1:], label_ids[:, 1:] - 1)


def test_the_dataset_check_takes_label_id_masks_with_mask_ids(tmp_path):
    root = make_dataset(tmp_path / "data", n_train=2, n_valid=1)
    rng = np.random.default_rng(2)
    for mask in root.glob("*_masks/*.png"):
        shape = np.asarray(Image.open(mask)).shape
        save(rng.choice([*CITYSCAPES_IDS, 0, 1, 255], shape).astype(np.uint8), mask)
    names = [f"class{i}" for i in range(len(CITYSCAPES_IDS))]
    with pytest.raises(DatasetError, match="are not class ids"):
        check_dataset(root, ClassConfig.from_dict({"ALL_CLASSES": names}))
    pairs = check_dataset(root, cityscapes_classes())
    assert [len(pairs[s]) for s in ("train", "valid")] == [2, 1]


@pytest.mark.parametrize(
    "mapping, message",
    [
        ({"MASK_IDS": [0, 7]}, "MASK_IDS has 2 entries for 3 classes"),
        ({"MASK_IDS": [0, 7, [8, 7]]}, "gives the value 7 to both b and c"),
        ({"MASK_IDS": [0, 7, []]}, "gives c no value"),
        ({"MASK_IDS": [0, 7, 70000]}, "a whole number 0-65535"),
        ({"MASK_IDS": [0, 7, "car"]}, "a whole number 0-65535"),
        ({"MASK_IDS": [0, 7, 8], "LABEL_COLORS_LIST": [[0, 0, 0], [9, 9, 9], [1, 1, 1]]},
         "exclude each other"),
    ],
)  # fmt: skip
def test_bad_mask_ids_name_the_file_and_the_fix(mapping, message):
    with pytest.raises(UserError, match=message) as err:
        ClassConfig.from_dict({"ALL_CLASSES": ["a", "b", "c"], **mapping}, source="my.yaml")
    assert str(err.value).startswith("my.yaml: ")


def test_mask_ids_round_trip_through_the_checkpoint_form():
    mapping = {"ALL_CLASSES": ["a", "b", "c"], "MASK_IDS": [0, [7, 8], 300]}
    classes = ClassConfig.from_dict(mapping)
    assert classes.to_dict()["MASK_IDS"] == [0, [7, 8], 300]
    assert ClassConfig.from_dict(classes.to_dict()) == classes
    assert "MASK_IDS" not in ClassConfig.from_dict({"ALL_CLASSES": ["a", "b"]}).to_dict()


def test_a_mask_outside_many_classes_counts_them_and_names_mask_ids(tmp_path):
    # Cityscapes' label ids 0-33 under its 19 training classes: every mask of the dataset has
    # this problem, each on a line that listed all 19 names (ADE20K's: 150)
    names = [f"class{i}" for i in range(19)]
    mask = save(np.arange(34, dtype=np.uint8).reshape(2, 17), tmp_path / "m.png")
    with pytest.raises(DataError) as err:
        read_mask(mask, ClassConfig.from_dict({"ALL_CLASSES": names}))
    message = str(err.value)
    assert "values [19, 20, 21, 22, 23] ... are not class ids 0-18 of the 19 classes" in message
    assert "class18" not in message and "MASK_IDS" in message
    # a few classes are still named
    with pytest.raises(DataError, match=r"0-2 of \['a', 'b', 'c'\] or 255 \(ignore\); .*MASK_IDS"):
        read_mask(mask, ClassConfig.from_dict({"ALL_CLASSES": ["a", "b", "c"]}))


def test_more_classes_than_8_bits_hold_are_told_to_merge_them_with_mask_ids():
    names = [f"c{i}" for i in range(300)]
    with pytest.raises(UserError, match=r"at most 255 classes .*got 300: merge .*MASK_IDS"):
        ClassConfig.from_dict({"ALL_CLASSES": names})


@pytest.mark.parametrize("names", [["background", "person"], ["road", "car", "sky"]])
def test_mask_ids_that_no_mask_holds_are_named_not_taken_for_0_255_masks(fresh_data, names):
    # 0/1 masks under the label ids of another dataset: every pixel reads as ignore, which
    # two classes took for 0/255 masks, and more for masks to relabel with class ids
    mask_ids = list(range(7, 7 + len(names)))
    classes = ClassConfig.from_dict({"ALL_CLASSES": names, "MASK_IDS": mask_ids})
    with pytest.raises(UserError, match="none of its masks holds a value that MASK_IDS lists"):
        check_dataset(fresh_data, classes)


def test_a_colour_not_among_many_listed_colours_is_named_without_the_whole_list(tmp_path):
    # 150 classes: each mask's line listed all 150 colours before the one not listed
    colors = [list(c) for c in voc_palette(150)]
    classes = ClassConfig.from_dict(
        {"ALL_CLASSES": [f"c{i}" for i in range(150)], "LABEL_COLORS_LIST": colors}
    )
    rgb = np.array(colors[:6], np.uint8).reshape(2, 3, 3)
    rgb[1, 2] = (1, 2, 3)
    with pytest.raises(datasets.OtherClasses) as err:
        read_mask(save(rgb, tmp_path / "m.png"), classes)
    assert str(err.value).startswith(
        f"{tmp_path / 'm.png'}: a colour mask with 1 colour not in LABEL_COLORS_LIST (its 150 "
        "colours): [1, 2, 3] in 1 pixel (the first at x=2, y=1); list each class's colour there"
    )


def test_a_dataset_with_a_problem_in_every_mask_lists_the_first_and_counts_the_rest(tmp_path):
    # Cityscapes' label ids read as class ids: each of its 3475 masks had a line
    root = make_dataset(tmp_path / "data", n_train=36, n_valid=4, sizes=((16, 12),))
    for mask in root.glob("*_masks/*.png"):
        save(np.full((12, 16), 33, np.uint8), mask)
    with pytest.raises(DatasetError) as err:
        check_dataset(root, ClassConfig.from_dict({"ALL_CLASSES": ["a", "b", "c"]}))
    assert len(err.value.problems) == 40
    lines = str(err.value).splitlines()
    assert lines[0].endswith("has 40 problem(s); fix them and run again:")
    assert len(lines) == 1 + 30 + 1  # the first 30 listed
    assert all(line.startswith("  - ") for line in lines[1:-1])
    assert lines[-1] == "  ... and 10 more"


def test_a_colour_mask_under_mask_ids_is_told_to_use_label_ids_not_to_add_colours(tmp_path):
    # Cityscapes' *_color.png given where its *_labelIds.png belong: adding LABEL_COLORS_LIST,
    # the advice without MASK_IDS, is refused beside it
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[:2] = (128, 64, 128)  # Cityscapes' road
    with pytest.raises(DataError) as err:
        read_mask(save(rgb, tmp_path / "m.png"), cityscapes_classes())
    message = str(err.value)
    assert "a colour mask (colours [[0, 0, 0], [128, 64, 128]])" in message
    assert "MASK_IDS reads masks of label ids" in message
    assert "add LABEL_COLORS_LIST" not in message


def test_masks_with_values_mask_ids_leaves_out_are_not_taken_for_0_255_masks(fresh_data, caplog):
    # label ids 0 and 24 (person) in some masks, 0 and 5 (no class: ignore) in the others:
    # these read as 0/255 masks among 0/1 ones, with the binary command that would make 5 person
    for i, mask in enumerate(sorted(fresh_data.glob("*_masks/*.png"))):
        ids = np.asarray(Image.open(mask))
        save(np.where(ids == 1, 24 if i % 2 else 5, 0).astype(np.uint8), mask)
    classes = ClassConfig.from_dict({"ALL_CLASSES": ["background", "person"], "MASK_IDS": [0, 24]})
    check_dataset(fresh_data, classes)
    assert "prepare_data.py binary" not in caplog.text
