"""Export a checkpoint to ONNX (backbone, head and normalization in one graph) and check it.

    python export.py --model outputs/best_model_iou.pth --output model.onnx
    python export.py --model outputs/best_model_iou.pth --output model.onnx --imgsz 518 518 --int8

The graph takes "images", (B, 3, H, W) uint8 RGB at the exported size (the batch is dynamic;
with --dynamic, H and W may be any multiples of 14), and returns "logits", (B, K, H/14, W/14)
on the patch grid (sizes rounded to multiples of 14):
resize them bilinearly to the image's size and take the argmax over K for class ids. The
classes, colours and size are stored in the model's metadata. After exporting, ONNX Runtime is
run against PyTorch on a random input and the largest absolute difference is printed; above
--tolerance the export fails. Weights above 1.5 GB (ViT-g/14), or any with --external-data, go
to OUTPUT.data beside the graph (model.onnx.data), since one ONNX file holds at most 2 GB: keep
the two together.
"""

import argparse
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from config import PATCH_SIZE, add_imgsz_flag, backbone_flags, check_imgsz, path_arg
from model import (
    ONNX_FORMAT,
    Segmentor,
    check_size_fits,
    load_checkpoint,
    log_input_size,
    patch_aligned,
)
from utils import (
    UserError,
    atomic_files,
    check_utf8,
    check_writable,
    existing_parent,
    run_script,
)

log = logging.getLogger("dinoseg")


class OnnxGraph(torch.nn.Module):
    """What the ONNX file computes: uint8 images -> patch-grid logits."""

    def __init__(self, model: Segmentor):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.patch_logits(images)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], parents=[backbone_flags(inference=True)]
    )
    parser.add_argument(
        "--model", type=path_arg, required=True, metavar="CKPT", help="a checkpoint from train.py"
    )
    parser.add_argument(
        "--output", type=path_arg, required=True, metavar="FILE", help="the .onnx file to write"
    )
    add_imgsz_flag(parser, None, "input size (default: the checkpoint's)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        metavar="DIFF",
        help="largest allowed |ONNX Runtime - PyTorch| logit (default %(default)g)",
    )
    parser.add_argument(
        "--dynamic",
        action="store_true",
        help="let H and W vary (multiples of 14), not only the batch",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also write the graph with int8 dynamic quantization (model.int8.onnx for model.onnx)",
    )
    parser.add_argument(
        "--external-data",
        action="store_true",
        help="store the weights beside the graph, in model.onnx.data for model.onnx "
        "(automatic above 1.5 GB: an ONNX file holds at most 2 GB)",
    )
    return parser


def export(
    model: Segmentor,
    ckpt: dict,
    imgsz: tuple[int, int],
    path: Path,
    dynamic: bool = False,
    external_data: bool | None = None,
) -> None:
    """Write the ONNX graph to ``path``, with the checkpoint's classes and backbone and the
    (W, H) ``imgsz`` as metadata.

    With ``dynamic``, H and W are symbolic multiples of 14 and ``imgsz`` must be such sizes.
    With ``external_data`` the weights go to ``path``'s name + ".data" beside it; None leaves
    that to PyTorch, which does it above 1.5 GB of weights.
    """
    w, h = imgsz
    dim = torch.export.Dim
    shapes = {0: dim("batch", min=1, max=1024)}
    if dynamic:
        shapes[2] = PATCH_SIZE * dim("h", min=1, max=512)
        shapes[3] = PATCH_SIZE * dim("w", min=1, max=512)
        # torch.export fixes a dimension whose example has size 1, here one patch: trace at
        # least two patches a side, so that every multiple of 14 stays possible
        w, h = max(w, 2 * PATCH_SIZE), max(h, 2 * PATCH_SIZE)
    example = torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(
            OnnxGraph(model).eval(),
            (example,),
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes={"images": shapes},
            dynamo=True,
            verbose=False,
        )
    program.model.metadata_props.update(
        {
            "classes": json.dumps(ckpt["classes"]),
            "imgsz": json.dumps(list(imgsz)),
            "backbone": ckpt["backbone"],
            "format": ONNX_FORMAT,
        }
    )
    program.save(path, external_data=external_data)


