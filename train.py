"""Train a segmentation head on a frozen DINOv2 backbone, or evaluate a checkpoint.

python train.py                                   # Penn-Fudan persons, downloaded if missing
python train.py --data DIR --config classes.yaml  # your own data and classes
python train.py --eval-only --model outputs/best_model_iou.pth --data DIR
"""

import os

# MPS reads this once, when torch loads: ops it lacks then run on the CPU instead of failing.
os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")

import argparse
import functools
import gc
import logging
import math
import platform
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from config import (
    BEST_CHECKPOINT,
    DEFAULT_DATA_DIR,
    DEFAULT_IMGSZ,
    DEFAULT_OUT_DIR,
    DEFAULT_SOURCE,
    DEFAULT_TTA_SCALES,
    IGNORE_INDEX,
    LAST_CHECKPOINT,
    PATCH_SIZE,
    RESUMED_MODEL,
    RESUMED_SETTINGS,
    SPLITS,
    ClassConfig,
    add_layers_flag,
    as_flag,
    backbone_flags,
    check_at_least,
    check_imgsz,
    check_learning_rates,
    check_slide_size,
    check_tta_scales,
    checkpoint_settings,
    flag_name,
    negation_flags,
    parse_args,
    path_arg,
    plain_value,
    runtime_flags,
    scored_checkpoint,
    slide_setting,
    tta_flags,
    tta_setting,
    weights_arg,
)
from datasets import (
    CachedFeatureDataset,
    DataError,
    SegmentationDataset,
    ShardSampler,
    check_dataset_pixels,
    collate_eval,
    download_penn_fudan,
    read_image,
    read_mask,
)
from engine import (
    FeatureCache,
    Predictor,
    TrainingDiverged,
    evaluate,
    train_one_epoch,
)
from model import (
    Segmentor,
    check_size_fits,
    checkpoint_bytes,
    load_backbone,
    load_checkpoint,
    log_input_size,
    peek_checkpoint,
    read_checkpoint,
    save_checkpoint,
    token_grid,
)
from utils import (
    AMP_DEVICES,
    CONFUSION_PLOTS,
    CURVES,
    UserError,
    amp_dtype,
    atomic_path,
    broadcast_buffers,
    check_on_main_process,
    check_writable,
    existing_parent,
    gather_objects,
    is_main_process,
    leave_distributed,
    leave_stop_signals_to_main,
    memory_report,
    on_main_process,
    pick_device,
    plot_confusion,
    plot_curves,
    raise_if_another_process_stopped,
    read_csv,
    run_script,
    same_folder,
    seed_everything,
    setup_distributed,
    warn_on_main_process,
    worker_context,
    write_csv,
    write_image,
    write_json,
    write_text,
)

log = logging.getLogger("dinoseg")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a DINOv2 segmentation head, or evaluate a checkpoint (--eval-only).",
        parents=[backbone_flags(), runtime_flags(), tta_flags(needs="--eval-only")],
    )
    parser.add_argument(
        "--config",
        type=path_arg,
        default=None,
        metavar="FILE",
        help="YAML file with the classes (ALL_CLASSES; optional LABEL_COLORS_LIST or MASK_IDS, "
        "VIS_LABEL_MAP) and/or flag defaults",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        type=path_arg,
        default=None,
        metavar="DIR",
        help=f"dataset folder (default {DEFAULT_DATA_DIR}, downloaded when missing)",
    )
    data.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        metavar="N",
        help="data-loading processes (default min(4, CPUs): %(default)s here)",
    )
    data.add_argument(
        "--no-augment", action="store_true", help="train on resized images, without augmentation"
    )
    # The way back to augmentation when --resume or --config set --no-augment. No default of its
    # own: --no-augment's (off) stays the one default.
    data.add_argument(
        "--augment",
        dest="no_augment",
        action="store_false",
        default=argparse.SUPPRESS,
        help="augment the training images (the default; undoes a resumed or --config no_augment)",
    )
    data.add_argument(
        "--cache-features",
        choices=["off", "memory", "disk"],
        default="off",
        help="compute the frozen backbone's features once per image and view (original and "
        "flipped) and train the head from them (default %(default)s)",
    )
    data.add_argument(
        "--cache-dir",
        type=path_arg,
        default=None,
        metavar="DIR",
        help="the folder of --cache-features disk (default OUT/feature_cache)",
    )
    optim = parser.add_argument_group("optimization")
    optim.add_argument(
        "--epochs",
        type=int,
        default=30,
        metavar="N",
        help="epochs to train; with --resume, the last epoch to reach (default %(default)s)",
    )
    optim.add_argument(
        "--patience",
        type=int,
        default=None,
        metavar="N",
        help="stop early after N epochs in a row whose valid mIoU does not beat the best "
        "(default: off, train all --epochs)",
    )
    # The way back to all --epochs when --resume or --config set --patience. No default of its
    # own: --patience's (None) stays the one default.
    optim.add_argument(
        "--no-patience",
        dest="patience",
        action="store_const",
        const=None,
        default=argparse.SUPPRESS,
        help="train all --epochs (the default; undoes a resumed or --config patience)",
    )
    optim.add_argument(
        "--batch",
        type=int,
        default=8,
        metavar="N",
        help="batch size per process (default %(default)s)",
    )
    optim.add_argument(
        "--lr",
        type=float,
        default=1e-4,
        metavar="LR",
        help="learning rate of the head (default %(default)g)",
    )
    optim.add_argument(
        "--weight-decay",
        type=float,
        default=1e-2,
        metavar="WD",
        help="AdamW weight decay (default %(default)g)",
    )
    optim.add_argument(
        "--scheduler",
        choices=["none", "cosine", "poly"],
        default="none",
        help="learning-rate schedule, stepped once per epoch (default %(default)s)",
    )
    add_layers_flag(optim)
    optim.add_argument("--fine-tune", action="store_true", help="also train the backbone")
    optim.add_argument(
        "--backbone-lr",
        type=float,
        default=1e-5,
        metavar="LR",
        help="backbone lr with --fine-tune (default %(default)g)",
    )
    optim.add_argument(
        "--accum",
        type=int,
        default=1,
        metavar="K",
        help="batches per optimizer step (default %(default)s)",
    )
    optim.add_argument(
        "--loss",
        choices=["ce", "dice", "ce+dice"],
        default="ce",
        help="what training minimizes: ce, pixel-wise cross-entropy; dice, the soft Dice loss "
        "of each batch; ce+dice, their sum (default %(default)s). train_loss and valid_loss are "
        "the cross-entropy whatever it is",
    )
    optim.add_argument(
        "--class-weights",
        type=class_weight_arg,
        nargs="+",
        default=None,
        metavar="W",
        help="weigh each class's pixels in the training and validation loss: one number of 0 "
        "or more per class, in class-id order, e.g. 1 5 for a small object on a large "
        "background; or auto, median-frequency balancing from the train masks' pixel counts "
        "(default: 1 each)",
    )
    # The way back to an unweighted loss when --resume or --config set --class-weights. No
    # default of its own: --class-weights' (None) stays the one default.
    optim.add_argument(
        "--no-class-weights",
        dest="class_weights",
        action="store_const",
        const=None,
        default=argparse.SUPPRESS,
        help="weigh every class's pixels alike (the default; undoes a resumed or --config "
        "class_weights)",
    )
    optim.add_argument(
        "--seed",
        type=int,
        default=42,
        metavar="N",
        help="seed for weights, shuffling and augmentation (default %(default)s)",
    )
    out = parser.add_argument_group("outputs and checkpoints")
    out.add_argument(
        "--out-dir",
        type=path_arg,
        default=DEFAULT_OUT_DIR,
        metavar="DIR",
        help="where everything is written (default %(default)s)",
    )
    out.add_argument(
        "--num-vis",
        type=int,
        default=4,
        metavar="N",
        help="validation overlays written per epoch (default %(default)s)",
    )
    out.add_argument(
        "--resume",
        type=path_arg,
        default=None,
        metavar="CKPT",
        help="continue a run from a checkpoint, such as OUT/last_model.pth",
    )
    out.add_argument("--eval-only", action="store_true", help="evaluate --model on the valid split")
    out.add_argument(
        "--model",
        type=path_arg,
        default=None,
        metavar="CKPT",
        help="checkpoint for --eval-only (default OUT/best_model_iou.pth)",
    )
    return parser


def check_args(args: argparse.Namespace) -> None:
    check_at_least(args, {"epochs": 1, "batch": 1, "accum": 1, "workers": 0, "num_vis": 0})
    if args.patience is not None:
        check_at_least(args, {"patience": 1})
    if not 0 <= args.weight_decay < math.inf:
        raise UserError(
            f"{flag_name(args, 'weight_decay')} must be 0 or more, not {args.weight_decay}"
        )
    check_learning_rates(args, ("lr", "backbone_lr"), args.weight_decay)
    frozen = not (args.fine_tune or args.eval_only)  # --eval-only trains nothing
    if frozen and args.backbone_lr != get_args_parser().get_default("backbone_lr"):
        raise UserError(
            "--backbone-lr is the learning rate of a fine-tuned backbone: add --fine-tune, or "
            "drop --backbone-lr to train the head alone"
        )
    if not 0 <= args.seed < 2**32:  # what NumPy's seeding takes
        raise UserError(
            f"{flag_name(args, 'seed')} must be between 0 and {2**32 - 1}, not {args.seed}"
        )
    check_imgsz(args.imgsz)
    if args.resume and args.eval_only:
        raise UserError("--resume and --eval-only do not go together")
    if not args.eval_only and args.tta:
        raise UserError("--tta applies to --eval-only: validation during training runs without it")
    if not args.eval_only and tuple(args.tta_scales) != DEFAULT_TTA_SCALES:
        raise UserError(
            "--tta-scales applies to --eval-only --tta: validation during training runs without "
            "test-time augmentation"
        )
    check_tta_scales(args)
    if not args.eval_only and (args.slide or args.slide_size is not None):
        flag = "--slide" if args.slide else "--slide-size"
        raise UserError(
            f"{flag} applies to --eval-only: validation during training runs without it"
        )
    check_slide_size(args)
    if not args.eval_only and args.model is not None:
        raise UserError(
            "--model names the checkpoint that --eval-only scores; to go on training a "
            "checkpoint, use --resume OUT/last_model.pth"
        )
    # (--eval-only caches nothing, and a resumed run's --cache-dir is its checkpoint's)
    unused_dir = not (args.cache_features == "disk" or args.eval_only or args.resume)
    if args.cache_dir is not None and unused_dir:
        raise UserError(
            "--cache-dir is the folder of --cache-features disk: add --cache-features disk, "
            "or drop --cache-dir"
        )
    if args.cache_features != "off" and args.fine_tune and not args.resume:
        # (a resumed run's --fine-tune is its checkpoint's: build_model names the checkpoint)
        raise UserError("--cache-features needs a frozen backbone: drop --fine-tune or the cache")


