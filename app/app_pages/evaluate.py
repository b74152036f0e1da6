"""Evaluate: checkpoints on a dataset — MR⁻², AP50, curves, breakdowns, failure gallery, divergence."""
import math

import streamlit as st

from hkd.data.images import ImageError
from hkd.models.meta import CheckpointError
from hkd.train.jobs import JobError

from app import widgets
from app.services import datasets, evaluation, models

st.title("Evaluate")
st.caption("Score checkpoints on a dataset with the CityPersons protocol, then see where they part. Predictions "
           "run as background jobs and are cached on disk per (checkpoint, dataset, N).")

options = {c.key: c for c in datasets.choices()}
cols = st.columns([3, 1, 1])
choice = options[cols[0].selectbox("Dataset", list(options), format_func=lambda k: options[k].label, key="eval_dataset")]
limit = int(cols[1].number_input("First N images (0 = all)", 0, 100_000, 0, 10, key="eval_limit"))
fppi = cols[2].select_slider("Operating point: FPPI", [0.01, 0.03, 0.1, 0.3, 1.0], 0.1, key="eval_fppi",
                             help="Each model's score threshold is the lowest with at most this many false "
                                  "positives per image (Reasonable); the breakdowns and the gallery use it.")
if not choice.exists:
    job = datasets.generation_job(choice) if choice.synth else None
    if job is not None and job.active:
        evaluation.follow([job.id], f"Generating {choice.label}")
        st.stop()
    if job is not None and job.state == "failed":
        st.error(f"Generating {choice.label} failed: {job.message}")
    if not choice.synth:
        st.error(f"**{choice.label}**: its images folder {choice.images_dir} does not exist.")
    else:
        st.info(f"**{choice.label}** is not on disk yet ({choice.path}).")
        if st.button("Generate it now (background job)", key="eval_generate"):
            try:
                evaluation.follow([datasets.generate(choice).id], f"Generating {choice.label}")
            except (JobError, ValueError) as exc:
                st.error(f"Cannot generate {choice.label}: {exc}")
    st.stop()
try:
    prepared = evaluation.prepare(choice, limit)
except evaluation.EvaluationError as exc:
    st.error(str(exc))
    st.stop()
for note in prepared.notes:
    st.warning(f"Ground truth: {note}")

candidates = evaluation.candidates()
by_label = {c.label: c for c in candidates}
picked = st.multiselect("Checkpoints", list(by_label), default=[c.label for c in candidates if c.default],
                        key="eval_models", format_func=lambda k: f"{k} ({by_label[k].source})")
states = [evaluation.prediction_state(by_label[label], prepared) for label in picked]
for s in states:
    if s.state in ("refused", "failed", "cancelled"):
        st.error(f"**{s.label}**: {'cannot be evaluated' if s.state == 'refused' else 'prediction ' + s.state} — "
                 f"{s.message}")
    elif s.state == "ready" and s.message:
        st.warning(f"**{s.label}**: {s.message}")
todo = [s for s in states if s.state in ("missing", "failed", "cancelled")]
if todo and st.button(f"Run predictions for {len(todo)} checkpoint(s) on {prepared.num_images} images",
                      key="eval_predict", type="primary"):
    try:
        states = [evaluation.launch(s, prepared) if s in todo else s for s in states]
    except JobError as exc:
        st.error(f"The prediction job was refused: {exc}")
pending = [s for s in states if s.pending]
if pending:
    evaluation.follow([s.job_id for s in pending], "Predicting")
ready = [s for s in states if s.state == "ready"]
if not ready:
    st.info("Pick checkpoints and run their predictions: the numbers appear when the first one is ready.")
    st.stop()

try:
    result = evaluation.compare(prepared, ready, fppi=fppi)
except evaluation.EvaluationError as exc:
    st.error(str(exc))
    st.stop()
if result.skipped:
    with st.expander(f"Skipped inputs ({len(result.skipped)})", expanded=True):
        st.markdown("\n".join(f"- {line}" for line in result.skipped))
refs = {s.label: s.candidate.ref for s in ready}

st.header("Scores")
measured = st.session_state.setdefault("eval_latency", {})
if st.button("Measure CPU latency", key="eval_measure_latency", help="640×480 input, 2 threads, 1 warm-up, 3 runs"):
    with st.spinner("Loading the models and timing them on the CPU…"):
        for problem in evaluation.measure_latency({label: refs[label] for label in result.labels}, measured):
            st.error(problem)
rows = evaluation.table_rows(result, refs, measured)
st.dataframe(rows, hide_index=True, width="stretch", key="eval_table",
             column_config={k: st.column_config.NumberColumn(format="%.2f") for k in rows[0]
                            if k not in ("model", "detections")})
st.caption(f"{prepared.label}: {prepared.num_images} images. MR⁻² in % (lower is better), as `hkd eval` computes it "
           f"on `{prepared.gt_path}`; parameters from the checkpoint headers; latency measured here or recorded.")

curves = evaluation.curves_figure(result)
st.plotly_chart(curves, width="stretch", key="eval_curves")
for column, by in zip(st.columns(2), ("height", "visibility")):
    column.plotly_chart(evaluation.breakdown_figure(result, by), width="stretch", key=f"eval_{by}_bars")
