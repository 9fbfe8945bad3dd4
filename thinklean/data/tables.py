"""Dataset files read through Hugging Face ``datasets``: a ``save_to_disk`` directory, or a
``.parquet``, ``.arrow`` or ``.csv`` file (needs ``pip install 'thinklean[datasets]'``).

Rows are validated as JSONL lines are (:func:`thinklean.data.jsonl.example_from_dict`), so
GSM8K's published parquet files load unchanged (``question`` as the prompt, ``... #### 72``
as the answer ``72``), and ``prompt_field`` / ``answer_field`` name other columns. A bad row
stops loading with a :class:`~thinklean.data.jsonl.DataError` ``FILE:ROW: what was wrong``;
rows count from 1 (a CSV header is not a row), 0 means the file as a whole.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from thinklean.data.jsonl import DataError, Example, example_from_dict, load_jsonl

# file suffix -> the datasets builder that reads it
TABLE_FORMATS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
_EXPECTED = "a save_to_disk directory or a .parquet, .arrow or .csv file"


def is_table(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is read through ``datasets`` (a directory or a table file) rather than as JSONL."""
    path = Path(path)
    return path.is_dir() or path.suffix.lower() in TABLE_FORMATS


def _read(path: Path, split: str) -> Any:
    """The ``datasets.Dataset`` at ``path``; from a saved ``DatasetDict``, its ``split`` (or its only split)."""
    try:
        import datasets
    except ImportError:
        raise DataError(path, 0, f"reading {_EXPECTED} needs the datasets package: "
                                 "pip install 'thinklean[datasets]'") from None
    if not path.exists():
        raise DataError(path, 0, f"file not found (expected {_EXPECTED})")
    datasets.disable_progress_bars()
    try:
        if path.is_dir():
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(TABLE_FORMATS[path.suffix.lower()], data_files=str(path), split="train")
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(path, 0, f"cannot read: {error} (expected {_EXPECTED})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded and len(loaded) != 1:
            raise DataError(path, 0, f"no {split!r} split (the directory holds {', '.join(loaded)})")
        loaded = loaded[split] if split in loaded else next(iter(loaded.values()))
    return loaded


def _check_columns(path: Path, columns: list[str], require_solution: bool, prompt_field: str,
                   answer_field: str) -> None:
    """:class:`DataError` at row 1 naming a required column the table lacks."""
    prompt_ok = prompt_field in columns or (prompt_field == "prompt" and "question" in columns)
    missing = [name for name, ok in ((prompt_field, prompt_ok), (answer_field, answer_field in columns),
                                     ("solution", not require_solution or "solution" in columns)) if not ok]
    if missing:
        raise DataError(path, 1, f'column "{missing[0]}" is missing (the columns are {", ".join(columns)}; '
                                 "name others with --prompt-field / --answer-field)")


def load_table(
    path: str | os.PathLike[str], *, require_solution: bool = False, limit: int | None = None,
    prompt_field: str = "prompt", answer_field: str = "answer", split: str = "train",
) -> list[Example]:
    """Read the examples of a table file or ``save_to_disk`` directory, validating every row read
    (the first ``limit`` when given); ``split`` picks from a saved ``DatasetDict``."""
    path = Path(path)
    dataset = _read(path, split)
    _check_columns(path, dataset.column_names, require_solution, prompt_field, answer_field)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    examples = [example_from_dict(row, require_solution=require_solution, path=path, line=number,
                                  prompt_field=prompt_field, answer_field=answer_field)
                for number, row in enumerate(dataset, start=1)]
    if not examples:
        raise DataError(path, 0, "no rows found")
    return examples


def load_examples(
    path: str | os.PathLike[str], *, require_solution: bool = False, limit: int | None = None,
    prompt_field: str = "prompt", answer_field: str = "answer", split: str = "train",
) -> list[Example]:
    """Examples from a data file: :func:`load_table` for a directory or a table file, else
    :func:`~thinklean.data.jsonl.load_jsonl`."""
    if is_table(path):
        return load_table(path, require_solution=require_solution, limit=limit, prompt_field=prompt_field,
                          answer_field=answer_field, split=split)
    return load_jsonl(path, require_solution=require_solution, limit=limit, prompt_field=prompt_field,
                      answer_field=answer_field)
