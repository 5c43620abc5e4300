"""A quiet terminal: no library log lines unless ``--verbose``.

Beam's workers log at INFO to the stderr they inherit, and Beam warns about optional
clients it cannot import. :class:`QuietStderr` routes file descriptor 2 (this process's
and every local child's) through a filter that keeps only this program's own lines and
real errors. It works on the file descriptor, not on files: nothing here reads or writes
the inputs or OUT (those go through ``pipeline.fsio``).
"""

from __future__ import annotations

import os
import re
import sys
import threading

#: Lines of Beam's and other libraries' logging (``LEVEL:logger:message``), and the gRPC
#: and absl chatter of worker processes; tracebacks and our own lines pass.
_NOISE = re.compile(
    r"^(DEBUG|INFO|WARNING):[\w.]*:|^I\d{4} |^W\d{4} |^WARNING: All log messages before absl"
)


class QuietStderr:
    """Route fd 2 through a filter thread that drops library log lines (children too).

    Nested use is a no-op that shares the outer filter (the CLI enters it before Beam is
    imported, run_job again around the run)."""

    _active: QuietStderr | None = None

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.outer = None

    def __enter__(self):
        if QuietStderr._active is not None:
            self.outer, self.enabled = QuietStderr._active, False
            self.stream = self.outer.stream
            return self
        if not self.enabled:
            self.stream = sys.stderr
            return self
        QuietStderr._active = self
        sys.stderr.flush()
        self._saved = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._reader = os.fdopen(read_fd, "r", encoding="utf-8", errors="replace")
        self.stream = os.fdopen(os.dup(self._saved), "w", encoding="utf-8", buffering=1)
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        return self

    def _pump(self) -> None:
        for line in self._reader:
            if not _NOISE.match(line):
                self.stream.write(line)
                self.stream.flush()

    def __exit__(self, *exc):
        if not self.enabled:
            return False
        QuietStderr._active = None
        sys.stderr.flush()
        os.dup2(self._saved, 2)  # closes the pipe's last write end held by fd 2 ...
        os.close(self._saved)
        self._thread.join(timeout=5)  # ... unless a child still holds it
        self.stream.flush()
        return False
