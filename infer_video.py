"""Segment a video (any file OpenCV reads) or a camera, and report honest frame rates.

    python infer_video.py --input clip.mp4
    python infer_video.py --input 0 --show          # camera 0; q, Esc or closing the window stops

Writes <out-dir>/<stem>.mp4 with every frame that decodes overlaid, at the input's size (an odd
width or height one pixel more, its last column or row repeated: OpenCV writes even sizes) and
frame rate (or the nearest one mp4v can store; a camera's file is named after the time it
started). Decoding, the model and encoding run on separate threads, --batch frames at a time.
The input's sound is then added by ffmpeg (find_ffmpeg), where it is found (--no-sound: not).
"""

import os

# MPS reads this once, when torch loads: ops it lacks then run on the CPU instead of failing.
os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")

import argparse
import hashlib
import logging
import math
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import cv2
import numpy as np
from tqdm import tqdm

from config import (
    DEFAULT_OUT_DIR,
    IMAGE_EXTENSIONS,
    check_inference_args,
    inference_flags,
    nonempty,
    parse_one_input,
    runtime_flags,
)
from engine import Predictor, predictor_from_args, speed_line
from utils import (
    QUEUE_BYTES,
    OrderedWriter,
    Terminated,
    UserError,
    array_bytes,
    atomic_path,
    check_utf8,
    check_writable,
    class_pixels,
    existing_parent,
    leftover_files,
    opencv_threads_for,
    pick_device,
    prefetch,
    run_script,
    same_folder,
    shell_quote,
    show,
)
from video_container import has_sound, mp4_edits_hide_frames, mp4_track_samples, retime_mp4

log = logging.getLogger("dinoseg")

# the largest reduced time-base denominator MPEG-4 part 2 stores: a whole rate up to this fits
MP4V_MAX_FPS = 65535
# How long OpenCV's FFmpeg waits for a stream to answer, and for each read, before it fails
# (its own default, 30 s): a stalled stream then ends the run within this, and a Ctrl-C, which
# waits for the read under way, comes through within it too.
STREAM_TIMEOUT_MS = 10_000


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Segment a video or a camera stream with a trained checkpoint.",
        parents=[
            inference_flags(DEFAULT_OUT_DIR / "inference_results_video", items="frames"),
            runtime_flags(),
        ],
    )
    parser.add_argument(
        "--input",
        type=nonempty,
        required=True,
        metavar="SOURCE",
        help="a video file, a camera index such as 0, a camera device such as /dev/video0, or "
        "a stream address such as rtsp://HOST/PATH",
    )
    parser.add_argument(
        "--no-sound",
        action="store_true",
        help="keep the output silent; by default the input's sound is added to it by the ffmpeg "
        "program on the PATH, else imageio-ffmpeg's (OpenCV writes video only)",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """get_args_parser's arguments; several files after --input (videos/*.mp4, which the shell
    expands) are named as such (config.parse_one_input)."""
    return parse_one_input(
        get_args_parser(),
        argv,
        lambda first, extra: (
            f"--input takes one video, and got {len(extra) + 1} files (a glob the shell "
            f"expanded?): run infer_video.py once for each, --input {first} first"
        ),
    )


@dataclass
class VideoSource:
    capture: cv2.VideoCapture
    name: str  # output file stem
    fps: float
    width: int
    height: int
    frames: int | None  # None for cameras and containers that do not say
    camera: bool
    path: Path | None = None  # a file's
    timeout_s: float | None = None  # a stream's, where a read fails after that long without data
    # A file's, as read_batches decodes it: the first and last frames' timestamps (ms), every
    # frame's, and the reads that failed before a later frame decoded (damaged frames, left out)
    first_ms: float | None = None
    last_ms: float | None = None
    times_ms: list[float] = field(default_factory=list)
    skipped: int = 0
    trimmed: bool = False  # a file's, where an edit list hides some of the frames it declares
    sound: bool | None = None  # a file's: whether it has a sound track, None where unknown


def open_video(spec: str) -> VideoSource:
    """Open a video file, a camera (an index, or a device such as /dev/video0) or a stream (an
    address such as rtsp://HOST/PATH, read as a camera), or fail with a message naming it."""
    if spec.lower().startswith("file://"):
        # a file's address (a file manager's "copy address"): the file, not a stream
        spec = url2pathname(urlparse(spec).path)
    spec = os.path.expanduser(spec)  # as config.path_arg: --input=~/clip.mp4 keeps its ~
    path = Path(spec)
    stream = "://" in spec  # rtsp://, http://: an IP camera or a live stream, read as a camera
    camera = spec.isdigit() or stream or path.is_char_device()
    if not camera:
        check_video_file(spec, path)
    # OpenCV's Python binding, given a path that is not UTF-8, ends the whole process with a
    # segmentation fault, no exception to catch
    check_utf8(spec, "--input", "OpenCV", "rename the video, or the folders above it")
    capture, timeout_s = open_capture(spec, stream)
    if not capture.isOpened():
        raise open_failure(spec, path, camera, stream)
    if not camera:
        # A phone's portrait video is stored on its side with a rotation to show it upright,
        # which OpenCV 4.11 no longer applies unless asked (opencv/opencv#26795): its frames
        # were segmented and written on their side. Asked before the size is read, which it turns.
        capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    name = f"camera{spec}" if spec.isdigit() else stream_name(spec) if stream else path.stem
    if camera:  # each recording is new: the next one must not replace it
        name += time.strftime("_%Y%m%d-%H%M%S")
    return VideoSource(
        capture=capture,
        name=name,
        fps=frame_rate(capture, spec),
        width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
        height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        frames=count if count > 0 and not camera else None,
        camera=camera,
        path=None if camera else path,
        timeout_s=timeout_s,
        trimmed=not camera and mp4_edits_hide_frames(path),
        sound=None if camera else has_sound(path),
    )


def check_video_file(spec: str, path: Path) -> None:
    """Refuse ``path`` unless it is a file this user may read that is not an image."""
    if not path.is_file():
        problem = "is a folder; give a video file" if path.is_dir() else "does not exist"
        raise UserError(f"--input {spec} {problem}")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        # OpenCV opens a photo as a video of one frame at 25 FPS, which nobody asked for
        raise UserError(f"--input {spec} is an image, not a video: segment it with infer_image.py")
    try:  # OpenCV would call a file it may not read "not a video", as it calls a damaged one
        with path.open("rb"):
            pass
    except OSError as err:
        raise UserError(
            f"--input {spec} cannot be read ({err.strerror}): check its permissions"
        ) from err


def open_capture(spec: str, stream: bool) -> tuple[cv2.VideoCapture, float | None]:
    """OpenCV's capture of ``spec``, open or not, and the seconds after which its reads fail
    without data (a stream's, where FFmpeg reads it; else None)."""
    if stream and cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG):
        # The FFmpeg backend alone is asked: another would refuse to open with these settings
        timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS]
        timeouts += [cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS]
        capture = cv2.VideoCapture(spec, cv2.CAP_FFMPEG, timeouts)
        return capture, STREAM_TIMEOUT_MS / 1000
    return cv2.VideoCapture(int(spec) if spec.isdigit() else spec), None


