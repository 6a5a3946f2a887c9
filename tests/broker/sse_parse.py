"""A small but real Server-Sent-Events parser, for tests.

It follows the WHATWG "event stream interpretation" rules: lines end with CRLF, LF or CR
(a CRLF split across two feeds is one line end); a line starting with ``:`` is a comment;
``field: value`` loses one leading space of the value; a line without a colon is a field
with an empty value; ``data`` lines accumulate joined by ``\\n``; a blank line ends a frame.
Unlike a browser it also reports frames that hold only comments (keepalives) and keeps
the raw fields, so tests can check what exactly went over the wire.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field

__all__ = ["Frame", "SSEParser", "parse_frames"]


@dataclass
class Frame:
    """One block of lines ended by a blank line."""

    id: str | None = None
    event: str | None = None
    data: str | None = None
    """The ``data`` lines joined by ``\\n``; ``None`` when the frame had none."""
    retry: int | None = None
    comments: list[str] = field(default_factory=list)
    fields: list[tuple[str, str]] = field(default_factory=list)
    """Every non-comment line, in order, as ``(name, value)``."""

    @property
    def is_comment(self) -> bool:
        """A frame made only of comment lines (a keepalive)."""
        return not self.fields and bool(self.comments)


class SSEParser:
    """Incremental parser: :meth:`feed` bytes as they arrive, get the completed frames."""

    def __init__(self) -> None:
        self.retry: int | None = None
        """The last ``retry:`` value received (reconnection delay in ms)."""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
        self._text = ""
        self._started = False
        self._after_cr = False
        self._frame = Frame()
        self._data_lines: list[str] = []
        self._has_lines = False

    def feed(self, data: bytes) -> list[Frame]:
        text = self._decoder.decode(data)
        if not self._started and text:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        if self._after_cr and text:
            if text.startswith("\n"):
                # The CR that ended the previous feed and this LF are one line end.
                text = text[1:]
            self._after_cr = False
        self._text += text
        frames: list[Frame] = []
        buf = self._text
        pos = 0
        n = len(buf)
        while pos < n:
            cr = buf.find("\r", pos)
            lf = buf.find("\n", pos)
            candidates = [i for i in (cr, lf) if i >= 0]
            if not candidates:
                break
            end = min(candidates)
            line = buf[pos:end]
            if buf[end] == "\r":
                if end + 1 < n:
                    nxt = end + 2 if buf[end + 1] == "\n" else end + 1
                else:
                    self._after_cr = True
                    nxt = end + 1
            else:
                nxt = end + 1
            pos = nxt
            frame = self._line(line)
            if frame is not None:
                frames.append(frame)
        self._text = buf[pos:]
        return frames

    def _line(self, line: str) -> Frame | None:
        if line == "":
            if not self._has_lines:
                return None
            frame = self._frame
            if self._data_lines:
                frame.data = "\n".join(self._data_lines)
            if frame.data is None and not frame.comments:
                # Fields without data (a lone ``retry:``) set parser state; browsers
                # dispatch no event for them, so neither do we.
                if frame.retry is not None:
                    self.retry = frame.retry
                self._frame = Frame()
                self._data_lines = []
                self._has_lines = False
                return None
            self._frame = Frame()
            self._data_lines = []
            self._has_lines = False
            return frame
        self._has_lines = True
        if line.startswith(":"):
            value = line[1:]
            self._frame.comments.append(value[1:] if value.startswith(" ") else value)
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        self._frame.fields.append((name, value))
        if name == "data":
            self._data_lines.append(value)
        elif name == "event":
            self._frame.event = value
        elif name == "id":
            if "\0" not in value:
                self._frame.id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self._frame.retry = int(value)
        return None

    @property
    def pending(self) -> str:
        """Text received after the last complete frame (an unterminated frame)."""
        text = self._text
        if self._has_lines:
            return "<partial frame>" + text
        return text

    def at_boundary(self) -> bool:
        """True when everything fed so far ended on a frame boundary."""
        return not self._has_lines and self._text == ""


def parse_frames(data: bytes, *, complete: bool = True) -> list[Frame]:
    """Parse a whole body. With ``complete``, fail if it does not end on a frame boundary."""
    parser = SSEParser()
    frames = parser.feed(data)
    if complete:
        assert parser.at_boundary(), f"stream ends inside a frame: {parser.pending[-200:]!r}"
    return frames
