"""Resumable, atomic, validated HTTP downloads of raw data files.

One file at a time (``fetch_file``), after the way curl's ``--continue-at -`` and
pip's downloader work:

* the bytes go to ``<target>.part`` beside the target; a second run asks only for the
  missing tail with an HTTP ``Range: bytes=<size of .part>-`` request. A server that
  answers ``206 Partial Content`` for that range is appended to; one that answers
  ``200`` (it ignores ranges) starts the file again;
* a missing file is an HTTP 404, or an HTML page where a data file was asked for
  (a site's own "not found" page sent with status 200);
* the length the server announced (``Content-Length``, ``Content-Range``) must arrive
  in full; a short transfer keeps its ``.part`` for the next run and is reported as
  truncated;
* the complete ``.part`` is fsynced and handed to a validator (our parsers); a file
  that fails is removed; one that passes is renamed to the target, so the target name
  only ever holds a whole, parsed file.

Every problem is a ``DownloadError`` (a ``PreprocessingError``) whose message is one
line naming the URL, the file and the problem.
"""

from __future__ import annotations

import http.client
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from preprocessing.atomic import atomic_write_text as _atomic_write_text
from preprocessing.atomic import fsync_dir
from preprocessing.errors import PreprocessingError, WriteError

USER_AGENT = "vhp-fetch/0.1 (+python urllib)"
CHUNK = 1 << 16
TIMEOUT = 60.0  # seconds without a byte before a transfer counts as lost

Validator = Callable[[Path], Any]


class DownloadError(PreprocessingError):
    """A file that could not be downloaded whole and valid."""

    kind = "failed"

    def __init__(self, url: str, target: Path | str, problem: str) -> None:
        self.url = url
        self.target = str(target)
        self.problem = " ".join(problem.split())  # one line, whatever the cause said
        super().__init__(f"{url} -> {self.target}: {self.kind}: {self.problem}")


class NotFoundError(DownloadError):
    """The server has no such file (HTTP 404)."""

    kind = "not found"


class TruncatedError(DownloadError):
    """Fewer bytes arrived than the server announced; the ``.part`` is kept for resuming."""

    kind = "truncated"


class CorruptError(DownloadError):
    """The whole file arrived but our parser refuses it; it has been removed."""

    kind = "corrupt"


@dataclass(frozen=True)
class Fetched:
    """What ``fetch_file`` did: downloaded (``resumed_from`` > 0 if by a range request) or kept."""

    path: Path
    url: str
    downloaded: bool
    size: int
    resumed_from: int = 0
    checked: Any = None  # what the validator returned (e.g. the parsed skeleton)


