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
def capture_fd2():
    """Redirect fd 2 to a temp file for the block; the text is in the yielded object afterwards.

    ``EDGECNN_NATIVE_LOGS=1`` lets everything through (debugging).
    """
    out = Captured()
    if os.environ.get("EDGECNN_NATIVE_LOGS"):
        yield out
        return
    sys.stderr.flush()
    saved = os.dup(2)
    printed = io.StringIO()  # some libraries print() their warnings (onnxruntime's "EP Error" banner)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            with contextlib.redirect_stdout(printed):
                yield out
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.text = tmp.read().decode("utf-8", "replace") + printed.getvalue()
