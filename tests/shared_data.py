"""Where ../shared/data lives: $PREFLOOP_SHARED_DATA, beside the checkout, or /work/shared/data."""

import os
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent


def shared_data(name: str) -> Path:
    for base in (os.environ.get("PREFLOOP_SHARED_DATA"), _ROOT.parent / "shared" / "data", "/work/shared/data"):
        if base and (Path(base) / name).exists():
            return Path(base) / name
    return _ROOT.parent / "shared" / "data" / name
