"""ONNX export, its check against PyTorch, and the onnxruntime inference backend."""

import contextlib
import json
import os
import re
import shutil
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image

import export
import infer_image
import utils
from conftest import FAKE_HUB, ORT_RUNS_INT8, ROOT, small_memory
from model import ONNX_FORMAT
from utils import UserError

INT8 = ["--int8"] if ORT_RUNS_INT8 else []  # export.py's flag where onnxruntime runs the graph
needs_ort_int8 = pytest.mark.skipif(
    not ORT_RUNS_INT8, reason="the int8 graph needs onnxruntime 1.24 or later (ConvInteger)"
)


@pytest.fixture(scope="module")
def onnx_trace() -> list:
    """[(args, kwargs, ONNXProgram)] of the torch.onnx.export call of onnx_files' export."""
    return []


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory, checkpoint, onnx_trace) -> tuple[Path, ...]:
    """(model.onnx, model.int8.onnx), or (model.onnx,) where onnxruntime cannot run int8."""
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    real = torch.onnx.export

    def recorded(*args, **kwargs):
        onnx_trace.append((args, kwargs, real(*args, **kwargs)))
        return onnx_trace[-1][2]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.onnx, "export", recorded)
        export.main(export.get_args_parser().parse_args(
            ["--model", str(checkpoint), "--output", str(out), *INT8]))  # fmt: skip
    return (out, out.with_suffix(".int8.onnx")) if ORT_RUNS_INT8 else (out,)


@pytest.fixture(scope="module")
def external_data_graph(tmp_path_factory, checkpoint, onnx_files, onnx_trace) -> Path:
    """model.onnx exported with --external-data (and --int8 where onnxruntime runs it), alone
    in its folder; do not modify.

    Its trace is onnx_files' (5 s on 2 CPU cores): the same checkpoint, shapes and options, the
    external data only a matter of saving, which runs for real, as do the check, the int8 copy
    and the moves into place.
    """
    ((traced_args, traced_kwargs, program),) = onnx_trace

    def traced_again(graph, example, **kwargs):
        assert repr(kwargs) == repr(traced_kwargs), "not the export onnx_files traced"
        assert example[0].shape == traced_args[1][0].shape
        pairs = zip(graph.state_dict().values(), traced_args[0].state_dict().values(), strict=True)
        assert all(torch.equal(a, b) for a, b in pairs)
        return program

    out = tmp_path_factory.mktemp("external") / "model.onnx"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.onnx, "export", traced_again)
        flags = ["--model", str(checkpoint), "--output", str(out), "--external-data", *INT8]
        export.main(export.get_args_parser().parse_args(flags))
    return out


@pytest.fixture(params=["float32", pytest.param("int8", marks=needs_ort_int8)])
def graph(request, onnx_files) -> Path:
    """Each graph of onnx_files in turn: the float32 one, then the int8 one."""
    return onnx_files[0] if request.param == "float32" else onnx_files[1]


def earlier_int8_export(path: Path) -> None:
    """Write at ``path`` what export.py recognises as its int8 graph, without exporting one (8 s
    and onnxruntime 1.24): its format metadata and a DynamicQuantizeLinear node."""
    node = onnx.helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "scale", "zero"])
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
        [onnx.helper.make_tensor_value_info("q", onnx.TensorProto.UINT8, [4])],
    )
    proto = onnx.helper.make_model(graph)
    proto.metadata_props.add(key="format", value=ONNX_FORMAT)
    onnx.save(proto, str(path))


def masks(folder) -> dict:
    return {p.name: np.array(Image.open(p)) for p in folder.glob("*_mask.png")}


def test_export_writes_a_checked_self_describing_graph(onnx_files, capsys):
    fp32 = onnx_files[0]
    proto = onnx.load(str(fp32))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"])["ALL_CLASSES"] == ["background", "person"]
    assert json.loads(meta["imgsz"]) == [90, 66]
    assert [i.name for i in proto.graph.input] == ["images"]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert oct(fp32.stat().st_mode & 0o777) == "0o644"
    if ORT_RUNS_INT8:
        int8 = onnx_files[1]
        assert int8.is_file() and int8.stat().st_size < fp32.stat().st_size / 2


def test_export_fails_above_the_tolerance_and_leaves_no_file(
    tmp_path, onnx_files, checkpoint, monkeypatch
):
    def export_again(model, ckpt, imgsz, path, dynamic, external_data):
        # stands in for tracing the checkpoint again (8 s): the graph that export wrote
        shutil.copy(onnx_files[0], path)

    monkeypatch.setattr(export, "export", export_again)
    with pytest.raises(UserError, match=r"differs from PyTorch by .* above --tolerance 1e-30"):
        export.main(export.get_args_parser().parse_args(
            ["--model", str(checkpoint), "--output", str(tmp_path / "m.onnx"), "--int8",
             "--tolerance", "1e-30"]))  # fmt: skip
    assert list(tmp_path.iterdir()) == [], "neither the graph nor a temporary file may remain"