# --class-weights' value that computes the weights from the training masks
AUTO_WEIGHTS = "auto"


def class_weight_arg(text: str) -> float | str:
    """One value of --class-weights: a number, or AUTO_WEIGHTS."""
    if text == AUTO_WEIGHTS:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor auto") from None


def check_class_weights(
    weights: list | None, classes: ClassConfig, flag: str = "--class-weights"
) -> None:
    """Refuse --class-weights that do not fit the run's ``classes``: one finite weight of 0 or
    more per class, at least one above 0 (else no pixel would count), or auto alone.

    Args:
        flag: the setting as the messages name it (config.flag_name).
    """
    if weights is None or weights == [AUTO_WEIGHTS]:
        return
    k = classes.num_classes
    ids = ", ".join(f"{i} {name}" for i, name in enumerate(classes.names))
    given = " ".join(w if isinstance(w, str) else f"{w:g}" for w in weights)
    if AUTO_WEIGHTS in weights:
        raise UserError(f"{flag} takes auto alone or {k} numbers, not {given}")
    if len(weights) != k:
        raise UserError(
            f"{flag} takes one weight per class, {k} for the {k} classes ({ids}) in "
            f"class-id order, not {len(weights)} ({given})"
        )
    if not all(0 <= w < math.inf for w in weights) or not any(w > 0 for w in weights):
        raise UserError(
            f"{flag} must be finite numbers of 0 or more, at least one above 0, one "
            f"for each of the {k} classes ({ids}) in class-id order; not {given}"
        )


def auto_class_weights(pixels: np.ndarray, classes: ClassConfig) -> list[float]:
    """--class-weights auto: median-frequency balancing (SegNet's) of the (256,) pixel counts of
    the train masks, by class id: each class weighs the median frequency of the classes over
    its own, so that the median class weighs 1 and one ten times rarer 10. (From the split's
    summed counts: SegNet counts each class's frequency over the images that hold it.) A class
    in no train mask weighs 1: training never meets it. Rounded to 4 significant digits, as
    args.yaml records them."""
    counts = pixels[: classes.num_classes].astype(np.float64)
    present = counts > 0
    frequency = counts / counts.sum()
    median = np.median(frequency[present])
    weights = np.where(present, median / np.where(present, frequency, 1), 1.0)
    return [float(f"{w:.4g}") for w in weights]


def main(args: argparse.Namespace, classes: ClassConfig) -> None:
    check_args(args)
    rank, world, device = setup_distributed(pick_device(args.device))
    if rank != 0:
        log.setLevel(logging.WARNING)  # rank 0 alone reports
    try:
        autocast = amp_dtype(args.amp, device, training=not args.eval_only)
        seed_everything(args.seed)
        check_on_main_process(lambda: check_writable(args.out_dir, needed_bytes=2**20))
        if args.eval_only:
            run_eval(args, classes, device, autocast, rank, world)
        else:
            fit(args, classes, device, autocast, rank, world)
    finally:
        leave_distributed()


def fit(args, classes: ClassConfig, device: torch.device, autocast, rank: int, world: int) -> None:
    """Train, evaluate and save every epoch; under torchrun, rank 0 alone writes."""
    main_process = rank == 0
    # the files in --out-dir that this run removes: an earlier run's (a new run), or overlays
    # that it does not draw (a resumed one)
    earlier = []
    if args.resume:
        resumed = resume_point(args, classes)
        if resumed is None:
            return
        ckpt, classes, imgsz, history, best_epoch = resumed
        start = ckpt["epoch"] + 1
        warn_other_processes(args, ckpt, world)
        best_miou, best_loss = ckpt["best_miou"], ckpt["best_loss"]
    else:
        history, start, best_miou, best_loss, ckpt = [], 1, NO_MIOU, math.inf, None
        best_epoch = 0  # before the first epoch, which always beats NO_MIOU
        imgsz = tuple(args.imgsz or DEFAULT_IMGSZ)
        earlier = earlier_outputs(args.out_dir) if main_process else []
        warn_earlier_run(args.out_dir, earlier)
    check_class_weights(args.class_weights, classes, flag_name(args, "class_weights"))
    # Check the data before loading the backbone, which may mean a download.
    kept = f"a resumed run keeps the classes of --resume {args.resume}" if args.resume else None
    pairs, pixels = checked_dataset(resolve_data(args), classes, kept_classes=kept)
    if args.class_weights == [AUTO_WEIGHTS]:
        # the numbers, as args.yaml and the checkpoints record them: a resume goes on with them
        args.class_weights = auto_class_weights(pixels["train"], classes)
        log.info(
            "--class-weights auto: %s (%s), by median-frequency balancing of the train masks' "
            "pixels",
            " ".join(map(str, args.class_weights)),
            ", ".join(classes.names),
        )
    if ckpt is not None and class_weights_changed(args, ckpt, start):
        best_loss = math.inf  # of another objective: best_model_loss.pth is picked anew
    if args.class_weights is not None:
        class_weights = torch.tensor(args.class_weights, dtype=torch.float32, device=device)
    else:
        class_weights = None
    if ckpt is not None and main_process:
        # the resumed run's overlays beyond --num-vis: of another model than this run's
        earlier = other_overlays(args.out_dir, pairs["valid"], args.num_vis)
    # every process has the same share (DistributedSampler pads), so rank 0's answer is theirs
    train_share = math.ceil(len(pairs["train"]) / world)
    check_on_main_process(lambda: check_batch_statistics(args.batch, train_share, imgsz))
    warn_long_accum(args, train_share, world)  # before the backbone loads, which takes a while

    model = build_model(args, classes, device, ckpt, start)
    log_input_size(imgsz)
    check_on_main_process(
        lambda: check_size_fits(model.backbone, imgsz, args.batch, device, autocast)
    )
    # as soon as the model's size is known: before the cache and training
    needed = checkpoint_space(model, args.out_dir)
    check_on_main_process(lambda: check_writable(args.out_dir, needed, purpose="its checkpoints"))
    model, train_model = distribute(model, device, world)

    from_features = args.cache_features != "off"
    train_set, valid_set = make_datasets(args, model, pairs, classes, imgsz, autocast, rank, world)
    train_loader = make_loader(train_set, args, device, True, rank, world)
    valid_loader = make_loader(valid_set, args, device, False, rank, world)
    log.info(
        "data: %d train, %d valid images; classes %s; device %s%s",
        len(train_set),
        len(valid_set),
        list(classes.names),
        device,
        f"; {world} processes, batch {args.batch} each" if world > 1 else "",
    )

    predictor = Predictor(model, classes, imgsz)
    optimizer, scheduler, scaler = make_optimization(args, model, device, ckpt, start)
    if ckpt is not None and main_process and not history:
        history = carry_over(args.resume.parent, args.out_dir, start)
    if ckpt is not None and main_process:
        restore_best(args, ckpt, start)

    run_settings = settings(args, classes, imgsz)
    # at the run's first write: none of them may pass for this run's, a stop in its first epoch
    # included; a file that cannot be removed stops every process, not rank 0 alone
    check_on_main_process(lambda: remove_outputs(earlier, args.out_dir))
    if main_process:
        write_text(args.out_dir / "args.yaml", yaml.safe_dump(run_settings, sort_keys=False))
    epoch = start
    on_disk = {}  # the checkpoint files this run wrote into --out-dir: name -> epoch

    def kept() -> str:
        if not main_process:
            # rank 0 alone saves, so on_disk is empty here: it would say no epoch was kept
            return "Rank 0 says what the run keeps."
        finished = on_disk.get(LAST_CHECKPOINT, start - 1)
        # Until this run saves an epoch, the epoch before it is in the --resume checkpoint,
        # which may be in another folder, or another file than last_model.pth.
        last = args.out_dir / LAST_CHECKPOINT
        checkpoint = args.resume if finished < start and args.resume else last
        ahead = [name for name, saved in on_disk.items() if saved > finished]
        return kept_message(checkpoint, finished, args.out_dir, ahead)

    try:
        for epoch in range(start, args.epochs + 1):
            # Every epoch's randomness is a function of (seed, epoch), so --resume repeats it.
            train_set.set_epoch(epoch)
            train_loader.sampler.set_epoch(epoch)
            t0 = time.perf_counter()
            train = train_one_epoch(
                train_model,
                train_loader,
                optimizer,
                device,
                classes.num_classes,
                autocast_dtype=autocast,
                scaler=scaler,
                desc=f"train {epoch}/{args.epochs}",
                accum=args.accum,
                from_features=from_features,
                class_weights=class_weights,
                loss=args.loss,
            )
            # Without SyncBatchNorm (CPU) each process's running statistics drifted with its
            # own batches; evaluate everywhere with rank 0's, the ones the checkpoint saves.
            broadcast_buffers(model)
            valid = evaluate(
                model,
                valid_loader,
                device,
                classes.num_classes,
                autocast_dtype=autocast,
                desc=f"valid {epoch}/{args.epochs}",
                from_features=from_features,
                class_weights=class_weights,
            )
            if not math.isfinite(valid["loss"]):
                # the last update broke the model: it must not become a checkpoint to resume
                raise TrainingDiverged(
                    f"the validation loss became {valid['loss']} after the training"
                )
            lr = optimizer.param_groups[0]["lr"]
            if scheduler is not None:
                step_schedule(scheduler)
            row = epoch_row(epoch, train, valid, lr, time.perf_counter() - t0)
            history.append(row)
            improved_iou = valid["miou"] > best_miou
            improved_loss = valid["loss"] < best_loss
            best_epoch = epoch if improved_iou else best_epoch
            best_miou = max(best_miou, valid["miou"])
            best_loss = min(best_loss, valid["loss"])
            meta = {
                "epoch": epoch,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "classes": classes.to_dict(),
                "imgsz": list(imgsz),
                "args": run_settings,
                "processes": world,  # not a flag: torchrun's; a resume on others is warned of
                "metrics": row,
                "best_miou": best_miou,
                "best_loss": best_loss,
            }
            if main_process:
                write_report(args.out_dir, history)
                write_overlays(args.out_dir, valid_set, args.num_vis, predictor)
                save_checkpoints(args.out_dir, model, meta, (improved_iou, improved_loss), on_disk)
            log_epoch(row, args.epochs, improved_iou)
            # from the all-reduced valid mIoU, the same in every process: they all stop here
            if patience_reached(args.patience, epoch - best_epoch) and epoch < args.epochs:
                log.info(
                    "stopped early at epoch %d of %d: no valid mIoU has beaten epoch %d's %.4f "
                    "in the %d epochs since (--patience %d)",
                    epoch,
                    args.epochs,
                    best_epoch,
                    best_miou,
                    epoch - best_epoch,
                    args.patience,
                )
                break
    except KeyboardInterrupt:
        if main_process:
            log.warning("stopped during epoch %d. %s", epoch, kept())
        raise
    except (TrainingDiverged, DataError, OSError) as err:
        raise stopped_error(err, args, epoch, kept(), device) from err
    except RuntimeError as err:
        raise_if_worker_failure(err, kept())
        # another process stopped on an error (a dataset file of its shard broke) and left
        raise_if_another_process_stopped(err, f"during epoch {epoch}", f". {kept()}")
        raise
    finally:
        shut_down_workers(train_loader, valid_loader)
    if main_process:
        memory = memory_report(device)  # "" where nothing can be read (the CPU on Windows)
        memory = f"; {memory}" if memory else ""
        print(f"Best valid mIoU {best_miou:.4f}; outputs in {args.out_dir}{memory}")


