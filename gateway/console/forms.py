"""Reading a console form: URL-encoded only (the console uploads no files), bounded in
size and field count, valid UTF-8, or it is no form at all (None)."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.datastructures import ImmutableMultiDict
from starlette.requests import Request

FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FIELDS = 1000
Form = ImmutableMultiDict  # .get(name) for one value, .getlist(name) for a repeated field


async def read_form(request: Request, max_bytes: int) -> Form | None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    length = request.headers.get("content-length")
    if content_type != FORM_TYPE or length is None or not length.isdigit() or int(length) > max_bytes:
        return None
    body = await request.body()
    if len(body) > max_bytes:
        return None
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                          errors="strict", max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        return None
    return ImmutableMultiDict(pairs)