@pytest.mark.parametrize(
    ("source", "hint"),
    [("timm", ""), ("hub", "; try --backbone-source timm, whose model exports cleanly")],
)
def test_a_graph_the_exporter_cannot_convert_is_named_and_keeps_the_older_file(
    tmp_path, checkpoint, monkeypatch, source, hint
):
    def cannot_convert(model, ckpt, imgsz, path, dynamic, external_data):
        path.write_bytes(b"half a graph")
        raise RuntimeError("Unsupported: aten::_some_op")

    monkeypatch.setattr(export, "export", cannot_convert)
    (tmp_path / "m.onnx").write_bytes(b"the last export")
    with pytest.raises(UserError) as caught:
        export.main(export.get_args_parser().parse_args(
            ["--model", str(checkpoint), "--output", str(tmp_path / "m.onnx"),
             "--backbone-source", source, "--hub-dir", str(FAKE_HUB)]))  # fmt: skip
    assert (
        str(caught.value) == f"ONNX export failed (RuntimeError: Unsupported: aten::_some_op){hint}"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"], "no temporary file may remain"
    assert (tmp_path / "m.onnx").read_bytes() == b"the last export"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--imgsz", "0", "56"], "--imgsz must be at least 14 14 \\(one patch\\)"),
        (["--imgsz", "-28", "56"], "--imgsz must be at least 14 14"),
        (["--imgsz", "5", "5"], "--imgsz must be at least 14 14"),
        (["--tolerance", "0"], "--tolerance must be positive, not 0"),
        (["--tolerance", "-0.001"], "--tolerance must be positive"),
        (["--tolerance", "nan"], "--tolerance must be positive"),
    ],
)
def test_export_refuses_bad_flags_before_writing(tmp_path, checkpoint, flags, message):
    with pytest.raises(UserError, match=message):
        export.main(export.get_args_parser().parse_args(
            ["--model", str(checkpoint), "--output", str(tmp_path / "m.onnx"),
             *flags]))  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_an_output_that_is_the_checkpoint_is_refused(tmp_path, checkpoint):
    copy = tmp_path / "best.pth"
    copy.write_bytes(checkpoint.read_bytes())
    with pytest.raises(UserError, match="is the --model checkpoint, which the graph would replace"):
        export.main(export.get_args_parser().parse_args(
            ["--model", str(copy), "--output", str(tmp_path / "." / "best.pth")]))  # fmt: skip
    assert copy.read_bytes() == checkpoint.read_bytes()


def test_an_output_without_the_onnx_extension_is_refused(tmp_path, checkpoint):
    # --output OUT/last_model.pth replaced the run's checkpoint with a graph, which --resume
    # then called damaged
    last = tmp_path / "last_model.pth"
    last.write_bytes(b"a checkpoint")
    with pytest.raises(
        UserError, match=r"last_model.pth does not end in .onnx; .* such as .*last_model.onnx"
    ):
        export.main(export.get_args_parser().parse_args(
            ["--model", str(checkpoint), "--output", str(last)]))  # fmt: skip
    assert last.read_bytes() == b"a checkpoint"


@pytest.mark.parametrize(
    ("output", "suggested"),
    [("m.onnx.data", "{}/m.onnx"), ("e/", "{}/e.onnx, or {}/e/model.onnx for a folder"),
     (".onnx", "{}/model.onnx"), (".onnx.data", "{}/model.onnx")],
)  # fmt: skip
def test_the_onnx_name_suggested_fits_the_output_given(tmp_path, output, suggested):
    """--output m.onnx.data (the weights file) was told m.onnx.onnx, --output e/ (a folder
    to be) e.onnx alone, and --output .onnx (all extension) .onnx, the name refused."""
    suggested = suggested.format(tmp_path, tmp_path)
    with pytest.raises(UserError, match=f"such as {re.escape(suggested)}$"):
        export.main(export.get_args_parser().parse_args(
            ["--model", "m.pth", "--output", f"{tmp_path}/{output}"]))  # fmt: skip


def test_an_unwritable_output_folder_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setattr(export, "load_checkpoint", lambda *a: pytest.fail("the model loaded"))
    with pytest.raises(UserError, match=r"--output folder .*a_file is not writable"):
        export.main(export.get_args_parser().parse_args(
            ["--model", "m.pth", "--output", str(tmp_path / "a_file" / "m.onnx")]))  # fmt: skip


@pytest.mark.parametrize("link", ["broken", "loop"])
def test_an_output_folder_that_is_a_broken_link_or_a_loop_is_named(tmp_path, monkeypatch, link):
    # reading the folder's name limit, or resolving the path, ended in a traceback there
    if link == "broken":
        (tmp_path / "out").symlink_to(tmp_path / "gone")
    else:
        (tmp_path / "out").symlink_to(tmp_path / "back")
        (tmp_path / "back").symlink_to(tmp_path / "out")
    monkeypatch.setattr(export, "load_checkpoint", lambda *a: pytest.fail("the model loaded"))
    for output in (tmp_path / "out" / "m.onnx", tmp_path / "out" / "sub" / "m.onnx"):
        what = "a link to nothing" if link == "broken" else "a loop of links"
        with pytest.raises(UserError, match=f"--output folder .*out is {what}$"):
            export.main(export.get_args_parser().parse_args(
                ["--model", "m.pth", "--output", str(output)]))  # fmt: skip