def resume_point(
    args, classes: ClassConfig
) -> tuple[dict, ClassConfig, tuple[int, int], list[dict], int] | None:
    """The --resume checkpoint, the classes and (W, H) size the run keeps (read_resume), the
    rows of --out-dir's metrics.csv before the resumed epoch and the epoch of the best valid mIoU
    so far (resumed_best_epoch), once the checks of a resume pass; None, said in a message, where
    the checkpoint already finished --epochs or reached --patience."""
    ckpt, classes, imgsz = read_resume(args, classes)
    start = ckpt["epoch"] + 1
    warn_changed_settings(args, ckpt, start)
    # before anything is written into --out-dir, args.yaml first
    check_on_main_process(lambda: check_same_run(args, ckpt, start))
    check_on_main_process(lambda: check_resumed_data(args, ckpt))
    # read by rank 0 alone, so that a broken file is named once, before the model loads
    history = on_main_process(lambda: resumed_history(args.out_dir / "metrics.csv", start))
    if start > args.epochs:
        # before the data, the model and the feature cache: a run it does not train writes
        # nothing (args.yaml and metrics.csv stay its run's)
        log.info(
            "nothing to do: the checkpoint already finished epoch %d of %d; its run's "
            "outputs are in %s",
            start - 1,
            args.epochs,
            args.resume.parent,
        )
        return None
    # read by rank 0, as the history is, and given to every process: they stop at one epoch
    best_epoch = on_main_process(lambda: resumed_best_epoch(args, ckpt, history))
    if patience_reached(args.patience, start - 1 - best_epoch):
        # a run that stopped early, resumed as it was: as above, it writes nothing
        log.info(
            "nothing to do: --patience %d is reached, as no valid mIoU has beaten epoch %d's "
            "%.4f in the %d epochs up to the checkpoint's epoch %d. To train on, resume with "
            "--patience %d or more, or --no-patience; its run's outputs are in %s",
            args.patience,
            best_epoch,
            ckpt["best_miou"],
            start - 1 - best_epoch,
            start - 1,
            start - best_epoch,
            args.resume.parent,
        )
        return None
    check_on_main_process(lambda: check_resumed_cache_dir(args, ckpt))
    return ckpt, classes, imgsz, history, best_epoch


# the best valid mIoU before the first epoch: any score beats it
NO_MIOU = -1.0


def patience_reached(patience: int | None, since_best: int) -> bool:
    """Whether ``since_best`` epochs in a row without a better valid mIoU end the run under
    --patience (None: never)."""
    return patience is not None and since_best >= patience


def resumed_best_epoch(args, ckpt: dict, history: list[dict]) -> int:
    """The epoch of the best valid mIoU (``ckpt["best_miou"]``) of the run that the --resume
    checkpoint ``ckpt`` continues, which --patience counts from, as the uninterrupted run had
    it: the first of the ``history`` rows (metrics.csv's, before the resumed epoch; else those
    of the checkpoint's folder) that scored it, else the checkpoint's own epoch where it scored
    it, else the epoch of a best_model_iou.pth (of --out-dir or the checkpoint's folder) that
    holds it. Where none tells (metrics.csv removed), the checkpoint's epoch, said in a warning
    under --patience. Without --patience nothing counts from it: the checkpoint's epoch, with
    no file read."""
    best, resumed = ckpt["best_miou"], ckpt["epoch"]
    if args.patience is None:
        return resumed
    rows = history or source_history(args.resume.parent, args.out_dir, resumed + 1)
    scored = [r["epoch"] for r in rows if r["valid_miou"] == best]
    if scored:
        return min(scored)
    if (ckpt.get("metrics") or {}).get("valid_miou") == best:
        return resumed
    for folder in (args.out_dir, args.resume.parent):
        held = peek_checkpoint(folder / BEST_CHECKPOINT) if folder.is_dir() else {}
        epoch = held.get("epoch")
        if held.get("best_miou") == best and isinstance(epoch, int) and epoch <= resumed:
            return epoch
    log.warning(
        "--patience %d counts from epoch %d: neither metrics.csv nor %s shows which epoch of "
        "--resume %s scored its best valid mIoU, %.4f",
        args.patience,
        resumed,
        BEST_CHECKPOINT,
        args.resume,
        best,
    )
    return resumed


def warn_earlier_run(out_dir: Path, earlier: list[Path]) -> None:
    """Warn, where a new run found them, that it removes ``earlier``, the files of an earlier
    run in ``out_dir`` (earlier_outputs), before its first epoch."""
    if not earlier:
        return
    # the default outputs/ of a second run: its best checkpoints go without a word
    names = [p.name for p in earlier if p.parent == out_dir]
    names += ["valid_preds/*.jpg"] if len(names) < len(earlier) else []
    last = out_dir / LAST_CHECKPOINT
    log.warning(
        "--out-dir %s holds an earlier run (its %s): this run removes them before its "
        "first epoch. To keep them, stop now and pass another --out-dir%s",
        out_dir,
        ", ".join(names),
        f"; to continue that run instead, --resume {last} --out-dir {out_dir}"
        if last.is_file()
        else "",
    )


def epoch_row(epoch: int, train: dict, valid: dict, lr: float, seconds: float) -> dict:
    """The metrics.csv row of ``epoch``: the train and valid scores (train_one_epoch's and
    evaluate's), the head's learning rate and the seconds the epoch took."""
    return {
        "epoch": epoch,
        "train_loss": train["loss"],
        "train_acc": train["acc"],
        "train_miou": train["miou"],
        "valid_loss": valid["loss"],
        "valid_acc": valid["acc"],
        "valid_miou": valid["miou"],
        "lr": lr,
        "seconds": seconds,
    }


# what --resume reads from a checkpoint besides the model (model.CHECKPOINT_KEYS)
TRAINING_KEYS = ("epoch", "optimizer", "scheduler", "scaler", "args", "best_miou", "best_loss")


# in --out-dir: the best epochs by valid mIoU and by valid loss (and LAST_CHECKPOINT, the last one)
BEST_CHECKPOINTS = (BEST_CHECKPOINT, "best_model_loss.pth")