def max_difference(model: Segmentor, path: Path, imgsz, per_image: bool, cannot_run) -> float:
    """Largest |ONNX Runtime - PyTorch| logit on a random batch of two images at ``imgsz``, run
    one image per call where ``per_image``. ``cannot_run(err)`` is the UserError to raise for a
    graph ONNX Runtime cannot run."""
    import onnxruntime as ort

    w, h = imgsz
    images = torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8, generator=torch.Generator())
    batches = [image[None] for image in images] if per_image else [images]
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = np.concatenate([session.run(None, {"images": b.numpy()})[0] for b in batches])
    except Exception as err:  # ONNX Runtime raises its own types for graphs it cannot run
        raise cannot_run(f"{type(err).__name__}: {str(err)[:300]}") from err
    with torch.no_grad():
        expected = model.patch_logits(images).numpy()
    return float(np.abs(got - expected).max())


def check(model: Segmentor, path: Path, imgsz, tolerance: float, name: Path) -> float:
    """Largest |ONNX Runtime - PyTorch| logit on a random batch; fail above ``tolerance``.

    ``name`` is the file the messages speak of: ``path`` is a temporary file that becomes it.
    """
    w, h = imgsz
    diff = max_difference(
        model,
        path,
        imgsz,
        per_image=False,
        cannot_run=lambda why: UserError(
            f"ONNX Runtime cannot run {name} on a {w}x{h} batch ({why}); nothing was written. A "
            "graph exported with --dynamic that fails at a size other than the exported one kept "
            "that size somewhere: export without --dynamic, or with --backbone-source timm, whose "
            "model keeps sizes symbolic"
        ),
    )
    print(f"{name} at {w}x{h}: max |ONNX Runtime - PyTorch| = {diff:.2e} (tolerance {tolerance:g})")
    if not diff <= tolerance:
        raise UserError(
            f"{name} differs from PyTorch by {diff:.2e}, above --tolerance {tolerance:g}; "
            "nothing was written"
        )
    return diff


