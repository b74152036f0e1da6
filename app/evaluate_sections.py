"""The Evaluate page's sections, drawn in order by ``app_pages/evaluate.py``: scores with intervals,
the diagnosis, the failure gallery and the divergence. UI only: the numbers come from
:mod:`app.services.evaluation` and :mod:`app.services.diagnosis`."""
from __future__ import annotations

import math

import streamlit as st

from hkd.data.images import ImageError
from hkd.models.meta import CheckpointError
from hkd.jobs import JobError

from app import widgets
from app.services import diagnosis, eval_divergence, eval_gallery, eval_scores, evaluation, models, page_state

GALLERY_KEYS = ("eval_reference", "eval_compared", "eval_height_bin", "eval_visibility_bin", "eval_view",
                "eval_target", "eval_page", "eval_stage", "eval_error_type")


def scores(result, prepared, refs: dict) -> None:
    st.header("Scores")
    measured = st.session_state.setdefault("eval_latency", {})
    if st.button("Measure CPU latency", key="eval_measure_latency", help="640×480 input, 2 threads, 1 warm-up, 3 runs"):
        with st.spinner("Loading the models and timing them on the CPU…"):
            for problem in eval_scores.measure_latency({label: refs[label] for label in result.labels}, measured):
                st.error(problem)
    st.dataframe(diagnosis.score_rows(result, refs, measured), hide_index=True, width="stretch", key="eval_table",
                 column_config={"operating score": st.column_config.NumberColumn(format="%.3f"),
                                "miss rate at operating point": st.column_config.NumberColumn(format="%.3f"),
                                "params (M)": st.column_config.NumberColumn(format="%.2f")})
    boot = result.bootstrap
    noise = (f" In brackets: the 95 % interval over {boot['resamples']} bootstrap resamples of these "
             f"{boot['num_images']} images." if boot else "")
    st.caption(f"{prepared.label}: **{prepared.num_images} images**. MR⁻² in % (lower is better), as `hkd eval` "
               f"computes it on `{prepared.gt_path}`.{noise} Latency \"—\": not measured yet (the button above) and "
               "not recorded in the checkpoint.")
    differences = diagnosis.difference_rows(result)
    if differences:
        st.dataframe(differences, hide_index=True, width="stretch", key="eval_differences")
        st.caption("Paired differences (the same resampled images for both models): a difference whose interval "
                   "contains 0 is **within noise** on this many images — not a finding.")


def curves(result, refs: dict) -> None:
    figure = eval_scores.curves_figure(result)
    st.plotly_chart(figure, width="stretch", key="eval_curves")
    for column, by in zip(st.columns(2), ("height", "visibility")):
        column.plotly_chart(eval_scores.breakdown_figure(result, by), width="stretch", key=f"eval_{by}_bars")
    downloads = st.columns(4)
    downloads[0].download_button("Scores (CSV)", eval_scores.to_csv(_plain_rows(result, refs)), "eval_scores.csv",
                                 "text/csv", key="eval_csv_table")
    downloads[1].download_button("Breakdowns (CSV)", eval_scores.to_csv(eval_scores.breakdown_rows(result)),
                                 "breakdowns.csv", "text/csv", key="eval_csv_breakdown")
    downloads[2].download_button("Curves (HTML)", lambda: eval_scores.figure_html(figure), "fppi_curves.html",
                                 "text/html", key="eval_html_curves", on_click="ignore")
    downloads[3].download_button("Curves (PNG)", lambda: eval_scores.curves_png(result), "fppi_curves.png",
                                 "image/png", key="eval_png_curves", on_click="ignore")


def _plain_rows(result, refs: dict) -> list[dict]:
    """The Scores table as numbers (CSV): :func:`eval_scores.table_rows`, with each interval's bounds
    in columns of their own beside its value."""
    boot = (result.bootstrap or {}).get("models", {})
    rows = []
    for row in eval_scores.table_rows(result, refs, st.session_state.get("eval_latency", {})):
        intervals = boot.get(row["model"], {})
        out = {}
        for key, value in row.items():
            out[key] = value
            metric = "ap50" if key == "AP50" else key.removeprefix("MR⁻² ") if key.startswith("MR⁻² ") else None
            if metric is not None:
                interval = intervals.get(metric) or {}
                out[f"{key} low"], out[f"{key} high"] = interval.get("low"), interval.get("high")
        rows.append(out)
    return rows


