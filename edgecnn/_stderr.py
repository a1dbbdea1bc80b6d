"""Capture what native libraries write to file descriptor 2 (TensorFlow, ONNX Runtime, LiteRT)."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile


class Captured:
    text: str = ""

    def lines(self) -> list[str]:
        return [line for line in self.text.splitlines() if line.strip()]


@contextlib.contextmanager
def capture_fd2(stdout_fd: bool = False):
    """Redirect fd 2 (and fd 1 with ``stdout_fd``) to a temp file for the block; the text is in
    the yielded object afterwards. Python-level print() is captured too.

    ``EDGECNN_NATIVE_LOGS=1`` lets everything through (debugging).
    """
    out = Captured()
    if os.environ.get("EDGECNN_NATIVE_LOGS"):
        yield out
        return
    fds = (1, 2) if stdout_fd else (2,)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in fds}
    printed = io.StringIO()  # some libraries print() their warnings (onnxruntime's "EP Error" banner)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        for fd in fds:
            os.dup2(tmp.fileno(), fd)
        try:
            with contextlib.redirect_stdout(printed):
                yield out
        finally:
            sys.stderr.flush()
            for fd, old in saved.items():
                os.dup2(old, fd)
                os.close(old)
            tmp.seek(0)
            out.text = tmp.read().decode("utf-8", "replace") + printed.getvalue()
