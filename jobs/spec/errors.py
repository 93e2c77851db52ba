"""How a mistake in a spec is said: `file:line: key: message`, with a did-you-mean where one helps."""
import difflib


class SpecError(Exception):
    """A mistake in a spec, said as `file:line: key: message`."""

    def __init__(self, message, file=None, line=None, key=None):
        self.file, self.line, self.key, self.message = file, line, key, message
        where = f"{file}:{line}" if file and line else (str(file) if file else "")
        parts = [p for p in (where, key) if p]
        super().__init__(": ".join(parts + [message]))


def did_you_mean(word, options) -> str:
    """" (did you mean 'x'?)" for the closest of `options`, or ""."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
