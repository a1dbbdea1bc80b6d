"""The one error type users see: a single line naming the file or option."""


class EdgeCNNError(Exception):
    """A problem with the user's input or environment, reported as one line.

    The CLI prints ``error: <message>`` and exits with ``exit_code``; no traceback.
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def lambda_refused(path) -> EdgeCNNError:
    """The error for a model file with a Lambda layer, which safe mode will not load (its code is arbitrary)."""
    return EdgeCNNError(f"{path}: contains a Lambda layer (arbitrary Python code); refused. edgecnn loads models "
                        "with safe_mode=True: rebuild the model without Lambda layers")


def short_list(names: list[str], limit: int = 10) -> str:
    """``names`` for an error line: the first ``limit``, then how many more."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of ``exc``'s message (at most ``limit`` characters), or its type's name when it has none:
    a library's error inside one of ours."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