@pytest.mark.skipif(
    sys.platform != "linux", reason="a file name that is not UTF-8: Linux allows it"
)
def test_a_graph_path_that_is_not_utf8_is_named_as_the_cause(tmp_path, onnx_files, monkeypatch):
    # ONNX Runtime takes no such path (a Latin-1 name on Linux): the export failed its check
    # with advice about --dynamic, and --backend onnxruntime called a good graph no ONNX model
    folder = tmp_path / os.fsdecode(b"r\xe9sultats")
    folder.mkdir()
    monkeypatch.setattr(export, "load_checkpoint", lambda *a: pytest.fail("the model loaded"))
    with pytest.raises(UserError, match=r"--output .* is not UTF-8, which ONNX Runtime cannot"):
        export.main(export.get_args_parser().parse_args(
            ["--model", "m.pth", "--output", str(folder / "m.onnx")]))  # fmt: skip
    assert list(folder.iterdir()) == []
    graph = folder / "model.onnx"
    shutil.copy(onnx_files[0], graph)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(photo)
    with pytest.raises(UserError, match=r"--model .* is not UTF-8, which ONNX Runtime cannot"):
        infer_image.main(infer_image.get_args_parser().parse_args(
            ["--input", str(photo), "--model", str(graph), "--backend", "onnxruntime",
             "--out-dir", str(tmp_path / "out")]))  # fmt: skip


def test_onnxruntime_masks_agree_with_pytorch(tmp_path, graph, checkpoint, tiny_data):
    def run(out, *extra):
        argv = ["--input", str(tiny_data / "valid_images"), "--out-dir", str(out), *extra]
        infer_image.main(infer_image.get_args_parser().parse_args(argv))
        return masks(out)

    torch_masks = run(tmp_path / "torch", "--model", str(checkpoint))
    # float32: ONNX Runtime's logits are within 2e-5 of PyTorch's, and all 32,640 pixels
    # agreed; a boundary pixel may flip. A graph that resized with ONNX's "asymmetric"
    # coordinates instead of half-pixel ones changed 22 (99.93% agreeing), so a share of
    # pixels is no test here. int8 changes the logits themselves.
    ort_masks = run(tmp_path / graph.stem, "--model", str(graph), "--backend", "onnxruntime")
    assert ort_masks.keys() == torch_masks.keys()
    differ = sum((ort_masks[k] != torch_masks[k]).sum() for k in ort_masks)
    total = sum(m.size for m in ort_masks.values())
    if graph.name.endswith(".int8.onnx"):
        assert differ / total <= 0.01, differ / total
    else:
        assert differ <= 2, (differ, total)


def test_an_int8_graphs_logits_of_an_image_do_not_depend_on_the_rest_of_its_batch(graph):
    # ONNX Runtime's dynamic quantization scales activations by their range over the whole
    # input: a bright and a dark image in one batch changed each other's logits by up to 0.03
    import torch

    from model import OnnxSegmentor

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 3, 66, 90), dtype=np.uint8)
    images[1] //= 8  # dark
    images[2] = 255 - images[2] // 8  # bright
    images = torch.from_numpy(images)
    network = OnnxSegmentor.load(graph, torch.device("cpu"))
    alone = torch.cat([network.patch_logits(image[None]) for image in images])
    torch.testing.assert_close(network.patch_logits(images), alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tta"], "--tta is PyTorch-only: --backend onnxruntime runs the graph"),
        (["--amp", "bf16", "--device", "cpu"], "--amp is PyTorch-only"),
        (["--int8"], "--int8 is PyTorch-only"),
        (["--compile", "--imgsz", "56", "56"], "--compile, --imgsz are PyTorch-only"),
        (["--backbone-source", "timm", "--hub-dir", "x"], "--backbone-source, --hub-dir are"),
    ],
)
def test_onnxruntime_refuses_torch_only_flags(tmp_path, onnx_files, tiny_data, extra, message):
    with pytest.raises(UserError, match=message):
        infer_image.main(infer_image.get_args_parser().parse_args(
            ["--input", str(tiny_data / "valid_images"), "--model", str(onnx_files[0]),
             "--backend", "onnxruntime", "--out-dir", str(tmp_path), *extra]))  # fmt: skip


def test_onnxruntime_refuses_a_checkpoint_file(tmp_path, checkpoint, tiny_data):
    # the default --model is a checkpoint: forgetting --model with --backend onnxruntime
    with pytest.raises(UserError, match=r"is a PyTorch checkpoint from train\.py, not an ONNX"):
        infer_image.main(infer_image.get_args_parser().parse_args(
            ["--input", str(tiny_data / "valid_images"), "--model", str(checkpoint),
             "--backend", "onnxruntime", "--out-dir", str(tmp_path)]))  # fmt: skip