def read_resume(args, classes: ClassConfig) -> tuple[dict, ClassConfig, tuple[int, int]]:
    """The --resume checkpoint, with the classes and (W, H) size the run keeps: its own, whatever
    --config and --imgsz say (a difference is a warning)."""
    ckpt = read_checkpoint(args.resume, "--resume")
    missing = [k for k in TRAINING_KEYS if k not in ckpt]
    if missing:
        raise UserError(
            f"--resume {args.resume} holds no training state (it lacks {', '.join(missing)}): "
            "resume from a last_model.pth written by train.py"
        )
    check_on_main_process(lambda: check_resumed_source(args, ckpt))
    resumed = ClassConfig.from_dict(ckpt["classes"], source=str(args.resume))
    imgsz = tuple(ckpt["imgsz"])
    if args.imgsz is not None and tuple(args.imgsz) != imgsz:
        warn_on_main_process(
            "--imgsz %s ignored: a resumed run keeps its checkpoint's size %s",
            " ".join(map(str, args.imgsz)),
            " ".join(map(str, imgsz)),
        )
    if args.config is not None and classes != resumed:
        warn_on_main_process(
            "the classes of --config %s are ignored: a resumed run keeps its checkpoint's %s",
            args.config,
            list(resumed.names),
        )
    ignored = ignored_model_flags(args, ckpt)
    if ignored:
        warn_on_main_process(
            "ignored: %s. A resumed run keeps its checkpoint's model; start a new run (without "
            "--resume) to train another",
            ignored,
        )
    if isinstance(ckpt["args"], dict) and "weights" in ckpt["args"]:
        # for args.yaml, as parse_args reads it (a file absolute, an older checkpoint's relative
        # one from the current folder, as same_setting takes it); build_model sets the rest from
        # the checkpoint
        weights = ckpt["args"]["weights"]
        args.weights = weights_arg(weights) if isinstance(weights, str) else weights
    return ckpt, resumed, imgsz


def check_resumed_source(args, ckpt: dict) -> None:
    """Refuse to resume a --fine-tune checkpoint through another --backbone-source than it was
    trained with. Its optimizer state lists the backbone's parameters in the order of the build
    that trained them, which the hub and timm builds do not share (nor, with registers, the
    position embedding's shape): AdamW would meet moments of other parameters at its first
    step. A frozen backbone's checkpoint holds the head's state alone and resumes through
    either."""
    trained = ckpt.get("backbone_source")
    asked = args.backbone_source
    if not ckpt.get("fine_tune") or asked is None or trained is None or asked == trained:
        return
    offline = " (offline: and --hub-dir DIR, a local clone of facebookresearch/dinov2)"
    raise UserError(
        f"--resume {args.resume} fine-tuned its backbone as built by --backbone-source "
        f"{trained}, and its optimizer state holds that build's parameters, in an order "
        f"{asked}'s build does not share: resume with --backbone-source {trained}"
        f"{offline if trained == 'hub' else ''}, or drop --backbone-source"
    )


def ignored_model_flags(args: argparse.Namespace, ckpt: dict) -> str:
    """The model flags of ``args`` that differ from the checkpoint's model, which a resumed run
    and --eval-only keep, as "--layers 2 (the checkpoint's: 4), ..."; "" when none do.

    config.parse_args gave them the checkpoint's values and noted those it kept
    (args.from_checkpoint), so any other is what --config or the command line asked for.
    """
    recorded = checkpoint_settings(ckpt)
    return ", ".join(
        f"--{k.replace('_', '-')} {getattr(args, k)} (the checkpoint's: {recorded[k]})"
        for k in RESUMED_MODEL
        if k in recorded and k not in args.from_checkpoint
    )


def warn_changed_settings(args, ckpt: dict, start: int) -> None:
    """Name the settings of a resumed run that --config or the command line changed from the
    checkpoint's run (config.parse_args gives it the others)."""
    before = ckpt.get("args") or {}
    parser = get_args_parser()
    negations = negation_flags(parser)

    def was(key: str):
        # a switch, and a setting that a flag of its own turns off, by their flags
        value = before[key]
        if isinstance(value, bool) or (value is None and key in negations):
            return as_flag(parser, key, value)
        return value

    # "--lr 1e-05 (was 0.003)"; "--augment (was --no-augment)", "--patience 5 (was --no-patience)"
    changed = [
        f"{as_flag(parser, k, getattr(args, k))} (was {was(k)})"
        for k in RESUMED_SETTINGS
        # (class_weights_changed says what changed weights do to the loss)
        if k in before and k not in args.from_checkpoint and k != "class_weights"
    ]
    if changed:
        warn_on_main_process(
            "--resume: settings that differ from the run of %s apply from epoch %d: %s",
            args.resume,
            start,
            ", ".join(changed),
        )


def class_weights_changed(args, ckpt: dict, start: int) -> bool:
    """Whether a run resumed at epoch ``start`` weighs the classes otherwise than ``ckpt``'s run
    did (a checkpoint from before --class-weights weighed them alike), said where it does. Its
    valid loss is then another objective than the one the checkpoint's best valid loss was of,
    so the run's best valid loss, which picks best_model_loss.pth, counts from ``start``."""
    before = (ckpt.get("args") or {}).get("class_weights")
    if before == args.class_weights:
        return False
    parser = get_args_parser()
    warn_on_main_process(
        "--resume: %s (was %s) changes the loss: the valid losses of metrics.csv before epoch "
        "%d are of the earlier weights, and best_model_loss.pth is picked among the epochs from "
        "%d on",
        as_flag(parser, "class_weights", args.class_weights),
        as_flag(parser, "class_weights", before),
        start,
        start,
    )
    return True


def warn_other_processes(args, ckpt: dict, world: int) -> None:
    """Warn where a run resumes on another number of processes than ``ckpt``'s run trained on
    (a 4-GPU job continued on 1 GPU): --batch is per process, so each optimizer step follows
    the batches of another number of processes, the learning rate is not rescaled, and the run
    no longer repeats the uninterrupted one. Checkpoints from before the count was saved say
    nothing."""
    before = ckpt.get("processes")
    if not isinstance(before, int) or before == world:
        return
    recorded = ckpt.get("args") or {}
    batch, accum = recorded.get("batch"), recorded.get("accum")
    was = f" instead of {batch} x {accum} x {before}" if batch and accum else ""
    warn_on_main_process(
        "--resume %s trained on %d process%s, this run on %d: --batch is per process, so an "
        "optimizer step now follows %d x %d x %d images (--batch x --accum x processes)%s, "
        "and the learning rate is not rescaled for it: the run no longer repeats one that had "
        "gone on as it started",
        args.resume,
        before,
        "es" if before > 1 else "",
        world,
        args.batch,
        args.accum,
        world,
        was,
    )


def check_same_run(args, ckpt: dict, start: int) -> None:
    """Refuse to resume ``ckpt`` (its epoch ``start - 1``) into an --out-dir that holds another
    run: its metrics.csv would be continued as this run's history, and its best checkpoints kept
    as this run's best (``python train.py --resume runs/a/last_model.pth`` writes into the
    default outputs/, which may hold an older run)."""
    recorded = ckpt.get("metrics")
    csv_path = args.out_dir / "metrics.csv"
    # A checkpoint inside --out-dir is of its run, whose epoch may since have been trained
    # again (a best_model_iou.pth of an epoch that a resume from last_model.pth repeated)
    if not isinstance(recorded, dict) or same_folder(args.resume.parent, args.out_dir):
        return
    history = resumed_history(csv_path, start)  # the rows this run would continue
    if not history:
        return
    rows = [r for r in history if r["epoch"] == start - 1]

    def same(written: float, value: float) -> bool:
        # loosely: a spreadsheet saves the numbers as its narrow columns show them, down to
        # three digits (an lr of 9.2216e-05 as 9.22E-05); another run differs by more
        both_nan = math.isnan(written) and math.isnan(value)
        return both_nan or math.isclose(written, value, rel_tol=1e-2)

    numbers = {k: v for k, v in recorded.items() if isinstance(v, int | float)}
    if rows and all(same(rows[0][k], v) for k, v in numbers.items() if k in rows[0]):
        return  # its epoch start - 1 is the checkpoint's
    # a history without the epoch before the resumed one is another run's too: a shorter one
    differs = (
        f"epoch {start - 1} of its metrics.csv is not the epoch {start - 1}"
        if rows
        else f"its metrics.csv ends at epoch {max(r['epoch'] for r in history)}, before the "
        f"epoch {start - 1}"
    )
    raise UserError(
        f"--out-dir {args.out_dir} holds another run: {differs} of --resume {args.resume}: "
        f"resume into the folder of that run (--out-dir {args.resume.parent}) or a new one"
    )


def check_resumed_data(args, ckpt: dict) -> None:
    """Refuse the --data of the run that ``ckpt`` continues where it is not a folder here (the
    dataset moved, or the run resumes on another machine), naming the checkpoint it came from:
    check_dataset would name --data, which the command line may not hold."""
    recorded = checkpoint_settings(ckpt).get("data")
    if recorded is not None and "data" in args.from_checkpoint and not args.data.is_dir():
        raise UserError(
            f"--resume {args.resume} continues its run on --data {recorded}, which is not a "
            "folder here: pass --data DIR, that dataset's folder on this machine"
        )


def check_resumed_cache_dir(args, ckpt: dict) -> None:
    """Check the --cache-dir of the run that ``ckpt`` continues where it is not a folder here (a
    folder of another machine, or a cache deleted since), saying so, or refuse it naming the
    checkpoint it came from: check_writable would name a --cache-dir the command line may not
    hold. The folder is made by the cache's first file, as every output folder is (under torchrun,
    when the cache starts filling), so that a run stopped before then leaves none behind."""
    recorded = checkpoint_settings(ckpt).get("cache_dir")
    folder = args.cache_dir
    if args.cache_features != "disk" or recorded is None or folder is None or folder.is_dir():
        return
    if "cache_dir" not in args.from_checkpoint:
        return  # the command line's: make_datasets checks it
    said = f"--resume {args.resume} continues its run with --cache-dir {recorded}"
    try:
        check_writable(folder, 0, "--cache-dir", "the feature cache")
    except UserError as err:
        raise UserError(
            f"{said}, which is not a folder here and cannot be made ({err}): pass --cache-dir "
            "DIR, a folder on this machine for the feature cache"
        ) from err
    log.warning(
        "%s, which is not a folder here: it is made there, and the features are computed again "
        "(pass --cache-dir DIR to use another folder)",
        said,
    )