def open_failure(spec: str, path: Path, camera: bool, stream: bool) -> UserError:
    """The error for a ``spec`` OpenCV did not open, naming the likely cause."""
    if stream:
        return UserError(f"cannot open the stream {spec}: is its address right, and is it on?")
    if not camera and mp4_track_samples(path) == 0:
        # OpenCV opens no MP4 without a frame, which it would call unreadable or corrupt
        return UserError(
            f"--input {spec} holds no frames (an MP4 or MOV whose recording stopped before "
            "its first frame): give a video with frames"
        )
    what = f"camera {spec}" if camera else f"{spec}: not a video OpenCV can read, or corrupt"
    return UserError(f"cannot open {what}{non_ascii_note(spec, RENAME_INPUT)}")


def frame_rate(capture: cv2.VideoCapture, spec: str) -> float:
    """The frame rate ``capture`` states, or 30 (with a warning) where it states none a video
    can have."""
    fps = capture.get(cv2.CAP_PROP_FPS)
    if not fps or not math.isfinite(fps) or fps <= 0:
        log.warning("%s does not state its frame rate; writing at 30 FPS", spec)
        return 30.0
    if fps > MP4V_MAX_FPS:
        # Some IP cameras state their stream's clock (90000, 180000) as the rate: no video's,
        # and past what mp4v stores, whose writer would not open
        log.warning(
            "%s states %.6g FPS, no frame rate a video can have; writing at 30 FPS", spec, fps
        )
        return 30.0
    return fps


def stream_name(address: str) -> str:
    """A stream's output stem: ``stream_``, its host and a short hash of its whole address.

    The hash keeps apart the recordings of several cameras started in the same second, whose
    names would otherwise clash, the last to end replacing the others' videos (an NVR's
    channels share a host). No credentials or tokens of the address appear in the name.
    """
    host = urlparse(address).hostname or ""
    host = "".join(c if c.isalnum() or c in ".-" else "-" for c in host)[:64]
    digest = hashlib.sha256(address.encode()).hexdigest()[:6]
    return f"stream_{host}-{digest}" if host else f"stream_{digest}"


def non_ascii_note(path, remedy: str) -> str:
    """Why OpenCV may have failed at ``path``, with ``remedy``, or "" where that cannot be why.

    On Windows OpenCV does not support file paths with characters outside ASCII (a name in
    Chinese, an accent in the user's name; opencv/opencv#4242): it fails to open such a file,
    which its message would blame on the file or the encoder.
    """
    if sys.platform != "win32" or str(path).isascii():
        return ""
    return f" (OpenCV on Windows cannot use a path outside ASCII, as {path} is: {remedy})"