@pytest.mark.parametrize(
    "model, message",
    [
        ("folder", r"is a folder; pass the \.onnx file"),
        ("missing.pth", r"does not exist; pass the \.onnx file .*export\.py --model CKPT"),
        ("notes.txt", r"is not an ONNX model ONNX Runtime [\d.]+ can load"),
        # a graph from another exporter: its classes and input size are unknown
        (
            "other.onnx",
            r"other\.onnx was not written by export\.py \(no dinov2-segmentation-onnx/1",
        ),
    ],
)
def test_onnxruntime_names_what_the_model_file_is(tmp_path, tiny_data, model, message):
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("not a graph")
    x = onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3, 14, 14])
    y = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 3, 14, 14])
    node = onnx.helper.make_node("Identity", ["images"], ["logits"])
    graph = onnx.helper.make_graph([node], "other", [x], [y])
    # opset 17: onnx's default (22 in onnx 1.17) is newer than onnxruntime 1.18 loads, which
    # would stop the graph before its metadata is read
    opset = [onnx.helper.make_opsetid("", 17)]
    onnx.save(onnx.helper.make_model(graph, opset_imports=opset), str(tmp_path / "other.onnx"))
    with pytest.raises(UserError, match=message):
        infer_image.main(infer_image.get_args_parser().parse_args(
            ["--input", str(tiny_data / "valid_images"), "--model", str(tmp_path / model),
             "--backend", "onnxruntime", "--out-dir", str(tmp_path / "out")]))  # fmt: skip


def test_external_data_export_moves_into_place_whole(
    tmp_path, external_data_graph, onnx_files, checkpoint, tiny_data, monkeypatch
):
    """ViT-g/14's weights (4.5 GB) exceed one ONNX file's 2 GB: they go to NAME.data, which the
    graph names, so both must be written in a temporary folder and moved, graph last."""
    out = external_data_graph
    names = sorted(p.name for p in out.parent.iterdir())
    # and no temporary folder is left behind
    int8_names = ["model.int8.onnx", "model.int8.onnx.data"] if ORT_RUNS_INT8 else []
    assert names == [*int8_names, "model.onnx", "model.onnx.data"]
    proto = onnx.load(str(out), load_external_data=False)
    assert onnx.external_data_helper.uses_external_data(proto.graph.initializer[0])
    assert out.stat().st_size < (out.parent / "model.onnx.data").stat().st_size / 10
    for name in ("model.onnx.data", *int8_names):
        # ONNX writes external data private (0600): a server under another account could not
        # read the weights its graph names
        assert oct(out.stat().st_mode & 0o777) == oct((out.parent / name).stat().st_mode & 0o777)

    def run(model, folder):
        infer_image.main(infer_image.get_args_parser().parse_args(
            ["--input", str(tiny_data / "valid_images"), "--out-dir", str(folder),
             "--model", str(model), "--backend", "onnxruntime"]))  # fmt: skip
        return masks(folder)

    external = run(out, tmp_path / "external")
    in_file = run(onnx_files[0], tmp_path / "in_file")
    assert external.keys() == in_file.keys()
    assert all((external[k] == in_file[k]).all() for k in external)

    # a graph exported again in one file replaces the old pair: no orphaned weights remain
    out = shutil.copytree(out.parent, tmp_path / "again") / out.name

    def export_again(model, ckpt, imgsz, path, dynamic, external_data):
        # stands in for tracing the checkpoint again (8 s): onnx_files' graph is that export,
        # in one file; the check, the int8 copy and the moves into place still run
        assert not external_data and not dynamic
        shutil.copy(onnx_files[0], path)

    monkeypatch.setattr(export, "export", export_again)
    export.main(export.get_args_parser().parse_args(
        ["--model", str(checkpoint), "--output", str(out), *INT8]))  # fmt: skip
    written = ["model.int8.onnx", "model.onnx"] if ORT_RUNS_INT8 else ["model.onnx"]
    assert sorted(p.name for p in out.parent.iterdir()) == written


@needs_ort_int8
def test_int8_export_does_not_pass_on_onnxruntimes_advice_to_preprocess(
    tmp_path, onnx_files, checkpoint, monkeypatch, caplog, capsys
):
    """quantize_dynamic advises quant_pre_process on every graph it was not run on, which gives
    this graph the same int8 logits: the advice, printed after export.py's own lines, only
    asked for a step the script does not need."""

    def export_again(model, ckpt, imgsz, path, dynamic, external_data):
        shutil.copy(onnx_files[0], path)  # stands in for tracing the checkpoint again

    monkeypatch.setattr(export, "export", export_again)
    export.main(export.get_args_parser().parse_args(
        ["--model", str(checkpoint), "--output", str(tmp_path / "m.onnx"), "--int8"]))  # fmt: skip
    assert (tmp_path / "m.int8.onnx").is_file()
    printed = caplog.text + "".join(capsys.readouterr())
    assert "int8 dynamic quantization" in printed and "pre-processing" not in printed


