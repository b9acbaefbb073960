"""Data files for the commands that read them (``validate``, ``schema infer``): CSV or
Parquet in chunks, with a progress bar on stderr."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from stalwart._optional import require
from stalwart.cli.output import err_console, fail
from stalwart.errors import ConfigError

__all__ = ["ProgressReporter", "progress_bar", "read_chunks"]


class ProgressReporter:
    """What a reading loop calls after each chunk."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task = progress.add_task("reading", total=None)

    def report(self, done: int, total: int | None) -> None:
        self._progress.update(self._task, completed=done, total=total)


@contextmanager
def progress_bar() -> Iterator[ProgressReporter]:
    """A progress bar on stderr, gone when the work is done."""
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )
    with progress:
        yield ProgressReporter(progress)


def read_chunks(
    path: Path, chunk_rows: int, *, text_columns: tuple[str, ...] = ()
) -> Iterator[tuple[Any, int, int | None]]:
    """``(DataFrame chunk, progress so far, total)`` for a CSV (progress in bytes) or a
    Parquet file (progress in rows). ``text_columns`` are read as strings from CSV, so a
    category like ``"007"`` stays what it was."""
    suffix = path.suffix.lower()
    if chunk_rows < 1:
        fail("--chunk-rows must be at least 1")
    try:
        if suffix in (".parquet", ".pq"):
            pq = require("pyarrow.parquet", extra="features", purpose="reading Parquet files")
            file = pq.ParquetFile(path)
            total = int(file.metadata.num_rows)
            done = 0
            for batch in file.iter_batches(batch_size=chunk_rows):
                frame = batch.to_pandas()
                done += len(frame)
                yield frame, done, total
        elif suffix in (".csv", ".txt"):
            pd = require("pandas", extra="features", purpose="reading CSV files")
            size = path.stat().st_size
            with path.open("rb") as fh:
                reader = pd.read_csv(fh, chunksize=chunk_rows, dtype=dict.fromkeys(text_columns, str))
                for frame in reader:
                    yield frame, min(fh.tell(), size), size
        else:
            fail(f"{path.name}: give a .csv or .parquet file")
    except (ValueError, OSError) as exc:
        # pandas' ParserError and pyarrow's ArrowInvalid are ValueErrors.
        raise ConfigError(f"cannot read {path}: {exc}") from exc