# what to do where OpenCV cannot use the input's or the output's path
RENAME_INPUT = "rename the video, or move it to a folder whose path is plain ASCII"
RENAME_OUTPUT = "choose an --out-dir whose path is plain ASCII, and rename a video named otherwise"


def mp4v_rate(fps: float) -> float:
    """The frame rate to write: ``fps`` where mp4v can store it, else the nearest it can store.

    OpenCV hands the encoder ``fps`` as a fraction with a power-of-ten denominator, within 0.001
    of it (66.667 -> 66667/1000), and MPEG-4 part 2 refuses a time base whose denominator, once
    the fraction is reduced, exceeds 65535: the writer would not open at all.
    """
    for rate in (fps, round(fps, 2), round(fps, 1)):
        ticks, base = round(rate), 1
        while abs(ticks / base - rate) > 0.001:
            base *= 10
            ticks = round(rate * base)
        if ticks // math.gcd(ticks, base) <= MP4V_MAX_FPS:
            return rate
    return float(round(fps))  # a whole rate up to MP4V_MAX_FPS (open_video's bound) fits


# Reads in a row that a video file may fail before it counts as ended: OpenCV fails a read at
# a damaged frame, and decodes the frames after it again.
FAILED_READS_AT_END = 25


def read_batches(source: VideoSource, predictor: Predictor, batch: int):
    """Yield (RGB frames, resized batch) groups of up to ``batch`` frames.

    A file's undecodable frames are left out (check_frame_count then names the shortfall), and
    its first and last frames' timestamps kept in ``source`` (for check_timing); a camera ends
    at its first failed read.
    """
    frames, failed = [], 0
    while True:
        ok, bgr = source.capture.read()
        if ok:
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            if not source.camera:
                source.skipped += failed
                source.last_ms = source.capture.get(cv2.CAP_PROP_POS_MSEC)
                source.times_ms.append(source.last_ms)
                if source.first_ms is None:
                    source.first_ms = source.last_ms
        failed = 0 if ok else failed + 1
        end = failed > (0 if source.camera else FAILED_READS_AT_END)
        if frames and (end or len(frames) == batch):
            yield frames, predictor.resize_batch(frames)
            frames = []
        if end:
            return


def end_cause(source: VideoSource) -> str:
    """Why a camera or stream's read failed, as far as can be told: it ends the recording."""
    if source.timeout_s is not None:
        return f"it ended, or sent none for {source.timeout_s:g} s"
    return "unplugged, switched off, or it ended"


def check_frame_count(spec: str, declared: int | None, decoded: int) -> None:
    """Warn when a file decodes to another number of frames than its container declares.

    A truncated or damaged file still gives a valid video of the frames that decode, so the run
    succeeds; the warning keeps the shorter output from passing for the whole clip.
    """
    if declared is None or decoded == declared:
        return
    if decoded < declared:
        log.warning(
            "%s declares %d frames but only %d could be decoded; the output holds those %d",
            spec,
            declared,
            decoded,
            decoded,
        )
    else:
        log.warning(
            "%s declares %d frames but %d were decoded; the output holds all %d",
            spec,
            declared,
            decoded,
            decoded,
        )


# How far a file's sound may outlast its frames, and so the duration that OpenCV's estimate of
# the frame count is taken from: AAC's encoder delay and the padding of its last block are 21
# to 64 ms at 48 kHz (a screen recording's 1 s of frames at 60 FPS, with AAC: 1.021 s, 61).
SOUND_TAIL_MS = 100


def count_was_estimated(source: VideoSource) -> bool:
    """Whether a file's frame count was OpenCV's estimate, and every frame decoded.

    A container that stores no frame count (Matroska, WebM) gets one from OpenCV: its duration
    times its stated frame rate, which a variable frame rate makes wrong (118 for the 60 frames
    of a screen recording that idled half the time). The frames then still reach the end of
    that duration, with no failed read on the way, or up to SOUND_TAIL_MS before it where the
    file's sound outlasts them; a truncated file's stop short of it.
    """
    if source.frames is None or source.skipped or source.last_ms is None:
        return False
    interval = 1000 / source.fps
    end = source.last_ms - source.first_ms + interval  # when the last frame ends
    short = source.frames * interval - end  # how far the declared frames run past the last
    # half a frame: OpenCV rounds duration x rate; 2 ms: containers keep milliseconds
    slack = interval / 2 + 2
    if abs(short) <= slack:
        return True
    if not 0 < short <= slack + SOUND_TAIL_MS:
        return False
    # an MP4's count is the frames its index holds, not an estimate, whatever its sound
    return mp4_track_samples(source.path) is None and has_sound_track(source)


