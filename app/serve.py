"""Start HKD Studio: ``python -m app.serve [streamlit options]`` = ``streamlit run app/streamlit_app.py``
plus a warm-up thread.

The Models page is drawn from the checkpoints' headers and needs neither torch
nor the models; the other pages do, and importing torch, torchvision (which pulls
in torch._dynamo) and timm takes about 8 s on a small CPU. Streamlit runs a
page's script only when a browser asks for it, so here a background thread
imports first what the Models page needs (pandas and pyarrow for its tables,
plotly), then — once the first page has been drawn, at the lowest CPU priority,
so that it never competes with the browser on a small machine — torch and the
model code, while the user reads the first page; later pages find them in
``sys.modules``. (Models are not preloaded: a try that loaded the default pair
here brought no measurable gain.) Nothing else changes: the same server, the
same options (``scripts/app.sh`` and the Dockerfile use it).
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

APP = Path(__file__).resolve().parent / "streamlit_app.py"
log = logging.getLogger("hkd.app")
_first_page = threading.Event()


def first_page_done() -> None:
    """Called by the app after each script run: the heavy warm-up waits for the first one."""
    _first_page.set()


def _lower_this_threads_priority() -> None:
    """Nice this thread only (Linux: a thread id is a valid PRIO_PROCESS target), so that the
    warm-up uses idle CPU and never slows the browser drawing the first page on a small machine."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # pragma: no cover - other systems: keep the default priority
        pass


def warm_up() -> None:
    """Import what every page needs (errors are left for the page to report)."""
    _lower_this_threads_priority()
    try:
        # the Models page
        import pandas  # noqa: F401  (st.dataframe imports it on first use)
        import plotly.graph_objects  # noqa: F401
        import pyarrow  # noqa: F401

        import hkd.distill.plan  # noqa: F401
        import hkd.models.meta  # noqa: F401

        # every other page, once the first one is drawn (or after 20 s without a visitor)
        _first_page.wait(timeout=20)
        import torch  # noqa: F401
        import torchvision  # noqa: F401

        import hkd.models.checkpoint  # noqa: F401  (timm, safetensors.torch)
        import hkd.models.inference  # noqa: F401
        import hkd.models.optimize  # noqa: F401
        import hkd.models.profile  # noqa: F401
    except Exception as exc:  # pragma: no cover - the page shows the real error
        log.warning("warm-up import failed: %s", exc)


def main(argv: list[str] | None = None) -> int:
    from streamlit.web import cli

    threading.Thread(target=warm_up, name="hkd-warm-up", daemon=True).start()
    sys.argv = ["streamlit", "run", str(APP), *(sys.argv[1:] if argv is None else argv)]
    return cli.main()


if __name__ == "__main__":
    raise SystemExit(main())