def resumed_history(csv_path: Path, start: int) -> list[dict]:
    """The rows of OUT/metrics.csv before the resumed epoch ``start``; [] where there is none."""
    if not csv_path.is_file():
        return []
    try:
        return [r for r in read_csv(csv_path) if r["epoch"] < start]
    except (KeyError, ValueError, TypeError) as err:  # edited by hand, or by a spreadsheet
        raise UserError(
            f"{csv_path} is not a metrics.csv that train.py wrote (it fails to parse: {err!r}); "
            f"move it away and resume again: the new one then starts at epoch {start}"
        ) from err


def carry_over(source: Path, out_dir: Path, start: int) -> list[dict]:
    """A run resumed into another --out-dir: copy the resumed run's best checkpoints of the
    epochs before ``start`` from ``source`` (the --resume checkpoint's folder), where out_dir has
    none, so that out_dir holds the run's best model. Returns source's metrics.csv rows of those
    epochs ([] where there are none), the history that out_dir's metrics.csv continues."""
    if not source.is_dir() or same_folder(source, out_dir):
        return []
    for name in BEST_CHECKPOINTS:
        if (out_dir / name).exists() or not (source / name).is_file():
            continue
        epoch = peek_checkpoint(source / name).get("epoch")  # none: not one of this run's
        if isinstance(epoch, int) and epoch < start:
            with atomic_path(out_dir / name) as tmp:
                shutil.copyfile(source / name, tmp)
            log.info("copied %s (epoch %d) into %s", source / name, epoch, out_dir)
    return source_history(source, out_dir, start)


def source_history(source: Path, out_dir: Path, start: int) -> list[dict]:
    """The rows before ``start`` of the metrics.csv in ``source``, the --resume checkpoint's
    folder, where that is another folder than ``out_dir``; [] where there are none (or where it
    fails to parse: out_dir's metrics.csv then starts at the resumed epoch)."""
    if not source.is_dir() or same_folder(source, out_dir):
        return []
    try:
        return resumed_history(source / "metrics.csv", start)
    except UserError:
        return []


def restore_best(args, ckpt: dict, start: int) -> None:
    """A run resumed at ``start`` from an earlier epoch than its --out-dir's best checkpoints
    hold: those are models of the course it trains again, which metrics.csv no longer shows, and
    would stay unless a new epoch beat the resumed run's best. Where the resumed checkpoint is
    that best epoch, it is written back in their place; else the stale file is named."""
    recorded = ckpt.get("metrics") or {}
    bests = (("valid_miou", ckpt["best_miou"]), ("valid_loss", ckpt["best_loss"]))
    for name, (key, best) in zip(BEST_CHECKPOINTS, bests, strict=True):
        path = args.out_dir / name
        epoch = peek_checkpoint(path).get("epoch") if path.is_file() else None
        if not isinstance(epoch, int) or epoch < start:
            continue
        if recorded.get(key) == best:
            with atomic_path(path) as tmp:
                shutil.copyfile(args.resume, tmp)
            log.info("%s holds epoch %d again, the best before epoch %d", path, start - 1, start)
        else:
            warn_on_main_process(
                "%s holds epoch %d of the course this run trains again from epoch %d (its "
                "scores are not metrics.csv's): it stays until an epoch beats the best before "
                "epoch %d; move it away to keep it",
                path,
                epoch,
                start,
                start,
            )


def earlier_outputs(out_dir: Path) -> list[Path]:
    """The files in ``out_dir`` that a run writes and a new run does not replace at once:
    metrics.csv, the curves, the checkpoints, --eval-only's eval_metrics.json and confusion
    matrices, then the overlays valid_preds/*.jpg. args.yaml, written first, and the feature
    cache, which any run reuses, are not among them; nor is any other file."""
    names = ["metrics.csv", *(name for *_, name in CURVES), *BEST_CHECKPOINTS, LAST_CHECKPOINT]
    names += ["eval_metrics.json", *CONFUSION_PLOTS.values()]
    files = [out_dir / name for name in names]
    overlays = sorted((out_dir / "valid_preds").glob("*.jpg"))
    return [f for f in files if f.is_file()] + [f for f in overlays if f.is_file()]


def remove_outputs(files: list[Path], out_dir: Path) -> None:
    """Remove the ``files`` of an earlier run (earlier_outputs) or a resumed run's overlays that
    this run does not draw (other_overlays), and valid_preds/ if they leave it empty."""
    for file in files:
        try:
            file.unlink(missing_ok=True)
        except OSError as err:  # Windows: open in another program
            raise UserError(
                f"could not remove {file}, a file of the earlier run in --out-dir {out_dir} "
                f"({err}): close the program that holds it open, or pass another --out-dir"
            ) from err
    folder = out_dir / "valid_preds"
    if files and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def checked_pairs(
    root: Path, classes: ClassConfig, splits=SPLITS, kept_classes: str | None = None
) -> dict[str, list]:
    """The pairs per split of checked_dataset."""
    return checked_dataset(root, classes, splits, kept_classes)[0]


def checked_dataset(
    root: Path, classes: ClassConfig, splits=SPLITS, kept_classes: str | None = None
) -> tuple[dict[str, list], dict[str, np.ndarray]]:
    """check_dataset_pixels's pairs and pixel counts per split (``kept_classes`` as it takes
    it), checked by rank 0 alone, so that its problems and warnings are said once; under
    torchrun every other process then looks for those files.

    On several machines each reads its own copy of --data: one missing there (a copy not made,
    or not finished) would have failed at its first batch as a file changed during training.
    """
    pairs, pixels = on_main_process(
        lambda: check_dataset_pixels(root, classes, splits, kept_classes)
    )
    missing = []
    if not is_main_process():  # rank 0 has just read every one of them
        missing = [str(p) for split in pairs.values() for pair in split for p in pair]
        missing = [p for p in missing if not Path(p).is_file()]
    found = gather_objects((platform.node(), len(missing), missing[:3]))

    def check() -> None:
        for host, count, examples in found:
            if count:
                raise UserError(
                    f"{count} files of the dataset {root} are missing on {host}, such as "
                    f"{', '.join(examples)}: each machine reads --data from its own disk; copy "
                    "the whole dataset to every machine, at the same path"
                )

    check_on_main_process(check)
    return pairs, pixels


def resolve_data(args: argparse.Namespace) -> Path:
    """The dataset folder; Penn-Fudan is downloaded (by rank 0) only when --data was not given."""
    if args.data is not None:
        return args.data
    # The others wait for rank 0's download, and stop with it if it fails (offline): waiting
    # in a plain barrier, they would end in a traceback when rank 0 left.
    check_on_main_process(
        lambda: DEFAULT_DATA_DIR.is_dir() or download_penn_fudan(DEFAULT_DATA_DIR)
    )
    return DEFAULT_DATA_DIR


def check_batch_statistics(
    batch: int,
    train_images: int,
    imgsz,
    more_images: str = "--batch 2 or more (with 2 or more training images)",
) -> None:
    """Refuse training batches that give the head's BatchNorm one value per channel.

    Args:
        train_images: the training images of one process.
        more_images: the fix that gives a batch more images, in the flags of the script run
            (a benchmark that sets train.py's --batch itself names its own).
    """
    smallest = min(batch, train_images)  # a last incomplete batch is dropped when there are more
    w, h = token_grid(imgsz)
    if smallest * w * h < 2:
        raise UserError(
            f"training batches of {smallest} image at --imgsz {imgsz[0]} {imgsz[1]} ({w}x{h} "
            "patch) give the head's BatchNorm one value per channel, which it cannot normalize: "
            f"use {more_images}, or an --imgsz of at least {PATCH_SIZE * 3 // 2} "
            f"{PATCH_SIZE * 3 // 2}"
        )


def build_model(args, classes: ClassConfig, device, ckpt: dict | None, start: int) -> Segmentor:
    """The model to train: the --resume checkpoint's (``ckpt``, resumed at epoch ``start``),
    whatever the command line says of it, or a new head on the chosen backbone. ``args`` is
    updated to the model's backbone, source, layers and fine-tuning, as args.yaml records them.
    """
    if ckpt is None:
        args.backbone_source = args.backbone_source or DEFAULT_SOURCE
        backbone = load_backbone(
            args.backbone, args.backbone_source, args.weights, args.hub_dir, args.layers
        )
        return Segmentor(backbone, classes.num_classes, fine_tune=args.fine_tune).to(device)
    model, _ = load_checkpoint(
        args.resume, device, args.backbone_source, args.hub_dir, flag="--resume", ckpt=ckpt
    )
    args.backbone_source = model.backbone.source
    args.backbone, args.layers = ckpt["backbone"], ckpt["layers"]
    args.fine_tune = model.fine_tune

    def check_frozen() -> None:
        if args.cache_features != "off" and args.fine_tune:
            raise UserError(
                f"{args.resume} fine-tunes its backbone, and --cache-features needs a frozen "
                "one: resume without --cache-features"
            )

    check_on_main_process(check_frozen)  # every process loaded the same model: said once
    log.info(
        "resuming %s from epoch %d (model, classes and size from the checkpoint)",
        args.resume,
        start,
    )
    return model