def pair_pickers(result, refs: dict) -> tuple[str, str]:
    """The (reference, compared) pair the diagnosis headline and the gallery look at."""
    pair = eval_gallery.default_pair(result.labels, refs)
    page_state.valid("eval_reference", result.labels, pair[0])
    others = [label for label in result.labels if label != st.session_state["eval_reference"]]
    page_state.valid("eval_compared", others, pair[1] if pair[1] in others else others[0])
    cols = st.columns(2)
    reference = cols[0].selectbox("Reference (teacher)", result.labels, key="eval_reference")
    compared = cols[1].selectbox("Compared (student)", others, key="eval_compared")
    page_state.keep(["eval_reference", "eval_compared"])
    return reference, compared


def diagnosis_view(prepared, ready, fppi: float, reference: str, compared: str) -> dict:
    """Launch/follow the diagnose jobs and draw where the misses are lost; returns the merged diagnosis."""
    st.header("Where the misses are lost")
    states = [diagnosis.state(s.candidate, prepared, fppi) for s in ready]
    todo = [s for s, d in zip(ready, states) if d.state in ("missing", "failed", "cancelled")]
    for d in states:
        if d.state in ("refused", "failed", "cancelled"):
            st.warning(f"**{d.label}**: diagnosis {d.state} — {d.message}")
    if todo and st.button(f"Diagnose {len(todo)} checkpoint(s) (background jobs: one staged pass over "
                          f"{prepared.num_images} images each)", key="eval_diagnose"):
        try:
            states = [diagnosis.launch(s.candidate, prepared, fppi) if s in todo else d for s, d in zip(ready, states)]
        except (JobError, OSError) as exc:  # OSError: the cache folder cannot be written (a full disk)
            st.error(f"The diagnose job was refused: {exc}")
    pending = [d.job_id for d in states if d.pending]
    if pending:
        evaluation.follow(pending, "Diagnosing")
    merged = diagnosis.merged(states)
    if not merged["summary"]:
        st.caption("For every pedestrian a model misses: did its RPN propose no box on it, did the box head score "
                   "it low, did NMS remove it, or did a box land beside it? Run the diagnosis to see.")
        return merged
    pair = diagnosis.pair(merged, reference, compared)
    if pair is not None:
        st.info(diagnosis.headline(pair))
    cols = st.columns(2)
    cols[0].plotly_chart(diagnosis.stages_figure(merged, list(merged["summary"])), width="stretch",
                         key="eval_stages_chart")
    if pair is not None and pair["count"]:
        cols[1].plotly_chart(diagnosis.bins_figure(pair, "height", f"{reference} finds, {compared} misses: by "
                                                   "height and stage"), width="stretch", key="eval_pair_bins")
    elif compared in merged["summary"]:
        cols[1].plotly_chart(diagnosis.bins_figure(merged["summary"][compared], "height",
                                                   f"{compared}'s misses by height and stage"), width="stretch",
                             key="eval_pair_bins")
    return merged


def errors_view(result) -> None:
    rows = diagnosis.error_rows(result)
    if rows:
        st.subheader("False alarms by type")
        st.dataframe(rows, hide_index=True, width="stretch", key="eval_error_table")
        st.caption("False positives at each model's operating point by type, and → the MR⁻² Reasonable the model "
                   "would have if its false positives of that type were gone: the type that costs the most.")


def gallery(prepared, result, reference: str, compared: str, merged: dict) -> None:
    st.header("Failure gallery")
    cols = st.columns(4)
    page_state.valid("eval_height_bin", [None] + eval_gallery.bin_labels(result, "height"), None)
    page_state.valid("eval_visibility_bin", [None] + eval_gallery.bin_labels(result, "visibility"), None)
    height_bin = cols[0].selectbox("Height (px)", [None] + eval_gallery.bin_labels(result, "height"), placeholder="any",
                                   key="eval_height_bin", format_func=lambda b: "any" if b is None else b)
    visibility_bin = cols[1].selectbox("Visibility", [None] + eval_gallery.bin_labels(result, "visibility"),
                                       placeholder="any", key="eval_visibility_bin",
                                       format_func=lambda b: "any" if b is None else b)
    stages = ["any", "rpn", "roi_score", "nms", "localization", "dense_head"]
    page_state.valid("eval_stage", stages, "any")
    stage = cols[2].selectbox(f"Stage where {compared} lost it", stages, key="eval_stage")
    types = ["any", *diagnosis.error_types(result)]
    page_state.valid("eval_error_type", types, "any")
    error_type = cols[3].selectbox("False alarm type", types, key="eval_error_type")
    views = eval_gallery.view_titles(reference, compared)
    page_state.valid("eval_view", list(views), "missed")
    view = st.radio("Show", list(views), format_func=views.get, horizontal=True, key="eval_view")
    page_state.valid("eval_target", ["Detections", "Features", "Attention"], "Features")
    target = st.segmented_control("A click opens", ["Detections", "Features", "Attention"], key="eval_target") \
        or "Features"
    items = eval_gallery.gallery(result, reference, compared, view, height_bin=height_bin, visibility_bin=visibility_bin)
    if stage != "any":
        items = [r for r in items if diagnosis.case_stages(merged, r).get(compared, {}).get("stage") == stage]
    if error_type != "any":
        items = [r for r in items if diagnosis.fp_type(result, r) == error_type]
    widgets.legend(eval_gallery.case_legend(reference, compared))
    pages = max(1, math.ceil(len(items) / eval_gallery.PAGE_SIZE))
    page_state.valid("eval_page", list(range(1, pages + 1)), 1)
    page = int(st.number_input(f"Page (of {pages}; {len(items)} cases)", 1, pages, key="eval_page")) \
        if pages > 1 else 1
    page_state.keep(GALLERY_KEYS)
    first = (page - 1) * eval_gallery.PAGE_SIZE
    grid = st.columns(4)
    for i, record in enumerate(items[first:first + eval_gallery.PAGE_SIZE]):
        with grid[i % 4]:
            _card(prepared, result, record, reference, compared, merged, target, f"{first + i}")
    if not items:
        st.caption("No such case at these operating points and filters.")