def has_sound_track(source: VideoSource) -> bool:
    """Whether a file has a sound track: by its header where has_sound reads it, else as ffmpeg
    lists its tracks (a fragmented MP4, MPEG-TS); False where neither can tell."""
    if source.sound is None:
        ffmpeg = find_ffmpeg()
        if ffmpeg and sound_codecs(ffmpeg, source.path):
            source.sound = True  # kept: the progress bar's end and the warning both ask
    return bool(source.sound)


def count_is_not_the_frames(source: VideoSource, decoded: int) -> bool:
    """Whether a file's declared frame count is known not to be its frames, every frame having
    decoded: OpenCV's estimate (count_was_estimated), or a count of ``decoded`` frames and
    more, that an edit list hides (mp4_edits_hide_frames)."""
    if count_was_estimated(source):
        return True
    return source.trimmed and not source.skipped and decoded < (source.frames or 0)


# How far the output's length may stray from the input's before check_timing warns: a phone's
# variable frame rate, which OpenCV states as the average, stays well inside it.
TIMING_TOLERANCE = 0.1


def check_timing(
    spec: str, source: VideoSource, decoded: int, rate: float, video: Path
) -> float | None:
    """Give the output at ``video`` the times of a file's frames where they stray from the one
    rate it holds them at, by more than half a frame (a variable frame rate, or damaged frames
    left out); returns the rate the output plays at on average, or None (with a warning) where
    it could not be retimed and plays faster or slower than the input, or its frames after a
    gap come early (the input's sound would not keep pace with it).

    The output holds every frame at one rate, the one the input states. OpenCV states a
    variable frame rate as the average where the container keeps it (MP4 and MOV: phones), so
    the length is kept, but not each frame's moment; Matroska and WebM (screen and browser
    recordings) give the nominal rate, at which the output played twice as fast as the input,
    or faster. The output's sound, if added, keeps pace with its frames only where they keep
    their times.
    """
    if source.last_ms is None or decoded < 2:
        return rate
    times = (np.asarray(source.times_ms[:decoded]) - source.first_ms) / 1000  # (N,) s
    if np.any(np.diff(times) <= 0):
        return rate  # no timestamps to go by
    # the last frame lasts as long as the one before it: at a variable rate, closer than the
    # average (a phone's 4 s clip, slowed down at its end, keeps its 4 s)
    span = 2 * times[-1] - times[-2]
    length = decoded / rate
    off = abs(length / span - 1) > TIMING_TOLERANCE  # the output's length, not only its pace
    drift = np.abs(times - np.arange(decoded) / rate).max()  # (s) how far a frame strays
    if drift <= 0.5 / rate:
        return rate
    retimed = retime_mp4(video, np.append(times, span))
    if source.skipped:
        # Damaged frames left out (check_frame_count names them): retimed, the frame before
        # each gap is shown through it, and the frames after it (and the sound) keep their times
        return decoded / span if retimed else None
    if retimed:
        (log.warning if off else log.info)(
            "%s has a variable frame rate: it states %.6g FPS, but its %d frames span %.2f s, "
            "up to %.2f s from where that rate shows them; the output keeps each frame's time "
            "(%.6g FPS on average)",
            spec,
            rate,
            decoded,
            span,
            drift,
            decoded / span,
        )
        return decoded / span
    if not off:
        return rate
    log.warning(
        "%s has a variable frame rate: its %d frames span %.2f s, but the output holds them at "
        "a constant %.6g FPS, in %.2f s, so it plays %.1fx %s than the input",
        spec,
        decoded,
        span,
        rate,
        length,
        max(span / length, length / span),
        "faster" if length < span else "slower",
    )
    return None


NO_ROOM = " (is the disk full?); free some space or choose another --out-dir"
# ends the temporary name the video is written under: VideoWriter picks the container from it
PARTIAL_SUFFIX = ".partial.mp4"


def stored_frames(path: Path) -> int | None:
    """The frames a finished video file holds by its header: 0 if OpenCV cannot open it, None
    if it cannot tell."""
    capture = cv2.VideoCapture(str(path))
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    finally:
        capture.release()
    return None if count < 0 else count