def test_a_graph_held_open_elsewhere_is_a_message(
    tmp_path, external_data_graph, checkpoint, monkeypatch
):
    # Windows cannot replace a file open elsewhere: an ONNX Runtime session keeps the .data
    # file of an external-data graph open, as an app serving the last export does
    out = tmp_path / "model.onnx"
    for name in ("model.onnx", "model.onnx.data"):  # the last export, in place
        shutil.copy(external_data_graph.parent / name, tmp_path / name)
    flags = ["--model", str(checkpoint), "--output", str(out), "--external-data"]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def export_again(model, ckpt, imgsz, path, dynamic, external_data):
        # stands in for tracing the checkpoint again (8 s): a new pair, which ONNX Runtime
        # still checks and which moves into place as an export's, its graph marked so that
        # the test sees it if it replaces the old one
        assert external_data and not dynamic
        graph = onnx.load(str(external_data_graph), load_external_data=False)
        graph.metadata_props.add(key="export", value="the new one")
        onnx.save(graph, str(path))
        shutil.copy(export.data_file(external_data_graph), export.data_file(path))

    monkeypatch.setattr(export, "export", export_again)
    replace = utils.os.replace

    def held_open(src, dst):
        if Path(dst) == tmp_path / "model.onnx.data":  # the file in place, not a staged one
            raise PermissionError(13, "The process cannot access the file", src, None, dst)
        replace(src, dst)

    monkeypatch.setattr(utils.os, "replace", held_open)
    with pytest.raises(UserError, match=r"cannot replace .*model\.onnx\.data .*open in another"):
        export.main(export.get_args_parser().parse_args(flags))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before, "the old pair stays"


def test_a_graph_that_fails_at_the_second_size_is_a_message(tmp_path):
    """The hub model's positional-embedding resampling is traced at the export size, so its
    --dynamic graph fails in ONNX Runtime at the check's second size: a message, not a traceback."""
    from config import DEFAULT_CLASSES
    from model import Segmentor, load_backbone, save_checkpoint

    backbone = load_backbone("dinov2_vits14", "hub", "random", hub_dir=FAKE_HUB, layers=1)
    ckpt = tmp_path / "hub.pth"
    save_checkpoint(ckpt, Segmentor(backbone, 2), classes=DEFAULT_CLASSES.to_dict(), imgsz=[56, 56])
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"ONNX Runtime cannot run .*84x70.*nothing was written"):
        export.main(export.get_args_parser().parse_args(
            ["--model", str(ckpt), "--output", str(out / "m.onnx"), "--dynamic",
             "--hub-dir", str(FAKE_HUB)]))  # fmt: skip
    assert not out.exists(), "neither a graph nor the folder made for it may remain"


def test_an_output_folder_is_refused_before_exporting(tmp_path, checkpoint):
    with pytest.raises(UserError, match=r"--output .* is a folder; name the \.onnx file"):
        export.main(export.get_args_parser().parse_args(
            ["--model", str(checkpoint), "--output", str(tmp_path)]))  # fmt: skip


def test_dynamic_export_takes_other_sizes_from_one_patch_on(tmp_path, capsys):
    """torch.export fixed the side traced at one patch (14 px) to 14: --dynamic failed for a
    checkpoint trained at 14..20 px a side, with advice to pass the source it already used."""
    from config import DEFAULT_CLASSES
    from model import Segmentor, load_backbone, save_checkpoint

    backbone = load_backbone("dinov2_vits14", "timm", None, layers=1)
    ckpt = tmp_path / "small.pth"
    save_checkpoint(ckpt, Segmentor(backbone, 2), classes=DEFAULT_CLASSES.to_dict(), imgsz=[20, 56])
    out = tmp_path / "m.onnx"
    export.main(export.get_args_parser().parse_args(
        ["--model", str(ckpt), "--output", str(out), "--dynamic"]))  # fmt: skip
    # the check runs at two sizes: two lines of the same file said neither
    checked = re.findall(rf"{re.escape(str(out))} at (\d+x\d+): max \|ONNX Runtime - PyTorch\|",
                         capsys.readouterr().out)  # fmt: skip
    assert len(set(checked)) == 2, checked
    proto = onnx.load(str(out))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in dims] == [True, False, True, True]  # B, 3, H, W
    # the size it stores, for inference by default: 20x56 aligned to multiples of 14
    assert json.loads({p.key: p.value for p in proto.metadata_props}["imgsz"]) == [14, 56]


