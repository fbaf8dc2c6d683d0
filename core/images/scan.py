"""Scan a dataset: hash and decode every image once, so a file that would break extraction
later is reported up front as a ``SkippedFile`` instead of failing a long job halfway through."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace

from core.errors import InvalidInputError
from core.images.decode import Decoded, DecodeFailure
from core.images.hashing import content_hash
from core.images.listing import READ_ERRORS, Candidate, ImageSource, read_reason
from core.images.records import THUMBNAIL_SIZE, ImageRecord, ScanResult, SkippedFile
from core.images.sources import open_source
from core.images.thumbnails import ensure_thumbnail, thumbnail_path

ProgressCallback = Callable[[int, int], None]
# Enough queued work that no worker waits for the next file, few enough that each ``wait`` is cheap.
_FUTURES_PER_WORKER = 8


def scan(
    source: str | os.PathLike[str],
    *,
    progress: ProgressCallback | None = None,
    workers: int = 4,
    cache_dir: str | os.PathLike[str] | None = None,
    known: Callable[[str], Mapping[str, ImageRecord]] | None = None,
) -> ScanResult:
    """Hash and decode every image under ``source``; bad files become ``SkippedFile``.

    ``known(root)`` may return the records of an earlier scan of the same root (by
    rel_path): a file whose size and mtime are unchanged (and whose thumbnail exists) keeps
    its record without being read again, so rescanning a large folder is cheap.

    ``progress(done, total)`` runs on the calling thread (so UI code may use it), first with
    ``done == 0`` and then once per finished file; an exception from it cancels the scan.
    With ``cache_dir``, thumbnails are written from the image already decoded for checking.
    """
    if workers < 1:
        raise InvalidInputError(f"workers must be at least 1, got {workers}.")
    src = open_source(source)
    listing = src.listing()
    result = ScanResult(root=str(src.root), skipped=list(listing.skipped))
    total = len(listing.candidates)
    previous = known(result.root) if known is not None else {}
    if progress is not None:
        progress(0, total)
    for record, skipped in _run_pool(src, listing.candidates, workers, cache_dir, progress, previous):
        if record is not None:
            result.records.append(record)
        result.skipped.extend(skipped)
    result.records.sort(key=lambda r: r.rel_path)
    result.skipped.sort(key=lambda s: (s.rel_path, s.reason))
    return result


_Outcome = tuple[ImageRecord | None, list[SkippedFile]]


def _run_pool(
    src: ImageSource,
    candidates: list[Candidate],
    workers: int,
    cache_dir: str | os.PathLike[str] | None,
    progress: ProgressCallback | None,
    previous: Mapping[str, ImageRecord],
) -> Iterator[_Outcome]:
    total = len(candidates)
    # A bounded window of futures: ``wait`` walks every pending future on each call, so
    # submitting a million files at once made a scan quadratic (and held a million futures).
    window = workers * _FUTURES_PER_WORKER
    todo = iter(candidates)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="replens-scan") as pool:

        def submit_next(pending: set[Future[_Outcome]]) -> None:
            for candidate in todo:
                pending.add(pool.submit(_scan_one, src, candidate, cache_dir, previous.get(candidate.rel_path)))
                if len(pending) >= window:
                    return

        pending: set[Future[_Outcome]] = set()
        submit_next(pending)
        done_count = 0
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
                    done_count += 1
                    if progress is not None:
                        progress(done_count, total)
                submit_next(pending)
        finally:
            # On error or cancellation, do not decode the rest of a large dataset first.
            for future in pending:
                future.cancel()


def _scan_one(
    src: ImageSource,
    candidate: Candidate,
    cache_dir: str | os.PathLike[str] | None,
    previous: ImageRecord | None = None,
) -> _Outcome:
    rel_path = candidate.rel_path
    if previous is not None and _unchanged(src, previous, cache_dir):
        caption, caption_problem = _read_caption(src, candidate.caption_rel_path)
        return replace(previous, caption=caption), [caption_problem] if caption_problem else []
    try:
        data, mtime = src.read(rel_path)
    except READ_ERRORS as exc:
        return None, [SkippedFile(rel_path, f"cannot read file: {read_reason(exc)}")]
    digest = content_hash(data)
    try:
        decoded = _decode_for_scan(data)
    except DecodeFailure as exc:
        return None, [SkippedFile(rel_path, exc.reason)]
    if cache_dir is not None:
        ensure_thumbnail(cache_dir, digest, image=decoded.image)
    caption, caption_problem = _read_caption(src, candidate.caption_rel_path)
    record = ImageRecord(
        content_hash=digest,
        rel_path=rel_path,
        labels=tuple(rel_path.split("/")[src.label_skip : -1]),
        width=decoded.width,
        height=decoded.height,
        n_bytes=len(data),
        format=decoded.format,
        mtime=mtime,
        caption=caption,
    )
    return record, [caption_problem] if caption_problem else []


def _unchanged(src: ImageSource, previous: ImageRecord, cache_dir: str | os.PathLike[str] | None) -> bool:
    try:
        n_bytes, mtime = src.stat(previous.rel_path)
    except READ_ERRORS:
        return False  # let the full path report why it cannot be read
    same_file = n_bytes == previous.n_bytes and abs(mtime - previous.mtime) < 1e-3
    return same_file and (cache_dir is None or thumbnail_path(cache_dir, previous.content_hash).exists())


def _read_caption(src: ImageSource, rel_path: str | None) -> tuple[str | None, SkippedFile | None]:
    """An unreadable caption is reported but does not cost the image its record."""
    if rel_path is None:
        return None, None
    try:
        raw, _ = src.read(rel_path)
    except READ_ERRORS as exc:
        return None, SkippedFile(rel_path, f"cannot read caption: {read_reason(exc)}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Keep the readable part of a legacy-encoded caption rather than dropping it.
        text = raw.decode("utf-8", errors="replace")
    text = _strip_translations(text).strip()
    return (text or None), None


# Tux Paint-style sidecars put translations after the caption as "fr.utf8=…" lines.
_TRANSLATION_LINE = re.compile(r"^[A-Za-z]{2,3}(?:_[A-Za-z]{2})?(?:@[A-Za-z]+)?\.utf8=")


def _strip_translations(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not _TRANSLATION_LINE.match(line))


def _decode_for_scan(data: bytes) -> Decoded:
    # Called through the package: ``core.images._decode`` is the name callers (and tests that
    # count decodes) replace, as they did when images was one module.
    from core import images

    return images._decode(data, (THUMBNAIL_SIZE, THUMBNAIL_SIZE))