def open_writer(source: VideoSource, tmp: Path, out_path: Path, spec: str) -> tuple:
    """An mp4v cv2.VideoWriter at ``tmp`` for the frames of ``source``, with the frame rate and
    (width, height) it stores, each said where it differs from the input's."""
    rate = mp4v_rate(source.fps)
    if rate != source.fps:
        log.warning(
            "mp4v cannot store %s's %.6g FPS exactly; %s runs at %.6g FPS",
            spec,
            source.fps,
            out_path,
            rate,
        )
    # OpenCV's FFmpeg writer stores even sizes only, of every codec, dropping an odd last
    # column or row without a word: the frames are padded to even sides here instead (by
    # fit_frame), so that no pixel of the overlay is lost, and the warning below says so.
    width, height = source.width + source.width % 2, source.height + source.height % 2
    padded = (width, height) != (source.width, source.height)
    video = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), rate, (width, height))
    if not video.isOpened():
        raise UserError(
            f"cannot write {out_path}: OpenCV's mp4v encoder refuses {width}x{height}"
            + (
                f" (the {source.width}x{source.height} input padded to even sides)"
                if padded
                else ""
            )
            + f" at {rate:.6g} FPS (or this OpenCV has none)"
            + non_ascii_note(out_path, RENAME_OUTPUT)
        )
    if padded:
        repeated = " and ".join(
            side for side, odd in (("column", source.width % 2), ("row", source.height % 2)) if odd
        )
        log.warning(
            "mp4v (through OpenCV) stores even sizes only: %s is %dx%d, the %dx%d input with "
            "its last %s repeated",
            out_path,
            width,
            height,
            source.width,
            source.height,
            repeated,
        )
    return video, rate, (width, height)


def fit_frame(bgr: np.ndarray, width: int, height: int) -> np.ndarray:
    """An (H, W, 3) frame at (``height``, ``width``): cut to it, or padded to it by repeating
    its last row and column (the even size open_writer stores)."""
    bgr = bgr[:height, :width]
    pad_h, pad_w = height - bgr.shape[0], width - bgr.shape[1]
    if pad_h or pad_w:
        bgr = cv2.copyMakeBorder(bgr, 0, pad_h, 0, pad_w, cv2.BORDER_REPLICATE)
    return bgr


def segment_video(source: VideoSource, predictor: Predictor, out_path: Path, args) -> dict:
    """Run the pipeline: decode thread -> model (this thread) -> encode thread.

    The video is written to a temporary name and renamed at the end, so a failed or
    interrupted run leaves no partial file. A camera ends with Ctrl-C, SIGTERM, (with --show)
    q/Esc or closing the window, or a failed read (see end_cause), keeping what it recorded;
    q/Esc and closing the window also end a file early.

    Returns:
        {"frames", "size", "rate", "seconds", "model_fps", "fps", "in_time"}: counts, and the
        output video's (width, height) and frame rate ``rate``, then the measured frame rates,
        and whether the output keeps the input's pace (warn_of_shortfall).
    """
    done = 0  # frames encoded: counted by the encoder, as a Ctrl-C may land mid-submit
    with atomic_path(out_path, suffix=PARTIAL_SUFFIX) as tmp:
        try:
            video, rate, (width, height) = open_writer(source, tmp, out_path, args.input)
        except BaseException:
            source.capture.release()  # a camera stays busy until it is released
            raise

        def encode(frames, masks, legends) -> None:
            nonlocal done
            for frame, mask, legend in zip(frames, masks, legends, strict=True):
                overlay = predictor.overlay(frame, mask, args.alpha, legend)
                # OpenCV only warns when a frame cannot be written (a full disk): 5.x returns
                # False, 4.x nothing, which the count of frames stored catches at the end
                bgr = fit_frame(cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR), width, height)
                if video.write(bgr) is False:
                    raise UserError(f"cannot write frame {done + 1} to {out_path}{NO_ROOM}")
                done += 1

        start = time.perf_counter()
        try:
            stopped = run_pipeline(source, predictor, encode, args)
        finally:
            video.release()
            source.capture.release()
        seconds = time.perf_counter() - start
        check_written(tmp, out_path, done, source, stopped, args.input)
        played = warn_of_shortfall(source, args.input, out_path, done, rate, stopped, tmp)
    return {
        "frames": done,
        "size": (width, height),
        "rate": played or rate,
        "seconds": seconds,
        "model_fps": predictor.model_fps(),
        "fps": done / seconds,
        "in_time": played is not None,
    }


