"""prepare_data.py on small fixtures of Penn-Fudan, PASCAL VOC, COCO, Cityscapes, ADE20K, the
exports and 0/255 masks built here."""

import argparse
import errno
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as mask_utils

import datasets
import prepare_data
from config import DEFAULT_CLASSES, ClassConfig, voc_palette
from conftest import ROOT, needs_mount_namespace, run_bind_mounted, run_on_tmpfs
from datasets import check_dataset
from synthetic import penn_fudan_zip
from utils import UserError


def run(*argv: str) -> None:
    prepare_data.main(prepare_data.get_args_parser().parse_args(list(argv)))


def run_coco(tmp_path: Path, ann: Path, out: Path, *flags: str) -> None:
    """prepare_data coco with the annotations ``ann`` of coco_fixture's images (under
    ``tmp_path``/coco) into ``out``."""
    images = str(tmp_path / "coco/images")
    run("coco", "--annotations", str(ann), "--images", images, "--out", str(out), *flags)


def voc_fixture(root):
    """Three images: person (15) and dog (12) pixels, a 255 border, official-style lists."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for i in range(3):
        stem = f"2007_00000{i}"
        Image.fromarray(np.full((20, 30, 3), 50 * i, np.uint8)).save(
            root / "JPEGImages" / f"{stem}.jpg"
        )
        mask = np.zeros((20, 30), np.uint8)
        mask[2:10, 2:10] = 15  # person
        mask[12:18, 12:25] = 12  # dog
        mask[1, :] = 255  # border
        img = Image.fromarray(mask, mode=None).convert("P")
        img.putpalette([v for color in voc_palette(256) for v in color])
        img.save(root / "SegmentationClass" / f"{stem}.png")
    lists = root / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("2007_000000\n2007_000001\n")
    (lists / "val.txt").write_text("2007_000002\n")
    return root


def test_voc_keeps_chosen_classes_and_the_ignore_border(tmp_path, capsys):
    root = voc_fixture(tmp_path / "VOC2012")
    out = tmp_path / "voc_person"
    run("voc", "--root", str(root), "--out", str(out), "--classes", "person")
    mask = np.asarray(Image.open(out / "train_masks" / "2007_000000.png"))
    assert mask[5, 5] == 1 and mask[15, 20] == 0 and mask[1, 0] == 255  # person, dog->bg, border
    assert len(list((out / "valid_images").iterdir())) == 1
    classes = ClassConfig.from_dict(yaml.safe_load((out / "classes.yaml").read_text()))
    assert classes.names == ("background", "person")
    assert classes.vis_colors[1] == (192, 128, 128)  # VOC's own person colour
    assert len(check_dataset(out, classes)["train"]) == 2
    printed = capsys.readouterr().out
    assert "train: 2 images; pixels: background" in printed and "person 128" in printed


def test_voc_with_two_classes_numbers_them_in_order(tmp_path):
    root = voc_fixture(tmp_path / "VOC2012")
    out = tmp_path / "voc2"
    run("voc", "--root", str(root), "--out", str(out), "--classes", "dog", "person")
    mask = np.asarray(Image.open(out / "valid_masks" / "2007_000002.png"))
    assert mask[5, 5] == 2 and mask[15, 20] == 1


def coco_fixture(root):
    """Image a: a big dog polygon with a small person (compressed RLE) inside it and a crowd of
    people (uncompressed RLE); image b: one person polygon; image c: only a cat."""
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i, name in enumerate(["a.jpg", "b.jpg", "c.jpg"], start=1):
        # apart byte for byte: the importer refuses a copy of a train image in valid
        Image.fromarray(np.full((40, 50, 3), 60 * i, np.uint8)).save(root / "images" / name)
        images.append({"id": i, "file_name": name, "height": 40, "width": 50})
    small = np.zeros((40, 50), np.uint8, order="F")
    small[10:15, 10:15] = 1
    compressed = mask_utils.encode(small)
    compressed["counts"] = compressed["counts"].decode()
    crowd = np.zeros((40, 50), np.uint8)
    crowd[30:35, 40:45] = 1
    flat = crowd.flatten(order="F")
    changes = np.flatnonzero(np.diff(np.r_[0, flat, 0])).tolist()  # run boundaries
    counts = np.diff([0, *changes, flat.size]).tolist()
    anns += [
        {"id": 1, "image_id": 1, "category_id": 18, "area": 600, "iscrowd": 0,
         "segmentation": [[5, 5, 35, 5, 35, 25, 5, 25]]},  # dog box x 5-35, y 5-25
        {"id": 2, "image_id": 1, "category_id": 1, "area": 25, "iscrowd": 0,
         "segmentation": compressed},
        {"id": 3, "image_id": 1, "category_id": 1, "area": 25, "iscrowd": 1,
         "segmentation": {"size": [40, 50], "counts": counts}},
        {"id": 4, "image_id": 2, "category_id": 1, "area": 100, "iscrowd": 0,
         "segmentation": [[20, 20, 30, 20, 30, 30, 20, 30]]},
        {"id": 5, "image_id": 3, "category_id": 17, "area": 100, "iscrowd": 0,
         "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
    ]  # fmt: skip
    categories = [{"id": 1, "name": "person"}, {"id": 17, "name": "cat"},
                  {"id": 18, "name": "dog"}]  # fmt: skip
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return path


def test_coco_polygons_rle_crowds_and_overlaps(tmp_path, capsys):
    ann = coco_fixture(tmp_path / "coco")
    out = tmp_path / "coco_out"
    run_coco(tmp_path, ann, out, "--classes", "person", "dog", "--valid-every", "2")
    mask = np.asarray(Image.open(out / "train_masks" / "a.png"))
    assert mask[12, 12] == 1  # the small person stays on top of the big dog
    assert mask[20, 20] == 2  # dog
    assert mask[32, 42] == 255  # the crowd is ignored
    assert mask[38, 2] == 0
    assert (out / "valid_masks" / "b.png").is_file()  # every 2nd image, by name
    assert not (out / "train_images" / "c.jpg").exists()  # no chosen category in it
    classes = ClassConfig.from_dict(yaml.safe_load((out / "classes.yaml").read_text()))
    assert classes.names == ("background", "person", "dog")
    check_dataset(out, classes)
    assert "ignored 25" in capsys.readouterr().out


def test_ignore_only_masks_of_voc_and_coco_imports_are_not_called_0_255(tmp_path, caplog):
    """VOC's borders in an image without the class, and a COCO image holding a crowd alone,
    make masks of 0 and 255 beside masks of 0 and 1: 255 is ignore there, as the masks holding
    the class and 255 show, and check_dataset does not take them for 0/255 masks."""
    root = voc_fixture(tmp_path / "VOC2012")
    img = Image.open(root / "SegmentationClass" / "2007_000000.png")
    mask = np.asarray(img).copy()
    mask[mask == 15] = 0  # no person: a dog and its border
    person_less = Image.fromarray(mask).convert("P")
    person_less.putpalette(img.getpalette())
    person_less.save(root / "SegmentationClass" / "2007_000000.png")
    voc = tmp_path / "voc_person"
    run("voc", "--root", str(root), "--out", str(voc), "--classes", "person")
    ann = coco_fixture(tmp_path / "coco")
    data = json.loads(ann.read_text())
    Image.fromarray(np.full((40, 50, 3), 250, np.uint8)).save(tmp_path / "coco/images/d.jpg")
    data["images"].append({"id": 4, "file_name": "d.jpg", "height": 40, "width": 50})
    crowd_only = {**data["annotations"][2], "id": 6, "image_id": 4}
    data["annotations"].append(crowd_only)
    ann.write_text(json.dumps(data))
    coco = tmp_path / "coco_person"
    run_coco(tmp_path, ann, coco, "--classes", "person", "--valid-every", "2")
    for out, mask in ((voc, "train_masks/2007_000000.png"), (coco, "train_masks/d.png")):
        assert np.unique(np.asarray(Image.open(out / mask))).tolist() == [0, 255]
        check_dataset(out, DEFAULT_CLASSES)
    assert "0/1 ones" not in caplog.text


def test_coco_masks_match_pycocotools_pixel_for_pixel(tmp_path):
    """Each written mask against COCO.annToMask: polygons of fractional vertices in two parts,
    one reaching outside the image, compressed and uncompressed RLE."""
    from pycocotools.coco import COCO

    (tmp_path / "images").mkdir()
    h, w = 37, 53  # odd sides: rows and columns swapped would not fit
    blob = np.zeros((h, w), np.uint8, order="F")
    blob[5:30, 10:40] = 1
    blob[10:12, :] = 1
    compressed = mask_utils.encode(blob)
    compressed["counts"] = compressed["counts"].decode()
    flat = np.asfortranarray(blob[::-1]).flatten(order="F")  # another shape than the first
    changes = np.flatnonzero(np.diff(np.r_[0, flat, 0])).tolist()
    segmentations = [
        [[3.3, 4.7, 20.2, 2.1, 25.9, 30.4, 1.2, 28.8], [30.5, 5.5, 50.1, 6.2, 45.3, 20.9]],
        compressed,
        {"size": [h, w], "counts": np.diff([0, *changes, flat.size]).tolist()},
        [[-5, -5, w + 3, -2, w + 2, h + 4, -1, h + 1]],
    ]
    images, anns = [], []
    for i, seg in enumerate(segmentations, start=1):
        image = np.full((h, w, 3), 50 * i, np.uint8)
        Image.fromarray(image).save(tmp_path / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "height": h, "width": w})
        anns.append({"id": i, "image_id": i, "category_id": 1, "iscrowd": 0, "segmentation": seg})
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}
    ))  # fmt: skip
    out = tmp_path / "out"
    run("coco", "--annotations", str(ann), "--images", str(tmp_path / "images"),
        "--out", str(out), "--valid-every", "2")  # fmt: skip
    coco = COCO(str(ann))
    for entry in anns:
        (path,) = out.glob(f"*_masks/{entry['image_id']}.png")
        expected = coco.annToMask(coco.loadAnns([entry["id"]])[0])
        assert (np.asarray(Image.open(path)) == expected).all(), entry["segmentation"]


def test_coco_overlaps_follow_the_drawn_sizes_whatever_area_says(tmp_path):
    """Converters write "area": 0 (or a box's area): objects were drawn in the file's order, and
    the large dog listed after the small person covered it."""
    ann = coco_fixture(tmp_path / "coco")
    data = json.loads(ann.read_text())
    dog, person = data["annotations"][:2]
    dog["area"] = person["area"] = 0
    data["annotations"][:2] = [person, dog]
    ann.write_text(json.dumps(data))
    out = tmp_path / "out"
    run_coco(tmp_path, ann, out, "--valid-every", "2", "--classes", "person", "dog")
    mask = np.asarray(Image.open(out / "train_masks" / "a.png"))
    assert mask[12, 12] == 1 and (mask == 1).sum() == 25 and mask[20, 20] == 2


def test_coco_with_more_classes_than_voc_has_colours(tmp_path):
    (tmp_path / "images").mkdir()
    names = [f"c{i}" for i in range(21)]  # 22 classes with background; COCO has 80
    images, anns = [], []
    for i in range(2):
        image = np.full((30, 30, 3), 100 * i, np.uint8)  # apart: no copy across the splits
        Image.fromarray(image).save(tmp_path / "images" / f"{i}.jpg")
        images.append({"id": i, "file_name": f"{i}.jpg", "height": 30, "width": 30})
        anns.append({"id": i, "image_id": i, "category_id": 20, "area": 64, "iscrowd": 0,
                     "segmentation": [[1, 1, 9, 1, 9, 9, 1, 9]]})  # fmt: skip
    categories = [{"id": i, "name": n} for i, n in enumerate(names)]
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    out = tmp_path / "out"
    run("coco", "--annotations", str(ann), "--images", str(tmp_path / "images"),
        "--out", str(out), "--valid-every", "2", "--classes", *names)  # fmt: skip
    classes = ClassConfig.from_dict(yaml.safe_load((out / "classes.yaml").read_text()))
    assert classes.names[-1] == "c20" and len(set(classes.vis_colors)) == 22
    check_dataset(out, classes)


def test_coco_unknown_category_is_named(tmp_path):
    ann = coco_fixture(tmp_path / "coco")
    with pytest.raises(
        UserError, match=r"no categories \['zebra'\]; it has \['cat', 'dog', 'person'\]"
    ):
        run_coco(tmp_path, ann, tmp_path / "o", "--classes", "zebra")


def test_coco_annotations_of_a_category_no_entry_defines_are_named(tmp_path):
    """An export whose categories list lacks ids its annotations use made those objects
    background without a word, as if left out of --classes (which stays silent: the cat here)."""
    ann = coco_fixture(tmp_path / "coco")
    data = json.loads(ann.read_text())
    data["annotations"][1]["category_id"] = 0  # image a's small person
    data["annotations"][3]["category_id"] = 0  # image b's person
    data["annotations"].append({**data["annotations"][4], "id": 6, "category_id": 90})
    ann.write_text(json.dumps(data))
    with pytest.raises(
        UserError,
        match=r"instances\.json: 3 annotation\(s\) \(2, 4, 6\) have a category_id that no entry "
        r"of its categories has \(0, 90\): .*Add those categories to its categories list",
    ):
        run_coco(tmp_path, ann, tmp_path / "o", "--valid-every", "2")
    assert not (tmp_path / "o").exists()


def test_existing_output_needs_force_and_force_replaces_it_whole(tmp_path):
    zip_path = penn_fudan_zip(tmp_path / "PennFudanPed.zip")
    out = tmp_path / "pf"
    out.mkdir()
    (out / "old.txt").write_text("keep me unless forced")
    with pytest.raises(UserError, match=r"holds no dataset \(old\.txt\): --force would replace"):
        run("pennfudan", "--zip", str(zip_path), "--out", str(out))
    assert (out / "old.txt").is_file()
    run("pennfudan", "--zip", str(zip_path), "--out", str(out), "--force")
    assert not (out / "old.txt").exists()
    assert len(list((out / "train_images").iterdir())) == 8
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_staging_folder_left_by_a_killed_run_is_named(tmp_path, caplog):
    # A run killed outright (SIGKILL, a power cut) leaves its hidden staging folder beside --out,
    # which may hold a whole dataset, or --out itself as it was, moved aside before the swap
    zip_path = penn_fudan_zip(tmp_path / "PennFudanPed.zip")
    out = tmp_path / "pf"
    built = tmp_path / ".pf.k1lled00"  # killed while building
    (built / "data").mkdir(parents=True)
    swapped = tmp_path / ".pf.swapped0"  # killed between moving --out aside and the new one in
    (swapped / "old").mkdir(parents=True)
    run("pennfudan", "--zip", str(zip_path), "--out", str(out))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2, warned
    assert warned[0].startswith(f"{built} was left by a prepare_data run killed outright"), warned
    assert f"delete it once no run writes --out {out}" in warned[0]
    assert warned[1].startswith(f"{swapped / 'old'} holds --out {out} as it was before"), warned
    assert built.is_dir() and swapped.is_dir()  # kept: the user decides
    caplog.clear()
    (tmp_path / ".pf.keep").mkdir()  # the user's own: not a staging folder's name
    shutil.rmtree(built), shutil.rmtree(swapped)
    run("pennfudan", "--zip", str(zip_path), "--out", str(out), "--force")
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_pennfudan_names_the_final_folder_not_the_staging_one(tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO, logger="dinoseg")
    out = tmp_path / "pf"
    run("pennfudan", "--zip", str(penn_fudan_zip(tmp_path / "PennFudanPed.zip")), "--out", str(out))
    assert f"Wrote {out};" in capsys.readouterr().out
    assert f"{tmp_path}/." not in caplog.text, caplog.text


@pytest.mark.skipif(shutil.which("bash") is None, reason="the command is pasted into bash")
@pytest.mark.skipif(
    sys.platform == "win32" or shutil.which("bash") is None, reason="POSIX paths, pasted into bash"
)
def test_the_train_command_names_an_out_folder_that_is_not_utf8(tmp_path):
    """A Latin-1 --out was printed with its surrogates escaped as text (\\udce9): pasted, the
    command named another folder."""
    out = tmp_path / os.fsdecode(b"pf caf\xe9's")  # a space and a quote: quoted as well
    zip_path = penn_fudan_zip(tmp_path / "PennFudanPed.zip")
    cmd = [sys.executable, "prepare_data.py", "pennfudan", "--zip", zip_path, "--out", out]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True, timeout=300)
    command = proc.stdout.decode().split("train with: ")[1].strip()
    words = subprocess.run(
        ["bash", "-c", 'printf "%s\\0" ' + command.removeprefix("python train.py ")],
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    assert words[:4] == [
        b"--data",
        os.fsencode(out),
        b"--config",
        os.fsencode(out / "classes.yaml"),
    ]


def binary_fixture(root, jpeg_mask=False):
    """Three train and one valid pair of 56x42 images with 0/255 masks (255 = person)."""
    rng = np.random.default_rng(3)
    for split, n in (("train", 3), ("valid", 1)):
        (root / f"{split}_images").mkdir(parents=True)
        (root / f"{split}_masks").mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (42, 56, 3), dtype=np.uint8)).save(
                root / f"{split}_images" / f"{split}{i}.jpg"
            )
            mask = np.zeros((42, 56), np.uint8)
            mask[10:30, 20:40] = 255
            Image.fromarray(mask).save(root / f"{split}_masks" / f"{split}{i}.png")
    mask = np.zeros((42, 56), np.uint8)
    mask[5:25, 5:25] = 255
    if jpeg_mask:  # compression leaves values between 0 and 255 along the edges
        (root / "train_masks" / "train0.png").unlink()
        Image.fromarray(mask).save(root / "train_masks" / "train0.jpg", quality=75)
    rgb = np.repeat(mask[..., None], 3, axis=2)
    Image.fromarray(rgb).convert("RGBA").save(root / "train_masks" / "train1.png")
    return root


def test_binary_maps_255_to_the_class_and_copies_images(tmp_path, capsys):
    root = binary_fixture(tmp_path / "people")
    out = tmp_path / "people_01"
    run("binary", "--root", str(root), "--out", str(out))
    mask = np.asarray(Image.open(out / "train_masks" / "train2.png"))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert mask[20, 30] == 1 and mask[0, 0] == 0
    rgba = np.asarray(Image.open(out / "train_masks" / "train1.png"))
    assert rgba.shape == (42, 56) and rgba[15, 15] == 1 and rgba[35, 50] == 0
    for split, name in (("train", "train0.jpg"), ("valid", "valid0.jpg")):
        copied = (out / f"{split}_images" / name).read_bytes()
        assert copied == (root / f"{split}_images" / name).read_bytes()
    classes = ClassConfig.from_dict(yaml.safe_load((out / "classes.yaml").read_text()))
    assert classes.names == ("background", "person")
    assert len(check_dataset(out, classes)["train"]) == 3
    printed = capsys.readouterr().out
    assert "train: 3 images; pixels: background" in printed and "person 1,200" in printed
    assert "held values other than 0 and 255" not in printed


def test_the_printed_train_command_is_quoted_for_windows_shells(tmp_path, capsys, monkeypatch):
    # cmd.exe (the Anaconda Prompt) keeps single quotes as part of an argument: --data 'C:\x'
    # named a folder that does not exist
    monkeypatch.setattr(sys, "platform", "win32")
    out = tmp_path / "my data"
    run("binary", "--root", str(binary_fixture(tmp_path / "people")), "--out", str(out))
    printed = capsys.readouterr().out
    assert f'train.py --data "{out}" --config "{out / "classes.yaml"}"' in printed, printed


def test_binary_thresholds_jpeg_masks_and_counts_them(tmp_path, capsys):
    root = binary_fixture(tmp_path / "people", jpeg_mask=True)
    out = tmp_path / "people_01"
    run("binary", "--root", str(root), "--out", str(out), "--name", "cat")
    mask = np.asarray(Image.open(out / "train_masks" / "train0.png"))
    assert set(np.unique(mask)) == {0, 1} and mask[15, 15] == 1 and mask[35, 50] == 0
    assert abs(int(mask.sum()) - 400) <= 40  # the 20x20 square, give or take its edge
    classes = ClassConfig.from_dict(yaml.safe_load((out / "classes.yaml").read_text()))
    assert classes.names == ("background", "cat")
    printed = capsys.readouterr().out
    assert "1 mask(s) held values other than 0 and 255" in printed and "at 128" in printed


def test_binary_names_every_bad_file_and_writes_nothing(tmp_path):
    root = binary_fixture(tmp_path / "people")
    colour = np.zeros((42, 56, 3), np.uint8)
    colour[5:10, 5:10] = (255, 0, 0)
    Image.fromarray(colour).save(root / "train_masks" / "train2.png")
    (root / "valid_masks" / "valid0.png").write_bytes(b"not a png")
    out = tmp_path / "people_01"
    with pytest.raises(UserError, match=r"(?s)2 problem.*train2\.png: a colour mask.*valid0\.png"):
        run("binary", "--root", str(root), "--out", str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["people"]


def test_binary_names_corrupt_images_and_masks_of_another_size_and_writes_nothing(tmp_path):
    """Images were copied unread: a corrupt one, or a mask of another size than its image, was
    written into --out as a dataset that training then refused, naming --out's files."""
    root = binary_fixture(tmp_path / "people")
    (root / "train_images" / "train0.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.zeros((21, 28), np.uint8)).save(root / "valid_masks" / "valid0.png")
    with pytest.raises(
        UserError,
        match=r"(?s)2 problem.*train0\.jpg.*valid0\.png: mask is 28x21 but its image "
        r"valid0\.jpg is 56x42",
    ):
        run("binary", "--root", str(root), "--out", str(tmp_path / "people_01"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["people"]


def test_binary_names_unpaired_files_and_bad_masks_at_once(tmp_path):
    root = binary_fixture(tmp_path / "people")
    (root / "valid_masks" / "valid0.png").write_bytes(b"not a png")
    (root / "train_images" / "extra.jpg").write_bytes((root / "train_images" / "train0.jpg")
                                                     .read_bytes())  # fmt: skip
    with pytest.raises(UserError, match=r"(?s)2 problem.*extra\.jpg: image without a mask.*"
                       r"valid0\.png"):  # fmt: skip
        run("binary", "--root", str(root), "--out", str(tmp_path / "people_01"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["people"]


def test_binary_refuses_masks_that_are_already_class_ids(tmp_path):
    root = binary_fixture(tmp_path / "people")
    for path in root.glob("*_masks/*.png"):
        Image.fromarray((np.asarray(Image.open(path).convert("L")) > 0).astype(np.uint8)).save(path)
    with pytest.raises(UserError, match=r"not 0/255 masks .* train on --data"):
        run("binary", "--root", str(root), "--out", str(tmp_path / "o"))


def test_binary_refuses_to_replace_its_own_root(tmp_path):
    root = binary_fixture(tmp_path / "people")
    with pytest.raises(UserError, match="would replace --root"):
        run("binary", "--root", str(root), "--out", str(root), "--force")
    assert len(list((root / "train_masks").iterdir())) == 3


def test_an_interrupted_replacement_keeps_the_old_dataset(tmp_path, monkeypatch):
    """--force swaps the new folder in; Ctrl-C (or a failure) at that moment must leave the old
    dataset in place, not neither of the two."""
    from pathlib import Path

    zip_path = penn_fudan_zip(tmp_path / "PennFudanPed.zip")
    out = tmp_path / "pf"
    run("pennfudan", "--zip", str(zip_path), "--out", str(out))
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    rename = Path.rename

    def interrupted(self, target):
        if self.name == "data" and Path(target) == out:  # the new dataset moving into place
            raise KeyboardInterrupt
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run("pennfudan", "--zip", str(zip_path), "--out", str(out), "--force")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["PennFudanPed.zip", "pf"]


def source_flags(dataset: str, src: Path) -> list[str]:
    """The flags of ``dataset``'s importer for its fixture, built under ``src``."""
    if dataset == "voc":
        return ["--root", str(voc_fixture(src / "VOC2012"))]
    if dataset == "coco":
        return ["--annotations", str(coco_fixture(src)), "--images", str(src / "images")]
    if dataset == "binary":
        return ["--root", str(binary_fixture(src / "people"))]
    if dataset == "folder":
        return ["--images", str(folder_fixture(src) / "images"), "--masks", str(src / "masks")]
    if dataset == "roboflow":
        return ["--root", str(roboflow_fixture(src / "export"))]
    if dataset == "cvat":
        return ["--root", str(cvat_fixture(src / "export"))]
    if dataset == "cityscapes":
        return ["--root", str(cityscapes_fixture(src))]
    if dataset == "ade20k":
        return ["--root", str(ade20k_fixture(src / "ADEChallengeData2016"))]
    src.mkdir()
    return ["--zip", str(penn_fudan_zip(src / "PennFudanPed.zip"))]


@pytest.mark.parametrize(
    "dataset", ["voc", "coco", "pennfudan", "folder", "roboflow", "cvat", "cityscapes", "ade20k"]
)
def test_force_never_replaces_the_folder_holding_the_source(tmp_path, dataset):
    src = tmp_path / "src"
    flags = source_flags(dataset, src)
    before = sorted(src.rglob("*"))
    with pytest.raises(UserError, match=rf"--out {src} holds the source .*choose another --out"):
        run(dataset, *flags, "--out", str(src), "--force")
    assert sorted(src.rglob("*")) == before


def test_force_never_replaces_a_folder_inside_the_source(tmp_path):
    # binary --root people --out people/train_masks --force replaced the user's masks
    root = binary_fixture(tmp_path / "people")
    before = sorted((root / "train_masks").rglob("*"))
    with pytest.raises(UserError, match=r"is a folder of the source --root .* holds files"):
        run("binary", "--root", str(root), "--out", str(root / "train_masks"), "--force")
    assert sorted((root / "train_masks").rglob("*")) == before


def test_an_out_inside_the_source_is_replaced_by_its_rerun_with_force(tmp_path):
    """cityscapes --root cs --out cs/prepared was written, and its rerun with --force then
    refused as a folder of the source holding files: a dataset that could not be made again.
    A folder of the source that holds anything else is still never replaced."""
    root = cityscapes_fixture(tmp_path / "cs", cities=(("train", "a", 1), ("val", "b", 1)))
    out = root / "prepared"
    run("cityscapes", "--root", str(root), "--out", str(out))
    (out / "valid_masks" / "stale.png").write_bytes(b"")  # a file the rerun would not write
    run("cityscapes", "--root", str(root), "--out", str(out), "--force")
    assert not (out / "valid_masks" / "stale.png").exists() and len(loaded_masks(out)["train"]) == 1
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"is a folder of the source --root .* holds files"):
        run("cityscapes", "--root", str(root), "--out", str(out), "--force")
    assert (out / "notes.txt").read_text() == "mine"


@needs_mount_namespace
@pytest.mark.parametrize(
    ("inside", "message"),
    [("train_masks", "is a folder of the source --root"), ("", "holds the source --root")],
)
def test_force_never_replaces_the_source_reached_under_another_name(tmp_path, inside, message):
    """On a case-insensitive file system (macOS, Windows) --out ../Proj/train_masks is inside
    the source proj, which comparing resolved paths missed, and --force replaced its masks.
    Here a bind mount, in a mount namespace of its own, shows the source under a second name
    that resolve() cannot see through either."""
    root = binary_fixture(tmp_path / "people")
    alias = tmp_path / "People"
    alias.mkdir()
    before = sorted((root / "train_masks").rglob("*"))
    cmd = ["prepare_data.py", "binary", "--root", str(root), "--out", str(alias / inside)]
    proc = run_bind_mounted(root, alias, sys.executable, *cmd, "--force")
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted((root / "train_masks").rglob("*")) == before


@needs_mount_namespace
@pytest.mark.parametrize(
    ("mount", "message"),
    [("tmpfs", "is a mount point (a Docker volume"), ("bind", "cannot be renamed (")],
)
def test_out_that_is_a_mount_point_is_named_not_a_traceback(tmp_path, mount, message):
    """--out /data where /data is a Docker volume: a mount point cannot be renamed, so the
    finished dataset ended in an OSError's traceback. A file system of its own (tmpfs) is seen
    before converting; a bind mount of a folder of the same one only when renaming."""
    root = folder_fixture(tmp_path / "mine")
    volume, data = tmp_path / "volume", tmp_path / "data"
    volume.mkdir()
    data.mkdir()
    cmd = ["prepare_data.py", "folder", "--images", str(root / "images"),
           "--masks", str(root / "masks"), "--out"]  # fmt: skip
    if mount == "bind":
        proc = run_bind_mounted(volume, data, sys.executable, *cmd, str(data))
    else:
        proc = run_on_tmpfs(data, "1m", sys.executable, *cmd, str(data))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"--out {data} {message}" in proc.stderr
    assert f"such as --out {data / 'dataset'}" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "mine", "volume"]
    if mount == "bind":
        proc = run_bind_mounted(volume, data, sys.executable, *cmd, str(data / "dataset"))
        assert proc.returncode == 0, proc.stderr  # the advice works
        assert (volume / "dataset" / "classes.yaml").is_file()


def test_out_held_open_is_not_called_a_mount_point(tmp_path, monkeypatch):
    # Windows refuses to rename a folder a program holds: the advice for a mount point, to pass
    # a folder inside it, would put the new dataset inside the old one
    root = folder_fixture(tmp_path / "mine")
    out = tmp_path / "data"
    out.mkdir()
    (out / "old.txt").write_text("")
    rename = Path.rename

    def held(self, target):
        if self == out:
            raise PermissionError(errno.EACCES, "Access is denied")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", held)
    message = rf"--out {re.escape(str(out))} cannot be replaced \(Access is denied\): is it open"
    with pytest.raises(UserError, match=message):
        run("folder", "--images", str(root / "images"), "--masks", str(root / "masks"),
            "--out", str(out), "--force")  # fmt: skip
    assert [p.name for p in out.iterdir()] == ["old.txt"]


@needs_mount_namespace
def test_a_disk_that_fills_while_writing_is_named_and_left_as_it_was(tmp_path):
    """The disk of --out filling up (a Colab or a container disk) ended in an OSError's
    traceback. Here --out lies on a 16 KiB file system, which the second file fills."""
    root = folder_fixture(tmp_path / "mine")
    disk = tmp_path / "disk"
    disk.mkdir()
    cmd = [sys.executable, "prepare_data.py", "folder", "--images", str(root / "images"),
           "--masks", str(root / "masks"), "--out", str(disk / "data")]  # fmt: skip
    proc = run_on_tmpfs(disk, "16k", *cmd)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"--out {disk / 'data'}: its disk filled up (No space left on device)" in proc.stderr
    assert proc.stdout == ""  # ls -A: nothing left on the disk, the half-written copy removed


def test_coco_files_that_are_not_instance_masks_are_named(tmp_path):
    ann = coco_fixture(tmp_path / "coco")
    data = json.loads(ann.read_text())
    captions = tmp_path / "captions.json"  # the COCO captions file: no categories
    captions.write_text(json.dumps({"images": data["images"], "annotations": [
        {"id": 1, "image_id": 1, "caption": "a dog"}]}))  # fmt: skip
    boxes = tmp_path / "boxes.json"  # detection only: boxes, no segmentation
    for a in data["annotations"]:
        a.pop("segmentation")
        a["bbox"] = [1, 1, 4, 4]
    boxes.write_text(json.dumps(data))
    for path, message in (
        (captions, rf"{captions} is not a COCO instance-annotation file"),
        (boxes, rf"{boxes}: none of the 3 annotations of \['person'\] has a polygon or RLE mask"),
    ):
        with pytest.raises(UserError, match=message):
            run("coco", "--annotations", str(path), "--images", str(tmp_path / "coco/images"),
                "--out", str(tmp_path / "o"))  # fmt: skip


def test_coco_polygons_in_fractions_of_the_image_are_named(tmp_path):
    """Converters from normalized formats (YOLO's) write vertices as fractions of the width and
    height: every object was drawn within the top-left pixel, and the import said nothing."""
    ann = coco_fixture(tmp_path / "coco")
    data = json.loads(ann.read_text())
    data["annotations"][0]["segmentation"] = [[0.1, 0.125, 0.7, 0.125, 0.7, 0.625, 0.1, 0.625]]
    data["annotations"][3]["segmentation"] = [[0.4, 0.5, 0.6, 0.5, 0.6, 0.75, 0.4, 0.75]]
    ann.write_text(json.dumps(data))
    message = r"every polygon vertex of its annotations of \['person', 'dog'\] lies within 0 to 1"
    with pytest.raises(UserError, match=rf"{message}: .*multiply x by the image's width"):
        run_coco(tmp_path, ann, tmp_path / "o", "--classes", "person", "dog")
    assert not (tmp_path / "o").exists()


def test_coco_degenerate_polygons_cover_nothing(tmp_path):
    """A polygon part of fewer than 3 points covers no pixel; pycocotools takes a 4-number one
    for a box [x, y, w, h], and raised a TypeError for it."""
    ann = coco_fixture(tmp_path / "coco")
    data = json.loads(ann.read_text())
    person = data["annotations"][3]  # image b's person box, x and y 20-30
    person["segmentation"] = [[40, 2, 42, 4], *person["segmentation"], [1, 1]]
    del person["area"]  # optional here: computed from the mask when missing
    ann.write_text(json.dumps(data))
    out = tmp_path / "out"
    run_coco(tmp_path, ann, out, "--valid-every", "2")
    mask = np.asarray(Image.open(out / "valid_masks" / "b.png"))
    assert mask[25, 25] == 1 and mask[3, 41] == 0 and mask[10, 45] == 0
    assert (mask == 1).sum() == 100  # the 10x10 box and nothing else
    # stray points alone (some tools export [128, 128] parts): degenerate, so its bbox is
    # ignored, as for an empty segmentation; they were named as one polygon written as points
    person["segmentation"] = [[22, 22], [22, 22], [25, 25], [28, 28]]  # no area, as one polygon
    person["bbox"] = [20, 20, 10, 10]
    ann.write_text(json.dumps(data))
    run_coco(tmp_path, ann, out, "--valid-every", "2", "--force")
    mask = np.asarray(Image.open(out / "valid_masks" / "b.png"))
    assert (mask == 255).sum() == 100 and (mask == 1).sum() == 0


@pytest.mark.parametrize("segmentation", ["empty", "missing", "null"])
def test_coco_objects_with_a_box_and_no_mask_are_ignored_not_background(
    tmp_path, capsys, segmentation
):
    """Exports of tasks mixing polygons and rectangles (CVAT's, Roboflow's) write a rectangle as
    a bbox with "segmentation": []: such a person was drawn as background, and trained as one.
    Detection exports and converters leave the key out, or write null: those were refused."""
    ann = coco_fixture(tmp_path / "coco")
    data = json.loads(ann.read_text())
    person = data["annotations"][3]  # image b's person, x and y 20-30
    person["segmentation"], person["bbox"] = [], [20, 20, 10, 10]
    if segmentation == "missing":
        del person["segmentation"]
    elif segmentation == "null":
        person["segmentation"] = None
    data["annotations"][0]["bbox"] = [5, 5, 30, 20]  # the dog's, beside its polygon: unused
    ann.write_text(json.dumps(data))
    out = tmp_path / "out"
    run_coco(tmp_path, ann, out, "--valid-every", "2", "--classes", "person", "dog")
    box = np.zeros((40, 50), bool)
    box[20:30, 20:30] = True
    assert (np.asarray(Image.open(out / "valid_masks" / "b.png")) == np.where(box, 255, 0)).all()
    a = np.asarray(Image.open(out / "train_masks" / "a.png"))
    assert a[20, 20] == 2 and a[12, 12] == 1 and (a == 2).sum() == 30 * 20 - 25
    assert "1 annotation(s) of ['person', 'dog'] had a box but no mask" in capsys.readouterr().out
    # corners far outside (pycocotools crashed on them) cover the image
    image = {"height": 4, "width": 5}
    assert prepare_data._coco_box({"bbox": [-1e12, -1e12, 2e12, 2e12]}, image, "").all()


@pytest.mark.parametrize(
    "bbox", ["missing", "null", "negative", "nan", "text", "three", "huge", "unsigned -1"]
)
def test_coco_an_object_without_a_mask_or_a_box_is_named(tmp_path, bbox):
    """An annotation whose segmentation is empty or missing and whose bbox is missing or not a
    box was left out, and its object's pixels trained as background, without a word."""
    ann = coco_fixture(tmp_path / "coco")
    data = json.loads(ann.read_text())
    person = data["annotations"][3]  # image b's person
    del person["segmentation"]
    if bbox == "missing":
        message = r"annotation 4 has neither a mask \(its segmentation is empty.*\) nor a bbox"
    else:
        person["bbox"] = {
            "null": None,
            "negative": [30, 30, -10, -10],  # drawn from the bottom-right corner
            "nan": [float("nan"), 20, 10, 10],
            "text": ["20", "20", "10", "10"],
            "three": [20, 20, 10],
            "huge": [20, 20, 2**65, 10],  # was a TypeError's traceback (numpy takes no such int)
            "unsigned -1": [20, 20, 2**64 - 1, 10],  # covered the image to its right side
        }[bbox]
        message = r"annotation 4's bbox is .*, not \[x, y, width, height\]"
    ann.write_text(json.dumps(data))
    with pytest.raises(UserError, match=rf"{re.escape(str(ann))}: {message}"):
        run_coco(tmp_path, ann, tmp_path / "o", "--valid-every", "2")
    assert not (tmp_path / "o").exists()


def test_a_coco_export_of_boxes_alone_is_refused(tmp_path):
    """Detection exports write "segmentation": [] beside each box: every mask came out
    background, and the importer reported success."""
    ann = coco_fixture(tmp_path / "coco")
    data = json.loads(ann.read_text())
    for entry in data["annotations"]:
        entry["segmentation"], entry["bbox"] = [], [1, 1, 4, 4]
    ann.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"none of the 4 annotations of \['person', 'dog'\] has"):
        run_coco(tmp_path, ann, tmp_path / "o", "--classes", "person", "dog")
    assert not (tmp_path / "o").exists()


def test_voc_colour_masks_are_read_by_their_colours(tmp_path):
    """SegmentationClass PNGs re-saved as RGB hold VOC's colours, not ids: a look-up by pixel
    value made every one of them background, silently."""
    root = voc_fixture(tmp_path / "VOC2012")
    for path in (root / "SegmentationClass").glob("*.png"):
        Image.open(path).convert("RGB").save(path)
    out = tmp_path / "voc_person"
    run("voc", "--root", str(root), "--out", str(out), "--classes", "dog", "person")
    mask = np.asarray(Image.open(out / "train_masks" / "2007_000000.png"))
    assert mask.shape == (20, 30)
    assert mask[5, 5] == 2 and mask[15, 20] == 1 and mask[1, 0] == 255 and mask[19, 0] == 0


@pytest.mark.parametrize("palette", ["reordered", "gray", "21 colours"])
def test_voc_palette_masks_are_read_by_voc_colours_where_the_palette_is_not_voc_s(
    tmp_path, palette
):
    """Re-saved with a palette of their own colours (convert("P"), editors, PNG optimizers), the
    indices are no longer VOC's: index 1 was (192, 128, 128), person, and read as aeroplane, so
    every person became background, silently. A gray palette's indices stay the ids, and so do
    those of a palette of VOC's 21 class colours and black after them: index 255 is ignore."""
    root = voc_fixture(tmp_path / "VOC2012")
    for path in (root / "SegmentationClass").glob("*.png"):
        official = Image.open(path)
        if palette == "reordered":
            official.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE).save(path)
        elif palette == "gray":
            Image.fromarray(np.asarray(official)).convert("P").save(path)  # index i is (i, i, i)
        else:
            official.putpalette([v for color in voc_palette(21) for v in color] + [0] * 705)
            official.save(path)
    saved = Image.open(root / "SegmentationClass" / "2007_000000.png")
    index = np.asarray(saved)[5, 5]
    assert saved.getpalette()[3 * index : 3 * index + 3] == [192, 128, 128] or palette == "gray"
    assert saved.getpalette()[-3:] == [0, 0, 0] or palette != "21 colours"  # index 255 black
    assert (index != 15) == (palette == "reordered")
    out = tmp_path / "voc_person"
    run("voc", "--root", str(root), "--out", str(out), "--classes", "dog", "person")
    mask = np.asarray(Image.open(out / "train_masks" / "2007_000000.png"))
    assert mask[5, 5] == 2 and mask[15, 20] == 1 and mask[1, 0] == 255 and mask[19, 0] == 0


def test_voc_unreadable_or_unknown_masks_are_named(tmp_path):
    root = voc_fixture(tmp_path / "VOC2012")
    bad = root / "SegmentationClass" / "2007_000001.png"
    colour = np.zeros((20, 30, 3), np.uint8)
    colour[3, 3] = (1, 2, 3)
    Image.fromarray(colour).save(bad)
    with pytest.raises(UserError, match=rf"{bad}: colour \(1, 2, 3\) is not a VOC class colour"):
        run("voc", "--root", str(root), "--out", str(tmp_path / "o"))
    bad.write_bytes(b"")
    with pytest.raises(UserError, match=rf"{bad}: unreadable or corrupt"):
        run("voc", "--root", str(root), "--out", str(tmp_path / "o"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VOC2012"]


def test_binary_keeps_a_0_1_mask_among_0_255_ones(tmp_path, capsys):
    """A mask of only 0 and 1 holds class ids already: thresholding it at 128 erased its objects
    silently (it was only counted with the JPEG-like masks)."""
    root = binary_fixture(tmp_path / "people")
    ids = np.zeros((42, 56), np.uint8)
    ids[10:20, 10:20] = 1
    Image.fromarray(ids).save(root / "train_masks" / "train2.png")
    out = tmp_path / "people_01"
    run("binary", "--root", str(root), "--out", str(out))
    mask = np.asarray(Image.open(out / "train_masks" / "train2.png"))
    assert mask[15, 15] == 1 and mask[5, 5] == 0 and mask.sum() == 100
    printed = capsys.readouterr().out
    assert "1 mask(s) held only 0 and 1" in printed
    assert "held values other than 0 and 255" not in printed


@pytest.mark.parametrize("separator", ["/", "\\"])  # tools on Windows write train\1.jpg
def test_coco_images_in_subfolders_keep_apart_and_same_stems_are_named(tmp_path, separator):
    # annotation tools export file names such as train/1.jpg and val/1.jpg: both must survive
    ann = coco_fixture(tmp_path / "coco")
    images = tmp_path / "coco/images"
    data = json.loads(ann.read_text())
    for sub, img in zip(("train", "val"), data["images"][:2], strict=True):
        (images / sub).mkdir()
        (images / img["file_name"]).rename(images / sub / "1.jpg")
        img["file_name"] = f"{sub}{separator}1.jpg"
    ann.write_text(json.dumps(data))
    out = tmp_path / "out"
    run("coco", "--annotations", str(ann), "--images", str(images), "--out", str(out),
        "--classes", "person", "--valid-every", "2")  # fmt: skip
    written = sorted(p.name for p in out.glob("*_images/*"))
    assert written == ["train_1.jpg", "val_1.jpg"]
    assert len(check_dataset(out, DEFAULT_CLASSES)["train"]) == 1

    data["images"][1]["file_name"] = f"train{separator}1.png"  # the same stem as train/1.jpg
    (images / "val/1.jpg").rename(images / "train/1.png")
    ann.write_text(json.dumps(data))
    names = [re.escape(f"train{separator}1.{ext}") for ext in ("jpg", "png")]
    with pytest.raises(UserError, match=f"share a mask name: {names[0]} and {names[1]}"):
        run("coco", "--annotations", str(ann), "--images", str(images), "--out",
            str(tmp_path / "out2"), "--classes", "person")  # fmt: skip


def test_coco_names_differing_only_in_case_are_named(tmp_path):
    # On macOS and Windows IMG_1.jpg and img_1.jpg are one file: the second image and mask would
    # silently replace the first's (a dataset exported on Linux, converted on a laptop)
    ann = coco_fixture(tmp_path / "coco")
    images = tmp_path / "coco/images"
    data = json.loads(ann.read_text())
    for name, img in zip(("IMG_1.jpg", "img_1.jpg"), data["images"][:2], strict=True):
        (images / img["file_name"]).rename(images / name)
        img["file_name"] = name
    ann.write_text(json.dumps(data))
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"share a mask name: IMG_1\.jpg and img_1\.jpg"):
        run("coco", "--annotations", str(ann), "--images", str(images), "--out", str(out),
            "--classes", "person")  # fmt: skip
    assert not out.exists()


@pytest.mark.parametrize("classes", [["person", "person"], ["background", "person"]])
def test_repeated_classes_are_named_with_the_flag(tmp_path, classes):
    ann = coco_fixture(tmp_path / "coco")
    with pytest.raises(UserError, match=r"--classes names \['\w+'\] twice"):
        run_coco(tmp_path, ann, tmp_path / "out", "--classes", *classes)
    assert not (tmp_path / "out").exists()


def test_coco_absolute_file_names_stay_inside_out(tmp_path):
    """An absolute file_name (some tools export one) made the flat name absolute too, so the
    image was written outside --out (at the file system root) and its mask lost its image."""
    ann = coco_fixture(tmp_path / "coco")
    data = json.loads(ann.read_text())
    data["images"][1]["file_name"] = str(tmp_path / "coco/images/b.jpg")
    ann.write_text(json.dumps(data))
    out = tmp_path / "out"
    run_coco(tmp_path, ann, out, "--valid-every", "2")
    flat = "_".join((tmp_path / "coco/images").parts[1:]) + "_b.jpg"
    assert (out / "train_images" / flat).is_file()
    assert len(check_dataset(out, DEFAULT_CLASSES)["train"]) == 1


def test_coco_file_names_climbing_out_of_their_folder_are_not_hidden_in_out(tmp_path):
    """A file_name relative to the annotation file's folder (../images/b.jpg) made the flat name
    .._images_b.jpg: a hidden file, which training skips with its mask, without a word."""
    ann = coco_fixture(tmp_path / "coco")
    data = json.loads(ann.read_text())
    data["images"][1]["file_name"] = "../images/b.jpg"  # read from --images/../images
    ann.write_text(json.dumps(data))
    out = tmp_path / "out"
    run_coco(tmp_path, ann, out, "--valid-every", "2")
    assert not [p for p in out.rglob(".*")]
    assert [len(pairs) for pairs in check_dataset(out, DEFAULT_CLASSES).values()] == [1, 1]


@pytest.mark.parametrize(
    "defect",
    ["rle size", "rle counts", "rle short", "rle long", "rle huge", "rle compressed short",
     "polygon null",
     "polygon nan", "polygon far", "polygon points", "polygon flat", "height huge", "width text",
     "file_name null", "category_id", "iscrowd text", "rle without size", "image id list",
     "image_id list", "category_id object", "category id nan", "category name null"],
)  # fmt: skip
def test_coco_malformed_entries_are_named(tmp_path, defect):
    ann = coco_fixture(tmp_path / "coco")
    data = json.loads(ann.read_text())
    if defect in ("rle short", "rle long", "rle huge"):  # uncompressed: pycocotools decoded
        counts = data["annotations"][2]["segmentation"]["counts"]  # past a short one
        if defect == "rle short":  # its last run of background left out, as some encoders do
            del counts[-1]
        elif defect == "rle long":
            counts[-1] += 3
        else:  # too large for a float: an OverflowError's traceback
            counts[-1] = 10**400
        message = rf"annotation 3's RLE counts cover {sum(counts)} pixels, not 40 x 50 = 2000"
    elif defect == "rle compressed short":  # one run of background: decoded as random pixels
        data["annotations"][1]["segmentation"]["counts"] = "0"
        message = r"annotation 2's RLE counts cover 0 pixels, not 40 x 50 = 2000"
    elif defect.startswith("polygon"):  # the dog's box, x 5-35, y 5-25, in image a (50x40)
        # null and NaN (written by Python's json for a float nan) and a vertex far outside
        # crashed pycocotools (a segmentation fault); [x, y] points and a polygon not inside
        # a list were left out as degenerate, the dog drawn as background
        polygon = [5, 5, 35, 5, 35, 25, 5, 25]
        polygon[3] = {"null": None, "nan": float("nan"), "far": 1e9}.get(defect[8:], 5)
        seg = {"points": [polygon[i : i + 2] for i in range(0, 8, 2)], "flat": polygon}
        data["annotations"][0]["segmentation"] = seg.get(defect[8:], [polygon])
        message = {
            "null": "polygon holds None, not a pixel coordinate of its 50x40 image a.jpg",
            "nan": "polygon holds nan, not a pixel",
            "far": r"polygon holds 1000000000\.0, not a pixel",
            "points": r"segmentation is a list of \[x, y\] points; write each polygon as one",
            "flat": r"segmentation is not a list of polygons; write each polygon as one",
        }[defect[8:]]
        message = f"annotation 1's {message}"
    elif defect == "rle size":  # image a is 40x50; its RLE says 50x40
        data["annotations"][1]["segmentation"]["size"] = [50, 40]
        message = r"annotation 2's RLE has size \[50, 40\] but its image a\.jpg has height 40"
    elif defect in ("image id list", "image_id list", "category_id object", "category id nan"):
        # unhashable ids were a TypeError's traceback; NaN, equal to nothing, lost its objects
        kind, key = {"image id list": ("images", "id"), "image_id list": ("annotations",
                     "image_id"), "category_id object": ("annotations", "category_id"),
                     "category id nan": ("categories", "id")}[defect]  # fmt: skip
        value = {"list": [1], "object": {"id": 1}, "nan": float("nan")}[defect.split()[-1]]
        data[kind][0][key] = value
        name = {"images": r"a\.jpg", "annotations": "1", "categories": "person"}[kind]
        message = rf"{kind[:-1]} {name}'s {key} is {re.escape(repr(value))}, not an id"
    elif defect == "category name null":  # its sorting in a message was a traceback
        data["categories"][0]["name"] = None
        message = r"category 1's name is None, not a text"
    elif defect == "rle without size":  # was "has no segmentation": it has one, malformed
        del data["annotations"][1]["segmentation"]["size"]
        message = r"annotation 2's segmentation is \{'counts': .*, neither a list of polygons nor"
    elif defect == "rle counts":
        data["annotations"][1]["segmentation"]["counts"] = "!!!not rle"
        message = r"annotation 2: its segmentation is not a valid RLE"
    elif defect == "height huge":  # its mask was made before the check: a traceback
        data["images"][0]["height"] = 10**400
        message = r"image 1 \(a\.jpg\) has width 50, height 10{400}, but \S*a\.jpg is 50x40"
    elif defect == "width text":  # was a TypeError's traceback
        data["images"][0]["width"] = "50"
        message = r"image 1's width is '50', not a whole number of pixels"
    elif defect == "file_name null":
        data["images"][0]["file_name"] = None
        message = r"image 1's file_name is None, not a file name"
    elif defect == "iscrowd text":  # "0" read as true: the dog drawn as ignore, silently
        data["annotations"][0]["iscrowd"] = "0"
        message = r"annotation 1's iscrowd is '0', not 0 or 1"
    else:
        del data["annotations"][0]["category_id"]
        message = r"annotation 1 lacks 'category_id'"
    ann.write_text(json.dumps(data))
    with pytest.raises(UserError, match=rf"{ann}.*{message}"):
        run_coco(tmp_path, ann, tmp_path / "o", "--classes", "person", "dog")
    assert not (tmp_path / "o").exists()


def test_coco_sides_written_as_whole_floats_are_read(tmp_path):
    """Converters that take an image's sides from arrays write "height": 40.0, which made a
    traceback (np.zeros takes no float)."""
    ann = coco_fixture(tmp_path / "coco")
    data = json.loads(ann.read_text())
    for image in data["images"]:
        image["height"], image["width"] = float(image["height"]), float(image["width"])
    ann.write_text(json.dumps(data))
    out = tmp_path / "o"
    run_coco(tmp_path, ann, out, "--valid-every", "2")
    assert np.asarray(Image.open(out / "train_masks" / "a.png")).shape == (40, 50)


def test_coco_sides_left_out_are_read_from_the_image(tmp_path):
    """Converters leave out an entry's width and height (or write null): such an export was
    refused; the sides are the image's as training reads it, its EXIF orientation applied."""
    ann = coco_fixture(tmp_path / "coco")
    data = json.loads(ann.read_text())
    del data["images"][0]["width"], data["images"][0]["height"]
    data["images"][1]["width"] = data["images"][1]["height"] = None
    ann.write_text(json.dumps(data))
    photo = Image.open(tmp_path / "coco/images/b.jpg")  # stored 50x40
    exif = photo.getexif()
    exif[0x0112] = 6  # shown turned a quarter, 40x50: its person (x and y 20-30) fits both
    photo.save(tmp_path / "coco/images/b.jpg", exif=exif)
    out = tmp_path / "o"
    run_coco(tmp_path, ann, out, "--valid-every", "2")
    a = np.asarray(Image.open(out / "train_masks" / "a.png"))
    assert a.shape == (40, 50) and a[12, 12] == 1 and a[32, 42] == 255
    b = np.asarray(Image.open(out / "valid_masks" / "b.png"))
    assert b.shape == (50, 40) and (b == 1).sum() == 100 and b[25, 25] == 1
    check_dataset(out, DEFAULT_CLASSES)
    data["images"][1]["width"] = 50  # given, and not the file's: still named
    ann.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"image 2 \(b\.jpg\) has width 50, height 50, but"):
        run_coco(tmp_path, ann, tmp_path / "o2", "--valid-every", "2")


@pytest.mark.parametrize("defect", ["size", "corrupt"])
def test_voc_and_coco_images_training_would_refuse_are_named(tmp_path, defect):
    """Images were copied unread: one of another size than its annotations (resized after
    annotating), or a corrupt one, made a dataset that training refused, naming --out's files."""
    root = voc_fixture(tmp_path / "VOC2012")
    jpeg = root / "JPEGImages" / "2007_000001.jpg"
    ann = coco_fixture(tmp_path / "coco")
    if defect == "size":
        Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(jpeg)
        Image.fromarray(np.zeros((20, 25, 3), np.uint8)).save(tmp_path / "coco/images/b.jpg")
        voc = r"2007_000001\.png: mask is 30x20 but its image 2007_000001\.jpg is 60x40"
        coco = r"image 2 \(b\.jpg\) has width 50, height 40, but \S*b\.jpg is 25x20"
    else:
        jpeg.write_bytes(b"not a jpeg")
        (tmp_path / "coco/images/b.jpg").write_bytes(b"not a jpeg")
        voc, coco = r"2007_000001\.jpg", r"b\.jpg"
    with pytest.raises(UserError, match=voc):
        run("voc", "--root", str(root), "--out", str(tmp_path / "voc"))
    with pytest.raises(UserError, match=coco):
        run_coco(tmp_path, ann, tmp_path / "o", "--valid-every", "2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VOC2012", "coco"]


def test_coco_photos_annotated_unturned_are_named_with_their_exif_fix(tmp_path):
    """A tool that ignores EXIF orientation writes a phone photo's stored size and draws on its
    stored pixels: the message said to pass the --images annotated, which the user had done."""
    ann = coco_fixture(tmp_path / "coco")
    photo = Image.open(tmp_path / "coco/images/b.jpg")  # stored 50x40, its entry's size
    exif = photo.getexif()
    exif[0x0112] = 6  # shown turned a quarter, 40x50
    photo.save(tmp_path / "coco/images/b.jpg", exif=exif)
    with pytest.raises(
        UserError,
        match=r"image 2 \(b\.jpg\) has width 50, height 40, .*b\.jpg as stored, but its EXIF "
        r"orientation turns it to 40x50.*Orientation of every photo it annotated to 1",
    ):
        run_coco(tmp_path, ann, tmp_path / "o", "--valid-every", "2")
    assert not (tmp_path / "o").exists()


def test_coco_photos_whose_sides_cannot_show_their_exif_was_followed_are_noted(tmp_path, capsys):
    """A tool that ignores EXIF orientation draws a photo stored upside down on its stored
    pixels: its sides do not swap, so the size check passed it without a word."""

    def orient(name, value):
        photo = Image.open(tmp_path / "coco/images" / name)
        exif = photo.getexif()
        exif[0x0112] = value
        photo.save(tmp_path / "coco/images" / name, exif=exif)

    ann = coco_fixture(tmp_path / "coco")
    orient("b.jpg", 3)  # shown turned upside down, 50x40 still
    flags = ("--images", str(tmp_path / "coco/images"), "--valid-every", "2", "--force")
    run("coco", "--annotations", str(ann), "--out", str(tmp_path / "o"), *flags)
    assert re.search(
        r"\n1 image\(s\) \(b\.jpg\) have an EXIF orientation other than 1 .* drawn on them as "
        r"displayed.*exiftool -n -Orientation=1 FILE\)\n",
        capsys.readouterr().out,
    )
    # a quarter-turned photo whose entry gives its displayed sides: the tool applied EXIF
    orient("c.jpg", 6)  # stored 50x40, shown 40x50; its cat (x and y 0-10) fits both
    data = json.loads(ann.read_text())
    data["images"][2]["width"], data["images"][2]["height"] = 40, 50
    ann.write_text(json.dumps(data))
    run("coco", "--annotations", str(ann), "--out", str(tmp_path / "o"), *flags,
        "--classes", "person", "cat")  # fmt: skip
    assert "EXIF" not in capsys.readouterr().out
    assert np.asarray(Image.open(tmp_path / "o/train_masks/c.png")).shape == (50, 40)


def test_coco_images_of_formats_training_skips_are_named(tmp_path):
    """A .gif or a file_name without an extension was copied as it was named, and training,
    which reads only IMAGE_EXTENSIONS, then found its mask without an image."""
    ann = coco_fixture(tmp_path / "coco")
    data = json.loads(ann.read_text())
    for img, name in zip(data["images"], ["a.gif", "b", "c.jpg"], strict=True):
        (tmp_path / "coco/images" / img["file_name"]).rename(tmp_path / "coco/images" / name)
        img["file_name"] = name
    ann.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"instances\.json names images training does not read"
                       r".*: a\.gif, b; .*\.png"):  # fmt: skip
        run_coco(tmp_path, ann, tmp_path / "o", "--valid-every", "2")
    assert not (tmp_path / "o").exists()


def test_coco_categories_sharing_a_name_are_all_kept(tmp_path):
    """Merged exports repeat a name under two ids: only the last id's objects were kept."""
    ann = coco_fixture(tmp_path / "coco")
    data = json.loads(ann.read_text())
    data["categories"].append({"id": 99, "name": "person"})
    data["annotations"][3]["category_id"] = 99  # image b's person
    ann.write_text(json.dumps(data))
    out = tmp_path / "out"
    run_coco(tmp_path, ann, out, "--valid-every", "2")
    assert np.asarray(Image.open(out / "train_masks" / "a.png"))[12, 12] == 1
    assert np.asarray(Image.open(out / "valid_masks" / "b.png"))[25, 25] == 1


@pytest.mark.parametrize("kind", ["images", "categories"])
def test_coco_an_entry_listed_twice_alike_is_one(tmp_path, kind):
    """An exact repeat (same id, same name) is one image or one category: neither an error, as
    one id under two names is, nor a second class. An image listed twice was refused as two
    images that "would share a mask name: b.jpg and b.jpg"."""
    ann = coco_fixture(tmp_path / "coco")
    data = json.loads(ann.read_text())
    data[kind].append(dict(data[kind][1] if kind == "images" else data[kind][0]))
    ann.write_text(json.dumps(data))
    out = tmp_path / "out"
    run_coco(tmp_path, ann, out, "--valid-every", "2")
    classes = ClassConfig.from_dict(yaml.safe_load((out / "classes.yaml").read_text()))
    assert classes.names == ("background", "person")
    mask = np.asarray(Image.open(out / "valid_masks" / "b.png"))
    assert np.unique(mask).tolist() == [0, 1] and (mask == 1).sum() == 100
    assert sorted(p.name for p in out.glob("*_images/*")) == ["a.jpg", "b.jpg"]  # once each


@pytest.mark.parametrize("kind", ["images", "categories"])
def test_coco_ids_given_twice_are_named(tmp_path, kind):
    """Exports merged without renumbering give one id to two images or two categories, and an
    annotation names both: the masks were drawn with the other image's objects, or every object
    of one id became the last category of that id, without a word."""
    ann = coco_fixture(tmp_path / "coco")
    data = json.loads(ann.read_text())
    if kind == "images":  # c.jpg (a cat only) takes b.jpg's id
        data["images"][2]["id"] = 2
        message = r"image id 2 is given to b\.jpg and c\.jpg"
    else:  # a second export's "car" takes the id of person
        data["categories"].append({"id": 1, "name": "car"})
        message = r"category id 1 is given to person and car"
    ann.write_text(json.dumps(data))
    with pytest.raises(UserError, match=rf"{re.escape(str(ann))}: {message}, .*renumber the ids"):
        run_coco(tmp_path, ann, tmp_path / "o", "--classes", "person", "cat")
    assert not (tmp_path / "o").exists()


def test_coco_one_file_under_two_image_ids_is_named_as_such(tmp_path):
    """Two exports of one image merged with renumbered ids list its file twice: the message
    said to rename "a.jpg and a.jpg" apart, which no renaming of files fixes."""
    ann = coco_fixture(tmp_path / "coco")
    data = json.loads(ann.read_text())
    data["images"].append({"id": 9, "file_name": "a.jpg", "height": 40, "width": 50})
    data["annotations"].append({"id": 9, "image_id": 9, "category_id": 18, "iscrowd": 0,
                                "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]})  # fmt: skip
    ann.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"lists a\.jpg as images 1 and 9: .*under that image's id"):
        run_coco(tmp_path, ann, tmp_path / "o", "--classes", "person", "dog")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["image", "one image", "category"])
def test_coco_ids_written_as_texts_in_one_list_are_named(tmp_path, kind):
    """Converters write "1" in one list and 1 in the other, which match nothing: the message
    said that no image has an annotation of the classes, which the file's user knows it has;
    where one annotation did, its object was left out, trained as background."""
    ann = coco_fixture(tmp_path / "coco")
    data = json.loads(ann.read_text())
    if kind == "image":
        for entry in data["annotations"]:
            entry["image_id"] = str(entry["image_id"])
        message = r"annotation 1's image_id is '1', and its images have the id 1"
    elif kind == "one image":  # image a's small person; its dog and crowd keep image a
        data["annotations"][1]["image_id"] = "1"
        message = r"annotation 2's image_id is '1', and its images have the id 1"
    else:
        for entry in data["categories"]:
            entry["id"] = str(entry["id"])
        message = r"annotation 1's category_id is 18, and its categories have the id '18'"
    ann.write_text(json.dumps(data))
    with pytest.raises(UserError, match=rf"{message}: a text .*write the ids one way"):
        run_coco(tmp_path, ann, tmp_path / "o", "--classes", "person", "dog")
    assert not (tmp_path / "o").exists()


def test_coco_annotations_of_images_not_listed_are_counted(tmp_path, capsys):
    """Annotations whose image_id no image has (the images of a subset, exported with every
    annotation) were left out without a word; where all were, the message said that no image
    had an annotation of the classes, as if the file had none."""
    ann = coco_fixture(tmp_path / "coco")
    data = json.loads(ann.read_text())
    data["annotations"].append({"id": 6, "image_id": 99, "category_id": 1, "iscrowd": 0,
                                "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]})  # fmt: skip
    ann.write_text(json.dumps(data))
    flags = ["--annotations", str(ann), "--images", str(tmp_path / "coco/images")]
    run("coco", *flags, "--out", str(tmp_path / "o"), "--valid-every", "2")
    assert "1 annotation(s) of ['person'] name an image id that no image has (99)" in (
        capsys.readouterr().out
    )
    for entry in data["annotations"]:
        entry["image_id"] += 100  # the annotations of another export
    ann.write_text(json.dumps(data))
    message = r"annotation of \['person'\]: its 4 annotations of them name image ids that no"
    with pytest.raises(UserError, match=rf"{message} image has \(101, 102, 199;"):
        run("coco", *flags, "--out", str(tmp_path / "o2"))
    assert not (tmp_path / "o2").exists()


def test_coco_empty_splits_name_the_cause_and_the_flag(tmp_path):
    ann = coco_fixture(tmp_path / "coco")
    flags = ["--annotations", str(ann), "--images", str(tmp_path / "coco/images")]
    data = json.loads(ann.read_text())
    data["categories"].append({"id": 90, "name": "toothbrush"})
    ann.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"no image has an annotation of \['toothbrush'\]"):
        run("coco", *flags, "--out", str(tmp_path / "o"), "--classes", "toothbrush")
    with pytest.raises(UserError, match=r"only 2 image\(s\) .* --valid-every 2"):
        run("coco", *flags, "--out", str(tmp_path / "o"))  # default: every 5th of 2 images
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco"]


def test_pennfudan_zip_from_macos_and_corrupt_masks(tmp_path):
    """Zips made by macOS's Finder add __MACOSX/.../._NAME resource forks; they matched
    PNGImages/*.png and failed to decode with a traceback."""
    import zipfile

    zip_path = penn_fudan_zip(tmp_path / "PennFudanPed.zip")
    with zipfile.ZipFile(zip_path, "a") as zf:
        for name in ("PNGImages/._FudanPed00001.png", "PedMasks/._FudanPed00001_mask.png"):
            zf.writestr(f"__MACOSX/PennFudanPed/{name}", b"\x00\x05\x16\x07fork")
    out = tmp_path / "pf"
    run("pennfudan", "--zip", str(zip_path), "--out", str(out))
    assert len(list((out / "train_images").iterdir())) == 8
    assert out.stat().st_mode & 0o777 == (out / "train_images").stat().st_mode & 0o777

    with zipfile.ZipFile(zip_path, "a") as zf:
        zf.writestr("PennFudanPed/PNGImages/PennPed00099.png", b"png?")
        zf.writestr("PennFudanPed/PedMasks/PennPed00099_mask.png", b"not a png")
    with pytest.raises(UserError, match=r"PennPed00099_mask\.png.*unreadable or corrupt"):
        run("pennfudan", "--zip", str(zip_path), "--out", str(tmp_path / "pf2"))


def test_out_that_cannot_be_made_is_named(tmp_path, monkeypatch):
    root = voc_fixture(tmp_path / "VOC2012")
    (tmp_path / "file.txt").write_text("")
    with pytest.raises(UserError, match=r"--out .*file\.txt/sub cannot be created"):
        run("voc", "--root", str(root), "--out", str(tmp_path / "file.txt" / "sub"))
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    with pytest.raises(UserError, match=r"--out \. is the current folder"):
        run("voc", "--root", str(root), "--out", ".")


def test_out_ending_in_dot_dot_is_named_not_a_traceback(tmp_path, monkeypatch):
    """--out DIR/sub/.. with --force tried to rename "..", an OSError's traceback."""
    root = voc_fixture(tmp_path / "VOC2012")
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "old.txt").write_text("")
    out = tmp_path / "data" / "sub" / ".."
    named = re.escape(str(tmp_path / "data"))
    message = rf"--out {re.escape(str(out))} ends in \.\.: pass the folder it names, --out {named}$"
    with pytest.raises(UserError, match=message):
        run("voc", "--root", str(root), "--out", str(out), "--force")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["old.txt", "sub"]
    # a bare .. was named as the folder to pass instead
    monkeypatch.chdir(tmp_path / "data" / "sub")
    with pytest.raises(UserError, match=rf"--out \.\. ends in \.\.: pass .*, --out {named}$"):
        run("voc", "--root", str(root), "--out", "..", "--force")


def test_voc_ids_that_are_no_voc_class_are_named(tmp_path):
    root = voc_fixture(tmp_path / "VOC2012")
    path = root / "SegmentationClass" / "2007_000001.png"
    mask = np.array(Image.open(path))
    mask[0, 0] = 40
    Image.fromarray(mask).save(path)
    with pytest.raises(UserError, match=rf"{path}: values \[40\] are not VOC class ids"):
        run("voc", "--root", str(root), "--out", str(tmp_path / "o"))


def test_lists_cut_at_five_in_messages_say_there_are_more(tmp_path):
    """VOC's unknown mask values, COCO's clashing names and folder's subfolders were cut at five
    without a sign, as if those were all."""
    root = voc_fixture(tmp_path / "VOC2012")
    path = root / "SegmentationClass" / "2007_000001.png"
    mask = np.array(Image.open(path))
    mask[0, :6] = range(40, 46)
    Image.fromarray(mask).save(path)
    with pytest.raises(UserError, match=r"values \[40, 41, 42, 43, 44 \.\.\.\] are not VOC"):
        run("voc", "--root", str(root), "--out", str(tmp_path / "o"))
    ann = coco_fixture(tmp_path / "coco")
    data = json.loads(ann.read_text())
    for i in range(6):  # six pairs of names with one stem, each with a person
        for n, ext in enumerate(("jpg", "png")):
            image_id = 100 + 2 * i + n
            data["images"].append({"id": image_id, "file_name": f"x{i}.{ext}", "height": 40,
                                   "width": 50})  # fmt: skip
            data["annotations"].append({"id": image_id, "image_id": image_id, "category_id": 1,
                                        "segmentation": [[0, 0, 9, 0, 9, 9]]})  # fmt: skip
    ann.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"x3\.jpg and x3\.png, x4\.jpg and x4\.png \.\.\.; rename"):
        run_coco(tmp_path, ann, tmp_path / "o")
    mine = folder_fixture(tmp_path / "mine", n=2)
    for k in range(6):
        (mine / "split" / f"part{k}").mkdir(parents=True)
    with pytest.raises(UserError, match=r"subfolders part0/, .*, part4/ \.\.\.: point --images"):
        run("folder", "--images", str(mine / "split"), "--masks", str(mine / "masks"),
            "--out", str(tmp_path / "o"))  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VOC2012", "coco", "mine"]


