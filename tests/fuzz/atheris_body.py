"""Coverage-guided fuzzing of extract_model with atheris (libFuzzer).

Not collected by pytest and not part of `make test`: run it with `make fuzz`
(FUZZ_SECONDS bounds it; atheris is installed into .venv on first use). It
adds what hypothesis lacks: coverage feedback and libFuzzer's comparison
tracing, which finds the spellings that reach deep branches (a key that reads
as "model", a charset parameter, a gzip header) without being told them.

Each input picks a Content-Type, a Content-Encoding and the decoding
configuration, then the body; the oracle is the hypothesis suite's
(tests/fuzz/body_oracle.py): only RequestError may escape, and a returned
model is what every upstream parser reads from the forwarded bytes.
"""

from __future__ import annotations

import gzip
import sys
import zlib
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["gateway"]):
    from gateway.request import body as request_body  # noqa: F401  (instrumented for coverage)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fuzz.body_oracle import BOTH, check  # noqa: E402

CONTENT_TYPES = [None, "application/json", "application/json; charset=utf-8", "text/plain"]
ENCODINGS = [None, "gzip", "deflate", "identity"]
DECODE = [frozenset(), BOTH]
SEEDS = [
    b'{"model":"small-2","messages":[{"role":"user","content":"hi"}]}',
    b'{"model":"a","Model":"b"}',
    b'{"\\u006dodel":"a","x":[1,2.5e3,null,true]}',
]


def one_input(data: bytes) -> None:
    """Byte 0 chooses the headers and configuration; the rest is the body (for
    choices >= 240 its first line is a Content-Type of the fuzzer's own)."""
    choice, rest = (data[0], data[1:]) if data else (0, b"")
    content_type = CONTENT_TYPES[choice % 4]
    if choice >= 240:
        line, _, rest = rest.partition(b"\n")
        content_type = line.decode("utf-8", "replace")
    encoding = ENCODINGS[(choice >> 2) % 4]
    decode = DECODE[(choice >> 4) % 2]
    body = rest
    if encoding == "gzip" and choice & 0x80:
        body = gzip.compress(body)  # also reach the parser behind a valid gzip layer
    elif encoding == "deflate" and choice & 0x80:
        body = zlib.compress(body)
    check(body, content_type, encoding, decode, max_bytes=1 << 16)


def main() -> None:
    corpus = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
    for directory in corpus[:1]:
        Path(directory).mkdir(parents=True, exist_ok=True)
        if not any(Path(directory).iterdir()):
            for index, seed in enumerate(SEEDS):
                Path(directory, f"seed-{index}").write_bytes(b"\x01" + seed)  # application/json, no coding
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
