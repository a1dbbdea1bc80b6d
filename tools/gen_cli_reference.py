"""Regenerate the CLI reference in README.md from the Typer app.

    python tools/gen_cli_reference.py          # rewrite README.md
    python tools/gen_cli_reference.py --check  # exit 1 if README.md is stale
"""

import sys
from pathlib import Path

from edgecnn.cli import cli_reference

START, END = "<!-- cli-reference:start -->", "<!-- cli-reference:end -->"
README = Path(__file__).resolve().parents[1] / "README.md"


def render(text: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{cli_reference()}{END}{tail}"


def main() -> int:
    text = README.read_text()
    new = render(text)
    if "--check" in sys.argv:
        if new != text:
            print("README.md CLI reference is stale: run python tools/gen_cli_reference.py")
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
