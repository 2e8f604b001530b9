"""Console output that cannot stop a run: writes to a closed pipe are dropped, not raised.

`python -m experiments ... 2>&1 | tee log`, then Ctrl-C: the signal reaches `tee` too, which exits,
and the next write to the pipe (a progress bar update, a log line) raises BrokenPipeError. A run
must still save its checkpoint then, so every console write of the loop goes through a `Console`
stream: on a broken pipe it points the file descriptor at /dev/null (so that Python's own flush
at exit does not fail either) and drops the rest of the output.
"""

import errno
import os
import sys


class Console:
    """A text stream wrapper whose write and flush never raise on a closed pipe."""

    def __init__(self, name: str):
        self._name = name  # 'stdout' or 'stderr', looked up on every write (tests replace them)
        self.closed_pipe = False

    @property
    def _stream(self):
        return getattr(sys, self._name)

    def _silence(self) -> None:
        self.closed_pipe = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # no real file descriptor
            pass

    def write(self, text: str) -> int:
        if self.closed_pipe:
            return len(text)
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._silence()
        except OSError as error:
            if error.errno != errno.EPIPE:
                raise
            self._silence()
        return len(text)

    def flush(self) -> None:
        if self.closed_pipe:
            return
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._silence()
        except OSError as error:
            if error.errno != errno.EPIPE:
                raise
            self._silence()

    def isatty(self) -> bool:
        return not self.closed_pipe and hasattr(self._stream, "isatty") and self._stream.isatty()

    def __getattr__(self, name):
        return getattr(self._stream, name)


STDOUT = Console("stdout")
STDERR = Console("stderr")


def say(message: str) -> None:
    """Prints one line to stdout through `STDOUT` (never raises on a closed pipe)."""
    STDOUT.write(message + "\n")
    STDOUT.flush()
