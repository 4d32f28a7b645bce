"""Stop strings over streamed text: matched across token boundaries and never emitted."""

from __future__ import annotations


class StopStringMatcher:
    """Finds the first stop string in text that arrives piece by piece.

    Text is released as soon as no stop string can start inside it; only the longest tail
    that is a proper prefix of some stop string is held back until the next piece decides.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """Add text; return (text safe to emit, the stop string that matched or None).

        After a match, the text from the stop string on is dropped: the caller finishes the choice.
        """
        if not self.stops:
            return text, None
        buf = self.held + text
        hit: tuple[int, str] | None = None
        for stop in self.stops:
            at = buf.find(stop)
            if at >= 0 and (hit is None or at < hit[0]):
                hit = (at, stop)
        if hit is not None:
            self.held = ""
            return buf[: hit[0]], hit[1]
        keep = self._partial_tail(buf)
        self.held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], None

    def _partial_tail(self, buf: str) -> int:
        """Length of the longest suffix of buf that is a proper prefix of a stop string."""
        keep = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(buf)), keep, -1):
                if buf.endswith(stop[:k]):
                    keep = k
                    break
        return keep

    def flush(self) -> str:
        """The held-back text, released when the choice ends for another reason."""
        held, self.held = self.held, ""
        return held