def readme_deployment_example() -> str:
    """The Python block of the README's "Using the graph without this repository"."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Using the graph without this repository", 1)[1]
    return re.search(r"^```python\n(.*?)^```", section, flags=re.M | re.S).group(1)


def test_the_readmes_deployment_example_gives_the_scripts_masks(tmp_path, graph, tiny_data):
    """An app without this repository follows the README's example: its masks are those of
    --backend onnxruntime, for the float32 and the int8 graph, shrunk and enlarged images, and
    16-bit grayscale ones, and 32-bit integer and float ones (which Pillow's convert("RGB")
    alone clips to white)."""
    import ast

    import torch

    from datasets import read_image
    from engine import Predictor
    from model import OnnxSegmentor

    code = readme_deployment_example()
    imported = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported <= {"json", "cv2", "numpy", "onnxruntime", "PIL"}, imported
    # 97x61 and 61x37 pixels (61x37 is enlarged to the graph's 90x66), beside the 96x72 and
    # 84x112 images of tiny_data (shrunk)
    images = sorted((tiny_data / "valid_images").iterdir())
    photo = Image.open(images[0]).convert("RGB")
    for w, h in ((97, 61), (61, 37)):
        photo.resize((w, h)).save(tmp_path / f"odd{w}x{h}.png")
        images.append(tmp_path / f"odd{w}x{h}.png")
    gray16 = np.asarray(photo.convert("L"), np.uint16) * 257  # the same photo, 16 bits deep
    Image.fromarray(gray16).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode == "I;16", "the premise: a 16-bit image"
    images.append(tmp_path / "gray16.png")
    gray = np.asarray(photo.convert("L"))
    wide = {
        "int32.tif": gray.astype(np.int32) * 257,
        "int8bit.tif": gray.astype(np.int32),
        "float.tif": gray.astype(np.float32) / 255,
        "float8bit.tif": gray.astype(np.float32),
    }
    for name, pixels in wide.items():
        Image.fromarray(pixels).save(tmp_path / name)
        assert Image.open(tmp_path / name).mode in ("I", "F"), "the premise: 32 bits of gray"
        images.append(tmp_path / name)
    example = {}
    exec(code.replace('"model.onnx"', repr(str(graph))), example)
    network = OnnxSegmentor.load(graph, torch.device("cpu"))
    predictor = Predictor(network, network.classes, network.imgsz)
    for image in images:
        expected = predictor.predict(read_image(image))
        got = example["segment"](str(image))
        assert got.dtype == np.uint8 and got.shape == expected.shape, image.name
        assert (got == expected).all(), (image.name, (got != expected).sum())


def test_the_readmes_deployment_example_holds_one_class_at_the_photos_size(tmp_path, onnx_files):
    # Python's allocation tracer sees NumPy's arrays: the example resized every class to the
    # photo's size and stacked them, and argmax made int64 ids (24 bytes a pixel with 2
    # classes, 29 GB for an 8064x6048 photo with 150); now the best scores so far, one class's,
    # the comparison and the ids (10 bytes a pixel), beside the 3-byte RGB array
    example = {}
    exec(readme_deployment_example().replace('"model.onnx"', repr(str(onnx_files[0]))), example)
    rgb = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    tracemalloc.start()
    try:
        ids = example["segment"](str(tmp_path / "photo.png"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ids.shape == (300, 400) and ids.dtype == np.uint8
    assert peak < 16 * 300 * 400, peak


def test_an_int8_graph_onnxruntime_cannot_run_is_named_and_not_written(
    tmp_path, onnx_files, checkpoint, monkeypatch
):
    """onnxruntime 1.18 to 1.23 quantize the graph but have no ConvInteger for its int8 weights:
    the int8 graph they wrote was never run, and --backend onnxruntime then failed on it."""

    def export_again(model, ckpt, imgsz, path, dynamic, external_data):
        shutil.copy(onnx_files[0], path)  # stands in for tracing the checkpoint again (8 s)

    session = onnxruntime.InferenceSession

    def old_onnxruntime(path, *args, **kwargs):
        if str(path).endswith(".int8.onnx"):
            raise onnxruntime.capi.onnxruntime_pybind11_state.NotImplemented(
                "[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation "
                "for ConvInteger(10) node with name 'node_conv2d_quant'"
            )
        return session(path, *args, **kwargs)

    monkeypatch.setattr(export, "export", export_again)
    monkeypatch.setattr(onnxruntime, "InferenceSession", old_onnxruntime)
    out = tmp_path / "m.onnx"
    earlier_int8_export(tmp_path / "m.int8.onnx")
    with pytest.raises(UserError, match=r"cannot run the int8 graph .*m\.int8\.onnx .*ConvInteger"):
        export.main(export.get_args_parser().parse_args(
            ["--model", str(checkpoint), "--output", str(out), "--int8"]))  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"], "the float32 graph only"


def test_onnxruntime_names_a_missing_data_file_and_damaged_metadata(
    tmp_path, external_data_graph, onnx_files, tiny_data
):
    def run(model):
        with pytest.raises(UserError) as caught:
            infer_image.main(infer_image.get_args_parser().parse_args(
                ["--input", str(tiny_data / "valid_images"), "--model", str(model),
                 "--backend", "onnxruntime", "--out-dir", str(tmp_path / "out")]))  # fmt: skip
        return str(caught.value)

    # the graph moved without its weights, or both renamed: the graph names model.onnx.data
    for name in ("model.onnx", "seg.onnx"):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(external_data_graph, folder / name)
        if name == "seg.onnx":
            shutil.copy(export.data_file(external_data_graph), folder / "seg.onnx.data")
        assert re.search(
            rf"keeps its weights in .*{re.escape(str(folder / 'model.onnx.data'))}, which does "
            r"not exist: copy the model\.onnx\.data",
            run(folder / name),
        )
    proto = onnx.load(str(onnx_files[0]))
    edits = {
        "format": ("dinov2-segmentation-onnx/2", r"has graph format 'dinov2-segmentation-onnx/2'"),
        "classes": ("{not json", r"damaged or edited export\.py metadata \(JSONDecodeError"),
        "imgsz": ("[90]", r"damaged or edited export\.py metadata \(ValueError: imgsz \[90\]"),
    }
    for key, (value, message) in edits.items():
        edited = onnx.ModelProto()
        edited.CopyFrom(proto)
        for prop in edited.metadata_props:
            if prop.key == key:
                prop.value = value
        onnx.save(edited, str(tmp_path / f"{key}.onnx"))
        assert re.search(message, run(tmp_path / f"{key}.onnx")), key
    del proto.metadata_props[[p.key for p in proto.metadata_props].index("backbone")]
    onnx.save(proto, str(tmp_path / "no_backbone.onnx"))
    assert "metadata (KeyError: 'backbone')" in run(tmp_path / "no_backbone.onnx")


@pytest.mark.parametrize(
    ("available", "device", "why"),
    [
        ([], "cuda", "this onnxruntime has no CUDA provider: install onnxruntime-gpu"),
        (["CUDAExecutionProvider"], "cuda", "its CUDA provider did not start"),
        ([], "mps", "--backend onnxruntime runs on CUDA or the CPU"),
    ],
)
def test_a_gpu_device_onnxruntime_runs_on_the_cpu_is_a_warning(
    onnx_files, monkeypatch, caplog, available, device, why
):
    """--device auto picks the GPU PyTorch sees, and the speed line names it: with the CPU-only
    onnxruntime package (or a CUDA provider that did not start) the graph ran on the CPU unsaid."""
    import torch

    from model import OnnxSegmentor

    providers = onnxruntime.get_available_providers()
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: available + providers)
    with pytest.warns(UserWarning) if available else contextlib.nullcontext():
        # ONNX Runtime's own warning, as where onnxruntime-gpu cannot start CUDA
        network = OnnxSegmentor.load(onnx_files[0], torch.device(device))
    assert network.session.get_providers() == ["CPUExecutionProvider"]
    assert f"--device {device}: ONNX Runtime runs {onnx_files[0]} on the CPU; {why}" in caplog.text


def test_opencv_keeps_its_threads_while_onnx_runtime_runs_the_graph_on_cuda(
    tmp_path, onnx_files, tiny_data, monkeypatch
):
    # The predictor's device is the host for ONNX Runtime wherever the graph runs, so OpenCV
    # was held to one thread, a rule for a model whose threads fill the CPU, with the graph on
    # the GPU. No CUDA here: a session that reports its CUDA provider stands in.
    import cv2

    import model

    class CudaSession:
        def __init__(self, session):
            self.session = session

        def __getattr__(self, name):
            return getattr(self.session, name)

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    real_session = model._onnx_session
    monkeypatch.setattr(model, "_onnx_session", lambda *a: CudaSession(real_session(*a)))
    seen, real_batches = [], infer_image.read_batches

    def read_batches(*args):
        seen.append(cv2.getNumThreads())
        yield from real_batches(*args)

    monkeypatch.setattr(infer_image, "read_batches", read_batches)
    before = cv2.getNumThreads()
    assert before > 1, "the premise: OpenCV starts with a pool"
    infer_image.main(infer_image.get_args_parser().parse_args(
        ["--input", str(tiny_data / "valid_images"), "--out-dir", str(tmp_path / "i"),
         "--model", str(onnx_files[0]), "--backend", "onnxruntime"]))  # fmt: skip
    assert seen == [before]


def test_the_speed_lines_name_the_device_onnx_runtime_ran_on(
    tmp_path, onnx_files, tiny_data, monkeypatch, capsys
):
    # --device auto picks the GPU PyTorch sees; with ONNX Runtime on the CPU (the onnxruntime
    # package) the closing line still timed the graph "on cuda"
    import torch

    import infer_video
    from synthetic import write_clip

    monkeypatch.setattr(infer_image, "pick_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(infer_video, "pick_device", lambda name: torch.device("cuda"))
    common = ["--model", str(onnx_files[0]), "--backend", "onnxruntime"]
    infer_image.main(infer_image.get_args_parser().parse_args(
        ["--input", str(tiny_data / "valid_images"), "--out-dir", str(tmp_path / "i"),
         *common]))  # fmt: skip
    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    infer_video.main(infer_video.get_args_parser().parse_args(
        ["--input", str(clip), "--out-dir", str(tmp_path / "v"), *common]))  # fmt: skip
    speed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("model:")]
    assert len(speed) == 2 and all(" on cpu (ONNX Runtime)" in line for line in speed), speed


@needs_ort_int8
def test_the_video_speed_line_of_an_int8_graph_names_one_frame_per_call(
    tmp_path, onnx_files, capsys
):
    # --backend onnxruntime runs an int8 graph one frame per call, whatever --batch: the line
    # said "batch 4". It then said "batch 1 ... (one batch only: start-up included)" of 3
    # frames, the 3 calls of one group timed as one batch, the first frame's start-up in it.
    import infer_video
    from synthetic import write_clip

    clip = write_clip(tmp_path / "clip.mp4", frames=3)
    for model, batch, one_batch in (
        (onnx_files[1], "batch 1 (one frame per call: an int8 graph)", False),
        (onnx_files[0], "batch 3 (--batch 4: no full batch was timed), float32", True),
    ):
        infer_video.main(infer_video.get_args_parser().parse_args(
            ["--input", str(clip), "--out-dir", str(tmp_path / model.stem), "--model", str(model),
             "--backend", "onnxruntime", "--batch", "4"]))  # fmt: skip
        speed = [line for line in capsys.readouterr().out.splitlines() if "model:" in line]
        assert len(speed) == 1 and f"on cpu (ONNX Runtime), {batch}" in speed[0], speed
        assert ("(one batch only: start-up included)" in speed[0]) == one_batch, speed


def test_an_export_without_int8_removes_the_int8_graph_of_an_earlier_one(
    tmp_path, onnx_files, checkpoint, monkeypatch, caplog
):
    """m.int8.onnx from an earlier checkpoint stayed beside the new m.onnx, passing for its
    int8 copy; --backend onnxruntime ran it without a word."""

    def export_again(model, ckpt, imgsz, path, dynamic, external_data):
        shutil.copy(onnx_files[0], path)  # stands in for tracing the checkpoint again (8 s)

    monkeypatch.setattr(export, "export", export_again)
    earlier_int8_export(tmp_path / "m.int8.onnx")
    for name in ("m.int8.onnx.data", "notes.txt"):
        (tmp_path / name).write_bytes(b"an earlier export's")
    export.main(export.get_args_parser().parse_args(
        ["--model", str(checkpoint), "--output", str(tmp_path / "m.onnx")]))  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "notes.txt"]
    assert re.search(r"removed \S+m\.int8\.onnx, the int8 graph of an earlier export", caplog.text)
    assert "pass --int8" in caplog.text


@pytest.mark.parametrize("int8", [[], ["--int8"]], ids=["without-int8", "with-int8"])
@pytest.mark.parametrize("mine", ["float32-graph", "notes", "data-file-alone"])
def test_an_export_never_removes_a_file_at_the_int8_name_it_did_not_write(
    tmp_path, onnx_files, checkpoint, int8, mine
):
    """A user's own float32 graph saved as m.int8.onnx was removed by an export to m.onnx
    without --int8 (and replaced with --int8)."""
    if mine == "float32-graph":
        theirs = tmp_path / "m.int8.onnx"
        shutil.copy(onnx_files[0], theirs)
    else:
        theirs = tmp_path / ("m.int8.onnx" if mine == "notes" else "m.int8.onnx.data")
        theirs.write_bytes(b"the user's own")
    before = theirs.read_bytes()
    with pytest.raises(UserError) as caught:
        export.main(export.get_args_parser().parse_args(
            ["--model", str(checkpoint), "--output", str(tmp_path / "m.onnx"), *int8]))  # fmt: skip
    assert str(theirs) in str(caught.value) and "Move or rename it" in str(caught.value)
    assert [p.name for p in tmp_path.iterdir()] == [theirs.name]
    assert theirs.read_bytes() == before


def test_a_size_that_cannot_fit_in_memory_is_refused_naming_only_export_flags(
    tmp_path, checkpoint, monkeypatch
):
    """The check runs a batch of two: --imgsz 10000 10000 was killed outright on the CPU; and
    export.py's out-of-memory advice named --batch, which it does not have."""
    small_memory(monkeypatch, 8)
    monkeypatch.setattr(sys, "argv", ["export.py"])
    out = tmp_path / "m.onnx"
    argv = ["--model", str(checkpoint), "--output", str(out), "--imgsz", "10000", "10000"]
    with pytest.raises(UserError) as caught:
        export.main(export.get_args_parser().parse_args(argv))
    assert re.search(r"--imgsz 10000 10000 .* at 2 images a batch needs", str(caught.value))
    assert str(caught.value).endswith(": lower --imgsz") and "--batch" not in str(caught.value)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["m.onnx.data", "m.int8.onnx", "m.int8.onnx.data"])
