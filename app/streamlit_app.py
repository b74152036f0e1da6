"""HKD Studio entry point: page setup, session defaults and navigation.

Run with ``scripts/app.sh`` (binds to 127.0.0.1) or
``streamlit run app/streamlit_app.py``.
"""
from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run app/streamlit_app.py` puts app/ on sys.path; the pages import
# `app.*` and `hkd.*` from the repository root.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app import serve, widgets  # noqa: E402

# an emoji, not a :material/…: icon, which the browser would fetch from fonts.gstatic.com
st.set_page_config(page_title="HKD Studio", page_icon="🚶", layout="wide")

# Shared by every page: the chosen pair, the models folder, the current image and uploads.
SESSION_DEFAULTS = {
    "teacher_ref": None,  # {"path", "preset"} of the chosen teacher checkpoint
    "student_ref": None,
    "third_ref": None,  # optional third model on Detections (default: the no-KD student)
    "focus": None,  # {"image_key", "box": [x1, y1, x2, y2], "source"}: a case picked on Evaluate
    "models_folder": None,  # None: HKD_MODELS_DIR
    "uploaded_checkpoints": [],  # paths of checkpoints uploaded in this session
    "image_key": None,  # current image (sample:… or upload:…)
    "uploaded_images": {},  # upload:<sha> → {"name", "data"}
    "image_upload_ids": set(),
}
for name, value in SESSION_DEFAULTS.items():
    st.session_state.setdefault(name, value)

pages = [
    st.Page("app_pages/models.py", title="Models", icon=":material/model_training:", default=True),
    st.Page("app_pages/detections.py", title="Detections", icon=":material/center_focus_strong:"),
    st.Page("app_pages/features.py", title="Features", icon=":material/layers:"),
    st.Page("app_pages/attention.py", title="Attention", icon=":material/visibility:"),
    st.Page("app_pages/distill.py", title="Distill", icon=":material/school:"),
    st.Page("app_pages/evaluate.py", title="Evaluate", icon=":material/analytics:"),
]
page = st.navigation(pages)
with st.sidebar:
    st.markdown("### HKD Studio")
    st.caption("Hierarchical knowledge distillation of pedestrian detectors")
    pair_slot = st.container()  # filled after the page: it names the pair the page has just chosen
if st.session_state.get("focus") is None and "case" in st.query_params:  # a case's link, opened afresh
    from app.services.eval_gallery import focus_from_param

    focus = focus_from_param(st.query_params["case"])
    if focus is not None:
        st.session_state.update(focus=focus, image_key=focus["image_key"])
with st.sidebar:
    if (st.session_state.get("focus") or {}).get("source") == "evaluate" and page.title != "Evaluate":
        import json

        kept = {k: json.dumps(v) for k, v in st.session_state.get("_kept_widgets", {}).items()}
        st.page_link("app_pages/evaluate.py", label="Back to the gallery", icon=":material/arrow_back:",
                     query_params=kept)
try:
    page.run()
finally:  # also after st.stop(): lets python -m app.serve start importing torch for the other pages
    with pair_slot:
        widgets.pair_summary()
    serve.first_page_done()