def checkpoint_space(model: Segmentor, out_dir: Path) -> int:
    """The free disk space a run's checkpoints need in ``out_dir``, with a margin for plots and
    overlays.

    Each save writes a temporary copy before it replaces the old file, so from the second epoch
    the disk holds four: best (two), last and that copy. Checkpoints already in ``out_dir`` (a
    resumed run's, or an earlier run's) are replaced by them, so their bytes count as room,
    though not for the copy, written while they are still there.
    """
    size = checkpoint_bytes(model)
    names = (*BEST_CHECKPOINTS, LAST_CHECKPOINT)
    held = sum((out_dir / n).stat().st_size for n in names if (out_dir / n).is_file())
    return max(size, 4 * size - held) + 50 * 2**20


def distribute(model: Segmentor, device: torch.device, world: int) -> tuple[Segmentor, nn.Module]:
    """The model to evaluate and save, and the one to train: under torchrun, the same model
    with SyncBatchNorm (on GPUs) and its DistributedDataParallel wrapper; else ``model`` twice."""
    if world == 1:
        return model, model
    if device.type == "cuda":  # PyTorch's SyncBatchNorm runs on GPUs only
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # DDP averages the head's gradients; checkpoints are saved from the unwrapped model.
    wrapped = DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
    return model, wrapped


def make_datasets(
    args,
    model: Segmentor,
    pairs: dict,
    classes: ClassConfig,
    imgsz,
    autocast,
    rank: int,
    world: int,
) -> tuple:
    """The train and valid datasets: of images, or with --cache-features of the backbone's
    features, which are computed here for every image (and flip) not cached yet."""
    augment = not args.no_augment
    if args.cache_features == "off":
        train_set = SegmentationDataset(pairs["train"], classes, imgsz, True, args.seed, augment)
        return train_set, SegmentationDataset(pairs["valid"], classes, imgsz, train=False)
    folder = args.cache_dir or args.out_dir / "feature_cache"
    cache = FeatureCache(model, imgsz, args.cache_features, folder, autocast)
    views = ("orig", "flip") if augment else ("orig",)
    if args.cache_features == "disk":

        def check_cache_dir() -> None:
            todo = len(cache.missing(pairs["train"], views) + cache.missing(pairs["valid"]))
            needed, purpose = todo * cache.file_bytes(), "the cache"
            check_writable(folder, 0, "--cache-dir", purpose)
            # (a folder not made yet, made by its first file: on its parent's disk)
            disks = {existing_parent(f).stat().st_dev for f in (folder, args.out_dir)}
            if len(disks) == 1:  # one disk for both
                needed += checkpoint_space(model, args.out_dir)
                purpose = "the cache and the checkpoints of --out-dir"
            check_writable(folder, needed, "--cache-dir", purpose)

        # called by every process, so that rank 0's refusal stops the others too, which would
        # otherwise fill the folder
        check_on_main_process(check_cache_dir)

    def kept() -> str:
        # before any epoch: what a stopped run keeps here is the cache's entries alone. Under
        # torchrun each process counts its own: a sum would wait on a collective that a
        # stopping process may never reach.
        counted = f"the {cache.computed} entries computed so far"
        if world > 1:
            others = "the other process" if world == 2 else f"the {world - 1} other processes"
            this = "this process, rank 0," if rank == 0 else "this process"
            counted = (
                f"the entries computed so far ({cache.computed} by {this} and those of {others})"
            )
        return (
            f"{counted} are kept in {folder} and the next run reuses them"
            if args.cache_features == "disk"
            else "the entries computed so far were in memory and are lost"
        )

    try:
        cache.fill_splits(model, pairs, views, args.batch, rank, world)
    except KeyboardInterrupt:
        warn_on_main_process("stopped while filling the feature cache: %s", kept())
        raise
    except RuntimeError as err:
        # it stopped on an error of its own (a full disk) while this one waited for it
        raise_if_another_process_stopped(err, "while the feature cache filled", f": {kept()}")
        raise
    train_set = CachedFeatureDataset(
        pairs["train"], classes, imgsz, cache, True, args.seed, augment
    )
    return train_set, CachedFeatureDataset(pairs["valid"], classes, imgsz, cache, False)


# Seconds a DataLoader worker may take over one batch: far longer than reading and augmenting
# any batch takes, so that only a worker that hangs (a read from a stalled network disk, a lock
# held when it was forked) reaches it. Without a limit, such a worker leaves the run waiting
# forever, without a word.
WORKER_TIMEOUT = 600


def raise_if_worker_failure(err: RuntimeError, kept: str = "") -> None:
    """Raise a UserError that says what went wrong, then ``kept`` (what the run leaves behind),
    where ``err`` is the DataLoader's report of a worker that hung or died; return for any other
    error, for the caller to raise it again."""
    text = str(err).strip()
    if text.startswith("DataLoader timed out"):
        problem = (
            f"a DataLoader worker gave no batch in {WORKER_TIMEOUT} s: it hangs (reading a file "
            "from a stalled disk?). Rerun with --workers 0 to see where it stops."
        )
    elif text.startswith("DataLoader worker"):
        # PyTorch says "exited unexpectedly" or "is killed by signal: Killed.": a worker's own
        # errors reach the main process as exceptions, so these are crashes and kills
        problem = (
            f"{text.rstrip('. ')} (when memory runs out, Linux's OOM killer ends a worker): lower "
            "--workers or --batch, or rerun with --workers 0 to see an error of its own."
        )
    else:
        return
    raise UserError(f"{problem} {kept}" if kept else problem) from err


def make_loader(dataset, args, device: torch.device, train: bool, rank=0, world=1) -> DataLoader:
    """Training shuffles, evaluation shards without repeats (one process has one shard).

    Training's order is DistributedSampler's, in one process too: a function of (--seed, epoch)
    alone, set by its set_epoch, so a resumed run shuffles as the uninterrupted one did.
    """
    if train:
        sampler = DistributedSampler(dataset, world, rank, shuffle=True, seed=args.seed)
    else:
        sampler = ShardSampler(len(dataset), rank, world)
    # Cached features load in under a millisecond and their masks are read once: worker
    # processes would cost more than they save (and a memory cache would be copied into each).
    # Decided by the dataset, not --cache-features, which --eval-only ignores.
    workers = 0 if isinstance(dataset, CachedFeatureDataset) else args.workers
    if workers:
        # Forked workers (Linux) inherit the garbage of this process, and their first collection
        # runs its destructors there. An unreachable ONNX Runtime session (a test's, or a
        # notebook's before train.main) then waits on, or frees, a thread pool the child lacks:
        # a worker hung or crashed. Collected here, before the workers start.
        gc.collect()
    return DataLoader(
        dataset,
        batch_size=args.batch,
        sampler=sampler,
        # A last batch of one or two images would give the BatchNorm head noisy statistics; but
        # each process must keep at least one batch of its own share.
        drop_last=train and drops_last_batch(len(sampler), args.batch),
        num_workers=workers,
        # Workers start once, not every epoch (seconds each where they are spawned, as on
        # macOS); datasets.PairDataset.set_epoch reaches them through shared memory.
        persistent_workers=workers > 0,
        timeout=WORKER_TIMEOUT if workers else 0,
        # a job's SIGTERM or Ctrl-C sent to all its processes is the main process's to act on
        worker_init_fn=functools.partial(leave_stop_signals_to_main, os.getpid()),
        multiprocessing_context=worker_context() if workers else None,
        pin_memory=device.type == "cuda",
        collate_fn=None if train else collate_eval,
        generator=torch.Generator().manual_seed(args.seed),
    )


def shut_down_workers(*loaders: DataLoader) -> None:
    """End the worker processes of ``loaders`` now. A run stopped by an exception leaves its
    loaders in the traceback, with their persistent workers alive for as long as it is kept (a
    notebook keeps the last one) or until the garbage collector reaches them: seconds per worker
    then (see tests/leftover_workers.py). DataLoader has no public call for it; this is the one
    its iterator's own __del__ makes."""
    for loader in loaders:
        iterator, loader._iterator = loader._iterator, None  # set with persistent workers alone
        if iterator is not None:
            iterator._shutdown_workers()


def drops_last_batch(share: int, batch: int) -> bool:
    """Whether make_loader's training loader over ``share`` images (one process's) drops its
    last incomplete batch: only where that leaves it at least one."""
    return share > batch


def train_batches(share: int, batch: int) -> int:
    """The batches of make_loader's training loader over ``share`` images (one process's)."""
    return share // batch if drops_last_batch(share, batch) else math.ceil(share / batch)


def warn_long_accum(args, share: int, world: int) -> None:
    """Warn where --accum exceeds the training batches of an epoch over ``share`` images (of one
    process): every epoch then makes a single optimizer step, over fewer batches than --accum
    asked for."""
    batches = train_batches(share, args.batch)
    if args.accum <= batches:
        return
    per_process = " per process" if world > 1 else ""
    plural = "es" if batches > 1 else ""
    warn_on_main_process(
        "--accum %d is more than the %d training batch%s of an epoch (%d images%s, --batch %d): "
        "each epoch makes one optimizer step, over %d batch%s. Use --accum %d or less",
        args.accum,
        batches,
        plural,
        share,
        per_process,
        args.batch,
        batches,
        plural,
        batches,
    )


def make_optimization(args, model: Segmentor, device, ckpt: dict | None, start: int):
    """The optimizer, scheduler (None without --scheduler) and fp16 grad scaler of a run, with
    the --resume checkpoint's states (``ckpt``, resumed at epoch ``start``) restored."""
    optimizer = torch.optim.AdamW(
        model.param_groups(args.lr, args.backbone_lr), weight_decay=args.weight_decay
    )
    scheduler = make_scheduler(optimizer, args.scheduler, args.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    if ckpt is not None:
        resume_optimization(optimizer, scheduler, args, ckpt, start)
        if ckpt["scaler"] is not None:
            scaler.load_state_dict(ckpt["scaler"])
    return optimizer, scheduler, scaler


POLY_POWER = 0.9


# the scheduler attribute that holds the epoch the schedule ends at
SCHEDULE_LENGTH = {"cosine": "T_max", "poly": "total_iters"}


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, epochs: int):
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if kind == "poly":
        return torch.optim.lr_scheduler.PolynomialLR(
            optimizer, total_iters=epochs, power=POLY_POWER
        )
    return None