def test_the_printed_train_command_is_quoted(tmp_path, capsys):
    out = tmp_path / "my data"
    run("pennfudan", "--zip", str(penn_fudan_zip(tmp_path / "PennFudanPed.zip")), "--out", str(out))
    assert f"--data '{out}' --config '{out}/classes.yaml'" in capsys.readouterr().out


def test_binary_name_background_is_named_with_its_flag(tmp_path):
    root = binary_fixture(tmp_path / "people")
    with pytest.raises(UserError, match=r"--name names \['background'\] twice"):
        run("binary", "--root", str(root), "--out", str(tmp_path / "o"), "--name", "background")


def test_binary_name_empty_is_refused(tmp_path, capsys):
    # it wrote a classes.yaml whose class has no name, which train.py reported as "IoU : 0.52"
    root = binary_fixture(tmp_path / "people")
    with pytest.raises(SystemExit):
        run("binary", "--root", str(root), "--out", str(tmp_path / "o"), "--name", "")
    assert "argument --name: an empty value" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_coco_annotations_are_read_as_utf8_whatever_the_locale(tmp_path):
    # cp1252 on most Windows machines misreads UTF-8 (or fails on it); ASCII here fails on it
    ann = coco_fixture(tmp_path / "coco")
    data = json.loads(ann.read_text())
    data["info"] = {"description": "Café, São Paulo"}  # as annotation tools export it
    ann.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "coco_out"
    cmd = [sys.executable, "prepare_data.py", "coco", "--annotations", str(ann), "--images",
           str(tmp_path / "coco/images"), "--out", str(out), "--classes", "person",
           "--valid-every", "2"]  # fmt: skip
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "train_masks" / "a.png").is_file()


