"""Bias: image embedding association tests (iEAT, Steed & Caliskan 2021) as a battery.

Thin page: pick stimulus sets (folders, clusters, the Map selection, images whose top-1
ImageNet class is under a WordNet concept, or four folders uploaded here), pick encoders, run
``core.bias_runs.run_battery``, render the table, the null distribution and the images that
drive each effect. The battery runs as a ``bias`` job on the server; its stored result (table,
permutation nulls, driving images) is what the page draws.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core import bias, config
from core.bias_runs import (
    CONCEPT_SET_PREFIX,
    MIN_CONCEPT_IMAGES,
    ROLES,
    TOP_LEVEL,
    BatteryTest,
    cluster_sets,
    describe_folder,
    folder_counts,
    folder_hashes,
    folder_options,
    make_test,
)
from core.concepts.image_classes import missing_lite0_images
from core.encoders import DEFAULT_ENCODER, BaseEncoder, get_spec, list_encoders
from core.errors import InvalidInputError
from core.jobs import Job
from core.stimuli import ROLE_NAMES, SCAN_STAGE, StimulusProgress, ingest_stimulus_folders
from core.store import Store
from core.uploads import UPLOAD_TYPES
from ui import state
from ui.errors import user_errors
from ui.gallery import gallery
from ui.image_classes import bias_concept_sets
from ui.jobs import page_jobs, submit_job, watch_jobs
from ui.progress import embed_progress, scan_progress
from ui.resources import get_encoder, get_store
from ui.text import md_escape
from ui.widgets import dataset_picker, short_key

BATTERY_KEY = "rl_bias_battery"
RESULT_KEY = "rl_bias_result"
MAP_SELECTION = "(Map selection)"
UPLOAD_ROUND_KEY = "rl_bias_upload_round"
FLASH_KEY = "rl_bias_flash"
JOB_FLASH_KEY = "rl_bias_job_flash"  # (kind, message) of how a battery job this session watched ended
JOBS_PANEL = "bias_jobs"


def main() -> None:
    st.title("Bias")
    st.caption(
        "Image Embedding Association Test (iEAT): are targets X more associated with attributes A "
        "(and Y with B) than the reverse, in this encoder's space? Effect size d, permutation p, "
        "bootstrap CI; Holm-adjusted across the whole table."
    )
    store = get_store()
    flash = st.session_state.pop(FLASH_KEY, None)
    if flash:
        st.success(flash, icon=":material/check_circle:")
    ended = st.session_state.pop(JOB_FLASH_KEY, None)
    if ended:
        (st.error if ended[0] == "error" else st.info)(md_escape(ended[1]))
    dataset = dataset_picker(store)
    with user_errors():
        _upload_section(store, expanded=dataset is None)
    if dataset is None:
        return
    keys = store.embedded_keys(dataset)
    if not keys:
        st.info("Extract embeddings on the **Data** page first.")
        return
    with user_errors():
        _battery_builder(store, dataset, store.dataset_paths(dataset))
        _run_section(store, dataset, keys)
    _results(store)
    _conventions()


def _battery_builder(store: Store, dataset: str, images: pd.DataFrame) -> None:
    st.subheader("1 · Build the battery")
    templates = ["Custom"] + list(bias.IEAT_TEMPLATES)
    name = st.selectbox(
        "Test template",
        templates,
        key="w_bias_template",
        help="The iEAT battery; fill each role with your own image folders (none are shipped).",
    )
    template = bias.IEAT_TEMPLATES.get(name)
    if template is not None:
        st.caption(template.description)
    folders = folder_options(images)
    counts = {True: folder_counts(images, subfolders=True), False: folder_counts(images, subfolders=False)}
    extra = _other_sets(store, dataset)
    extra.update(_concept_sets(store, dataset))
    options = folders + list(extra)
    if len(folders) < 2 and len(extra) < 2:
        st.warning(
            "This dataset has fewer than two folders. Stimulus sets are sub-folders: upload one folder "
            "with a sub-folder per set (e.g. flowers/, insects/, pleasant/, unpleasant/) on the Data page, "
            "or compute Lite0 vectors above to use ImageNet concepts as sets."
        )
        return
    st.caption(
        "Folder sets are folder paths from the dataset's top level, as the Map names them: `vehicles` is not "
        "`military/vehicles`. Tick **with sub-folders** to include the folders below the one picked."
    )
    columns = st.columns(4)
    picked: dict[str, str] = {}
    below: dict[str, bool] = {}
    # Start from four different top-level folders: the usual layout is one folder per set.
    top_level = [i for i, f in enumerate(folders) if "/" not in f and f != TOP_LEVEL] or list(range(len(folders)))
    for column, role in zip(columns, ROLES):
        label = ROLE_NAMES[role] + (f": {template.roles()[role.upper()]}" if template is not None else "")
        default = top_level[min(ROLES.index(role), len(top_level) - 1)]
        sub_key = f"w_bias_{role}_sub"
        # A role filled in by an upload is in session state already; passing an index too would warn.
        start = {} if st.session_state.get(f"w_bias_{role}") in options else {"index": default}
        picked[role] = column.selectbox(
            label,
            options,
            key=f"w_bias_{role}",
            format_func=_option_label(counts, extra),
            help="A folder path from the dataset's top level (images in brackets), a cluster or the Map selection.",
            **start,
        )
        is_folder = picked[role] not in extra and picked[role] != TOP_LEVEL
        below[role] = bool(
            column.checkbox(
                "with sub-folders",
                value=True,
                key=sub_key,
                disabled=not is_folder,
                help="Include the images in folders below the one picked (default), or only those directly in it.",
            )
        )
        count = len(_hashes(images, extra, picked[role], below[role]))
        described = md_escape(_describe(extra, picked[role], below[role]))
        column.caption(f"{count} image{'s' if count != 1 else ''}: {described}")
    test_name = st.text_input("Test name", value=name if template is not None else "Custom test", key="w_bias_name")
    if st.button("Add test to battery", icon=":material/add:", key="w_bias_add"):
        st.session_state.setdefault(BATTERY_KEY, []).append(_make_test(images, extra, test_name, picked, below))
    battery: list[BatteryTest] = st.session_state.get(BATTERY_KEY, [])
    if battery:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "test": t.name,
                        **{ROLE_NAMES[r]: f"{t.roles.get(r, '')} ({len(h)})" for r, h in t.sets().items()},
                    }
                    for t in battery
                ]
            ),
            hide_index=True,
            width="stretch",
        )
        if st.button("Clear battery", key="w_bias_clear"):
            st.session_state[BATTERY_KEY] = []
            st.session_state.pop(RESULT_KEY, None)
            st.rerun()


def _upload_section(store: Store, expanded: bool) -> None:
    """Four folders uploaded here become a dataset of their own (a sub-folder per role),
    embedded with the chosen encoders, and fill the four roles."""
    with st.expander("Upload four stimulus folders", expanded=expanded, icon=":material/upload:"):
        st.caption(
            "One folder per role (e.g. flowers, insects, pleasant, unpleasant). They are added as a dataset "
            "with one sub-folder per role, embedded, and picked as X, Y, A and B below."
        )
        round_ = st.session_state.get(UPLOAD_ROUND_KEY, 0)
        columns = st.columns(4)
        uploads = {
            role: column.file_uploader(
                ROLE_NAMES[role],
                accept_multiple_files="directory",
                type=UPLOAD_TYPES,
                key=f"w_bias_up_{role}_{round_}",
                max_upload_size=config.max_file_mb(),  # core.uploads checks each file and the total again
            )
            for column, role in zip(columns, ROLES)
        }
        left, right = st.columns([1, 2])
        name = left.text_input("Dataset name", value="stimuli", key="w_bias_up_name")
        ids = [spec.id for spec in list_encoders()]
        encoder_ids = right.multiselect(
            "Embed with",
            ids,
            default=[DEFAULT_ENCODER],
            key="w_bias_up_encoders",
            help="Each encoder you want in the battery; hub encoders need the network "
            "or their weights in the hub cache.",
        )
        ready = all(uploads.values()) and bool(encoder_ids)
        if st.button("Add stimuli", type="primary", disabled=not ready, icon=":material/add:", key="w_bias_up_add"):
            _add_stimuli(
                store, name.strip(), {r: [(f.name, f.getvalue()) for f in fs] for r, fs in uploads.items()}, encoder_ids
            )


def _add_stimuli(
    store: Store, dataset: str, uploads: dict[str, list[tuple[str, bytes]]], encoder_ids: list[str]
) -> None:
    bar = st.progress(0.0, text="Scanning…")
    try:
        added = ingest_stimulus_folders(
            store, dataset, uploads, encoder_ids, progress=_stimulus_progress(bar), loader=_cached_encoder
        )
    finally:
        bar.empty()
    for role, folder in added.folders.items():
        st.session_state[f"w_bias_{role}"] = folder
    st.session_state[state.DATASET_KEY] = dataset
    st.session_state.pop("w_dataset", None)
    st.session_state["w_bias_encoders"] = added.encoder_keys
    st.session_state[UPLOAD_ROUND_KEY] = st.session_state.get(UPLOAD_ROUND_KEY, 0) + 1
    skipped = f"; {added.n_skipped} file(s) skipped (see the Data page)" if added.n_skipped else ""
    refused = (
        f" Refused {len(added.refused)} unsafe file name(s): {md_escape(', '.join(added.refused[:5]))}."
        if added.refused
        else ""
    )
    st.session_state[FLASH_KEY] = (
        f"**{md_escape(dataset)}**: {added.n_paths} stimuli in {md_escape(', '.join(added.folders.values()))}, "
        f"embedded with {md_escape(', '.join(encoder_ids))}{skipped}. The roles below are filled in." + refused
    )
    st.rerun()


def _cached_encoder(encoder_id: str) -> BaseEncoder:
    spec = get_spec(encoder_id)
    return get_encoder(encoder_id, spec.default_layer, spec.default_pooling)


def _stimulus_progress(bar: Any) -> StimulusProgress:
    """One bar for the whole ingest: the scan's counts, then each encoder's rate and ETA."""
    stages: dict[str, Callable[[int, int], None]] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in stages:
            stages[stage] = scan_progress(bar) if stage == SCAN_STAGE else embed_progress(bar, stage)
        stages[stage](done, total)

    return progress


def _other_sets(store: Store, dataset: str) -> dict[str, tuple[str, ...]]:
    """Stimulus sets besides folders: the Map selection and the clusters of the run picked on
    the Clusters page, when they belong to this dataset."""
    sets: dict[str, tuple[str, ...]] = {}
    selection = st.session_state.get(state.SELECTION_KEY)
    if selection and st.session_state.get(state.SELECTION_DATASET_KEY) == dataset:
        sets[MAP_SELECTION] = tuple(selection)
    run_id = st.session_state.get(state.CLUSTER_RUN_KEY)
    stored = store.load_cluster_run(run_id) if run_id else None
    if stored is not None and stored[0]["dataset"] == dataset:
        sets.update(cluster_sets(store, run_id))
    return sets


def _concept_sets(store: Store, dataset: str) -> dict[str, tuple[str, ...]]:
    """ "top class under CONCEPT" sets: the images whose top-1 ImageNet class (EfficientNet-Lite0's head)
    is under a WordNet concept; without Lite0 vectors, an offer to compute them (collapsed)."""
    if missing_lite0_images(store, dataset):
        with st.expander("Sets from ImageNet classes", icon=":material/category:"):
            return bias_concept_sets(store, dataset, st, key="w_bias_lite0")
    sets = bias_concept_sets(store, dataset, st, key="w_bias_lite0")
    if sets:
        st.caption(
            f"ImageNet concept sets: pick **{CONCEPT_SET_PREFIX}…** in a role — the images whose top-1 ImageNet "
            f"class (EfficientNet-Lite0) is under that WordNet concept ({len(sets):,} concepts with at least "
            f"{MIN_CONCEPT_IMAGES} images that leave some images out)."
        )
    return sets


def _option_label(counts: dict[bool, dict[str, int]], extra: dict[str, tuple[str, ...]]) -> Callable[[str], str]:
    """ "vehicles (4)", or "vehicles (4; 3 directly)" when sub-folders hold some.

    Both counts, whatever the checkbox says: an option text that changed with the checkbox
    would make Streamlit treat the picker as a new widget and drop the user's pick.
    """

    def label(option: str) -> str:
        if option in extra:
            return f"{option} ({len(extra[option])})"
        total, direct = counts[True].get(option, 0), counts[False].get(option, 0)
        return f"{option} ({total})" if total == direct else f"{option} ({total}; {direct} directly)"

    return label


def _describe(extra: dict[str, tuple[str, ...]], choice: str, subfolders: bool) -> str:
    return choice if choice in extra else describe_folder(choice, subfolders)


def _hashes(images: pd.DataFrame, extra: dict[str, tuple[str, ...]], choice: str, subfolders: bool) -> tuple[str, ...]:
    return extra[choice] if choice in extra else folder_hashes(images, choice, subfolders=subfolders)


def _make_test(
    images: pd.DataFrame,
    extra: dict[str, tuple[str, ...]],
    name: str,
    picked: dict[str, str],
    below: dict[str, bool],
) -> BatteryTest:
    sets = {role: _hashes(images, extra, choice, below[role]) for role, choice in picked.items()}
    for role, hashes in sets.items():
        if not hashes:
            raise InvalidInputError(f"{name}: set {role.upper()} ({picked[role]}) has no images.")
    roles = {r: _describe(extra, c, below[r]) for r, c in picked.items()}
    return make_test(name, sets, roles, images)


def _run_section(store: Store, dataset: str, keys: list[str]) -> None:
    st.subheader("2 · Run it")
    remembered = st.session_state.get("w_bias_encoders")
    if remembered is not None and set(remembered) <= set(keys):
        start: dict[str, list[str]] = {}  # kept, or set by an upload (a default too would warn)
    else:
        st.session_state.pop("w_bias_encoders", None)  # none yet, or picked for another dataset
        start = {"default": keys[:2]}
    chosen = st.multiselect("Encoders", keys, format_func=short_key, key="w_bias_encoders", **start)
    left, right = st.columns(2)
    n_samples = int(
        left.number_input(
            "Permutations (sampled mode)",
            100,
            1_000_000,
            bias.DEFAULT_N_SAMPLES,
            step=1000,
            key="w_bias_samples",
            help="Exact enumeration is used whenever C(|X|+|Y|, |X|) ≤ this number.",
        )
    )
    seed = int(right.number_input("Seed", 0, 2**31 - 1, 0, key="w_bias_seed"))
    battery = st.session_state.get(BATTERY_KEY, [])
    if st.button(
        "Run battery", type="primary", disabled=not (battery and chosen), icon=":material/play_arrow:", key="w_bias_run"
    ):
        st.session_state.pop(RESULT_KEY, None)
        submit_job("bias", dataset, battery_params(battery, chosen, n_samples, seed), key=JOBS_PANEL)
        st.rerun()
    watch_jobs(
        lambda: [job.job_id for job in page_jobs(dataset, "bias", keep=("interrupted",))],
        key=JOBS_PANEL,
        on_end=battery_ended,
    )


def battery_params(battery: list[BatteryTest], encoder_keys: list[str], n_samples: int, seed: int) -> dict[str, Any]:
    """A ``bias`` job's parameters: each test's four sets as content hashes (whatever they were picked
    from: folders, clusters, the Map selection, concepts) with what each role was."""
    return {
        "encoder_keys": list(encoder_keys),
        "tests": [
            {"name": t.name, "sets": {role: list(hashes) for role, hashes in t.sets().items()}, "roles": t.roles}
            for t in battery
        ],
        "n_samples": n_samples,
        "seed": seed,
    }


def battery_ended(job: Job) -> None:
    """Show the results of a battery this session ran (or joined), or why it did not finish."""
    if job.status == "done":
        st.session_state[RESULT_KEY] = job.job_id
    elif job.status == "failed":
        st.session_state[JOB_FLASH_KEY] = ("error", job.error or "The battery failed.")
    elif job.status == "cancelled":
        st.session_state[JOB_FLASH_KEY] = ("info", "The battery was cancelled.")


def _shown_result() -> dict[str, Any] | None:
    """The stored result of the battery job this session shows, if it finished."""
    job_id = st.session_state.get(RESULT_KEY)
    if not isinstance(job_id, str):
        return None
    record = get_store().job(job_id)
    if record is None or record["status"] != "done" or not record.get("result"):
        return None
    result: dict[str, Any] = record["result"]
    return result


def _results(store: Store) -> None:
    result = _shown_result()
    if result is None:
        return
    st.subheader("3 · Results")
    raw = pd.DataFrame(result["table"], columns=result.get("columns") or None)
    table = raw.assign(encoder=raw["encoder"].map(short_key))
    holm_family = _holm_family(raw)
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        key="w_bias_table",
        column_config={
            "effect_size": st.column_config.NumberColumn("d", format="%.3f"),
            "ci_low": st.column_config.NumberColumn("CI low", format="%.3f", help=bias.coverage_note()),
            "ci_high": st.column_config.NumberColumn("CI high", format="%.3f", help=bias.coverage_note()),
            "p_value": st.column_config.NumberColumn("p", format="%.4g"),
            "p_holm": st.column_config.NumberColumn("p (Holm)", format="%.4g", help=holm_family),
            "min_p_value": st.column_config.NumberColumn("min attainable p", format="%.3g"),
        },
    )
    st.caption(f"**p (Holm):** {holm_family}  \n**CI:** {bias.coverage_note()}")
    unreachable = raw[raw["min_p_value"] > 0.05]
    if len(unreachable):
        st.warning(
            f"{len(unreachable)} test(s) cannot reach p < 0.05 with these set sizes (see 'min attainable p'); "
            "add stimuli before reading a large p as 'no association'."
        )
    left, right = st.columns(2)
    left.download_button("Download CSV", raw.to_csv(index=False).encode(), "ieat_results.csv", "text/csv")
    right.download_button(
        "Download JSON",
        json.dumps(raw.to_dict(orient="records"), default=float, indent=1),
        "ieat_results.json",
        "application/json",
    )
    outcomes = result["outcomes"]
    labels = [f"{o['test']} · {short_key(o['encoder_key'])}" for o in outcomes]
    index = st.selectbox("Inspect", range(len(labels)), format_func=labels.__getitem__, key="w_bias_inspect")
    outcome = outcomes[index]
    st.plotly_chart(_null_figure(outcome), key="w_bias_null")
    st.markdown("**Images that drive the effect** (largest |s(w)|: association with A minus B)")
    drivers = pd.DataFrame(outcome["drivers"])
    gallery(
        store,
        drivers,
        [f"{s} · s={v:+.3f}" for s, v in zip(drivers["set"], drivers["score"])],
        key="w_bias_drivers",
    )


def _holm_family(table: pd.DataFrame) -> str:
    """Which p-values Holm's correction adjusted together: every row of the battery's table."""
    n_tests, n_encoders = table["test"].nunique(), table["encoder"].nunique()
    return (
        f"Holm-adjusted over a family of {len(table)} p-value{'s' if len(table) != 1 else ''}: "
        f"all {n_tests} test{'s' if n_tests != 1 else ''} × {n_encoders} encoder{'s' if n_encoders != 1 else ''} "
        "of this battery. Significant at α = 0.05 when p (Holm) ≤ 0.05."
    )


def _null_figure(outcome: dict[str, Any]) -> go.Figure:
    """The permutation null of S (the sample of it the job kept) with the observed S marked."""
    null = np.asarray(outcome["null"], dtype=float)
    statistic = float(outcome["statistic"])
    kind = "exact" if outcome["exact"] else "sampled"
    fig = go.Figure(go.Histogram(x=null, nbinsx=40, marker_color="#A1A1AA", name=f"null ({kind})"))
    fig.add_vline(x=statistic, line_color="#E11D48", line_width=3, annotation_text=f"observed S = {statistic:.3f}")
    fig.update_layout(
        title=f"Permutation null of S ({len(null)} partitions shown of {outcome['n_permutations']})",
        xaxis_title="S",
        yaxis_title="partitions",
        height=320,
        margin={"t": 50, "b": 40},
    )
    return fig


def _conventions() -> None:
    with st.expander("Formulas and conventions"):
        st.markdown(
            "- cos: plain cosine similarity of the raw vectors.\n"
            "- s(w, A, B) = mean cos(w, A) − mean cos(w, B); S = Σ_X s(x) − Σ_Y s(y).\n"
            "- d = (mean_X s − mean_Y s) / sd_{X∪Y} s (ddof = 1).\n"
            "- p (one-sided, X→A): share of re-partitions of X∪Y with S_i ≥ S, ties count. Exact when "
            "C(|X|+|Y|, |X|) ≤ the permutation budget, else (1 + #extreme) / n over n − 1 random re-partitions.\n"
            "- Unequal |X| ≠ |Y| keeps both sizes when permuting (an extension of the reference).\n"
            "- Sets: a folder set is one folder path from the dataset's top level (with or without its "
            "sub-folders); the four sets of a test may not share an image.\n"
            f"- {bias.coverage_note()}\n"
            "- Holm: across every row of the table (all tests × encoders of the battery)."
        )


main()