def resume_optimization(optimizer, scheduler, args, ckpt: dict, start: int) -> None:
    """Restore the checkpoint's optimizer and schedule, then apply this command line to them.

    With the interrupted run's flags the restored states continue it exactly. A changed --lr,
    --backbone-lr or --weight-decay applies from the resumed epoch on, and a changed --epochs
    or --scheduler re-plans the schedule to end at the new --epochs: the resumed epoch gets
    the rate that plan gives it (a finished cosine or poly run extended with --epochs would
    otherwise go on at a rate of 0, or climb back to --lr).
    """
    optimizer.load_state_dict(ckpt["optimizer"])
    state = ckpt["scheduler"]
    length = SCHEDULE_LENGTH.get(args.scheduler)
    same_kind = scheduler is not None and state is not None and length in state
    if same_kind:
        scheduler.load_state_dict(state)
    bases = [
        {"head": args.lr, "backbone": args.backbone_lr}[g["name"]] for g in optimizer.param_groups
    ]
    for group in optimizer.param_groups:
        group["weight_decay"] = args.weight_decay
    if scheduler is None:
        exact = all(g["lr"] == b for g, b in zip(optimizer.param_groups, bases, strict=True))
    else:
        exact = (
            same_kind
            and list(scheduler.base_lrs) == bases
            and getattr(scheduler, length) == args.epochs
        )
        scheduler.base_lrs = bases
        setattr(scheduler, length, args.epochs)
        scheduler.last_epoch = start - 1
        for group, base in zip(optimizer.param_groups, bases, strict=True):
            group["initial_lr"] = base
    if not exact:
        factor = schedule_factor(args.scheduler, start, args.epochs)
        for group, base in zip(optimizer.param_groups, bases, strict=True):
            group["lr"] = base * factor
        plan = f", --scheduler {args.scheduler} ending at epoch {args.epochs}" if scheduler else ""
        log.info(
            "learning rate from epoch %d: %g (--lr %g%s)", start, args.lr * factor, args.lr, plan
        )


