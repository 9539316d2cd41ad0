"""What a video file's container says of its tracks, read from its header without decoding a
frame: MP4 and MOV (ISO media boxes: phones, cameras, OpenCV's own output), AVI and Matroska or
WebM. infer_video.py asks it whether a file has sound, whether an edit list hides frames that
OpenCV counts, and how many frames a file holds; and rewrites the frame times of the MP4 OpenCV
wrote, where the input's frames do not keep one rate.

Every reader returns None (or False) for a file of another kind or a damaged one, never raises:
what it cannot tell, the caller does without.
"""

import os
import struct
from pathlib import Path

import numpy as np


def mp4_track_samples(path: Path, handler: bytes = b"vide") -> int | None:
    """The samples an MP4 or MOV file's tracks of ``handler`` hold by their sample tables
    (b"vide": frames; b"soun": sound), 0 where its header lists no such track, or None where it
    is no such file, a fragmented one, or its boxes are damaged."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            boxes = dict(_boxes(f, 0, size))
            # no header (not this format, or a recording cut off before it was written), or a
            # fragmented file, whose frames are listed outside it
            if b"moov" not in boxes or b"moof" in boxes:
                return None
            frames = 0
            for kind, (start, end) in _boxes(f, *boxes[b"moov"]):
                if kind != b"trak":
                    continue
                media = dict(_boxes(f, start, end)).get(b"mdia")
                if media is None:
                    continue
                parts = dict(_boxes(f, *media))
                if b"hdlr" not in parts or _read_at(f, parts[b"hdlr"][0] + 8, 4) != handler:
                    continue  # another kind: sound, subtitles, timed metadata
                info = parts.get(b"minf")
                table = dict(_boxes(f, *info)).get(b"stbl") if info else None
                sizes = dict(_boxes(f, *table)) if table else {}
                where = sizes.get(b"stsz") or sizes.get(b"stz2")
                if where is not None:
                    frames += struct.unpack(">I", _read_at(f, where[0] + 8, 4))[0]
            return frames
    except (OSError, struct.error):
        return None


def has_sound(path: Path) -> bool | None:
    """Whether a video file has a sound track, by its header: an MP4 or MOV file's (phones,
    cameras), an AVI file's (older cameras, dashcams), a Matroska or WebM file's (screen and
    browser recordings); None for other containers, whose tracks OpenCV does not list, and a
    header that cannot be read."""
    samples = mp4_track_samples(path, b"soun")
    if samples is not None:
        return samples > 0
    sound = avi_has_sound(path)
    return mkv_has_sound(path) if sound is None else sound


# Matroska's element IDs (EBML): the file header, the segment, its track list, a track of that
# list and its type (2: sound), and a cluster of frames, which follows the track list
EBML_HEADER, MKV_SEGMENT, MKV_TRACKS = 0x1A45DFA3, 0x18538067, 0x1654AE6B
MKV_TRACK, MKV_TRACK_TYPE, MKV_CLUSTER = 0xAE, 0x83, 0x1F43B675


def mkv_has_sound(path: Path) -> bool | None:
    """Whether a Matroska or WebM file's track list holds a sound track; None where it is no
    such file, or no track list comes before the first frames, within the file's first MB."""
    try:
        with path.open("rb") as f:
            data = f.read(2**20)  # the track list comes first, a few hundred bytes in
        kind, _, end = _ebml(data, 0)
        if kind != EBML_HEADER:
            return None
        kind, segment, segment_end = _ebml(data, end)
        if kind != MKV_SEGMENT:
            return None
        for kind, start, end in _ebml_children(data, segment, segment_end):
            if kind == MKV_CLUSTER:
                return None
            if kind == MKV_TRACKS and end > len(data):
                return None  # the file, or its first MB, ends in it
            if kind == MKV_TRACKS:
                tracks = [
                    (a, b) for entry, a, b in _ebml_children(data, start, end) if entry == MKV_TRACK
                ]
                return any(
                    field == MKV_TRACK_TYPE and int.from_bytes(data[a:b], "big") == 2
                    for first, last in tracks
                    for field, a, b in _ebml_children(data, first, last)
                )
    except (OSError, ValueError):
        return None
    return None


