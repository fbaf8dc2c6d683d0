"""What `make demo` and `make test` install: only what is used (issue 10, item 11)."""

from __future__ import annotations

import re
from pathlib import Path

MAKEFILE = (Path(__file__).resolve().parent.parent / "Makefile").read_text()


def test_the_demo_stamps_come_without_all_of_tux_paint() -> None:
    # tuxpaint-stamps-default Recommends tuxpaint itself (40 packages, ~342 MB); only the stamps are used.
    installs = [line for line in MAKEFILE.splitlines() if "apt-get install" in line and "tuxpaint" in line]
    assert installs, "the demo target installs tuxpaint-stamps-default"
    assert all("--no-install-recommends" in line for line in installs)


def test_make_test_runs_the_self_checking_rules_before_pytest() -> None:
    target = re.search(r"^test:(.*)$", MAKEFILE, re.M)
    assert target is not None
    assert {"lint", "typecheck", "browser", "venv"} <= set(target.group(1).split())
    lint = re.search(r"^lint:.*\n((?:\t.*\n)+)", MAKEFILE, re.M)
    assert lint is not None and "ruff check" in lint.group(1) and "ruff format --check" in lint.group(1)