# PyTorch's warning where a scheduler's first step() comes before any optimizer.step()
NO_STEP_YET = r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`"


def step_schedule(scheduler) -> None:
    """Move ``scheduler`` on to the next epoch's learning rate, after the epoch's training."""
    # The step always follows the epoch's updates here, so the warning can only mean that the
    # epoch made none (every crop fully 255, or fp16's scaler skipping every step): the epoch
    # rates stay as planned either way, and "skipping the first value of the schedule" is wrong.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=NO_STEP_YET, category=UserWarning)
        scheduler.step()


def schedule_factor(kind: str, epoch: int, epochs: int) -> float:
    """The learning rate of (1-based) ``epoch`` relative to --lr, as make_scheduler plans it."""
    done = epoch - 1
    if kind == "cosine":
        return (1 + math.cos(math.pi * done / epochs)) / 2
    if kind == "poly":
        return (1 - min(done, epochs) / epochs) ** POLY_POWER
    return 1.0


def settings(args: argparse.Namespace, classes: ClassConfig, imgsz) -> dict:
    """The resolved run settings as plain values: saved to OUT/args.yaml and every checkpoint."""
    # (parse_args' notes of where values came from, not flags)
    notes = ("from_checkpoint", "from_config")
    resolved = {k: plain_value(v) for k, v in vars(args).items() if k not in notes}
    resolved["imgsz"] = list(imgsz)
    # What a --config file set is written out here, classes included; naming the file too would
    # make args.yaml a config file that names another, which --config refuses.
    resolved["config"] = None
    return {**resolved, **classes.to_dict()}


def kept_message(checkpoint: Path, finished: int, out_dir: Path, ahead: Sequence[str] = ()) -> str:
    """What an early stop leaves behind when ``finished`` is the last epoch saved whole, held by
    ``checkpoint``, and the command that continues the run in its ``out_dir``.

    ``ahead`` names the best checkpoints in ``out_dir`` that already hold the next epoch: the
    stop came while that epoch was saved, before its last_model.pth.
    """
    partial = ""
    if ahead:
        partial = (
            f"{' and '.join(ahead)} in {out_dir} {'holds' if len(ahead) == 1 else 'hold'} epoch "
            f"{finished + 1}, but its {LAST_CHECKPOINT} was not written"
        )
    if finished < 1:
        if partial:
            return f"{partial}: run the same command again to train from epoch 1."
        return "No epoch finished, so this run wrote no checkpoint."
    # --out-dir is not resumed: without it the run would go on in the default folder.
    where = "" if out_dir.resolve() == DEFAULT_OUT_DIR.resolve() else f" --out-dir {out_dir}"
    resume = f"{checkpoint} holds epoch {finished}; continue with --resume {checkpoint}{where}."
    return f"{partial}. {resume}" if partial else resume


def write_report(out_dir: Path, history: list[dict]) -> None:
    """Rewrite metrics.csv and the curves from the whole history.

    A file another program holds open (Windows: metrics.csv open in Excel, a plot in a viewer)
    cannot be replaced: that is a warning, not the end of the run, as the next epoch writes the
    whole history again. Other failures (a full disk) stop the run.
    """
    for name, write in (
        ("metrics.csv", lambda: write_csv(out_dir / "metrics.csv", history)),
        ("the curves", lambda: plot_curves(history, out_dir)),
    ):
        try:
            write()
        except PermissionError as err:
            warn_held_open(name, out_dir, err)


# the share of a validation overlay's height its key may cover: half, as --legend allows where
# it is asked for, hid the top of a small image (96x72: its top quarter), which is left unkeyed
VALID_LEGEND_HEIGHT = 0.25


def write_overlays(out_dir: Path, valid_set, count: int, predictor: Predictor) -> None:
    """Save ground truth | prediction overlays of validation images, as inference draws them
    with --legend: each half keys its own classes, where the two disagree on which are there,
    in at most VALID_LEGEND_HEIGHT of its height.

    An overlay open in a viewer (Windows cannot replace it) is a warning, as in write_report.
    """
    files = overlay_files(out_dir, valid_set.pairs, count)
    for index, file in enumerate(files):
        image_path, mask_path = valid_set.pairs[index]
        image = read_image(image_path)
        truth = read_mask(mask_path, predictor.classes)
        truth = np.where(truth == IGNORE_INDEX, 0, truth)
        if isinstance(valid_set, CachedFeatureDataset):  # no backbone pass: the cache has it
            pred = predictor.predict_features(valid_set[index][0][None], [image.shape[:2]])[0]
        else:
            pred = predictor.predict(image)
        # keyed always, without a flag: a person alone reads them, and a key costs 1 ms
        halves = [
            predictor.overlay(image, m, legend=True, legend_height=VALID_LEGEND_HEIGHT)
            for m in (truth, pred)
        ]
        panel = np.concatenate(halves, 1)
        try:
            with atomic_path(file) as tmp:
                write_image(tmp, Image.fromarray(panel), "JPEG", quality=90)
        except PermissionError as err:  # Windows: open in an image viewer
            warn_held_open(file.name, file.parent, err)


def overlay_files(out_dir: Path, valid_pairs: Sequence, count: int) -> list[Path]:
    """The overlays write_overlays writes: OUT/valid_preds/STEM.jpg of the first ``count``
    (image, mask) ``valid_pairs``."""
    return [out_dir / "valid_preds" / f"{image.stem}.jpg" for image, _ in valid_pairs[:count]]


def other_overlays(out_dir: Path, valid_pairs: Sequence, count: int) -> list[Path]:
    """The overlays in OUT/valid_preds that a run drawing ``count`` of ``valid_pairs`` does not
    write: a resumed run's with a smaller --num-vis (or other --data) would otherwise show
    beside its own the predictions of the model it resumed."""
    drawn = set(overlay_files(out_dir, valid_pairs, count))
    found = sorted((out_dir / "valid_preds").glob("*.jpg"))
    return [f for f in found if f not in drawn and f.is_file()]


def warn_held_open(name: str, folder: Path, err: PermissionError) -> None:
    """Warn that ``name`` in ``folder``, rewritten every epoch, could not be replaced."""
    log.warning(
        "could not update %s in %s (%s): is it open in another program? Each later epoch "
        "writes it whole again; close it before the last one",
        name,
        folder,
        err,
    )


def save_checkpoints(
    out_dir: Path, model: Segmentor, meta: dict, improved: tuple, on_disk: dict[str, int]
) -> None:
    """Save an epoch as best_model_iou.pth and best_model_loss.pth where it ``improved`` (mIoU,
    loss), then as last_model.pth; ``on_disk`` (file name -> epoch) records each file as soon as
    it is written, for the message of a stop that comes in between."""
    for name, better in zip(BEST_CHECKPOINTS, improved, strict=True):
        if better:
            save_checkpoint(out_dir / name, model, **meta)
            on_disk[name] = meta["epoch"]
    # Last, once everything else of this epoch is on disk: a resume from it never skips a best
    # checkpoint that failed to write.
    save_checkpoint(out_dir / LAST_CHECKPOINT, model, **meta)
    on_disk[LAST_CHECKPOINT] = meta["epoch"]


def log_epoch(row: dict, epochs: int, best: bool) -> None:
    """Log one epoch's metrics.csv ``row``, marking a new best mIoU."""
    log.info(
        "epoch %d/%d  train loss %.4f acc %.4f mIoU %.4f | valid loss %.4f acc %.4f "
        "mIoU %.4f%s | %.1f s",
        row["epoch"],
        epochs,
        row["train_loss"],
        row["train_acc"],
        row["train_miou"],
        row["valid_loss"],
        row["valid_acc"],
        row["valid_miou"],
        " (best)" if best else "",
        row["seconds"],
    )


def stopped_error(err: Exception, args, epoch: int, kept: str, device: torch.device) -> UserError:
    """The UserError that explains why training stopped during ``epoch``: it diverged, a data
    file changed, or a file could not be written; ``kept`` says what the run leaves behind."""
    if isinstance(err, TrainingDiverged):
        # fp16's narrow range overflows where bf16's would not; MPS has no bf16 here
        wider = "--amp bf16" if device.type in AMP_DEVICES["bf16"] else "--amp off"
        return UserError(
            f"{err} of epoch {epoch}; training stopped. {kept} Lower --lr (now {args.lr:g})"
            + (f", or use {wider} rather than fp16." if args.amp == "fp16" else ".")
        )
    if isinstance(err, DataError):
        # The dataset was checked before training: a file changed since (edited, replaced or
        # removed while the run went on).
        problem = data_problem(err)
        return UserError(f"{problem}: the file changed during training; fix or restore it. {kept}")
    return UserError(
        f"could not write to {args.out_dir} ({err}). Every file is written whole or not at all: "
        f"{kept}"
    )


def data_problem(err: DataError) -> str:
    """A DataError's own message: from a DataLoader worker it holds the worker's traceback,
    whose last line is the error's."""
    return str(err).strip().splitlines()[-1].removeprefix("datasets.DataError: ")


def run_eval(args, classes: ClassConfig, device, autocast, rank: int = 0, world: int = 1) -> None:
    """--eval-only: score a checkpoint on the valid split and write OUT/eval_metrics.json and
    a confusion matrix plot of each run (CONFUSION_PLOTS).

    The classes are the checkpoint's (``classes``, from --config, differing is a warning). With
    --tta the split is scored twice, without and with test-time augmentation; with --slide once
    more in sliding windows (each window with TTA where --tta is given too).
    """
    path = scored_checkpoint(args)
    tta = tta_setting(args)
    slide = slide_setting(args)
    # a --backbone other than the checkpoint's is refused, as the inference scripts refuse it
    model, ckpt = load_checkpoint(path, device, args.backbone_source, args.hub_dir, args.backbone)
    ignored = ignored_model_flags(args, ckpt)
    if ignored:
        warn_on_main_process(
            "ignored: %s. --eval-only scores the checkpoint's model as it was trained", ignored
        )
    # a --config OUT/args.yaml of a cached run sets them
    cache = [f"--cache-features {args.cache_features}"] if args.cache_features != "off" else []
    cache += [f"--cache-dir {args.cache_dir}"] if args.cache_dir is not None else []
    if cache:
        warn_on_main_process(
            "%s ignored: --eval-only computes the features of each valid image as it scores it",
            " ".join(cache),
        )
    trained = ClassConfig.from_dict(ckpt["classes"], source=str(path))
    if args.config is not None and classes != trained:
        warn_on_main_process(
            "the classes of --config %s are ignored: %s is scored with its own %s",
            args.config,
            path,
            list(trained.names),
        )
    classes = trained
    imgsz = tuple(args.imgsz or ckpt["imgsz"])
    log_input_size(imgsz)
    check_on_main_process(
        lambda: check_size_fits(model.backbone, imgsz, args.batch, device, autocast, tta=tta)
    )
    # decided by rank 0, so that a recorded --data that is gone is said once; a machine that
    # lacks the dataset is then named by checked_pairs
    args.data = on_main_process(lambda: data_to_score(args, ckpt, path))
    kept = f"--eval-only scores {path} with the classes it was trained with"
    pairs = checked_pairs(resolve_data(args), classes, ("valid",), kept)["valid"]
    dataset = SegmentationDataset(pairs, classes, imgsz, train=False)
    loaders = [make_loader(dataset, args, device, False, rank, world)]
    try:
        runs = {"plain": evaluate(model, loaders[0], device, classes.num_classes, autocast)}
        if tta is not None:
            runs["tta"] = evaluate(
                model, loaders[0], device, classes.num_classes, autocast, "valid tta", tta=tta
            )
        if slide is not None:
            short_side = slide.short_side(imgsz)
            # each image at the size its windows cover, as infer_image.py --slide resizes it
            windows = SegmentationDataset(
                pairs, classes, imgsz, train=False, slide_short_side=short_side
            )
            loaders.append(make_loader(windows, args, device, False, rank, world))
            runs["slide"] = evaluate(
                model,
                loaders[-1],
                device,
                classes.num_classes,
                autocast,
                "valid slide",
                tta=tta,
                slide=(imgsz, slide.batch),
            )
    except DataError as err:
        # checked just before: the file changed since (replaced while a long evaluation ran)
        raise UserError(
            f"{data_problem(err)}: the file changed during the evaluation; fix or restore it, "
            "and run again"
        ) from err
    except RuntimeError as err:
        raise_if_worker_failure(err)
        raise_if_another_process_stopped(err, "during the evaluation")
        raise
    finally:
        shut_down_workers(*loaders)
    if rank != 0:
        return

    def by_class(values: list[float]) -> dict:
        return {
            name: None if math.isnan(value) else value
            for name, value in zip(classes.names, values, strict=True)
        }

    def scores(metrics: dict) -> dict:
        return {
            "pixel_accuracy": metrics["acc"],
            "miou": metrics["miou"],
            "per_class_iou": by_class(metrics["iou"]),
            "per_class_precision": by_class(metrics["precision"]),
            "per_class_recall": by_class(metrics["recall"]),
            # rows = ground truth, cols = prediction, pixel counts in class-id order
            "confusion_matrix": metrics["matrix"],
        }

    result = {
        "checkpoint": plain_value(path),  # absolute, as args.yaml records paths
        "imgsz": list(imgsz),
        # the numbers depend on it: --amp autocasts evaluation (see the README's Metrics)
        "amp": args.amp,
        "backbone_source": model.backbone.source,
        "images": len(dataset),
        **scores(runs["plain"]),
    }
    if tta is not None:
        result["tta"] = {"scales": tta[0], "flip": tta[1], **scores(runs["tta"])}
    labels = {"plain": "", "tta": f" with TTA (scales {tta and tta[0]}, flips)"}
    if slide is not None:
        labels["slide"] = (
            f" in {imgsz[0]}x{imgsz[1]} windows, short sides up to {short_side} px"
            + (" (each window with TTA)" if tta else "")
        )
        result["slide"] = {
            "short_side": short_side,
            "window": list(imgsz),
            "tta": None if tta is None else {"scales": tta[0], "flip": tta[1]},
            **scores(runs["slide"]),
        }
    # an earlier run's plot goes first: a stop before the new one is drawn leaves none, rather
    # than one of another model beside this run's numbers
    # (of all three: an earlier --tta run's beside this plain one's would pass for its)
    plots = {name: args.out_dir / file for name, file in CONFUSION_PLOTS.items()}
    remove_outputs(list(plots.values()), args.out_dir)
    write_json(args.out_dir / "eval_metrics.json", result)
    titles = {"plain": "", "tta": " with TTA", "slide": " in sliding windows"}
    titles["slide"] += " with TTA" if tta else ""
    for name, metrics in runs.items():
        plot_confusion(metrics["matrix"], classes.names, plots[name], titles[name])
    print(f"Evaluated {path} on {len(dataset)} valid images at {imgsz[0]}x{imgsz[1]}")
    width = max(map(len, classes.names))
    for name, metrics in runs.items():
        label = labels[name]
        print(f"pixel accuracy {metrics['acc']:.4f}  mIoU {metrics['miou']:.4f}{label}")
        for cls, iou, precision, recall, pixels in zip(
            classes.names,
            *(metrics[key] for key in ("iou", "precision", "recall", "pixels")),
            strict=True,
        ):
            # a class the valid masks lack scores 0 wherever it is predicted: not a class the
            # model misses (many, among ADE20K's 150 classes on a small valid split)
            note = ""
            if math.isnan(iou):
                note = " (neither predicted nor in a valid mask)"
            elif not pixels:
                note = " (predicted, but in no valid mask)"
            values = "  ".join(
                f"{key} {'  -   ' if math.isnan(value) else f'{value:.4f}'}"
                for key, value in (("IoU", iou), ("precision", precision), ("recall", recall))
            )
            print(f"  {cls:<{width}}  {values}{note}")
    written = ", ".join(str(plots[name]) for name in runs)
    print(f"Wrote {args.out_dir / 'eval_metrics.json'} and {written}")


def data_to_score(args: argparse.Namespace, ckpt: dict, path: Path) -> Path | None:
    """--eval-only's --data; without one, the --data the checkpoint was trained on (None where it
    records none: Penn-Fudan). The Penn-Fudan default would score a model of other classes on
    persons, without a word."""
    recorded = (ckpt.get("args") or {}).get("data")
    if args.data is not None or recorded is None:
        return args.data
    data = Path(recorded)
    if not data.is_dir():
        raise UserError(
            f"{path} was trained on --data {recorded}, which is not a folder here: pass --data "
            "DIR, a dataset with the checkpoint's classes"
        )
    log.info(
        "--eval-only: scoring the valid split of %s, the data %s was trained on", recorded, path
    )
    return data


if __name__ == "__main__":
    run_script(lambda: main(*parse_args(get_args_parser())))
