"""Operator and developer tooling: migrations, the embedded database, the local API (`make run`).

Every `python -m ops.<tool>` finds the shared package (`layers/shared/payments`) without PYTHONPATH, as the commands
the README and `make run`'s banner print are pasted: the Makefile sets PYTHONPATH, a terminal does not.
"""

import sys as _sys
from pathlib import Path as _Path

_SHARED = str(_Path(__file__).resolve().parent.parent / "layers" / "shared")
if _SHARED not in _sys.path:
    _sys.path.append(_SHARED)
