"""The facade's unit tests import their fakes (the fakes package) by module name: pytest runs
in importlib mode, which puts no test folder on sys.path, so this one is put there."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