def check_int8(model: Segmentor, path: Path, imgsz, name: Path, fp32: Path) -> float:
    """Largest |ONNX Runtime - PyTorch| logit of the int8 graph on a random batch, run one image
    per call as --backend onnxruntime runs it; an onnxruntime that cannot run the graph fails.

    The difference is printed, not held to --tolerance: int8 changes the logits themselves.
    ``name`` is the file ``path`` becomes, ``fp32`` the float32 graph already in place.
    """
    import onnxruntime as ort

    w, h = imgsz
    diff = max_difference(
        model,
        path,
        imgsz,
        per_image=True,
        cannot_run=lambda why: UserError(
            f"ONNX Runtime {ort.__version__} cannot run the int8 graph {name} ({why}); it was not "
            f"written, {fp32} was. Its ConvInteger with int8 weights needs onnxruntime 1.24 or "
            "later: update onnxruntime and export again, or deploy the float32 graph"
        ),
    )
    print(
        f"{name} at {w}x{h}: max |ONNX Runtime - PyTorch| = {diff:.2e} (int8, not held to "
        "--tolerance)"
    )
    return diff


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad flags before the checkpoint is loaded."""
    check_imgsz(args.imgsz)
    # first: it names a folder that is a broken link or a loop of links, where the checks
    # below failed in a traceback (the name limit cannot be read there, nor the path resolved).
    # The graph's size is known only once exported: this asks only for room to start.
    check_writable(
        args.output.parent, needed_bytes=2**20, flag="--output folder", purpose="the graph"
    )
    check_name_length(args.output)
    if args.output.is_dir():
        raise UserError(
            f"--output {args.output} is a folder; name the .onnx file to write, such as "
            f"{args.output / 'model.onnx'}"
        )
    if args.output.resolve() == args.model.resolve():
        raise UserError(
            f"--output {args.output} is the --model checkpoint, which the graph would replace; "
            "name a .onnx file"
        )
    if args.output.suffix.lower() != ".onnx":
        # The inference scripts tell a graph from a checkpoint by the extension, and an --output
        # such as OUT/last_model.pth would replace a checkpoint of the run with the graph.
        raise UserError(
            f"--output {args.output} does not end in .onnx; name the graph's file, such as "
            f"{graph_name(args.output)}"
        )
    check_utf8(args.output, "--output", "ONNX Runtime", "choose another name or folder")
    if not args.tolerance > 0:  # also refuses nan, which every comparison fails
        raise UserError(f"--tolerance must be positive, not {args.tolerance:g}")
    int8 = args.output.with_suffix(".int8.onnx")
    # the files an export writes or removes beside the graph: a folder there ended it in a
    # traceback, after the graph was written
    for name in (data_file(args.output), *((int8, data_file(int8)) if args.int8 else ())):
        if name.is_dir():
            raise UserError(
                f"{name} is a folder, and exporting to --output {args.output} writes or removes "
                "a file of that name: move or rename the folder, or choose another --output"
            )
    check_int8_is_ours(int8, args.output)


def check_name_length(output: Path) -> None:
    """Refuse an --output whose longest companion name, NAME.int8.onnx.data for NAME.onnx, is
    longer than its folder's file system allows: every export looks for it (to replace or
    remove it), and the first look ended in an ENAMETOOLONG traceback, after exporting."""
    longest = data_file(output.with_suffix(".int8.onnx"))
    base = existing_parent(output.parent)
    limit = os.pathconf(base, "PC_NAME_MAX") if hasattr(os, "pathconf") else None
    size = len(longest.name.encode(errors="surrogateescape"))
    if limit and size > limit:
        extra = size - len(output.name.encode(errors="surrogateescape"))
        raise UserError(
            f"--output {output} is too long a name: export.py writes {longest.name} beside it, "
            f"and {base} takes names of at most {limit} bytes; name the graph in at most "
            f"{limit - extra} bytes"
        )


def main(args: argparse.Namespace) -> None:
    check_args(args)
    model, ckpt = load_checkpoint(
        args.model, "cpu", args.backbone_source, args.hub_dir, args.backbone
    )
    imgsz = tuple(args.imgsz or ckpt["imgsz"])
    if args.dynamic:  # the graph then takes multiples of 14: store the aligned size
        imgsz = (patch_aligned(imgsz[0]), patch_aligned(imgsz[1]))
    log_input_size(imgsz)
    # the check runs PyTorch and ONNX Runtime on a batch of two
    check_size_fits(model.backbone, imgsz, 2, torch.device("cpu"))
    try:
        write_graphs(model, ckpt, imgsz, args)
    except PermissionError as err:  # check_args found the folder writable: a file held open
        held = err.filename2 or err.filename  # os.replace's destination, or the file unlinked
        raise UserError(
            f"cannot replace {held} ({err.strerror}): is it open in another program? (On "
            "Windows a file open elsewhere cannot be replaced, and an ONNX Runtime session keeps "
            "its graph's .data file open.) Close it and run again, or choose another --output"
        ) from err


def write_graphs(model: Segmentor, ckpt: dict, imgsz, args: argparse.Namespace) -> None:
    """Export ``--output`` (and with --int8 its int8 copy), each checked before it replaces an
    older file."""
    # Exported and checked in a temporary folder: a graph that fails the check never appears
    # at --output, and an older file there stays until a checked one replaces it.
    with atomic_files(args.output) as staged:
        try:
            export(model, ckpt, imgsz, staged, args.dynamic, args.external_data or None)
        except Exception as err:  # the exporter raises many types for graphs it cannot convert
            hint = (
                "; try --backbone-source timm, whose model exports cleanly"
                if model.backbone.source == "hub"
                else ""
            )
            raise UserError(
                f"ONNX export failed ({type(err).__name__}: {str(err)[:300]}){hint}"
            ) from err
        check(model, staged, imgsz, args.tolerance, args.output)
        if args.dynamic:  # and at a size it was not traced at: two patches wider, one taller
            other = (imgsz[0] + 2 * PATCH_SIZE, imgsz[1] + PATCH_SIZE)
            check(model, staged, other, args.tolerance, args.output)
        external = data_file(staged).is_file()
    if external:
        print(f"{args.output}: the weights are in {data_file(args.output)}; keep the two together")
    drop_stale_data(args.output, external)
    int8 = args.output.with_suffix(".int8.onnx")
    drop_stale_int8(int8, args.output, args.int8)
    if args.int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        root = logging.getLogger()  # where quantize_dynamic logs
        with atomic_files(int8) as staged:
            root.addFilter(not_preprocessing_advice)
            try:
                quantize_dynamic(
                    str(args.output),
                    str(staged),
                    weight_type=QuantType.QInt8,
                    use_external_data_format=external,
                )
            finally:
                root.removeFilter(not_preprocessing_advice)
            check_int8(model, staged, imgsz, int8, args.output)
        drop_stale_data(int8, external)
        print(f"{int8}: int8 dynamic quantization (weights int8, activations quantized per call)")


def not_preprocessing_advice(record: logging.LogRecord) -> bool:
    """A logging filter that drops quantize_dynamic's advice to run quant_pre_process first.

    It is given for every graph not so pre-processed. On a graph of a fixed size that step
    (shape inference and ONNX Runtime's basic optimizations, which a session applies when it
    loads the graph anyway) leaves the int8 logits as they are, bit for bit, folding constants
    in the file only; on a --dynamic one its symbolic shape inference fails. So export.py does
    not run it, nor pass the advice on.
    """
    return "pre-processing before quantization" not in record.getMessage()


def graph_name(output: Path) -> str:
    """A .onnx name for an --output that lacks the extension: model.onnx for model.pth, model.onnx
    for its data file model.onnx.data, and for a name without any, as a file or a folder to be
    (--output e/ reaches here as e)."""
    if output.name.lower() in (".onnx", ".onnx.data"):  # all extension: no name to keep
        return str(output.with_name("model.onnx"))
    if output.stem.lower().endswith(".onnx"):
        return str(output.with_name(output.stem))
    if not output.suffix:
        return f"{output.with_suffix('.onnx')}, or {output / 'model.onnx'} for a folder"
    return str(output.with_suffix(".onnx"))


def data_file(graph: Path) -> Path:
    """Where an ONNX graph saved with external data keeps its weights: model.onnx.data beside
    model.onnx."""
    return graph.with_name(graph.name + ".data")


def drop_stale_data(graph: Path, external: bool) -> None:
    """Remove an older export's data file (data_file) when the new ``graph`` holds its own
    weights: nothing refers to that file any more."""
    if not external:
        data_file(graph).unlink(missing_ok=True)


def is_int8_export(path: Path) -> bool:
    """Whether ``path`` is an int8 graph export.py wrote: ONNX with export.py's format metadata
    (of any version) that quantize_dynamic copied from the float32 graph, and the
    DynamicQuantizeLinear nodes that dynamic quantization adds."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # protobuf's DecodeError and others: not an ONNX graph at all
        return False
    found = {p.key: p.value for p in proto.metadata_props}.get("format", "")
    return found.split("/")[0] == ONNX_FORMAT.split("/")[0] and any(
        node.op_type == "DynamicQuantizeLinear" for node in proto.graph.node
    )


