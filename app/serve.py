"""Start HKD Studio: ``python -m app.serve [streamlit options]`` = ``streamlit run app/streamlit_app.py``
plus a warm-up thread.

Streamlit runs the app's script only when a browser connects, so a first visitor
would wait for torch, torchvision and timm to import (several seconds on a small
CPU) before the Models page can draw. Here a background thread imports them, and
the app's own modules, while the server starts and the browser loads the
frontend; the script then finds them in ``sys.modules``. (Models are not
preloaded: a try that loaded the default pair here brought no measurable gain.)
Nothing else changes:
the same server, the same options (``scripts/app.sh`` and the Dockerfile use it).
"""
from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

APP = Path(__file__).resolve().parent / "streamlit_app.py"
log = logging.getLogger("hkd.app")


def warm_up() -> None:
    """Import what every page needs (errors are left for the page to report)."""
    try:
        import plotly.graph_objects  # noqa: F401
        import torch  # noqa: F401
        import torchvision  # noqa: F401

        import hkd.models.checkpoint  # noqa: F401  (timm, safetensors, the presets)
        import hkd.models.inference  # noqa: F401
        import hkd.models.optimize  # noqa: F401
        import hkd.models.profile  # noqa: F401
        import pandas  # noqa: F401  (st.dataframe imports it on first use)
        import pyarrow  # noqa: F401
    except Exception as exc:  # pragma: no cover - the page shows the real error
        log.warning("warm-up import failed: %s", exc)


def main(argv: list[str] | None = None) -> int:
    from streamlit.web import cli

    threading.Thread(target=warm_up, name="hkd-warm-up", daemon=True).start()
    sys.argv = ["streamlit", "run", str(APP), *(sys.argv[1:] if argv is None else argv)]
    return cli.main()


if __name__ == "__main__":
    raise SystemExit(main())
