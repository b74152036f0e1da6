"""A page that keeps its place: widget values survive leaving the page and a browser reload.

Streamlit forgets the value of a widget that was not drawn on a run, so a page left for
another one comes back at its defaults. :func:`restore` (top of the page) puts each kept
key back into ``st.session_state`` — from this session's copy, else from the URL's query
parameters (a reload, or a shared link) — before its widget is drawn; :func:`keep` (after
the widgets) saves the current values into both. Values travel as JSON in the URL.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

import streamlit as st

_STORE = "_kept_widgets"


def _decode(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def restore(keys: Iterable[str]) -> None:
    """Put every key of ``keys`` that has no widget value yet back from the session copy or the URL."""
    saved = st.session_state.setdefault(_STORE, {})
    for key in keys:
        if key in st.session_state:
            continue
        if key in saved:
            st.session_state[key] = saved[key]
        elif key in st.query_params:
            value = _decode(st.query_params[key])
            if value is not None:
                st.session_state[key] = value


def valid(key: str, options: list, default: Any) -> None:
    """Reset ``key`` to ``default`` when its kept value is not among ``options`` (a model gone, a new dataset);
    a list value keeps the items that still exist."""
    value = st.session_state.get(key)
    if isinstance(value, list):
        kept = [v for v in value if v in options]
        st.session_state[key] = kept if kept or not value else default
    elif key not in st.session_state or value not in options:
        st.session_state[key] = default


def keep(keys: Iterable[str]) -> None:
    """Save the current value of every key of ``keys`` (session copy and URL query parameters)."""
    saved = st.session_state.setdefault(_STORE, {})
    for key in keys:
        if key not in st.session_state:
            continue
        value = st.session_state[key]
        try:
            text = json.dumps(value)
        except (TypeError, ValueError):
            continue
        saved[key] = value
        if st.query_params.get(key) != text:
            st.query_params[key] = text