def _ebml(data: bytes, at: int) -> tuple[int, int, int]:
    """(ID, body start, body end) of the EBML element at byte ``at`` of ``data``; the end is
    that of ``data`` where the size is unknown (a live recording's). Raises ValueError where
    ``data`` holds no element there."""
    if at >= len(data) or not data[at]:
        raise ValueError(f"no element at {at}")
    width = 9 - data[at].bit_length()  # the ID's bytes, its marker bit kept
    kind = int.from_bytes(data[at : at + width], "big")
    at += width
    if at >= len(data) or not data[at]:
        raise ValueError(f"no size at {at}")
    width = 9 - data[at].bit_length()  # the size's bytes, its marker bit dropped
    size = int.from_bytes(data[at : at + width], "big") & ((1 << 7 * width) - 1)
    at += width
    return kind, at, len(data) if size == (1 << 7 * width) - 1 else at + size


def _ebml_children(data: bytes, start: int, end: int):
    """(ID, body start, body end) of the EBML elements from byte ``start`` to ``end`` of
    ``data`` (cut to its length)."""
    end = min(end, len(data))
    while start < end:
        kind, body, start = _ebml(data, start)
        yield kind, body, start


def avi_has_sound(path: Path) -> bool | None:
    """Whether an AVI file's header lists a sound stream ('auds'); None where it is no AVI file,
    or its header lists no stream at all (damaged)."""
    try:
        with path.open("rb") as f:
            riff, _, form, chunk, size, kind = struct.unpack("<4sI4s4sI4s", f.read(24))
            if (riff, form, chunk, kind) != (b"RIFF", b"AVI ", b"LIST", b"hdrl"):
                return None
            header = f.read(min(size, 2**20) - 4)  # the stream headers, past avih
    except (OSError, struct.error):
        return None
    kinds, at = [], 0
    while at + 24 <= len(header):
        chunk, size = struct.unpack_from("<4sI", header, at)
        # LIST, its size, strl, then strh, its size and the stream's type
        if chunk == b"LIST" and header[at + 8 : at + 16] == b"strlstrh":
            kinds.append(header[at + 20 : at + 24])
        at += 8 + size + size % 2  # chunks are padded to even sizes
    return b"auds" in kinds if kinds else None