def test_a_folder_where_the_export_writes_a_file_is_refused_before_exporting(
    tmp_path, checkpoint, name
):
    """os.replace and unlink met the folder after the graph was exported: IsADirectoryError."""
    (tmp_path / name).mkdir()
    argv = ["--model", str(checkpoint), "--output", str(tmp_path / "m.onnx"), "--int8"]
    with pytest.raises(
        UserError, match=rf"{re.escape(str(tmp_path / name))} is a folder, .* --output"
    ):
        export.main(export.get_args_parser().parse_args(argv))
    assert [p.name for p in tmp_path.iterdir()] == [name]


@pytest.mark.parametrize("stem_bytes", [250, 245])
def test_an_output_name_too_long_for_its_companions_is_refused_before_exporting(
    tmp_path, checkpoint, stem_bytes
):
    """NAME.int8.onnx.data, which every export looks for, past the file system's 255 bytes:
    an ENAMETOOLONG traceback, from --output's own check (250) or after exporting (245)."""
    if not hasattr(os, "pathconf") or os.pathconf(tmp_path, "PC_NAME_MAX") != 255:
        pytest.skip("the names are sized for a file system of 255-byte names")
    out = tmp_path / ("a" * stem_bytes + ".onnx")
    argv = ["--model", str(checkpoint), "--output", str(out)]
    with pytest.raises(UserError, match=r"too long a name: .* at most 255 bytes; name the graph in "
                       r"at most 245 bytes"):  # fmt: skip
        export.main(export.get_args_parser().parse_args(argv))
    assert not list(tmp_path.iterdir())