def run_pipeline(source: VideoSource, predictor: Predictor, encode, args) -> str | None:
    """Decode ``source`` on a thread, segment its frames here and hand each batch to
    ``encode(frames, masks, legends)`` on another (``legends``: each frame's --legend classes,
    or False), with a progress bar, until the input ends or the user stops it; both threads
    have finished on return.

    Returns:
        What the user stopped it with ("Ctrl-C", "SIGTERM", "q, Esc or closing the window"),
        or None where the input ended by itself. A Ctrl-C or SIGTERM ends a file's run with
        KeyboardInterrupt: only a camera keeps what it recorded.
    """
    writer = OrderedWriter(max_bytes=QUEUE_BYTES)
    bar = tqdm(total=source.frames, unit="frame", desc=source.name, dynamic_ncols=True)
    batches = prefetch(
        read_batches(source, predictor, args.batch),
        max_bytes=QUEUE_BYTES,
        nbytes=lambda item: array_bytes(*item),
    )
    stopped = None  # why the user ended the stream early
    ended = False  # whether the input ran to its end
    seen = np.zeros(256, np.int64)  # each class's pixels in the frames so far, for --legend
    try:
        for frames, resized in batches:
            masks = predictor.predict_resized(resized, [f.shape[:2] for f in frames])
            legends = classes_so_far(masks, seen) if args.legend else [False] * len(masks)
            writer.submit(encode, frames, masks, legends, nbytes=array_bytes(frames, masks))
            bar.update(len(frames))
            if args.show:
                overlay = predictor.overlay(frames[-1], masks[-1], args.alpha, legends[-1])
                if not show(source.name, overlay, 1):
                    stopped = "q, Esc or closing the window"
                    break
        else:
            ended = True
    except KeyboardInterrupt as interrupt:
        if not source.camera:
            raise
        stopped = "SIGTERM" if isinstance(interrupt, Terminated) else "Ctrl-C"
    finally:
        batches.close()  # joins the decoding thread before the capture is released
        if ended and bar.n != bar.total and count_is_not_the_frames(source, bar.n):
            bar.total = bar.n  # the bar ends full, not at the estimate's 51%
            bar.refresh()
        bar.close()
        writer.finish()
    return stopped


def classes_so_far(masks: list[np.ndarray], seen: np.ndarray) -> list[np.ndarray]:
    """For each (H, W) uint8 mask of ``masks`` in turn, the (256,) pixels of each class in it
    and in every frame before it: ``seen``, those of the earlier batches, gains this batch's.

    A video's key lists the classes seen so far, not those of its frame: a key of each frame's
    flickers as classes come and go, and one of every class shows a 150-class model's first few
    by id, whatever is in view. Where more classes were seen than the key has rows, those of
    the most pixels so far are keyed, a ranking that a frame or two can rarely change.
    """
    legends = []
    for mask in masks:
        seen += class_pixels(mask)
        legends.append(seen.copy())
    return legends


def check_written(
    tmp: Path, out_path: Path, done: int, source: VideoSource, stopped: str | None, spec: str
) -> None:
    """Fail where no frame was encoded, or the video at ``tmp`` holds fewer than ``done``."""
    if done == 0 and stopped in ("Ctrl-C", "SIGTERM"):
        raise KeyboardInterrupt  # nothing to keep: stop as any interrupted run does
    if done == 0 and source.camera:
        raise UserError(f"--input {spec} sent no frame ({end_cause(source)})")
    if done == 0:
        raise UserError(f"--input {spec} has no frames OpenCV can decode")
    stored = stored_frames(tmp)
    if stored is not None and stored < done:
        raise UserError(f"cannot write {out_path}: it holds {stored} of {done} frames{NO_ROOM}")


def warn_of_shortfall(
    source: VideoSource,
    spec: str,
    out_path: Path,
    done: int,
    rate: float,
    stopped: str | None,
    video: Path,
) -> float | None:
    """Warn where the output may not be the whole input, or not at its pace: stopped by the
    user, a camera that stopped sending, a file whose frames or timing differ from its own.
    Returns the rate the output at ``video`` plays at, None where it plays at another pace
    than the input (check_timing, which may retime it)."""
    if stopped is not None:
        of = f" of {source.frames}" if source.frames else ""
        log.warning("stopped by %s: %s holds the first %d%s frames", stopped, out_path, done, of)
    elif source.camera:
        # a recording that ends by itself, not by the user: it may have been cut short
        log.warning(
            "%s sent no more frames (%s): %s holds the %d frames recorded",
            spec,
            end_cause(source),
            out_path,
            done,
        )
    else:
        if not count_is_not_the_frames(source, done):
            check_frame_count(spec, source.frames, done)
        return check_timing(spec, source, done, rate, video)
    return rate


def sound_command(
    video: Path, source: Path, dest: Path, seconds: float, codec: str = "aac", ffmpeg="ffmpeg"
) -> list[str]:
    """The ``ffmpeg`` command that writes ``dest``: the frames of ``video``, as they are, with
    the sound of ``source`` (AAC by default, which MP4 holds whatever the input's sound was;
    "copy" keeps it as it is), cut to the frames' ``seconds`` (a run stopped early holds the
    first frames only)."""
    # Not -shortest: a phone's sound that ends a few milliseconds before its frames would cut
    # the last frames off; rounded up, the cut keeps every frame
    length = f"{math.ceil(seconds * 1000) / 1000:.3f}"
    return [ffmpeg, "-i", str(video), "-i", str(source), "-map", "0:v", "-map", "1:a",
            "-c:v", "copy", "-c:a", codec, "-t", length, str(dest)]  # fmt: skip


