"""Our JSON files (checkpoint cards, engine sidecars, shape profiles): read, then check what they are."""

from __future__ import annotations

import json
from pathlib import Path


def read_json_document(
    path: str | Path, *, kind: str, format_name: str, version_key: str, version: int, error: type[Exception], hint: str = ""
) -> dict:
    """The JSON object at ``path`` after checking its ``"format"`` and version fields.

    Raises ``error`` (one line naming ``path`` and ``kind``, ending with ``hint``) when the file is
    missing, is not JSON, is another kind of document, or has another version.
    """
    path = Path(path)
    suffix = f"; {hint}" if hint else ""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{kind} {path} does not exist{suffix}") from None
    except IsADirectoryError:
        raise error(f"{path} is a folder; expected a {kind} file{suffix}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as decode_error:
        raise error(f"{path} is not valid JSON, so not an mlff-export {kind} ({decode_error}){suffix}") from None
    if not isinstance(document, dict) or document.get("format") != format_name:
        raise error(f'{path} is not an mlff-export {kind} (expected "format": "{format_name}"){suffix}')
    if document.get(version_key) != version:
        raise error(f"{path}: {kind} version {document.get(version_key)!r}, this mlff-export reads version {version}{suffix}")
    return document
