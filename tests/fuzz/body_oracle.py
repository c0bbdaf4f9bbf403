"""The oracle of the body-parser fuzzing, shared by the hypothesis tests and the
atheris harness: what extract_model returns must be what every upstream
parser reads from the forwarded bytes."""

from __future__ import annotations

import gzip
import json
import unicodedata
import zlib
from typing import Any

from gateway.request.body import RequestError, extract_model

JSON = "application/json"
BOTH = frozenset({"gzip", "deflate"})
STATUSES = {400, 413, 415}


class _Duplicate(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({key for key, _ in pairs}) != len(pairs):
        raise _Duplicate()
    return dict(pairs)


def _no_constants(name: str) -> Any:
    raise ValueError(name)


def strict(data: bytes) -> Any:
    """RFC 8259 as strictly as json allows: UTF-8, no duplicates, no NaN."""
    return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def lenient_models(data: bytes) -> list[Any]:
    """What other parsers would take as the model of these bytes."""
    first_wins = json.loads(data, object_pairs_hook=lambda pairs: dict(reversed(pairs)))
    pairs = json.loads(data, object_pairs_hook=lambda pairs: pairs)
    # Go's encoding/json: an exact match, else the last case-insensitive one.
    folded = [value for key, value in pairs if key.casefold() == "model"]
    # A C parser that ends a key at NUL; a framework that trims and NFKC-folds keys.
    truncated = [value for key, value in pairs if key.partition("\x00")[0] == "model"]
    normalised = [value for key, value in pairs if unicodedata.normalize("NFKC", key).strip().casefold() == "model"]
    return [json.loads(data)["model"], first_wins["model"], folded[-1], truncated[-1], normalised[0], normalised[-1]]


def check(body: bytes, content_type: str | None = JSON, encoding: str | None = None,
          decode: frozenset[str] = BOTH, max_bytes: int = 1 << 20) -> str | None:
    try:
        model, forward, parsed = extract_model(body, content_type, encoding, max_bytes=max_bytes, decode_encodings=decode)
    except RequestError as error:
        assert error.status in STATUSES, error
        return None
    if encoding is None or encoding.strip(" \t").lower() == "identity":
        assert forward is body
    else:
        assert forward == _decompress(body, encoding)
    assert len(forward) <= max_bytes
    reference = strict(forward)
    assert parsed == reference
    assert model == reference["model"]
    assert all(other == model for other in lenient_models(forward)), lenient_models(forward)
    assert isinstance(model, str) and model.isprintable() and model.strip()
    # An upstream that NFKC-normalises names resolves the same name the policy does.
    assert unicodedata.normalize("NFKC", model).strip().casefold() == model.strip().casefold()
    return model


def _decompress(body: bytes, encoding: str) -> bytes:
    coding = encoding.strip(" \t").lower()
    return gzip.decompress(body) if coding in ("gzip", "x-gzip") else zlib.decompress(body)