def test_binary_reads_1_bit_and_palette_masks_by_what_they_show(tmp_path):
    root = binary_fixture(tmp_path / "people")
    square = np.zeros((42, 56), bool)
    square[10:30, 20:40] = True
    Image.fromarray(square).save(root / "train_masks" / "train2.png")  # mode "1"
    # a palette whose index 0 is white: the indices would read the square inverted
    palette = Image.fromarray((~square).astype(np.uint8)).convert("P")
    palette.putpalette([255, 255, 255, 0, 0, 0])
    palette.save(root / "valid_masks" / "valid0.png")
    out = tmp_path / "people_01"
    run("binary", "--root", str(root), "--out", str(out))
    for mask in ("train_masks/train2.png", "valid_masks/valid0.png"):
        assert np.array_equal(np.asarray(Image.open(out / mask)), square.astype(np.uint8)), mask


def test_binary_refuses_a_missing_root_a_16_bit_mask_and_a_split_without_images(tmp_path):
    with pytest.raises(UserError, match=r"--root .*nowhere does not exist: pass --root the"):
        run("binary", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    root = binary_fixture(tmp_path / "people")
    deep = np.zeros((42, 56), np.uint16)
    deep[10:30, 20:40] = 65535
    Image.fromarray(deep).save(root / "train_masks" / "train2.png")
    for f in [*(root / "valid_images").iterdir(), *(root / "valid_masks").iterdir()]:
        f.unlink()
    with pytest.raises(UserError) as info:
        run("binary", "--root", str(root), "--out", str(tmp_path / "o"))
    assert "train2.png: a I;16 image; save the mask as 8-bit grayscale" in str(info.value)
    assert "valid_images: no images" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["people"]


def test_voc_lists_that_are_missing_empty_or_name_missing_files_are_refused(tmp_path):
    root = voc_fixture(tmp_path / "VOC2012")
    lists = root / "ImageSets" / "Segmentation"
    flags = ["voc", "--root", str(root), "--out", str(tmp_path / "o")]
    (lists / "val.txt").rename(lists / "trainval.txt")
    with pytest.raises(UserError, match=r"val.txt is missing: --root must be VOCdevkit/VOC2012"):
        run(*flags)
    (lists / "val.txt").write_text("\n")
    with pytest.raises(UserError, match=r"val.txt lists no image, so the valid split would be"):
        run(*flags)
    (lists / "val.txt").write_text("2007_000009\n")
    # it said "JPEGImages/2007_000009.jpg or SegmentationClass/2007_000009.png is missing"
    images, masks = root / "JPEGImages", root / "SegmentationClass"
    missing = f"{images / '2007_000009.jpg'} and {masks / '2007_000009.png'} are missing"
    with pytest.raises(UserError, match=re.escape(f"{lists / 'val.txt'} names 2007_000009, but ")
                       + re.escape(missing)):  # fmt: skip
        run(*flags)
    (masks / "2007_000002.png").rename(masks / "2007_000009.png")
    with pytest.raises(UserError, match=r"2007_000009, but \S*2007_000009\.jpg is missing$"):
        run(*flags)
    (masks / "2007_000009.png").rename(masks / "2007_000002.png")
    (lists / "val.txt").write_text("2007_000002\n")
    Image.new("I;16", (30, 20)).save(root / "SegmentationClass" / "2007_000002.png")
    with pytest.raises(UserError, match=r"2007_000002.png: a I;16 mask; VOC masks are palette"):
        run(*flags)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VOC2012"]


def test_coco_unreadable_annotations_missing_images_and_valid_every_1_are_refused(tmp_path):
    ann = coco_fixture(tmp_path / "coco")
    flags = ["--images", str(tmp_path / "coco/images"), "--out", str(tmp_path / "o")]
    with pytest.raises(UserError, match=r"--valid-every must be at least 2"):
        run("coco", "--annotations", str(ann), *flags, "--valid-every", "1")
    (tmp_path / "cut.json").write_bytes(ann.read_bytes()[:50])  # an interrupted download
    with pytest.raises(UserError, match=r"cannot read COCO annotations .*cut.json"):
        run("coco", "--annotations", str(tmp_path / "cut.json"), *flags)
    (tmp_path / "coco/images/b.jpg").unlink()
    with pytest.raises(UserError, match=r"instances.json names b.jpg, missing from .*images"):
        run("coco", "--annotations", str(ann), *flags, "--valid-every", "2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco", "cut.json"]


def test_a_pennfudan_zip_too_small_for_a_valid_split_writes_nothing(tmp_path):
    # every fifth image goes to valid: four images leave it empty
    zip_path = penn_fudan_zip(tmp_path / "PennFudanPed.zip", n=4)
    with pytest.raises(UserError, match=r"the valid split came out empty; nothing was written"):
        run("pennfudan", "--zip", str(zip_path), "--out", str(tmp_path / "pf"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["PennFudanPed.zip"]


def test_every_subcommand_has_one_importer_whose_sources_are_its_flags():
    parser = prepare_data.get_args_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(prepare_data.IMPORTERS)
    for name, importer in prepare_data.IMPORTERS.items():
        dests = {a.dest for a in sub.choices[name]._actions}
        assert importer.sources and set(importer.sources) <= dests, name


def folder_fixture(root, n=6, masks="masks", suffix="", values=(1,)):
    """``n`` 48x64 JPEG photos in root/images and class-id PNG masks (a square of each value of
    ``values``) in root/``masks``, named by the image's stem and ``suffix``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / masks).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((48, 64, 3), 20 * i, np.uint8)).save(root / "images" / f"{i}.jpg")
        mask = np.zeros((48, 64), np.uint8)
        for k, value in enumerate(values):
            mask[4 + 12 * k : 14 + 12 * k, 4:14] = value
        Image.fromarray(mask).save(root / masks / f"{i}{suffix}.png")
    return root


def test_folder_splits_images_and_masks_by_name_and_writes_class_ids(tmp_path, capsys):
    root = folder_fixture(tmp_path / "mine")
    out = tmp_path / "data"
    run("folder", "--images", str(root / "images"), "--masks", str(root / "masks"),
        "--out", str(out), "--valid-every", "3")  # fmt: skip
    # sorted by name, every third pair to valid: 2 and 5
    assert sorted(p.name for p in (out / "valid_images").iterdir()) == ["2.jpg", "5.jpg"]
    assert sorted(p.name for p in (out / "train_masks").iterdir()) == [
        "0.png", "1.png", "3.png", "4.png"
    ]  # fmt: skip
    copied = (out / "valid_images" / "5.jpg").read_bytes()
    assert copied == (root / "images" / "5.jpg").read_bytes()
    mask = np.asarray(Image.open(out / "valid_masks" / "5.png"))
    assert mask[5, 5] == 1 and mask[30, 30] == 0
    classes = ClassConfig.from_dict(yaml.safe_load((out / "classes.yaml").read_text()))
    assert classes == DEFAULT_CLASSES
    assert [len(p) for p in check_dataset(out, classes).values()] == [4, 2]
    assert "valid: 2 images; pixels: background 5,944, person 200" in capsys.readouterr().out


def test_folder_reads_palette_class_id_masks_by_their_indices(tmp_path):
    # labelme's label.png: class ids as indices of a palette of VOC's colours, whose index 1
    # (128, 0, 0) is a colour of the made-up ones that classes.yaml draws overlays in
    root = folder_fixture(tmp_path / "mine", n=2, values=(1,))
    palette = [v for color in voc_palette(256) for v in color]
    for i, values in enumerate(((1,), (1, 2))):  # cat alone, then cat and dog
        mask = np.zeros((48, 64), np.uint8)
        for k, value in enumerate(values):
            mask[4 + 12 * k : 14 + 12 * k, 4:14] = value
        img = Image.fromarray(mask).convert("P")
        img.putpalette(palette)
        img.save(root / "masks" / f"{i}.png")
    out = tmp_path / "data"
    run("folder", "--images", str(root / "images"), "--masks", str(root / "masks"),
        "--out", str(out), "--valid-every", "2", "--classes", "cat", "dog")  # fmt: skip
    cat = np.asarray(Image.open(out / "train_masks" / "0.png"))
    assert cat[5, 5] == 1 and set(np.unique(cat)) == {0, 1}
    both = np.asarray(Image.open(out / "valid_masks" / "1.png"))
    assert both[5, 5] == 1 and both[20, 5] == 2
    classes = ClassConfig.from_dict(yaml.safe_load((out / "classes.yaml").read_text()))
    assert classes.mask_colors is None  # made up for overlays: no masks are read by them
    check_dataset(out, classes)


def test_folder_names_colour_masks_whose_palettes_number_a_colour_differently(tmp_path):
    # colour masks an optimizer saved with palettes of their own (cat red and dog blue, each
    # file in its own order): written as class ids by their indices, cat and dog swapped
    root = folder_fixture(tmp_path / "mine", n=2, values=(1,))
    for i, palette in enumerate(([0, 0, 0, 255, 0, 0, 0, 0, 255], [0, 0, 0, 0, 0, 255, 255, 0, 0])):
        mask = np.zeros((48, 64), np.uint8)
        mask[4:14, 4:14], mask[20:30, 4:14] = 1, 2
        img = Image.fromarray(mask).convert("P")
        img.putpalette(palette)
        img.save(root / "masks" / f"{i}.png")
    with pytest.raises(
        UserError,
        match=r"1\.png: palette index 1 is the colour \[0, 0, 255\], "
        r"which is index 2 in .*0\.png: colour masks saved with a palette",
    ):
        run("folder", "--images", str(root / "images"), "--masks", str(root / "masks"),
            "--out", str(tmp_path / "data"), "--valid-every", "2",
            "--classes", "cat", "dog")  # fmt: skip
    assert not (tmp_path / "data").exists()


def test_folder_says_how_to_read_black_and_white_masks(tmp_path, capsys):
    """0/255 masks, the commonest home-made kind, read as background and ignore: the importer
    wrote a dataset without one pixel of its class, and said nothing."""
    root = folder_fixture(tmp_path / "mine", values=(255,))
    out = tmp_path / "data"
    run("folder", "--images", str(root / "images"), "--masks", str(root / "masks"),
        "--out", str(out), "--valid-every", "3")  # fmt: skip
    printed = capsys.readouterr().out
    assert "no mask holds a pixel of person, while 6 hold 255 (ignore)" in printed
    command = re.search(r"python prepare_data\.py (binary .*)$", printed, re.M)[1].split()
    run(*command)  # the advice works: 255 becomes person
    assert "pixels: background 5,944, person 200;" in capsys.readouterr().out


def test_folder_says_how_to_read_0_255_masks_among_0_1_ones(tmp_path, capsys):
    """Masks of two tools, 0/1 and 0/255: the 0/255 ones' person was written as ignore."""
    root = folder_fixture(tmp_path / "mine")
    for i in (1, 4):
        path = root / "masks" / f"{i}.png"
        Image.fromarray(np.asarray(Image.open(path)) * np.uint8(255)).save(path)
    out = tmp_path / "data"
    run("folder", "--images", str(root / "images"), "--masks", str(root / "masks"),
        "--out", str(out), "--valid-every", "3")  # fmt: skip
    printed = capsys.readouterr().out
    assert "2 mask(s) held 0 and 255 (ignore) but no person, while others held person" in printed
    assert "0/255 masks among 0/1 ones (1.png, 4.png)?" in printed
    command = re.search(r"python prepare_data\.py (binary .*) \(0/1", printed, re.M)[1].split()
    run(*command)  # the advice works: every mask holds person, none ignore
    assert "pixels: background 11,888, person 400; ignored 0" in capsys.readouterr().out


def test_folder_decodes_each_source_mask_once(tmp_path, monkeypatch):
    # the check that reads a mask hands its class ids on to be written, rather than the
    # writing decoding the file again
    root = folder_fixture(tmp_path / "mine", n=4)
    opened = []
    real_open = datasets.open_image
    monkeypatch.setattr(
        datasets,
        "open_image",
        lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k),
    )
    run("folder", "--images", str(root / "images"), "--masks", str(root / "masks"),
        "--out", str(tmp_path / "data"), "--valid-every", "2")  # fmt: skip
    sources = sorted(p.name for p in opened if p.parent == root / "masks")
    assert sources == ["0.png", "1.png", "2.png", "3.png"]


def test_folder_names_a_missing_folder_given_as_both_images_and_masks(tmp_path):
    """It was told to pass --mask-suffix, as if the one folder held images and masks."""
    missing = str(tmp_path / "typo")
    with pytest.raises(UserError, match=r"--images \S*typo does not exist") as err:
        run("folder", "--images", missing, "--masks", missing, "--out", str(tmp_path / "out"))
    assert "--mask-suffix" not in str(err.value) and str(err.value).count("typo") == 1


def test_folder_names_an_images_path_that_is_a_file_as_not_a_folder(tmp_path):
    """An image given as --images was called a folder missing, which it is not."""
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.jpg")
    with pytest.raises(
        UserError, match=r"--images \S*a\.jpg is a file, not a folder: pass --images the folder"
    ) as err:
        run("folder", "--images", str(tmp_path / "a.jpg"), "--masks", str(tmp_path / "masks"),
            "--out", str(tmp_path / "out"))  # fmt: skip
    assert "folder missing" not in str(err.value)


@pytest.mark.parametrize(
    "dataset, flag, what",
    [
        ("roboflow", "--root", "the folder with train/, valid/, test/"),
        ("cvat", "--root", "the folder with labelmap.txt"),
        ("voc", "--root", "VOCdevkit/VOC2012"),
        ("coco", "--images", "the folder of its images"),
        ("binary", "--root", "the folder with train_images/"),
        ("cityscapes", "--root", "the folder with leftImg8bit/ and gtFine/"),
        ("ade20k", "--root", "ADEChallengeData2016, the folder with images/"),
    ],
)
def test_a_file_given_for_a_source_folder_is_named_with_its_flag(tmp_path, dataset, flag, what):
    """An export's zip given as --root was called a folder missing a file in it (export.zip/
    labelmap.txt is missing), and a file as coco's --images missing each image."""
    if dataset == "coco":  # its annotation file as --images too
        ann = coco_fixture(tmp_path / "coco")
        given, others = ann, ["--annotations", str(ann)]
    else:
        given, others = tmp_path / "export.zip", []
        given.write_bytes(b"PK")
    message = f"{flag} {given} is a file, not a folder: pass {flag} {what}"
    with pytest.raises(UserError, match=re.escape(message)) as err:
        run(dataset, *others, flag, str(given), "--out", str(tmp_path / "data"))
    assert ("(unzip it first)" in str(err.value)) == (given.suffix == ".zip")


def test_a_missing_source_or_a_folder_given_for_a_file_is_named_with_its_flag(tmp_path):
    """A missing --images was called missing each image the annotations name, a missing --root
    missing a file inside it, and a folder as --annotations or --zip an unreadable file."""
    ann = coco_fixture(tmp_path / "coco")
    images, nowhere = tmp_path / "coco" / "images", tmp_path / "nowhere"
    cases = [
        (["roboflow", "--root", nowhere], f"--root {nowhere} does not exist: pass --root the"),
        (["coco", "--annotations", ann, "--images", nowhere],
         f"--images {nowhere} does not exist: pass --images the folder of its images"),
        (["coco", "--annotations", images, "--images", images],
         f"--annotations {images} is a folder, not a file: pass --annotations instances_"),
        (["pennfudan", "--zip", images],
         f"--zip {images} is a folder, not a file: pass --zip PennFudanPed.zip"),
    ]  # fmt: skip
    for argv, message in cases:
        with pytest.raises(UserError, match=re.escape(message)):
            run(*map(str, argv), "--out", str(tmp_path / "data"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco"]
    assert not (tmp_path / "data").exists()


def test_folder_reads_masks_beside_their_images_with_a_suffix_and_named_classes(tmp_path, capsys):
    # Roboflow-style names in one folder: 0.jpg with 0_mask.png
    root = folder_fixture(tmp_path / "mine", n=4, masks="images", suffix="_mask", values=(1, 2))
    out = tmp_path / "data"
    images = str(root / "images")
    with pytest.raises(UserError, match=r"--images and --masks are one folder.*--mask-suffix"):
        run("folder", "--images", images, "--masks", images, "--out", str(out))
    run("folder", "--images", images, "--masks", images, "--mask-suffix", "_mask",
        "--classes", "cat", "dog", "--out", str(out), "--valid-every", "2")  # fmt: skip
    assert sorted(p.name for p in (out / "train_images").iterdir()) == ["0.jpg", "2.jpg"]
    mask = np.asarray(Image.open(out / "train_masks" / "2.png"))
    assert mask[5, 5] == 1 and mask[20, 5] == 2
    classes = ClassConfig.from_dict(yaml.safe_load((out / "classes.yaml").read_text()))
    assert classes.names == ("background", "cat", "dog")
    # green for the first class as by default, then VOC's maroon: dark green beside the
    # green marked a second class in nearly the same colour
    assert classes.vis_colors == ((0, 0, 0), (0, 255, 0), (128, 0, 0))
    assert "read as instance ids" not in capsys.readouterr().out


def test_folder_with_forgotten_classes_says_its_masks_were_read_as_instance_ids(tmp_path, capsys):
    root = folder_fixture(tmp_path / "mine", n=2, values=(1, 2))
    run("folder", "--images", str(root / "images"), "--masks", str(root / "masks"),
        "--out", str(tmp_path / "data"), "--valid-every", "2")  # fmt: skip
    assert "2 mask(s) held values above 1, read as instance ids" in capsys.readouterr().out


def test_folder_reads_colour_masks_by_the_colours_of_config(tmp_path):
    # CVAT's "Segmentation mask" export: RGB masks in the colours of its labelmap.txt
    root = tmp_path / "cvat"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    for i in range(2):
        photo = np.full((48, 64, 3), 30 * i, np.uint8)  # two photos: copies would be refused
        Image.fromarray(photo).save(root / "JPEGImages" / f"f{i}.jpg")
        mask = np.zeros((48, 64, 3), np.uint8)
        mask[5:10, 5:10] = (250, 50, 83)
        mask[20:30] = (51, 221, 255)
        Image.fromarray(mask).save(root / "SegmentationClass" / f"f{i}.png")
    flags = ["folder", "--images", str(root / "JPEGImages"), "--masks",
             str(root / "SegmentationClass"), "--out", str(tmp_path / "data"),
             "--valid-every", "2"]  # fmt: skip
    with pytest.raises(
        UserError, match=r"(?s)2 problem.*f0\.png: a colour mask with 2 colours .*\(--config\)"
    ):
        run(*flags)
    config = tmp_path / "cvat.yaml"
    colours = [[0, 0, 0], [250, 50, 83], [51, 221, 255]]
    config.write_text(yaml.safe_dump(
        {"ALL_CLASSES": ["background", "car", "road"], "LABEL_COLORS_LIST": colours,
         "VIS_LABEL_MAP": colours}
    ))  # fmt: skip
    run(*flags, "--config", str(config))
    mask = np.asarray(Image.open(tmp_path / "data" / "valid_masks" / "f1.png"))
    assert mask.ndim == 2 and mask[7, 7] == 1 and mask[25, 0] == 2 and mask[40, 40] == 0
    written = yaml.safe_load((tmp_path / "data" / "classes.yaml").read_text())
    assert written["ALL_CLASSES"] == ["background", "car", "road"]
    assert written["LABEL_COLORS_LIST"] == colours


def test_folder_names_every_problem_at_once_and_writes_nothing(tmp_path):
    root = folder_fixture(tmp_path / "mine")
    (root / "images" / "0.jpg").rename(root / "images" / "extra.jpg")  # 0.png is left alone
    mask = np.asarray(Image.open(root / "masks" / "3.png"))
    (root / "masks" / "3.png").unlink()
    Image.fromarray(mask * 255).save(root / "masks" / "3.jpg")
    # a phone photo: stored 64x48, shown 48x64 (EXIF orientation 6), its mask drawn as stored
    photo = Image.open(root / "images" / "4.jpg")
    exif = photo.getexif()
    exif[0x0112] = 6
    photo.save(root / "images" / "4.jpg", exif=exif)
    with pytest.raises(
        UserError,
        match=r"(?s)4 problem.*extra\.jpg: image without a mask named extra in .*masks"
        r".*0\.png: mask without an image.*3\.jpg: a JPEG mask"
        r".*4\.png: mask is 64x48 but its image 4\.jpg is 48x64 \(sides swapped",
    ):
        run("folder", "--images", str(root / "images"), "--masks", str(root / "masks"),
            "--out", str(tmp_path / "data"))  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_folder_names_subfolders_and_too_few_images_for_a_valid_split(tmp_path):
    root = folder_fixture(tmp_path / "mine", n=3)
    flags = ["--masks", str(root / "masks"), "--out", str(tmp_path / "data")]
    with pytest.raises(UserError, match=r"every 5th image \(--valid-every 5\) goes to valid; "
                       r"pass --valid-every 3"):  # fmt: skip
        run("folder", "--images", str(root / "images"), *flags)
    (root / "split" / "train").mkdir(parents=True)
    (root / "split" / "val").mkdir()
    with pytest.raises(UserError, match=r"holds no image but the subfolders train/, val/"):
        run("folder", "--images", str(root / "split"), *flags)
    with pytest.raises(UserError, match=r"--valid-every must be at least 2"):
        run("folder", "--images", str(root / "images"), *flags, "--valid-every", "1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def roboflow_fixture(root, csv="\ufeffPixel Value, Class\n0, background\n1, cat\n2, dog\n"):
    """A Roboflow "Semantic Segmentation Masks" export: train/ (2), valid/ (1), test/ (1)."""
    for s, (split, n) in enumerate((("train", 2), ("valid", 1), ("test", 1))):
        (root / split).mkdir(parents=True)
        (root / split / "_classes.csv").write_text(csv, encoding="utf-8")
        for i in range(n):
            name = f"img{i}_jpg.rf.{split}{i}"
            # a photo each: the same bytes in train/ and valid/ are refused, whatever the names
            photo = np.full((48, 64, 3), 90 + 10 * (2 * s + i), np.uint8)
            Image.fromarray(photo).save(root / split / f"{name}.jpg")
            mask = np.zeros((48, 64), np.uint8)
            mask[5:10, 5:10] = 1
            mask[20:30, 20:30] = 2
            Image.fromarray(mask).save(root / split / f"{name}_mask.png")
    return root


def test_roboflow_keeps_its_splits_and_its_class_names(tmp_path, capsys):
    root = roboflow_fixture(tmp_path / "export")
    out = tmp_path / "data"
    run("roboflow", "--root", str(root), "--out", str(out))
    assert sorted(p.name for p in (out / "train_images").iterdir()) == [
        "img0_jpg.rf.train0.jpg", "img1_jpg.rf.train1.jpg"
    ]  # fmt: skip
    assert [p.name for p in (out / "valid_masks").iterdir()] == ["img0_jpg.rf.valid0.png"]
    mask = np.asarray(Image.open(out / "valid_masks" / "img0_jpg.rf.valid0.png"))
    assert mask[7, 7] == 1 and mask[25, 25] == 2 and mask[40, 60] == 0
    classes = ClassConfig.from_dict(yaml.safe_load((out / "classes.yaml").read_text()))
    assert classes.names == ("background", "cat", "dog")
    assert [len(p) for p in check_dataset(out, classes).values()] == [2, 1]
    assert "valid: 1 image; pixels: background 2,947, cat 25, dog 100" in capsys.readouterr().out


def test_roboflow_says_how_many_test_images_it_left_out(tmp_path, capsys):
    root = roboflow_fixture(tmp_path / "export")
    shutil.copy(root / "test" / "img0_jpg.rf.test0.jpg", root / "test" / "img1_jpg.rf.test1.jpg")
    (root / "test" / ".DS_Store").write_bytes(b"")  # neither an image nor a mask
    run("roboflow", "--root", str(root), "--out", str(tmp_path / "data"))
    note = f"2 image(s) in {root / 'test'} (the export's test split) were left out"
    assert note in capsys.readouterr().out
    shutil.rmtree(root / "test")  # an export without a test split: nothing to say
    run("roboflow", "--root", str(root), "--out", str(tmp_path / "data"), "--force")
    assert "left out" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "defect, message",
    [
        ("no csv", r"train/_classes\.csv is missing: --root must be a Roboflow"),
        ("gap", r"_classes\.csv: pixel values \[0, 2\] are not 0, 1, 2, \.\.\. without gaps"),
        ("bad line", r"_classes\.csv: the line 'cat' is not 'pixel value, class name'"),
        ("no valid", r"valid: folder missing \(export a dataset version with a valid split"),
        ("valid a file", r"valid: a file, not a folder \(export a dataset version with a valid"),
        ("unpaired", r"(?s)1 problem.*img1_jpg\.rf\.train1\.jpg: image without a mask"),
    ],
)
def test_roboflow_exports_it_cannot_read_are_named(tmp_path, defect, message):
    csv = {"gap": "Pixel Value, Class\n0, background\n2, dog\n", "bad line": "0,background\ncat\n"}
    root = roboflow_fixture(tmp_path / "export", **({"csv": csv[defect]} if defect in csv else {}))
    if defect == "no csv":
        (root / "train" / "_classes.csv").unlink()
    elif defect == "no valid":
        shutil.rmtree(root / "valid")
    elif defect == "valid a file":
        shutil.rmtree(root / "valid")
        (root / "valid").write_bytes(b"")
    elif defect == "unpaired":
        (root / "train" / "img1_jpg.rf.train1_mask.png").unlink()
    with pytest.raises(UserError, match=message):
        run("roboflow", "--root", str(root), "--out", str(tmp_path / "data"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


CVAT_LABELMAP = (
    "# label:color_rgb:parts:actions\nbackground:0,0,0::\ncar:250,50,83::\nroad sign:51,221,255::\n"
)


def cvat_fixture(root, items=("f0", "f1", "f2", "f3", "sub/f4"), unannotated=("f5",), lists=None):
    """A CVAT "Segmentation mask 1.1" export: RGB masks in labelmap.txt's colours (a car square,
    a road sign band), ``unannotated`` frames without one, and ImageSets/Segmentation lists
    (``lists``: name -> item ids; default.txt of every item by default)."""
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "labelmap.txt").write_text(CVAT_LABELMAP, encoding="utf-8")
    for k, item in enumerate([*items, *unannotated]):  # a photo each: copies are refused
        (root / "JPEGImages" / item).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((48, 64, 3), 60 + 10 * k, np.uint8)).save(
            root / "JPEGImages" / f"{item}.jpg"
        )
    for item in items:
        (root / "SegmentationClass" / item).parent.mkdir(parents=True, exist_ok=True)
        mask = np.zeros((48, 64, 3), np.uint8)
        mask[5:10, 5:10] = (250, 50, 83)
        mask[20:30] = (51, 221, 255)
        Image.fromarray(mask).save(root / "SegmentationClass" / f"{item}.png")
    for name, listed in (lists or {"default": [*items, *unannotated]}).items():
        (root / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("\n".join(listed) + "\n")
    return root


def test_cvat_reads_the_colours_of_its_labelmap_and_leaves_unannotated_frames_out(tmp_path, capsys):
    root = cvat_fixture(tmp_path / "export")
    out = tmp_path / "data"
    run("cvat", "--root", str(root), "--out", str(out), "--valid-every", "2")
    # one default subset: split by name, every second annotated frame to valid
    assert sorted(p.name for p in (out / "train_images").iterdir()) == [
        "f0.jpg",
        "f2.jpg",
        "sub_f4.jpg",
    ]
    assert sorted(p.name for p in (out / "valid_masks").iterdir()) == ["f1.png", "f3.png"]
    mask = np.asarray(Image.open(out / "train_masks" / "sub_f4.png"))
    assert mask.ndim == 2 and mask[7, 7] == 1 and mask[25, 0] == 2 and mask[40, 40] == 0
    classes = ClassConfig.from_dict(yaml.safe_load((out / "classes.yaml").read_text()))
    assert classes.names == ("background", "car", "road sign")
    assert classes.mask_colors[1:] == ((250, 50, 83), (51, 221, 255))
    assert [len(p) for p in check_dataset(out, classes).values()] == [3, 2]
    printed = capsys.readouterr().out
    assert "1 image(s) without a mask in SegmentationClass/" in printed and "left out" in printed


def test_cvat_keeps_the_train_and_validation_subsets_of_the_export(tmp_path, capsys):
    lists = {"Train": ["f0", "f1", "f2"], "Validation": ["f3"], "Test": ["sub/f4"]}
    root = cvat_fixture(tmp_path / "export", lists=lists, unannotated=())
    out = tmp_path / "data"
    run("cvat", "--root", str(root), "--out", str(out))  # 4 images: too few for every 5th
    assert sorted(p.name for p in (out / "train_images").iterdir()) == [
        "f0.jpg",
        "f1.jpg",
        "f2.jpg",
    ]
    assert [p.name for p in (out / "valid_images").iterdir()] == ["f3.jpg"]  # Test left out
    # said, as frames without a mask are: the report's counts alone left the user to wonder
    printed = capsys.readouterr().out
    assert "1 annotated image(s) in neither Train.txt nor Validation.txt" in printed


def test_cvat_valid_every_is_refused_where_the_export_has_its_own_splits(tmp_path):
    """--valid-every was silently unused there: the export's Train and Validation lists split it."""
    lists = {"Train": ["f0", "f1", "f2"], "Validation": ["f3", "sub/f4"]}
    root = cvat_fixture(tmp_path / "export", lists=lists, unannotated=())
    out = tmp_path / "data"
    for every in ("2", "5"):  # the default's value too: given, it is as unused
        with pytest.raises(
            UserError, match=rf"--valid-every {every} .*Train\.txt and Validation\.txt"
        ):
            run("cvat", "--root", str(root), "--out", str(out), "--valid-every", every)
        assert not out.exists()
    run("cvat", "--root", str(root), "--out", str(out))
    assert len(list((out / "valid_images").iterdir())) == 2


def test_cvat_subset_lists_saved_by_a_text_editor_are_read(tmp_path):
    """A list saved with a byte-order mark (Notepad's "UTF-8 with BOM") keeps its first item,
    and one that is not UTF-8 is named, not a traceback."""
    lists = {"Train": ["f0", "f1", "f2"], "Validation": ["f3"]}
    root = cvat_fixture(tmp_path / "export", lists=lists, unannotated=())
    train = root / "ImageSets" / "Segmentation" / "Train.txt"
    train.write_bytes(b"\xef\xbb\xbff0\r\nf1\r\nf2\r\n")
    out = tmp_path / "data"
    run("cvat", "--root", str(root), "--out", str(out))
    assert sorted(p.name for p in (out / "train_images").iterdir()) == [
        "f0.jpg",
        "f1.jpg",
        "f2.jpg",
    ]
    train.write_bytes(b"f0\nf\xe91\n")  # Latin-1
    with pytest.raises(UserError, match=r"cannot read .*Train\.txt"):
        run("cvat", "--root", str(root), "--out", str(tmp_path / "other"))


@pytest.mark.parametrize(
    "lists",
    [{"Train": ["f0", "f1"], "train": ["f2"], "Validation": ["f3"]},
     {"Train": ["f0", "f1", "f2"], "val": ["f3"], "Validation": ["sub/f4"]}],
)  # fmt: skip
def test_cvat_two_lists_of_one_subset_are_named(tmp_path, lists):
    # keyed by their names in any case, one list of each pair was read and the other's items
    # left out of the dataset without a word
    root = cvat_fixture(tmp_path / "export", lists=lists, unannotated=())
    written = sorted(p.stem for p in (root / "ImageSets" / "Segmentation").iterdir())
    if written != sorted(lists):
        pytest.skip("this filesystem ignores case: Train.txt and train.txt are one file")
    pair = r"Train\.txt and train\.txt" if "train" in lists else r"Validation\.txt and val\.txt"
    with pytest.raises(UserError, match=rf"Segmentation: {pair} each list the"):
        run("cvat", "--root", str(root), "--out", str(tmp_path / "data"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


@pytest.mark.parametrize(
    "defect, message",
    [
        ("no labelmap", r"labelmap\.txt is missing: --root must be a CVAT"),
        ("masks a file", r"SegmentationClass is a file, not a folder: --root must be a CVAT"),
        ("bad labelmap", r"labelmap\.txt, line 3: 'car:250,50::' is not 'name:r,g,b::'"),
        ("one label", r"labelmap\.txt: ALL_CLASSES needs at least two classes"),
        ("colour", r"(?s)1 problem.*f2\.png: a colour mask with 1 colour not in .*\[9, 99, 9\]"),
        ("lone mask", r"(?s)1 problem.*f9\.png: mask without an image"),
        ("too few", r"export: 5 annotated image\(s\), and every 9th image \(--valid-every 9\)"),
    ],
)
def test_cvat_exports_it_cannot_read_are_named(tmp_path, defect, message):
    root = cvat_fixture(tmp_path / "export")
    labelmap = root / "labelmap.txt"
    if defect == "no labelmap":
        labelmap.unlink()
    elif defect == "masks a file":
        shutil.rmtree(root / "SegmentationClass")
        (root / "SegmentationClass").write_bytes(b"")
    elif defect == "bad labelmap":
        labelmap.write_text(CVAT_LABELMAP.replace("car:250,50,83::", "car:250,50::"))
    elif defect == "one label":
        labelmap.write_text("background:0,0,0::\n")
    elif defect == "colour":
        Image.fromarray(np.full((48, 64, 3), (9, 99, 9), np.uint8)).save(
            root / "SegmentationClass/f2.png"
        )
    elif defect == "lone mask":
        (root / "SegmentationClass/f1.png").rename(root / "SegmentationClass/f9.png")
        (root / "JPEGImages/f1.jpg").unlink()
    every = "9" if defect == "too few" else "2"
    with pytest.raises(UserError, match=message):
        run("cvat", "--root", str(root), "--out", str(tmp_path / "data"), "--valid-every", every)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_cvat_items_whose_flat_names_clash_are_named(tmp_path):
    root = cvat_fixture(tmp_path / "export", items=("a/b_c", "a_b/c", "x", "y"))
    with pytest.raises(UserError, match=r"(?s)1 problem.*a/b_c and a_b/c would share one name"):
        run("cvat", "--root", str(root), "--out", str(tmp_path / "data"), "--valid-every", "2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_voc_points_a_cvat_export_to_the_cvat_importer(tmp_path):
    root = cvat_fixture(tmp_path / "export")
    with pytest.raises(
        UserError, match=r"train\.txt is missing.*a CVAT export .*prepare_data\.py cvat"
    ):
        run("voc", "--root", str(root), "--out", str(tmp_path / "data"))


@pytest.mark.parametrize(
    ("importer", "export", "hint"),
    [
        ("cvat", "roboflow", "a Roboflow export (it has train/_classes.csv): python prepare_data"
         ".py roboflow --root {root} reads it"),
        ("roboflow", "cvat", "a CVAT export (it has labelmap.txt): python prepare_data.py cvat "
         "--root {root} reads it"),
        ("cvat", "voc", "a VOC-style export (ImageSets/Segmentation/train.txt, no labelmap.txt): "
         "python prepare_data.py voc --root {root} reads it"),
        ("roboflow", "roboflow coco", "a COCO-format export (_annotations.coco.json): python "
         "prepare_data.py coco --annotations {root}/train/_annotations.coco.json --images "
         "{root}/train reads it"),
    ],
)  # fmt: skip
def test_an_export_given_to_another_importer_is_pointed_to_its_own(
    tmp_path, importer, export, hint
):
    """A Roboflow export given to cvat (or the reverse, or a VOC one, or Roboflow's COCO
    export) was told only that the file its importer reads is missing."""
    root = tmp_path / "export"
    if export == "roboflow":
        roboflow_fixture(root)
    elif export == "cvat":
        cvat_fixture(root)
    elif export == "voc":
        voc_fixture(root)
    else:  # Roboflow's "COCO Segmentation" format: each split's images and its own JSON
        ann = coco_fixture(tmp_path / "coco")
        shutil.copytree(tmp_path / "coco" / "images", root / "train")
        shutil.copy(ann, root / "train" / "_annotations.coco.json")
    with pytest.raises(UserError) as info:
        run(importer, "--root", str(root), "--out", str(tmp_path / "data"))
    assert str(info.value).endswith("; this is " + hint.format(root=root)), str(info.value)
    assert not (tmp_path / "data").exists()


def test_sources_one_folder_off_are_pointed_at_the_right_one(tmp_path):
    """voc's --root VOCdevkit (or the folder above it), roboflow's --root export/train and coco's
    --images above its images were told only that a file inside them is missing."""
    devkit = tmp_path / "VOCdevkit"
    voc_fixture(devkit / "VOC2012")
    for root in (devkit, tmp_path):
        with pytest.raises(UserError, match=rf"train\.txt is missing: .*; pass --root "
                           rf"{re.escape(str(devkit / 'VOC2012'))}$"):  # fmt: skip
            run("voc", "--root", str(root), "--out", str(tmp_path / "o"))
    export = roboflow_fixture(tmp_path / "export")
    with pytest.raises(
        UserError, match=rf"one split of the export: pass --root {re.escape(str(export))}$"
    ):
        run("roboflow", "--root", str(export / "train"), "--out", str(tmp_path / "o"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VOCdevkit", "export"]
    ann = coco_fixture(tmp_path / "coco")  # --images coco, not coco/images
    with pytest.raises(UserError, match=rf"names a\.jpg, missing from --images \S*coco; pass "
                       rf"--images {re.escape(str(tmp_path / 'coco' / 'images'))}$"):  # fmt: skip
        run("coco", "--annotations", str(ann), "--images", str(tmp_path / "coco"),
            "--out", str(tmp_path / "o"))  # fmt: skip


@pytest.mark.parametrize("file_name", ["images/a.jpg", "/data/upload/1/a.jpg"])
def test_coco_images_flag_that_does_not_hold_the_file_names_gets_a_hint(tmp_path, file_name):
    """Exports name files under their images folder (images/a.jpg: --images was that folder
    itself) or by the path on the machine that exported them: told only that it is missing."""
    ann = coco_fixture(tmp_path / "coco")
    data = json.loads(ann.read_text())
    data["images"][0]["file_name"] = file_name
    ann.write_text(json.dumps(data))
    hint = {
        "images/a.jpg": rf"; pass --images {re.escape(str(tmp_path / 'coco'))}, as its file_name",
        "/data/upload/1/a.jpg": r"; --images holds a\.jpg: write file_name entries relative to",
    }[file_name]
    with pytest.raises(UserError, match=rf"names {file_name}, missing from --images \S*{hint}"):
        run_coco(tmp_path, ann, tmp_path / "o", "--valid-every", "2")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "lists, message",
    [
        # a hand-edited list can name an item in both subsets: copied into both splits, it would
        # be scored by validation after training on it (f5, unannotated, is never copied)
        (
            {"Train": ["f0", "f1", "f2", "", "f5"], "Validation": ["f2", "f3", "f1", "", "f5"]},
            r"2 item\(s\) are in both \S*Train\.txt and \S*Validation\.txt: f1, f2; "
            r".*remove each from one of the two lists",
        ),
        # f5 has no mask: said with its list, not as "the valid split came out empty"
        (
            {"Train": ["f0", "f1", "f2", "f3"], "Validation": ["f5"]},
            r"Validation\.txt: none of the 1 item\(s\) it lists has a mask in "
            r"\S*SegmentationClass, so the valid split would be empty",
        ),
    ],
    ids=["item in both", "no annotated frame"],
)
def test_cvat_subset_lists_that_would_spoil_a_split_are_named(tmp_path, lists, message):
    root = cvat_fixture(tmp_path / "export", lists=lists)
    with pytest.raises(UserError, match=rf"(?s)1 problem.*{message}"):
        run("cvat", "--root", str(root), "--out", str(tmp_path / "data"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_voc_stems_in_both_train_txt_and_val_txt_are_refused(tmp_path):
    root = voc_fixture(tmp_path / "VOC2012")
    lists = root / "ImageSets" / "Segmentation"
    (lists / "val.txt").write_text("2007_000002\n2007_000000\n")
    with pytest.raises(
        UserError, match=r"1 item\(s\) are in both \S*train\.txt and \S*val\.txt: 2007_000000;"
    ):
        run("voc", "--root", str(root), "--out", str(tmp_path / "o"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VOC2012"]


def test_roboflow_and_binary_images_copied_into_both_split_folders_are_refused(tmp_path):
    root = roboflow_fixture(tmp_path / "export")
    for suffix in (".jpg", "_mask.png"):  # one train image copied into valid/ with its mask
        shutil.copy(root / "train" / f"img1_jpg.rf.train1{suffix}", root / "valid")
    # the same name holding another image is another image: not refused
    Image.fromarray(np.full((48, 64, 3), 7, np.uint8)).save(root / "valid/img0_jpg.rf.train0.jpg")
    shutil.copy(root / "train/img0_jpg.rf.train0_mask.png", root / "valid")
    with pytest.raises(
        UserError,
        match=r"(?s)1 problem.*1 item\(s\) are in both \S*train and \S*valid: "
        r"img1_jpg\.rf\.train1\.jpg; .*remove each from one of the two folders",
    ):
        run("roboflow", "--root", str(root), "--out", str(tmp_path / "data"))
    (root / "valid" / "img1_jpg.rf.train1.jpg").unlink()
    (root / "valid" / "img1_jpg.rf.train1_mask.png").unlink()
    run("roboflow", "--root", str(root), "--out", str(tmp_path / "data"))
    assert len(list((tmp_path / "data" / "valid_images").iterdir())) == 2
    binary = binary_fixture(tmp_path / "binary")
    image = next((binary / "train_images").iterdir())
    shutil.copy(image, binary / "valid_images")
    shutil.copy(binary / "train_masks" / f"{image.stem}.png", binary / "valid_masks")
    with pytest.raises(UserError, match=rf"1 item\(s\) are in both .*: {image.name};"):
        run("binary", "--root", str(binary), "--out", str(tmp_path / "binary_01"))


def test_importers_refuse_a_train_image_copied_into_valid_under_another_name(tmp_path):
    """The bytes, not the name, make the copy: renamed, a train image in valid is still scored
    by validation after training on it."""
    root = roboflow_fixture(tmp_path / "export")
    shutil.copy(root / "train/img1_jpg.rf.train1.jpg", root / "valid/renamed.jpg")
    shutil.copy(root / "train/img1_jpg.rf.train1_mask.png", root / "valid/renamed_mask.png")
    with pytest.raises(
        UserError,
        match=r"(?s)1 problem.*1 item\(s\) are in both \S*train and \S*valid: "
        r"img1_jpg\.rf\.train1\.jpg = renamed\.jpg; .*remove each from one of the two folders",
    ):
        run("roboflow", "--root", str(root), "--out", str(tmp_path / "data"))
    assert not (tmp_path / "data").exists()
    binary = binary_fixture(tmp_path / "binary")
    shutil.copy(binary / "train_images/train2.jpg", binary / "valid_images/v9.jpg")
    shutil.copy(binary / "train_masks/train2.png", binary / "valid_masks/v9.png")
    with pytest.raises(UserError, match=r"1 item\(s\) are in both .*: train2\.jpg = v9\.jpg;"):
        run("binary", "--root", str(binary), "--out", str(tmp_path / "binary_01"))


def test_voc_and_coco_refuse_a_train_image_copied_into_valid_under_another_name(tmp_path):
    root = voc_fixture(tmp_path / "VOC2012")
    jpegs = root / "JPEGImages"
    shutil.copy(jpegs / "2007_000000.jpg", jpegs / "2007_000002.jpg")  # val.txt's image
    with pytest.raises(
        UserError,
        match=r"1 item\(s\) are in both \S*train\.txt and \S*val\.txt: 2007_000000\.jpg = "
        r"2007_000002\.jpg; .*remove each from one of the two lists",
    ):
        run("voc", "--root", str(root), "--out", str(tmp_path / "voc"))
    ann = coco_fixture(tmp_path / "coco")  # --valid-every 2: a.jpg to train, b.jpg to valid
    images = tmp_path / "coco/images"
    shutil.copy(images / "a.jpg", images / "b.jpg")
    with pytest.raises(
        UserError,
        match=r"1 pair\(s\) of files in \S*images are identical, byte for byte, and would go "
        r"one to train and one to valid \(train = valid\): a\.jpg = b\.jpg; .*delete one",
    ):
        run("coco", "--annotations", str(ann), "--images", str(images),
            "--out", str(tmp_path / "coco_out"), "--valid-every", "2")  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VOC2012", "coco"]


def test_folder_refuses_copies_its_split_would_put_in_train_and_in_valid(tmp_path):
    root = folder_fixture(tmp_path / "mine")  # --valid-every 3: 2.jpg and 5.jpg to valid
    flags = ["folder", "--images", str(root / "images"), "--masks", str(root / "masks"),
             "--valid-every", "3"]  # fmt: skip
    shutil.copy(root / "images/0.jpg", root / "images/3.jpg")  # both in train: no matter
    run(*flags, "--out", str(tmp_path / "data"))
    shutil.copy(root / "images/0.jpg", root / "images/5.jpg")
    with pytest.raises(
        UserError,
        match=r"(?s)1 problem.*2 pair\(s\) of files in \S*images are identical, byte for byte, "
        r"and would go one to train and one to valid \(train = valid\): 0\.jpg = 5\.jpg, "
        r"3\.jpg = 5\.jpg; .*delete one of each pair",
    ):
        run(*flags, "--out", str(tmp_path / "data2"))
    assert not (tmp_path / "data2").exists()


def test_cvat_refuses_one_frame_under_two_ids_in_the_train_and_the_validation_list(tmp_path):
    lists = {"Train": ["f0", "f1", "f2"], "Validation": ["f3", "sub/f4"]}
    root = cvat_fixture(tmp_path / "export", lists=lists)
    shutil.copy(root / "JPEGImages/f1.jpg", root / "JPEGImages/sub/f4.jpg")
    with pytest.raises(
        UserError, match=r"(?s)1 problem.*1 pair\(s\) of files .*: f1\.jpg = sub/f4\.jpg;"
    ):
        run("cvat", "--root", str(root), "--out", str(tmp_path / "data"))


def test_cvat_and_folder_skip_files_in_hidden_folders(tmp_path, capsys):
    """Thumbnails and caches that viewers and notebooks keep in hidden folders are not images."""
    root = cvat_fixture(tmp_path / "export", items=("f0", "f1", "f2", "f3"), unannotated=())
    hidden = ["JPEGImages/.thumbnails/f0.jpg", "SegmentationClass/.cache/f1.png",
              "JPEGImages/sub/.thumbnails/f9.jpg"]  # fmt: skip
    for name in hidden:
        (root / name).parent.mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / name)
    out = tmp_path / "data"
    run("cvat", "--root", str(root), "--out", str(out), "--valid-every", "2")
    assert sorted(p.name for p in (out / "train_images").iterdir()) == ["f0.jpg", "f2.jpg"]
    assert "without a mask" not in capsys.readouterr().out  # no thumbnail counted as a frame
    mine = folder_fixture(tmp_path / "mine", n=2)
    for folder in ("train", "val", ".ipynb_checkpoints"):
        (mine / "split" / folder).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(mine / "split" / "._0.jpg")  # macOS
    with pytest.raises(UserError, match=r"holds no image but the subfolders train/, val/: "):
        run("folder", "--images", str(mine / "split"), "--masks", str(mine / "masks"),
            "--out", str(tmp_path / "other"))  # fmt: skip


def test_the_instance_ids_note_names_where_this_importer_takes_its_classes(tmp_path, capsys):
    """--classes is folder's flag without --config; with it, and for cvat, the classes come from
    a file, which the note names."""
    mine = folder_fixture(tmp_path / "mine", n=2, values=(1, 2))
    config = tmp_path / "two.yaml"
    config.write_text("ALL_CLASSES: [background, person]\n")
    run("folder", "--images", str(mine / "images"), "--masks", str(mine / "masks"),
        "--config", str(config), "--out", str(tmp_path / "a"), "--valid-every", "2")  # fmt: skip
    printed = capsys.readouterr().out
    assert "2 mask(s) held values above 1" in printed and "--classes" not in printed
    assert f"list each class in ALL_CLASSES of {config}" in printed
    root = cvat_fixture(tmp_path / "export", items=("f0", "f1"), unannotated=())
    (root / "labelmap.txt").write_text("background:0,0,0::\ncar:250,50,83::\n")
    for item in ("f0", "f1"):  # gray ids 0, 1, 2 saved as RGB, not the labelmap's colours
        ids = np.zeros((48, 64, 3), np.uint8)
        ids[5:10], ids[20:30] = 1, 2
        Image.fromarray(ids).save(root / "SegmentationClass" / f"{item}.png")
    run("cvat", "--root", str(root), "--out", str(tmp_path / "b"), "--valid-every", "2")
    printed = capsys.readouterr().out
    assert "2 mask(s) held values above 1" in printed and "--classes" not in printed
    assert f"list each class in {root / 'labelmap.txt'}" in printed


def test_voc_lists_saved_by_a_text_editor_are_read(tmp_path):
    """As cvat's lists: a byte-order mark (Notepad's "UTF-8 with BOM") is not part of the first
    name, and a list that is not UTF-8 is named."""
    root = voc_fixture(tmp_path / "VOC2012")
    lists = root / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_bytes(b"\xef\xbb\xbf2007_000000\r\n2007_000001\r\n")
    run("voc", "--root", str(root), "--out", str(tmp_path / "o"))
    assert sorted(p.name for p in (tmp_path / "o" / "train_images").iterdir()) == [
        "2007_000000.jpg",
        "2007_000001.jpg",
    ]
    (lists / "val.txt").write_bytes(b"2007_00000\xe92\n")  # Latin-1
    with pytest.raises(UserError, match=r"cannot read .*val\.txt"):
        run("voc", "--root", str(root), "--out", str(tmp_path / "other"))


@pytest.mark.parametrize(
    ("dataset", "flag", "names", "message"),
    [
        ("folder", "--classes", [""], r"--classes gives a blank class name in \['']"),
        (
            "coco",
            "--classes",
            ["cat", " "],
            r"--classes gives a blank class name in \['cat', ' '\]",
        ),
        ("binary", "--name", [" "], r"--name gives a blank class name in \[' '\]"),
        ("coco", "--classes", [f"c{i}" for i in range(255)], r"--classes: at most 255 classes"),
    ],
)
def test_class_names_that_make_no_class_config_are_named_with_their_flag(
    tmp_path, dataset, flag, names, message
):
    """Such names failed in ClassConfig, whose message importer_classes took for roboflow's
    _classes.csv: an AttributeError (no --root) where the importer has none, and binary's
    --root/train/_classes.csv, a file that is not there, where it has one."""
    if dataset == "coco":
        ann = coco_fixture(tmp_path / "coco")
        sources = ["--annotations", str(ann), "--images", str(tmp_path / "coco/images")]
    elif dataset == "folder":
        (tmp_path / "images").mkdir()
        (tmp_path / "masks").mkdir()
        sources = ["--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks")]
    else:
        sources = ["--root", str(tmp_path)]
    out = tmp_path / "out"
    with pytest.raises(UserError, match=message):
        run(dataset, *sources, "--out", str(out), flag, *names)
    assert not out.exists()


def test_an_out_that_holds_no_dataset_is_named_with_what_force_would_replace(tmp_path):
    """--out data (for data/voc_person) was "not empty; pass --force to replace it", and
    --force then replaced data/ whole: every other dataset in it. The message names what the
    folder holds before anyone adds --force; a dataset's folder is still replaced by it."""
    zip_path = penn_fudan_zip(tmp_path / "PennFudanPed.zip")
    out = tmp_path / "data"
    run("pennfudan", "--zip", str(zip_path), "--out", str(out / "PennFudanPed"))
    (out / "notes.txt").write_text("")
    message = (
        rf"--out {re.escape(str(out))} is not empty and holds no dataset \(PennFudanPed/, "
        r"notes\.txt\): --force would replace it and all it holds; to add a dataset to it, "
        rf"pass --out {re.escape(str(out / 'NAME'))}$"
    )
    with pytest.raises(UserError, match=message):
        run("pennfudan", "--zip", str(zip_path), "--out", str(out))
    assert sorted(p.name for p in out.iterdir()) == ["PennFudanPed", "notes.txt"]
    with pytest.raises(UserError, match=r"PennFudanPed is not empty; pass --force to replace it$"):
        run("pennfudan", "--zip", str(zip_path), "--out", str(out / "PennFudanPed"))


@pytest.mark.parametrize("given", ["PennFudanPed", "."])  # the folder, or the one it unzips into
def test_penn_fudan_as_unzipped_given_as_zip_is_named_with_the_command_that_converts_it(
    tmp_path, given
):
    """A browser that unzips downloads (Safari) leaves PennFudanPed/ for the --zip the offline
    message names: "pass --zip PennFudanPed.zip", which the user no longer has."""
    unzipped = tmp_path / "Downloads"
    with zipfile.ZipFile(penn_fudan_zip(tmp_path / "PennFudanPed.zip")) as archive:
        archive.extractall(unzipped)
    folder = unzipped / "PennFudanPed"
    out = tmp_path / "data" / "PennFudanPed"
    command = (
        f"python prepare_data.py folder --images {folder / 'PNGImages'} --masks "
        f"{folder / 'PedMasks'} --mask-suffix _mask --out {out}"
    )
    with pytest.raises(UserError, match=rf"is Penn-Fudan as unzipped: run {re.escape(command)}"):
        run("pennfudan", "--zip", str(unzipped / given), "--out", str(out))
    run(*shlex.split(command.removeprefix("python prepare_data.py ")))
    run("pennfudan", "--zip", str(tmp_path / "PennFudanPed.zip"), "--out", str(tmp_path / "z"))
    for made in sorted(p.relative_to(tmp_path / "z") for p in (tmp_path / "z").rglob("*.png")):
        assert (out / made).read_bytes() == (tmp_path / "z" / made).read_bytes()  # the same


@pytest.mark.parametrize(
    ("suffix", "why"), [(".png", "a file extension"), ("_m/x", "a path, with /")]
)
def test_a_mask_suffix_that_names_no_mask_is_named_before_reading(tmp_path, suffix, why):
    """--mask-suffix .png (the masks' extension) called img0.png "a mask whose name does not end
    with --mask-suffix .png", and each image without "a mask named img0.png", which was there."""
    root = folder_fixture(tmp_path / "mine", n=4)
    with pytest.raises(UserError, match=rf"--mask-suffix {re.escape(suffix)} is {why}"):
        run("folder", "--images", str(root / "images"), "--masks", str(root / "masks"),
            "--out", str(tmp_path / "data"), "--mask-suffix", suffix)  # fmt: skip
    assert not (tmp_path / "data").exists()
    # the suffix with its extension, as the masks' names show it
    with pytest.raises(UserError, match=r"_mask\.png ends in an extension.* --mask-suffix _mask$"):
        run("folder", "--images", str(root / "images"), "--masks", str(root / "masks"),
            "--out", str(tmp_path / "data"), "--mask-suffix", "_mask.png")  # fmt: skip


def test_folder_maps_label_ids_by_mask_ids_and_writes_classes_yaml_without_them(tmp_path):
    # Cityscapes-like label ids: 7 road, 26 car, 0 unlabelled (no class: ignore)
    root = folder_fixture(tmp_path / "mine", values=(7, 26, 0))
    config = tmp_path / "classes.yaml"
    config.write_text("ALL_CLASSES: [road, car]\nMASK_IDS: [7, 26]\n")
    out = tmp_path / "data"
    run("folder", "--images", str(root / "images"), "--masks", str(root / "masks"),
        "--out", str(out), "--config", str(config))  # fmt: skip
    written = np.asarray(Image.open(out / "train_masks" / "0.png"))
    source = np.asarray(Image.open(root / "masks" / "0.png"))
    np.testing.assert_array_equal(written, np.select([source == 7, source == 26], [0, 1], 255))
    # the masks hold class ids now: reading them by MASK_IDS again would make every pixel ignore
    saved = yaml.safe_load((out / "classes.yaml").read_text())
    assert saved["ALL_CLASSES"] == ["road", "car"] and "MASK_IDS" not in saved
    check_dataset(out, ClassConfig.from_dict(saved))


@pytest.mark.parametrize("names", [["background", "person"], ["road", "car", "sky"]])
def test_folder_refuses_mask_ids_that_no_mask_holds(tmp_path, capsys, names):
    # 0/1 masks under another dataset's label ids: written as ignore alone, with the note of
    # black-and-white masks and the binary command for two classes
    root = folder_fixture(tmp_path / "mine")
    config = tmp_path / "classes.yaml"
    config.write_text(yaml.safe_dump({"ALL_CLASSES": names, "MASK_IDS": [7, 8, 9][: len(names)]}))
    out = tmp_path / "data"
    with pytest.raises(UserError, match="none of the masks holds a value that MASK_IDS lists"):
        run("folder", "--images", str(root / "images"), "--masks", str(root / "masks"),
            "--out", str(out), "--config", str(config))  # fmt: skip
    assert not out.exists()
    assert "binary" not in capsys.readouterr().out


# Cityscapes' label id -> training id, typed from its label table (not from prepare_data)
CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip


def cityscapes_fixture(root, cities=(("train", "aachen", 2), ("train", "bremen", 1),
                                     ("val", "lindau", 1), ("test", "berlin", 2))):  # fmt: skip
    """Cityscapes as its zips unzip: leftImg8bit/SPLIT/CITY/STEM_leftImg8bit.png (32x16) and
    gtFine/SPLIT/CITY/STEM_gtFine_{labelIds,color,instanceIds}.png, label ids 0-33 and 255."""
    rng = np.random.default_rng(0)
    for split, city, n in cities:
        for folder in ("leftImg8bit", "gtFine"):
            (root / folder / split / city).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            stem = f"{city}_{i:06d}_000019"
            image = rng.integers(0, 255, (16, 32, 3), dtype=np.uint8)
            Image.fromarray(image).save(
                root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            )
            gt = root / "gtFine" / split / city
            ids = rng.integers(0, 34, (16, 32), dtype=np.uint8)
            ids[0, :4] = (255, 7, 26, 33)  # ignore among classes, whatever the draw
            Image.fromarray(ids).save(gt / f"{stem}_gtFine_labelIds.png")
            Image.fromarray(image).save(gt / f"{stem}_gtFine_color.png")  # not read
            Image.fromarray(ids.astype(np.uint16) * 1000).save(
                gt / f"{stem}_gtFine_instanceIds.png"
            )
    return root


def loaded_masks(out: Path) -> dict[str, list[tuple[Path, np.ndarray]]]:
    """Each split's (image, mask) as training loads them with out/classes.yaml: (image file,
    the mask's (H, W) class ids at its own size)."""
    classes = ClassConfig.from_dict(yaml.safe_load((out / "classes.yaml").read_text()))
    pairs = check_dataset(out, classes)
    loaded = {}
    for split, split_pairs in pairs.items():
        dataset = datasets.SegmentationDataset(split_pairs, classes, (28, 28), train=False)
        loaded[split] = [(split_pairs[i][0], dataset[i][1].numpy()) for i in range(len(dataset))]
    return loaded


def test_cityscapes_reads_its_19_training_classes_by_label_id_and_links_its_images(
    tmp_path, capsys
):
    root = cityscapes_fixture(tmp_path / "cityscapes")
    out = tmp_path / "data"
    run("cityscapes", "--root", str(root), "--out", str(out))
    saved = yaml.safe_load((out / "classes.yaml").read_text())
    assert saved["ALL_CLASSES"][:3] == ["road", "sidewalk", "building"]
    assert len(saved["ALL_CLASSES"]) == 19 and saved["ALL_CLASSES"][-1] == "bicycle"
    assert saved["VIS_LABEL_MAP"][0] == [128, 64, 128] and saved["VIS_LABEL_MAP"][13] == [0, 0, 142]
    assert "MASK_IDS" not in saved  # the masks written hold class ids
    loaded = loaded_masks(out)
    assert [len(loaded["train"]), len(loaded["valid"])] == [3, 1]  # val is valid; test left out
    expected = np.vectorize(lambda v: CITYSCAPES_TRAIN_IDS.get(int(v), 255), otypes=[np.uint8])
    for split, folder in (("train", "train"), ("valid", "val")):
        for image, mask in loaded[split]:
            city = image.stem.split("_")[0]
            source = root / "leftImg8bit" / folder / city / f"{image.stem}_leftImg8bit.png"
            assert image.name == f"{image.stem}.png" and os.path.samefile(image, source)
            label_ids = root / "gtFine" / folder / city / f"{image.stem}_gtFine_labelIds.png"
            np.testing.assert_array_equal(mask, expected(np.asarray(Image.open(label_ids))))
    printed = capsys.readouterr().out
    test = root / "leftImg8bit" / "test"
    assert f"2 image(s) in {test} (Cityscapes' test split, whose labels are not public)" in printed


def test_images_are_copied_where_they_cannot_be_hard_linked(tmp_path, monkeypatch):
    def cross_device(source, dest):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    root = cityscapes_fixture(tmp_path / "cityscapes", cities=(("train", "a", 1), ("val", "b", 1)))
    monkeypatch.setattr(os, "link", cross_device)
    out = tmp_path / "data"
    run("cityscapes", "--root", str(root), "--out", str(out))
    (image,) = (out / "valid_images").iterdir()
    source = root / "leftImg8bit" / "val" / "b" / "b_000000_000019_leftImg8bit.png"
    assert not os.path.samefile(image, source) and image.read_bytes() == source.read_bytes()


@pytest.mark.parametrize("dataset", ["voc", "coco", "binary", "folder", "roboflow", "cvat"])
@pytest.mark.parametrize("linkable", [True, False])
def test_importers_hard_link_the_images_they_keep_unchanged(
    tmp_path, monkeypatch, dataset, linkable
):
    """Every importer but pennfudan (whose images come out of a zip) writes its images byte for
    byte, so each is a hard link to its source file (COCO's train2017 is 18 GB), or a copy
    where the file system refuses the link."""

    def cross_device(source, dest):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    flags = source_flags(dataset, tmp_path / "src")
    if dataset in ("coco", "cvat"):
        flags += ["--valid-every", "2"]
    if not linkable:
        monkeypatch.setattr(os, "link", cross_device)
    out = tmp_path / "data"
    run(dataset, *flags, "--out", str(out))
    sources = {p.read_bytes(): p for p in (tmp_path / "src").rglob("*") if p.is_file()}
    images = sorted(out.glob("*_images/*"))
    assert {p.parent.name for p in images} == {"train_images", "valid_images"}
    for image in images:
        source = sources[image.read_bytes()]  # KeyError: not the source's bytes
        assert os.path.samefile(image, source) == linkable, image
        assert image.stat().st_nlink == (2 if linkable else 1), image


def test_a_name_written_twice_never_writes_into_the_linked_source(tmp_path):
    """A hard link shares its source's bytes: writing a second image into the name of one
    (a VOC list naming an image twice) replaces the name, never the user's file."""
    first, second = tmp_path / "first.jpg", tmp_path / "second.jpg"
    first.write_bytes(b"first")
    second.write_bytes(b"second")
    mask = np.zeros((2, 2), np.uint8)
    out = tmp_path / "data"
    datasets.write_pair(out, "train", "x.jpg", first, mask)
    datasets.write_pair(out, "train", "x.jpg", second, mask)
    assert os.path.samefile(out / "train_images" / "x.jpg", second)
    datasets.write_pair(out, "train", "x.jpg", b"bytes", mask)
    assert (out / "train_images" / "x.jpg").read_bytes() == b"bytes"
    assert (first.read_bytes(), second.read_bytes()) == (b"first", b"second")


@pytest.mark.parametrize(
    "defect, message",
    [
        ("no gtFine", r"no gtFine/ under --root {root}: download gtFine_trainvaltest\.zip from "
         r"cityscapes-dataset\.com and unzip it into {root}, beside leftImg8bit/ and gtFine/$"),
        ("zipped", r"no gtFine/ under --root {root}: unzip {root}/gtFine_trainvaltest\.zip into "
         r"{root} first$"),
        ("one folder down", r"no leftImg8bit/ under --root {root}/gtFine: --root is its gtFine/ "
         r"folder; pass --root {root}$"),
        ("parent", r"no leftImg8bit/ under --root {parent}: it is in {root}; pass --root {root}$"),
        ("unzipped apart", r"no leftImg8bit/ under --root {root}: it is in "
         r"{root}/leftImg8bit_trainvaltest; move {root}/leftImg8bit_trainvaltest/leftImg8bit into "
         r"{root}, beside gtFine/$"),
        ("both apart", r"no leftImg8bit/ under --root {root}: it is in "
         r"{root}/leftImg8bit_trainvaltest; move {root}/leftImg8bit_trainvaltest/leftImg8bit and "
         r"{root}/gtFine_trainvaltest/gtFine into {root}$"),
        ("no val", r"(?s)1 problem\(s\).*{root}/gtFine/val: folder missing"),
        ("unpaired", r"(?s)2 problem\(s\).*bremen_000000_000019_leftImg8bit\.png: image without "
         r"its mask {root}/gtFine/train/bremen/bremen_000000_000019_gtFine_labelIds\.png.*"
         r"lindau_000000_000019_gtFine_labelIds\.png: mask without its image"),
    ],
)  # fmt: skip
def test_cityscapes_folders_it_cannot_read_are_named(tmp_path, defect, message):
    root = cityscapes_fixture(tmp_path / "cityscapes")
    given = root
    if defect in ("no gtFine", "zipped"):
        shutil.rmtree(root / "gtFine")
        if defect == "zipped":
            (root / "gtFine_trainvaltest.zip").write_bytes(b"PK")
    elif defect == "one folder down":
        given = root / "gtFine"
    elif defect == "parent":
        given = tmp_path
    elif defect in ("unzipped apart", "both apart"):
        # as macOS and Windows unzip a zip: into a folder of its name
        for name in ("leftImg8bit", "gtFine")[: 1 + (defect == "both apart")]:
            (root / f"{name}_trainvaltest").mkdir()
            (root / name).rename(root / f"{name}_trainvaltest" / name)
    elif defect == "no val":
        shutil.rmtree(root / "gtFine" / "val")
    else:
        (root / "gtFine/train/bremen/bremen_000000_000019_gtFine_labelIds.png").unlink()
        (root / "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png").unlink()
    parent, inner = (re.escape(str(p)) for p in (tmp_path, root))
    with pytest.raises(UserError, match=message.format(parent=parent, root=inner)):
        run("cityscapes", "--root", str(given), "--out", str(tmp_path / "data"))
    assert not (tmp_path / "data").exists()


def ade20k_fixture(root, names=None):
    """ADEChallengeData2016: images/{training,validation}/ADE_*.jpg (32x16; 2 and 1) with
    annotations/.../ADE_*.png of label ids (0 other, 1-150), and objectInfo150.txt."""
    names = names or [f"thing{i}, synonym{i}" for i in range(1, 151)]
    lines = ["Idx\tRatio\tTrain\tVal\tName"]
    lines += [f"{i}\t0.01\t100\t10\t{name}" for i, name in enumerate(names, start=1)]
    root.mkdir(parents=True)
    (root / "objectInfo150.txt").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(1)
    for split, prefix, n in (("training", "train", 2), ("validation", "val", 1)):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i in range(n):
            stem = f"ADE_{prefix}_{i + 1:08d}"
            image = rng.integers(0, 255, (16, 32, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"{stem}.jpg")
            ids = rng.choice(np.array([0, 1, 2, 37, 149, 150], np.uint8), (16, 32))
            Image.fromarray(ids).save(root / "annotations" / split / f"{stem}.png")
    return root


def test_ade20k_reads_its_150_classes_by_label_id_and_links_its_images(tmp_path):
    root = ade20k_fixture(tmp_path / "ADEChallengeData2016")
    out = tmp_path / "data"
    run("ade20k", "--root", str(root), "--out", str(out))
    saved = yaml.safe_load((out / "classes.yaml").read_text())
    assert saved["ALL_CLASSES"] == [f"thing{i}" for i in range(1, 151)]  # the first synonym
    colors = [tuple(c) for c in saved["VIS_LABEL_MAP"]]
    assert len(set(colors)) == 150 and (0, 0, 0) not in colors  # class 0 is drawn too
    assert "MASK_IDS" not in saved
    loaded = loaded_masks(out)
    assert [len(loaded["train"]), len(loaded["valid"])] == [2, 1]
    for split, folder in (("train", "training"), ("valid", "validation")):
        for image, mask in loaded[split]:
            assert os.path.samefile(image, root / "images" / folder / image.name)
            label_ids = np.asarray(Image.open(root / "annotations" / folder / f"{image.stem}.png"))
            expected = np.where(label_ids == 0, 255, label_ids.astype(np.int64) - 1)
            np.testing.assert_array_equal(mask, expected)


def test_the_report_of_many_classes_is_a_table_of_one_class_a_line(tmp_path, capsys):
    """ADE20K's 150 classes' pixels on one line per split were one line of 3,000 characters."""
    root = ade20k_fixture(tmp_path / "ADEChallengeData2016")
    out = tmp_path / "data"
    run("ade20k", "--root", str(root), "--out", str(out))
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines if not line.startswith("Wrote ")) <= 100
    counts = {}
    for split in ("train", "valid"):
        masks = sorted((out / f"{split}_masks").iterdir())
        ids = np.concatenate([np.asarray(Image.open(m)).ravel() for m in masks])
        counts[split] = np.bincount(ids, minlength=256)
        images = f"{len(masks)} image{'s' * (len(masks) > 1)}"
        assert f"{split}: {images}; ignored pixels {counts[split][255]:,}" in lines
    header = lines.index(next(line for line in lines if line.split()[:2] == ["id", "class"]))
    rows = [line.split() for line in lines[header + 1 : header + 151]]
    assert [row[:2] for row in rows] == [[str(i), f"thing{i + 1}"] for i in range(150)]
    for i, row in enumerate(rows):  # class 148 (label 149) has pixels, 2 (label 3) none
        assert row[2:] == [f"{counts['train'][i]:,}", f"{counts['valid'][i]:,}"]
    assert rows[2][2:] == ["0", "0"] and rows[148][2] != "0"


@pytest.mark.parametrize(
    "defect, message",
    [
        ("parent", r"no images/ under --root {parent}; pass --root {root}$"),
        ("zipped", r"no images/ under --root {parent}: unzip {parent}/ADEChallengeData2016\.zip "
         r"first, then pass --root {root}$"),
        ("no names", r"no objectInfo150\.txt under --root {root}: --root must be "
         r"ADEChallengeData2016 as ADEChallengeData2016\.zip \(the MIT Scene Parsing release\)"),
        ("149 names", r"{root}/objectInfo150\.txt lists 149 classes, not ADE20K's 150"),
        ("gap", r"objectInfo150\.txt: the line '4\\t0\.01.*' is not label 3's"),
        ("same name", r"objectInfo150\.txt: ALL_CLASSES has repeated names"),
        ("unpaired", r"(?s)2 problem\(s\).*ADE_train_00000002\.jpg: image without a mask named "
         r"ADE_train_00000002 in {root}/annotations/training.*ADE_val_00000001\.png: mask "
         r"without an image in {root}/images/validation"),
    ],
)  # fmt: skip
def test_ade20k_folders_it_cannot_read_are_named(tmp_path, defect, message):
    names = [f"thing{i}" for i in range(1, 151)]
    if defect == "same name":
        names[5] = "thing1, the same"
    root = ade20k_fixture(tmp_path / "ADEChallengeData2016", names)
    given = root
    if defect in ("parent", "zipped"):
        given = tmp_path
        if defect == "zipped":
            shutil.rmtree(root)
            (tmp_path / "ADEChallengeData2016.zip").write_bytes(b"PK")
    elif defect == "no names":
        (root / "objectInfo150.txt").unlink()
    elif defect in ("149 names", "gap"):
        lines = (root / "objectInfo150.txt").read_text().splitlines()
        del lines[-1 if defect == "149 names" else 3]
        (root / "objectInfo150.txt").write_text("\n".join(lines))
    elif defect == "unpaired":
        (root / "annotations/training/ADE_train_00000002.png").unlink()
        (root / "images/validation/ADE_val_00000001.jpg").unlink()
    parent, inner = (re.escape(str(p)) for p in (tmp_path, root))
    with pytest.raises(UserError, match=message.format(parent=parent, root=inner)):
        run("ade20k", "--root", str(given), "--out", str(tmp_path / "data"))
    assert not (tmp_path / "data").exists()