downloads = st.columns(4)
downloads[0].download_button("Scores (CSV)", evaluation.to_csv(rows), "scores.csv", "text/csv", key="eval_csv_table")
downloads[1].download_button("Breakdowns (CSV)", evaluation.to_csv(evaluation.breakdown_rows(result)),
                             "breakdowns.csv", "text/csv", key="eval_csv_breakdown")
downloads[2].download_button("Curves (HTML)", lambda: evaluation.figure_html(curves), "fppi_curves.html",
                             "text/html", key="eval_html_curves", on_click="ignore")
downloads[3].download_button("Curves (PNG)", lambda: evaluation.curves_png(result), "fppi_curves.png", "image/png",
                             key="eval_png_curves", on_click="ignore")
if len(result.labels) < 2:
    st.info("Pick a second checkpoint to compare failures and divergence.")
    st.stop()

st.header("Failure gallery")
pair = evaluation.default_pair(result.labels, refs)
cols = st.columns(4)
reference = cols[0].selectbox("Reference (teacher)", result.labels, result.labels.index(pair[0]), key="eval_reference")
others = [label for label in result.labels if label != reference]
compared = cols[1].selectbox("Compared (student)", others, others.index(pair[1]) if pair[1] in others else 0,
                             key="eval_compared")
height_bin = cols[2].selectbox("Height (px)", [None] + evaluation.bin_labels(result, "height"), key="eval_height_bin",
                               format_func=lambda b: "any" if b is None else b)
visibility_bin = cols[3].selectbox("Visibility", [None] + evaluation.bin_labels(result, "visibility"),
                                   key="eval_visibility_bin", format_func=lambda b: "any" if b is None else b)
views = evaluation.view_titles(reference, compared)
view = st.radio("Show", list(views), format_func=views.get, horizontal=True, key="eval_view")
target = st.segmented_control("A click opens", ["Detections", "Features", "Attention"], default="Features",
                              key="eval_target") or "Features"
items = evaluation.gallery(result, reference, compared, view, height_bin=height_bin, visibility_bin=visibility_bin)
widgets.legend(evaluation.case_legend(reference, compared))
pages = max(1, math.ceil(len(items) / evaluation.PAGE_SIZE))
if st.session_state.get("eval_page", 1) > pages:  # fewer cases under the new filters
    st.session_state["eval_page"] = 1
page = int(st.number_input(f"Page (of {pages}; {len(items)} cases)", 1, pages, 1, key="eval_page")) if pages > 1 else 1
first = (page - 1) * evaluation.PAGE_SIZE
grid = st.columns(4)
for i, record in enumerate(items[first:first + evaluation.PAGE_SIZE]):
    with grid[i % 4]:
        try:
            st.image(evaluation.case_crop(prepared, result, record, reference, compared), width="stretch",
                     caption=evaluation.case_caption(record, result))
        except (ImageError, OSError) as exc:
            st.warning(f"Cannot show this case: {exc}")
            continue
        if st.button(f"Open in {target}", key=f"eval_open_{first + i}"):
            focus = evaluation.open_case(prepared, record)
            st.session_state.update(focus=focus, image_key=focus["image_key"])
            st.switch_page(f"app_pages/{target.lower()}.py")
if not items:
    st.caption("No such case at these operating points and filters.")

st.header("Per-hierarchy divergence")
st.caption(f"Mean {reference}–{compared} similarity of each case's region per level, for the pedestrians "
           f"{reference} finds and {compared} misses (failures) versus those both find (successes).")
cols = st.columns([2, 1, 1], vertical_alignment="bottom")
per_group = cols[0].slider("Cases per group", 4, 64, 16, 4, key="eval_div_cases")
measure = cols[1].radio("Measure", ["cka", "cosine"], horizontal=True, key="eval_div_measure",
                        format_func={"cka": "linear CKA", "cosine": "attention cosine"}.get)
path = evaluation.divergence_path(prepared, result, refs, reference, compared, per_group=per_group, measure=measure)
divergence = evaluation.read_divergence(path)
if divergence is None and cols[2].button("Measure divergence", key="eval_divergence"):
    bar = st.progress(0.0, text="Loading both models…")
    try:
        cases = evaluation.divergence_cases(prepared, result, reference, compared, per_group)
        pair_models = [models.load(refs[label]) for label in (reference, compared)]
        divergence = evaluation.compute_divergence(path, *pair_models, cases, measure=measure, progress=lambda d, n:
                                                   bar.progress(d / n, text=f"{d} of {n} images (both models)"))
    except (CheckpointError, ImageError, OSError, ValueError) as exc:
        st.error(f"Divergence not measured: {exc}")
    bar.empty()
if divergence is not None:
    from hkd.viz.divergence import divergence_chart

    st.plotly_chart(divergence_chart(divergence["rows"], measure=measure), width="stretch", key="eval_divergence_chart")
    st.caption(" · ".join(f"{n} {group} cases" for group, n in divergence["cases"].items()) + " (cached on disk)")
