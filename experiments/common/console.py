"""Console output that cannot stop a run: writes to a closed pipe are dropped, not raised.

`python -m experiments ... 2>&1 | tee log`, then Ctrl-C: the signal reaches `tee` too, which exits,
and the next write to the pipe (a progress bar update, a log line) raises BrokenPipeError. A run
must still save its checkpoint then, so the command line replaces sys.stdout and sys.stderr by
`Console` streams (`install`): on a broken pipe a Console points the file descriptor at /dev/null
(so that Python's own flush at exit does not fail either) and drops the rest of the output.
"""

import errno
import os
import sys


class Console:
    """A text stream wrapper whose write and flush never raise on a closed pipe."""

    def __init__(self, stream):
        self._stream = stream
        self.closed_pipe = False

    def _silence(self) -> None:
        self.closed_pipe = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # no real file descriptor
            pass

    def _guard(self, fn, *args):
        if self.closed_pipe:
            return None
        try:
            return fn(*args)
        except BrokenPipeError:
            self._silence()
        except OSError as error:
            if error.errno != errno.EPIPE:
                raise
            self._silence()
        return None

    def write(self, text: str) -> int:
        self._guard(self._stream.write, text)
        return len(text)

    def flush(self) -> None:
        self._guard(self._stream.flush)

    def isatty(self) -> bool:
        return not self.closed_pipe and self._stream.isatty()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def install() -> None:
    """Wraps sys.stdout and sys.stderr in `Console` streams (once)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, Console):
            setattr(sys, name, Console(stream))


def say(message: str) -> None:
    """Prints one line to stdout and flushes it."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()
