"""What every bad-input test asserts of a command's result (the house rule: exit 2, one
line on stderr naming the field or file, no traceback)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any


def one_line(res: Any, *names: str) -> str:
    """Exit 2, no traceback, exactly one stderr line naming ``names``; the line."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, res.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def appears(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Wait until ``path`` exists while ``proc`` (a command under test) still runs; fail with
    the process's output if it ends first, or after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)
