"""Evaluate: checkpoints on a dataset — MR⁻² with intervals, where the misses are lost, the failure
gallery and the divergence. Every choice survives leaving the page and a reload (page_state)."""
import streamlit as st

from hkd.jobs import JobError

from app import evaluate_sections as sections
from app.services import datasets, evaluation, page_state

KEYS = ("eval_dataset", "eval_limit", "eval_fppi", "eval_models", *sections.GALLERY_KEYS)
page_state.restore(KEYS)
st.title("Evaluate")
st.caption("Score checkpoints on a dataset with the CityPersons protocol, see how sure each number is, where each "
           "model loses the pedestrians it misses, and look at the cases. Predictions and diagnoses run as "
           "background jobs and are cached on disk per (checkpoint, dataset, N).")

options = {c.key: c for c in datasets.choices()}
page_state.valid("eval_dataset", list(options), next(iter(options)))
page_state.valid("eval_fppi", [0.01, 0.03, 0.1, 0.3, 1.0], 0.1)
st.session_state.setdefault("eval_limit", 0)
cols = st.columns([3, 1, 1])
choice = options[cols[0].selectbox("Dataset", list(options), format_func=lambda k: options[k].label, key="eval_dataset")]
limit = int(cols[1].number_input("First N images (0 = all)", 0, 100_000, step=10, key="eval_limit"))
fppi = cols[2].select_slider("Operating point: FPPI", [0.01, 0.03, 0.1, 0.3, 1.0], key="eval_fppi",
                             help="Each model's score threshold is the lowest with at most this many false "
                                  "positives per image (Reasonable); the breakdowns, diagnosis and gallery use it.")
page_state.keep(KEYS[:3])
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
page_state.valid("eval_models", list(by_label), [c.label for c in candidates if c.default])
picked = st.multiselect("Checkpoints", list(by_label), key="eval_models",
                        format_func=lambda k: f"{k} ({by_label[k].source})")
page_state.keep(["eval_models"])
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
    except (JobError, OSError) as exc:  # OSError: the cache folder cannot be written (a full disk)
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

sections.scores(result, prepared, refs)
sections.curves(result, refs)
sections.errors_view(result)
if len(result.labels) < 2:
    st.info("Pick a second checkpoint to compare failures and divergence.")
    st.stop()
reference, compared = sections.pair_pickers(result, refs)
merged = sections.diagnosis_view(prepared, ready, fppi, reference, compared)
sections.gallery(prepared, result, reference, compared, merged)
sections.divergence(prepared, result, refs, reference, compared)
