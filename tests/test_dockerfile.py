import shutil
import subprocess
from pathlib import Path

import pytest

DOCKERFILE = Path(__file__).resolve().parents[1] / "Dockerfile"


def _instructions():
    lines, buf = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        buf += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            lines.append(buf.strip())
            buf = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]


def test_dockerfile_structure():
    ins = _instructions()
    kinds = [k for k, _ in ins]
    assert kinds[0] == "FROM" and "nvidia/cuda" in ins[0][1] and "cudnn" in ins[0][1]
    assert ("ENTRYPOINT", '["edgecnn"]') in ins
    users = [v for k, v in ins if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert any(k == "VOLUME" and "/work/runs" in v for k, v in ins)
    assert any(k == "RUN" and 'pip install ".[gpu,heic]"' in v for k, v in ins)


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (dev extra, Linux x86_64)")
def test_dockerfile_passes_hadolint():
    out = subprocess.run(["hadolint", "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