def mp4_edits_hide_frames(path: Path) -> bool:
    """Whether an MP4 or MOV file's video track has an edit list that hides some of its frames,
    so that OpenCV declares frames it does not show; False where there is none, or the file is
    no such file or damaged.

    A clip cut without re-encoding (ffmpeg -ss -c copy, most cutting apps) stores the frames
    from the key frame before the cut, which it needs to decode the first one, and hides them
    with an edit that starts past them. A video with B-frames (phones, libx264) starts its edit
    a frame or two in too, at its first frame's composition offset, and hides none: an edit
    hides a frame only where the frame's middle, in presentation time, lies outside it.
    """
    try:
        with path.open("rb") as f:
            boxes = dict(_boxes(f, 0, f.seek(0, os.SEEK_END)))
            if b"moov" not in boxes:
                return False
            movie = list(_boxes(f, *boxes[b"moov"]))
            movie_scale = _timescale(f, dict(movie).get(b"mvhd"))
            for kind, where in movie:
                parts = dict(_boxes(f, *where)) if kind == b"trak" else {}
                media = dict(_boxes(f, *parts[b"mdia"])) if b"mdia" in parts else {}
                if b"edts" not in parts or b"hdlr" not in media:
                    continue
                if _read_at(f, media[b"hdlr"][0] + 8, 4) != b"vide":
                    continue  # sound, subtitles
                edits = dict(_boxes(f, *parts[b"edts"])).get(b"elst")
                media_scale = _timescale(f, media.get(b"mdhd"))
                if edits is None or not movie_scale or not media_scale:
                    continue
                entry = ">qq" if _read_at(f, edits[0], 1)[0] else ">ii"  # version 1: 64 bits
                step = struct.calcsize(entry) + 4  # each followed by its rate
                count = struct.unpack(">I", _read_at(f, edits[0] + 4, 4))[0]
                count = min(count, (edits[1] - edits[0] - 8) // step)  # a damaged count
                shown, start = 0, None
                for at in range(edits[0] + 8, edits[0] + 8 + count * step, step):
                    duration, media_time = struct.unpack(entry, _read_at(f, at, step - 4))
                    if media_time == -1:  # an empty edit: a pause, hiding nothing
                        continue
                    start = media_time if start is None else start
                    shown += duration
                if start is None:
                    continue
                info = dict(_boxes(f, *media[b"minf"]))  # KeyError where missing: damaged
                middles = _frame_middles(f, dict(_boxes(f, *info[b"stbl"])))
                if middles is None:  # no frame to hide
                    return False
                # the edits' durations are kept in the movie's timescale, rounded: far less
                # than the half frame between a frame's middle and its end
                end = start + shown * media_scale / movie_scale
                return start > middles[0] or end < middles[1]
            return False
    # IndexError: a box cut short at the end; KeyError: a sample table without its boxes
    except (OSError, struct.error, IndexError, KeyError):
        return False


def _frame_middles(f, table: dict) -> tuple[float, float] | None:
    """The middles of the first and last frames a track presents, in its media's timescale, from
    its sample table ``table`` (stbl's boxes: type to body start and end), or None where it
    holds no frame.

    A frame is presented at its decoding time (stts) plus its composition offset (ctts, where
    B-frames make the order of decoding another than that of showing). Reads the boxes' runs
    of equal values, never a value per frame, whose count a damaged box could make billions.
    """
    counts, durations = _runs(f, table[b"stts"], signed=False)
    frames = int(counts.sum())
    if not frames:
        return None
    stts_ends = np.cumsum(counts)  # (R,) the frame after each run
    if b"ctts" in table:
        # Signed in version 0 too, which says unsigned: writers store negative offsets there,
        # and FFmpeg, OpenCV's reader, reads them signed. Frames past its runs: no offset.
        offset_counts, offsets = _runs(f, table[b"ctts"], signed=True)
        ctts_ends = np.minimum(np.cumsum(offset_counts), frames)
    else:
        offsets, ctts_ends = np.zeros(0, np.int64), np.zeros(0, np.int64)
    # (P,) pieces of frames lying in one run of each box: within one, every frame lasts as long
    # and has the same offset, so its first frame is shown first and its last ends last
    ends = np.union1d(stts_ends, np.append(ctts_ends, frames))
    ends = ends[ends > 0]
    starts = np.concatenate(([0], ends[:-1]))
    run = np.searchsorted(stts_ends, starts, side="right")  # (P,) each piece's stts run
    step = durations[run]
    run_decoded = np.concatenate(([0], np.cumsum(counts * durations)))[run]
    first = run_decoded + (starts - (stts_ends - counts)[run]) * step  # decoded
    first += np.append(offsets, 0)[np.searchsorted(ctts_ends, starts, side="right")]  # shown
    return float((first + step / 2).min()), float((first + (ends - starts - 0.5) * step).max())


def _runs(f, where, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """The runs of an stts or ctts box ``where`` (its body's start and end): the (R,) counts
    of frames and the (R,) value each of a run's frames has, both int64."""
    count = struct.unpack(">I", _read_at(f, where[0] + 4, 4))[0]
    count = min(count, (where[1] - where[0] - 8) // 8)  # a damaged count
    kind = np.dtype([("count", ">u4"), ("value", ">i4" if signed else ">u4")])
    runs = np.frombuffer(_read_at(f, where[0] + 8, count * 8), kind)
    return runs["count"].astype(np.int64), runs["value"].astype(np.int64)


def _timescale(f, where) -> int:
    """The timescale (ticks a second) of the mvhd or mdhd box ``where`` (its body's start and
    end), or 0 where there is none."""
    if where is None:
        return 0
    at = where[0] + (20 if _read_at(f, where[0], 1)[0] else 12)  # version 1: 64-bit times
    return struct.unpack(">I", _read_at(f, at, 4))[0]


def _read_at(f, offset: int, n: int) -> bytes:
    f.seek(offset)
    return f.read(n)


def _boxes(f, start: int, end: int):
    """(type, (body start, body end)) of the ISO media boxes from byte ``start`` to ``end``;
    raises struct.error at a box that runs past ``end`` (a damaged file)."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", _read_at(f, pos, 8))
        body = pos + 8
        if size == 1:  # a 64-bit size follows
            size, body = struct.unpack(">Q", f.read(8))[0], body + 8
        elif size == 0:  # to the end of the file
            size = end - pos
        if size < body - pos or pos + size > end:
            raise struct.error(f"a {kind!r} box of {size} bytes at {pos}")
        yield kind, (body, pos + size)
        pos += size


def retime_mp4(path: Path, times: np.ndarray) -> bool:
    """Show the frames of the MP4 at ``path`` at ``times`` ((N + 1,) seconds from the first
    frame: each frame's start, then the last one's end), by rewriting its track's decoding
    times (stts) and the movie's, the track's and the edit's durations. Only OpenCV's layout
    is rewritten: one video track of N frames, one edit from its start, the header last (its
    growth then moves no frame data). Returns False, changing nothing, for any other."""
    try:
        with path.open("r+b") as f:
            size = f.seek(0, os.SEEK_END)
            kind, (body, end) = list(_boxes(f, 0, size))[-1]
            if kind != b"moov" or end != size or body - 8 < 0:
                return False
            start = body - 8
            movie = list(_boxes(f, body, end))
            tracks = [where for kind, where in movie if kind == b"trak"]
            if len(tracks) != 1:
                return False
            track = dict(_boxes(f, *tracks[0]))
            media = dict(_boxes(f, *track[b"mdia"]))
            info = dict(_boxes(f, *media[b"minf"]))
            table = dict(_boxes(f, *info[b"stbl"]))
            counts, _ = _runs(f, table[b"stts"], signed=False)
            scale, movie_scale = _timescale(f, media[b"mdhd"]), _timescale(f, dict(movie)[b"mvhd"])
            ticks = np.round(np.asarray(times) * scale).astype(np.int64)  # (N + 1,)
            deltas = np.diff(ticks)  # (N,) each frame's duration, rounding never adding up
            if counts.sum() != len(deltas) or not movie_scale or deltas.min() <= 0:
                return False
            edits = dict(_boxes(f, *track[b"edts"])).get(b"elst") if b"edts" in track else None
            if edits is not None:  # (duration, media time), one entry, from the start
                v1 = _read_at(f, edits[0], 1)[0]
                entry = struct.unpack(">I", _read_at(f, edits[0] + 4, 4))[0]
                if entry != 1 or any(_read_at(f, edits[0] + (16 if v1 else 12), 8 if v1 else 4)):
                    return False
            length = round(times[-1] * movie_scale)
            # (box, offset of its duration in version 0 and 1, the duration)
            fields = [(dict(movie)[b"mvhd"], 16, 24, length), (track[b"tkhd"], 20, 28, length)]
            fields += [(media[b"mdhd"], 16, 24, int(ticks[-1]))]
            fields += [(edits, 8, 8, length)] if edits is not None else []
            header = bytearray(_read_at(f, start, end - start))
            for where, v0, v1, value in fields:
                wide = header[where[0] - start] == 1
                kind = ">Q" if wide else ">I"
                if value >= 2 ** (8 * struct.calcsize(kind)):
                    return False
                struct.pack_into(kind, header, where[0] - start + (v1 if wide else v0), value)
            # runs of equal durations: (count, duration) each
            first = np.flatnonzero(np.diff(deltas, prepend=-1))  # (R,) where each run starts
            runs = np.stack([np.diff(np.append(first, len(deltas))), deltas[first]], 1)
            stts = runs.astype(">u4").tobytes()
            stts = struct.pack(">I4sII", 16 + len(stts), b"stts", 0, len(runs)) + stts
            box = table[b"stts"][0] - 8 - start, table[b"stts"][1] - start
            grow = len(stts) - (box[1] - box[0])
            # the boxes that hold it grow: their sizes are 32-bit where their body starts 8 in
            holders = (body, tracks[0][0], track[b"mdia"][0], media[b"minf"][0], info[b"stbl"][0])
            for at in (where - 8 - start for where in holders):
                (old,) = struct.unpack_from(">I", header, at)
                if old == 1 or old + grow >= 2**32:
                    return False
                struct.pack_into(">I", header, at, old + grow)
            header[box[0] : box[1]] = stts
            f.seek(start)
            f.write(header)
            f.truncate()
            return True
    except (OSError, struct.error, KeyError, IndexError):
        return False
