"""What every `python -m core` command shares: the common options (declared once, as argparse
parent parsers), opening the store, printing results, resolving an encoder key, and turning
errors into one line on stderr and an exit code.

Command modules import this one; it imports none of them (no cycles).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from core import config
from core.errors import EmbeddingsNotFoundError, InvalidInputError, RepLensError
from core.keys import PRECISIONS, EncoderKey

if TYPE_CHECKING:
    from core.store import Store

Command = Callable[[argparse.Namespace], int]
SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

INTERRUPTED_EXIT_CODE = 130
STORED_ENCODER_HELP = "encoder id, full cache key, or import:NAME"


# --------------------------------------------------------------------------- common options


def _parent() -> argparse.ArgumentParser:
    """An options-only parser to pass as ``parents=``; help comes from the command itself."""
    return argparse.ArgumentParser(add_help=False)


def json_option() -> argparse.ArgumentParser:
    parent = _parent()
    parent.add_argument("--json", action="store_true", help="print exactly one JSON value on stdout")
    return parent


def dataset_option(*, required: bool = True, help: str | None = None) -> argparse.ArgumentParser:
    parent = _parent()
    parent.add_argument("--dataset", required=required, help=help)
    return parent


def encoder_options(*, required: bool = True, help: str = STORED_ENCODER_HELP) -> argparse.ArgumentParser:
    """``--encoder`` with the ``--layer``/``--pool``/``--precision`` that pick one of its keys."""
    parent = _parent()
    parent.add_argument("--encoder", required=required, help=help)
    parent.add_argument("--layer", help="last, or blockN for ViTs")
    parent.add_argument("--pool", help="cls/mean (ViT), avg/gem (CNN)")
    _add_precision(parent)
    return parent


def precision_option() -> argparse.ArgumentParser:
    """``--precision`` alone, for commands that load encoders without ``encoder_options``."""
    parent = _parent()
    _add_precision(parent)
    return parent


def _add_precision(parent: argparse.ArgumentParser) -> None:
    # The names from core.keys, not core.encoders.precision: building the parser stays cheap.
    parent.add_argument(
        "--precision",
        choices=("auto", *PRECISIONS),
        default="auto",
        help="what the encoder computes in; part of the cache key. auto (default): bf16 where the device "
        "computes it natively (CUDA compute capability 8+, a CPU with AMX/AVX512-BF16) and the encoder "
        "offers it, else fp32. When reading stored vectors, auto takes whichever precision is stored.",
    )


def seed_option(*, help: str | None = None) -> argparse.ArgumentParser:
    parent = _parent()
    parent.add_argument("--seed", type=int, help=help)
    return parent


def add_command(
    sub: SubParsers,
    name: str,
    func: Command,
    help: str,
    parents: Iterable[argparse.ArgumentParser] = (),
    *,
    with_json: bool = True,
) -> argparse.ArgumentParser:
    """A sub-command running ``func``; ``with_json`` adds the ``--json`` option."""
    all_parents = [*parents, json_option()] if with_json else list(parents)
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help, parents=all_parents)
    parser.set_defaults(func=func)
    return parser


# --------------------------------------------------------------------------- store and output


def open_store() -> Store:
    from core.store import Store

    return Store(config.db_path(), config.cache_dir())


def emit(args: argparse.Namespace, payload: Any, human: Callable[[], None]) -> None:
    """One JSON value on stdout with ``--json``, else the human form."""
    if getattr(args, "json", False):
        print(json.dumps(payload, default=_json_default))
    else:
        human()


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def progress_bar(desc: str, unit: str) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """An (update(done, total), close) pair drawing on stderr, so stdout stays one JSON value."""
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, disable=None)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close


def resolve_encoder_key(
    store: Store, dataset: str, encoder: str, layer: str | None, pool: str | None, precision: str | None = None
) -> str:
    """Turn what a user typed (id, full key, import:NAME) into one stored cache key.

    ``precision`` None or "auto" matches any stored precision; "fp32"/"bf16" only that one.
    """
    keys = store.embedded_keys(dataset)
    if encoder in keys:
        return encoder
    wanted = None if precision in (None, "auto") else precision
    candidates = [key for key in keys if _matches(key, encoder, layer, pool, wanted)]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise EmbeddingsNotFoundError(
            f"Dataset {dataset!r} has no embeddings for {encoder!r}"
            f"{f' layer={layer}' if layer else ''}{f' pool={pool}' if pool else ''}"
            f"{f' precision={wanted}' if wanted else ''}. "
            f"Stored: {', '.join(keys) or 'none'}. "
            f"Run: python -m core embed --dataset {dataset} --encoder {encoder}"
            f"{f' --precision {wanted}' if wanted else ''}"
        )
    raise InvalidInputError(
        f"{encoder!r} matches several stored keys ({', '.join(candidates)}); add --layer/--pool/--precision, "
        "or give the whole key."
    )


def key_from_args(store: Store, args: argparse.Namespace) -> str:
    """The stored key that ``--dataset``, ``--encoder``, ``--layer``, ``--pool`` and ``--precision`` pick."""
    return resolve_encoder_key(
        store, args.dataset, args.encoder, args.layer, args.pool, getattr(args, "precision", None)
    )


def _matches(key: str, encoder_id: str, layer: str | None, pool: str | None, precision: str | None = None) -> bool:
    """Whether stored ``key`` holds ``encoder_id``'s vectors at the given layer/pooling/precision
    (None: any). Imported keys match only by their full text, handled before this."""
    parsed = EncoderKey.try_parse(key)
    if parsed is None or parsed.is_imported or parsed.encoder_id != encoder_id:
        return False
    return (
        (not layer or parsed.layer == layer)
        and (not pool or parsed.pooling == pool)
        and (not precision or parsed.precision == precision)
    )


# --------------------------------------------------------------------------- errors and exit codes


def run(func: Command, args: argparse.Namespace) -> int:
    """Run one command; a user or machine error becomes ``error: …`` on stderr and its exit code."""
    try:
        return int(func(args) or 0)
    except RepLensError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: work committed so far is kept; rerun to continue", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    except BrokenPipeError:
        # `python -m core encoders --json | head`: the reader left; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if not _is_environment_error(exc):
            raise  # a bug in RepLens: the traceback is what a bug report needs
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return RepLensError.exit_code


def one_line(exc: BaseException) -> str:
    """The message on one line (library messages often span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _is_environment_error(exc: BaseException) -> bool:
    """Failures of the machine, not of RepLens: files that cannot be read or written, a file
    at REPLENS_DB that is not a DuckDB database."""
    if isinstance(exc, OSError):
        return True
    duckdb = sys.modules.get("duckdb")
    return duckdb is not None and isinstance(exc, (duckdb.IOException, duckdb.PermissionException))