def check_int8_is_ours(int8: Path, graph: Path) -> None:
    """Refuse to start where ``int8`` (``graph``'s int8 name), or its data_file, is a file
    export.py did not write: every export replaces or removes that pair (drop_stale_int8)."""
    if int8.is_file() and not is_int8_export(int8):
        what = f"{int8} is not an int8 graph written by export.py"
    elif data_file(int8).is_file() and not int8.is_file():
        what = f"{data_file(int8)} is there without the int8 graph {int8} whose weights it holds"
    else:
        return
    raise UserError(
        f"{what}, and exporting to --output {graph} replaces or removes that name (with --int8 "
        f"it becomes the int8 copy; without, an earlier int8 copy is removed). Move or rename "
        f"it, or choose another --output"
    )


def drop_stale_int8(int8: Path, graph: Path, replaced: bool) -> None:
    """Remove the ``int8`` graph (and its data_file) of an earlier export once the new float32
    ``graph`` is in place: made from another checkpoint or size, it would pass for the new
    graph's int8 copy. Removed before a new one is quantized too (``replaced``, --int8), so that
    a quantization that fails leaves none. check_int8_is_ours made sure they are export.py's."""
    stale = [f for f in (int8, data_file(int8)) if f.is_file()]
    if stale and not replaced:
        log.warning(
            "removed %s, the int8 graph of an earlier export, which does not match the new %s: "
            "pass --int8 to write one for it",
            int8,
            graph,
        )
    for file in stale:
        file.unlink()


if __name__ == "__main__":
    run_script(lambda: main(get_args_parser().parse_args()))