# The sound codecs an MP4 holds that players (browsers, QuickTime, phones, TVs) play as they are.
# Others are encoded to AAC: FFmpeg 6 and later copy a MOV or AVI camera file's PCM into an MP4
# ('ipcm') without an error, which few players play; older ones refuse to.
MP4_SOUND_CODECS = frozenset({"aac", "mp3", "ac3", "eac3"})


def find_ffmpeg() -> str | None:
    """The ffmpeg program: the one on the PATH, else the one the imageio-ffmpeg package ships
    (requirements.txt); None where neither is there."""
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:  # imported here: without it, the PATH's ffmpeg or none
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):  # RuntimeError: its binary is missing or does not run
        return None


def sound_codecs(ffmpeg: str, path: Path) -> list[str]:
    """The codecs of the sound tracks of the file at ``path``, as ``ffmpeg -i`` names them
    ("aac", "pcm_s16le", ...); none where it has none, or ffmpeg does not list them."""
    try:  # without an output, ffmpeg lists the input's tracks and exits with an error
        done = subprocess.run(
            [ffmpeg, "-nostdin", "-hide_banner", "-i", str(path)],
            capture_output=True,
            text=True,
            errors="replace",
        )
    except OSError:  # add_sound's run says so
        return []
    # "  Stream #0:1[0x2](und): Audio: pcm_s16le (sowt / 0x74776F73), 48000 Hz, stereo, ..."
    return re.findall(r"^\s*Stream #\S+ Audio: (\w+)", done.stderr, re.MULTILINE)


class SoundLeftOut(Exception):
    """add_sound's reason to keep the silent video."""


def add_sound(ffmpeg: str, source: VideoSource, out_path: Path, frames: int, rate: float) -> bool:
    """Replace the silent video at ``out_path`` (``frames`` frames at ``rate``) by one with the
    input's sound, muxed by ``ffmpeg`` (the frames copied as they are, the sound too where its
    codecs are MP4_SOUND_CODECS, else encoded to AAC). Returns whether it did: where ffmpeg
    fails, or the result lacks frames, the silent video is kept, with a warning saying why;
    where the input turns out to have no sound, ``source.sound`` becomes False."""
    seconds = frames / rate
    found = sound_codecs(ffmpeg, source.path)
    # copied where players take it (encoded all the same where the copy fails), else encoded;
    # encoded too where ffmpeg names no codec: AAC plays whatever the sound was
    copy = bool(found) and all(codec in MP4_SOUND_CODECS for codec in found)
    try:
        with atomic_path(out_path, suffix=PARTIAL_SUFFIX) as tmp:
            for codec in ("copy", "aac") if copy else ("aac",):
                command = sound_command(out_path, source.path, tmp, seconds, codec, ffmpeg)
                # -y: mkstemp made tmp; 1:a? an input without sound (a container whose tracks
                # has_sound does not read) gives the silent video, not a failure
                command[1:1] = ["-nostdin", "-y", "-loglevel", "error"]
                command[command.index("1:a")] = "1:a?"
                try:
                    done = subprocess.run(command, capture_output=True, text=True, errors="replace")
                except OSError as err:
                    raise SoundLeftOut(f"ffmpeg did not start ({err})") from err
                if done.returncode == 0:
                    break
            else:  # the last lines say why; the rest repeat the options
                lines = [line for line in done.stderr.splitlines() if line.strip()]
                raise SoundLeftOut(f"ffmpeg failed: {' / '.join(lines[-2:]) or done.returncode}")
            sound, written = mp4_track_samples(tmp, b"soun"), mp4_track_samples(tmp)
            if sound == 0:
                source.sound = False
                raise SoundLeftOut("")  # the silent video is the whole output: nothing to say
            if written != frames:
                raise SoundLeftOut(f"ffmpeg's video holds {written} of the {frames} frames")
    except SoundLeftOut as why:
        if str(why):
            log.warning("%s keeps no sound: %s", out_path, why)
        return False
    return True


def output_sound(
    source: VideoSource, out_path: Path, stats: dict, no_sound: bool
) -> tuple[str, str | None]:
    """Add the input's sound to the output where ffmpeg is found (find_ffmpeg, add_sound),
    and return what the closing line says of the output's sound, and the line after it, if any
    (sound_note). ``stats``: segment_video's."""
    if no_sound:
        return "no sound (--no-sound)", None
    frames, rate = stats["frames"], stats["rate"]
    # none where the input has no sound, or where it would drift from the frames
    wanted = source.path is not None and source.sound is not False and stats["in_time"]
    ffmpeg = find_ffmpeg() if wanted else None
    if ffmpeg and add_sound(ffmpeg, source, out_path, frames, rate):
        return "with the input's sound (added by ffmpeg)", None
    return sound_note(source, out_path, stats["in_time"], frames / rate)