def _card(prepared, result, record, reference, compared, merged, target: str, key: str) -> None:
    try:
        st.image(eval_gallery.case_crop(prepared, result, record, reference, compared), width="stretch",
                 caption=eval_gallery.case_caption(record, result))
    except (ImageError, OSError, ValueError) as exc:  # ValueError: a file name that leaves the images folder
        st.warning(f"Cannot show this case: {exc}")
        return
    cases = diagnosis.case_stages(merged, record)
    kind = diagnosis.fp_type(result, record)
    what = diagnosis.stage_caption(cases) if cases else (f"false alarm: {kind}" if kind else "")
    if what:
        st.markdown(f"<small>{what}</small>", unsafe_allow_html=True)
    if st.button(f"Open in {target}", key=f"eval_open_{key}"):
        focus = eval_gallery.open_case(prepared, record)
        focus["what"] = f"{eval_gallery.view_titles(reference, compared)[st.session_state.get('eval_view', 'missed')]}" \
                        + (f" — {what}" if what else "")
        st.session_state.update(focus=focus, image_key=focus["image_key"])
        st.switch_page(f"app_pages/{target.lower()}.py", query_params={"case": eval_gallery.case_param(prepared, record)})


def divergence(prepared, result, refs, reference: str, compared: str) -> None:
    st.header("Per-hierarchy divergence")
    st.caption(f"Mean {reference}–{compared} distance of the features pooled on each case's box, per level "
               f"(‖t − A(s)‖ / ‖t‖ after a least-squares adapter; 0: the student holds the teacher's features), for "
               f"the pedestrians {reference} finds and {compared} misses (failures) and those both find (successes), "
               "with 95 % intervals of the mean. A case opened from the gallery is placed among these successes on "
               "the Features page.")
    cols = st.columns([3, 1], vertical_alignment="bottom")
    per_group = cols[0].slider("Cases per group", 4, 64, 16, 4, key="eval_div_cases")
    path = eval_divergence.divergence_path(prepared, result, refs, reference, compared, per_group=per_group)
    result_ = eval_divergence.read_divergence(path)
    if result_ is None and cols[1].button("Measure divergence", key="eval_divergence"):
        bar = st.progress(0.0, text="Loading both models…")
        try:
            cases = eval_divergence.divergence_cases(prepared, result, reference, compared, per_group)
            pair_models = [models.load(refs[label]) for label in (reference, compared)]
            result_ = eval_divergence.compute_divergence(path, *pair_models, cases, progress=lambda d, n:
                                                    bar.progress(d / n, text=f"{d} of {n} images (both models)"))
        except (CheckpointError, ImageError, OSError, ValueError) as exc:
            st.error(f"Divergence not measured: {exc}")
        bar.empty()
    if result_ is not None:
        from hkd.analysis.divergence import distance_chart

        st.plotly_chart(distance_chart(result_["rows"]), width="stretch", key="eval_divergence_chart")
        st.caption(" · ".join(f"{n} {group} cases" for group, n in result_["cases"].items()) + " (cached on disk)")
        st.session_state["focus_norm"] = {"teacher": result_["teacher_key"], "student": result_["student_key"],
                                          "distances": result_["successes"],
                                          "label": f"{result_['cases'].get('success', 0)} successes of "
                                                   f"{prepared.label} (Evaluate)"}