def part_path(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def atomic_write_text(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` by temporary file, fsync and rename; False if unchanged."""
    return _atomic_write_text(path, text, skip_unchanged=True)


def _describe(err: BaseException) -> str:
    if isinstance(err, urllib.error.URLError) and not isinstance(err, urllib.error.HTTPError):
        reason = err.reason
        return f"cannot connect ({reason.strerror if isinstance(reason, OSError) and reason.strerror else reason})"
    if isinstance(err, (socket.timeout, TimeoutError)):
        return "timed out waiting for data"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _content_range(value: str | None) -> tuple[int, int | None] | None:
    """(first byte, total length or None) of a ``Content-Range: bytes a-b/n`` header."""
    if not value or not value.startswith("bytes "):
        return None
    span, _, total = value[len("bytes "):].partition("/")
    first, _, _ = span.partition("-")
    try:
        return int(first), (int(total) if total.strip() != "*" else None)
    except ValueError:
        return None


def _transfer(url: str, target: Path, part: Path, timeout: float, progress: Any) -> tuple[int, int]:
    """Bring ``part`` to the whole remote file; returns (size, byte the transfer resumed from)."""
    offset = part.stat().st_size if part.is_file() else 0
    try:
        try:
            response = _open(url, offset, timeout)
        except urllib.error.HTTPError as err:
            if err.code == 416 and offset:
                # The .part is no prefix of the remote file (it is as long or longer):
                # start over rather than guess.
                part.unlink()
                offset = 0
                response = _open(url, 0, timeout)
            else:
                raise
    except urllib.error.HTTPError as err:
        if err.code == 404:
            part.unlink(missing_ok=True)
            raise NotFoundError(url, target, "HTTP 404 (no such file on the server)") from None
        raise DownloadError(url, target, f"HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise DownloadError(url, target, _describe(err)) from None

    with response:
        if response.headers.get_content_type() == "text/html":
            # Some sites answer a missing file with a page saying so, and status 200.
            raise NotFoundError(url, target, f"the server sent an HTML page instead of the file (HTTP {response.status})")
        length = response.headers.get("Content-Length")
        expected_body = int(length) if length and length.isdigit() else None
        if response.status == 206:
            span = _content_range(response.headers.get("Content-Range"))
            if span is None or span[0] != offset:
                part.unlink()
                raise DownloadError(url, target, f"the server answered the range {offset}- with Content-Range "
                                                 f"{response.headers.get('Content-Range')!r}; {part.name} removed, run again to start over")
            mode = "ab"
            total = span[1] if span[1] is not None else (offset + expected_body if expected_body is not None else None)
        elif response.status == 200:
            offset, mode = 0, "wb"  # no range support: the whole file again
            total = expected_body
        else:
            raise DownloadError(url, target, f"unexpected HTTP {response.status} {response.reason}")
        if progress is not None:
            if total is not None:
                progress.total = (progress.total or 0) + (total - offset)
            progress.set_postfix_str(target.name, refresh=False)
        received = offset
        # Unbuffered: a failed write (disk full, quota) surfaces at the write that failed,
        # as a WriteError naming the .part; only errors of the connection count as "lost".
        try:
            fh = open(part, mode, buffering=0)
        except OSError as err:
            raise WriteError(part, err) from err
        with fh:
            try:
                while True:
                    block = response.read(CHUNK)
                    if not block:
                        break
                    try:
                        view = memoryview(block)
                        while view:  # a raw write may take part of the block
                            view = view[fh.write(view) :]
                    except OSError as err:
                        raise WriteError(part, err) from err
                    received += len(block)
                    if progress is not None:
                        progress.update(len(block))
            except WriteError:
                raise
            except (OSError, http.client.HTTPException) as err:
                lost: BaseException | None = err
            else:
                lost = None
            finally:
                try:
                    os.fsync(fh.fileno())
                except OSError as err:
                    raise WriteError(part, err) from err
    if total is not None and received != total:
        how = f"connection lost ({_describe(lost)})" if lost is not None else "Content-Length mismatch"
        raise TruncatedError(url, target, f"{how}: received {received} of {total} bytes; {part.name} is kept, run again to resume")
    if lost is not None:
        raise TruncatedError(url, target, f"connection lost after {received} bytes ({_describe(lost)}); {part.name} is kept, run again to resume")
    return received, offset


def fetch_file(
    url: str,
    target: Path | str,
    validate: Validator | None = None,
    *,
    progress: Any = None,
    timeout: float = TIMEOUT,
) -> Fetched:
    """Download ``url`` to ``target`` unless it is there, resuming a ``.part``; validate; rename.

    ``validate`` is called with the complete ``.part`` path and raises a
    ``PreprocessingError`` for a bad file (the ``.part`` is then removed and a
    ``CorruptError`` raised); its return value is kept in ``Fetched.checked``. A target
    that already exists is validated the same way and kept (a bad one is an error, not
    silently replaced). ``progress`` is a tqdm bar counting bytes, or None.
    """
    target = Path(target)
    part = part_path(target)
    if target.is_file():
        part.unlink(missing_ok=True)  # a leftover of an older run; the target is what counts
        checked = _validate(url, target, target, validate, remove=False)
        return Fetched(target, url, downloaded=False, size=target.stat().st_size, checked=checked)
    target.parent.mkdir(parents=True, exist_ok=True)
    size, resumed_from = _transfer(url, target, part, timeout, progress)
    checked = _validate(url, target, part, validate, remove=True)
    os.replace(part, target)
    fsync_dir(target.parent)
    return Fetched(target, url, downloaded=True, size=size, resumed_from=resumed_from, checked=checked)


def _validate(url: str, target: Path, path: Path, validate: Validator | None, remove: bool) -> Any:
    if validate is None:
        return None
    try:
        return validate(path)
    except PreprocessingError as err:
        if remove:
            path.unlink(missing_ok=True)
        line = getattr(err, "line", None)
        problem = getattr(err, "problem", None) or str(err)
        where = f"line {line}: " if line is not None else ""
        fate = "removed" if remove else "kept; delete it to download it again"
        raise CorruptError(url, target, f"parse error: {where}{problem} (file {fate})") from None