def sound_note(
    source: VideoSource, out_path: Path, in_time: bool, seconds: float
) -> tuple[str, str | None]:
    """What the closing line says of the output's sound (it has none: OpenCV writes video only),
    and the line after it, if any: the ffmpeg command that adds the input's, or why not."""
    if source.path is None:  # a camera: OpenCV reads no sound from it either
        return "no sound (OpenCV writes video only)", None
    if source.sound is False:
        return "no sound (nor has the input)", None
    if not in_time:
        return (
            "no sound (OpenCV writes video only)",
            "the input's sound was left out: the output plays at another pace (see the warning "
            "above), which it would not keep",
        )
    dest = out_path.with_name(f"{out_path.stem}_sound.mp4")
    parts = sound_command(out_path, source.path, dest, seconds)
    command = " ".join(shell_quote(part) for part in parts)
    lead = "to add the input's sound" if source.sound else "if the input has sound, to add it"
    return "no sound (OpenCV writes video only)", f"{lead}: {command}"


def output_path(source: VideoSource, spec: str, out_dir: Path) -> Path:
    """<out_dir>/<source.name>.mp4, once it is sure that the output can be written there and
    would replace neither the input nor another video beside it."""
    # The video's size is unknown until it is encoded: this asks only for room to start.
    check_utf8(out_dir, "--out-dir", "OpenCV", "choose another --out-dir")
    check_writable(out_dir, needed_bytes=2**20)
    out_path = out_dir / f"{source.name}.mp4"
    # A name without an extension may fill NAME_MAX (POSIX, in bytes) before ".mp4" is added
    # (asked of the folder it will be made in, where check_writable left it to the output)
    base = existing_parent(out_dir)
    limit = os.pathconf(base, "PC_NAME_MAX") if hasattr(os, "pathconf") else None
    if limit and len(out_path.name.encode()) > limit:
        raise UserError(
            f"--input {spec}: its output, {out_path.name}, would have a name longer than the "
            f"{limit} bytes {out_dir} allows; rename the input"
        )
    if out_path.is_dir():
        raise UserError(
            f"{out_path} is a folder, in the output's place: move it or choose another --out-dir"
        )
    # A run killed outright (SIGKILL, the out-of-memory killer, a crash) removes nothing: its
    # hidden partial video, which no player opens, would take up the disk unsaid. Kept, as a
    # run of the same input may still be writing it.
    for left in leftover_files(out_path, PARTIAL_SUFFIX):
        try:
            size = left.stat().st_size
        except OSError:  # the run writing it ended meanwhile
            continue
        log.warning(
            "%s (%.1f MB) is a partial video of %s, left by a run killed outright or still "
            "being written by another: delete it unless a run is writing it",
            left,
            size / 2**20,
            out_path,
        )
    if source.path is not None and out_path.exists():
        if os.path.samefile(out_path, source.path):
            raise UserError(
                f"--input {spec} is the file the output would replace; choose another --out-dir"
            )
        if same_folder(out_path.parent, source.path.parent):
            # clip.mov's output, clip.mp4, beside it: most likely the user's own video of that
            # name (or an earlier result), which the output would replace without a word
            raise UserError(
                f"{out_path}, the output's name, is taken beside --input {spec}: it may be "
                "another video of yours, which the output would replace; move it away (delete "
                "it if it is an earlier result) or choose another --out-dir"
            )
    return out_path


def main(args: argparse.Namespace) -> None:
    check_inference_args(args)
    device = pick_device(args.device)
    source = open_video(args.input)
    try:
        # Before the model loads, so a bad --out-dir costs nothing
        out_path = output_path(source, args.input, args.out_dir)
        predictor = predictor_from_args(args, device)
    except BaseException:
        source.capture.release()  # a camera stays busy until it is released
        raise
    with opencv_threads_for(predictor.work_device()):
        try:
            stats = segment_video(source, predictor, out_path, args)
        except PermissionError as err:
            if not out_path.exists():
                raise
            # Windows refuses to replace a file another program holds open: the last run's
            # video, playing in a player while this run wrote the new one
            raise UserError(
                f"cannot replace {out_path} ({err.strerror}): is it open in another program, "
                "such as a video player? Close it and run again, or choose another --out-dir"
            ) from err
    sound, hint = output_sound(source, out_path, stats, args.no_sound)
    print(
        f"Wrote {out_path}: {stats['frames']} frame{'s' * (stats['frames'] != 1)}, "
        f"{stats['size'][0]}x{stats['size'][1]}, {stats['rate']:.3f} FPS, {sound}"
    )
    if hint:
        print(hint)
    print(speed_line(predictor, args, "frame", stats["model_fps"]))
    print(f"end to end: {stats['fps']:.2f} FPS (decoding, model, drawing, encoding)")


if __name__ == "__main__":
    run_script(lambda: main(parse_args()))
