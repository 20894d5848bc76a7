"""Parse untrusted JSON (request bodies, FHIR server answers) within a nesting limit.

``BRACHY_CDS_MAX_JSON_DEPTH`` (default 64) is enforced before the parser runs: a linear scan of the
raw bytes finds the deepest ``[``/``{`` nesting outside strings, so a body of a million brackets
costs one pass in C, never a deep recursion in the parser or in the code that walks the result.
Strict JSON only (RFC 8259): UTF-8 (or the UTF-16/32 forms ``json`` detects), no ``NaN`` or
``Infinity``. Error messages say what was wrong, never a value from the document.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

_STRING = re.compile(rb'"[^"]*+"')
"""A JSON string once escaped backslashes and quotes are gone (possessive: linear on an unclosed quote)."""
_NOT_BRACKET = bytes(byte for byte in range(256) if byte not in b"[]{}")
_STEP = [0] * 256
for _byte in b"[{":
    _STEP[_byte] = 1
for _byte in b"]}":
    _STEP[_byte] = -1


class JsonRejected(ValueError):
    """The document is not strict JSON, or nests deeper than allowed; ``str()`` is safe to show."""


def parse_json(raw: bytes, max_depth: int) -> Any:
    """Return the JSON value of ``raw``; raise JsonRejected when it is not JSON or nests deeper than ``max_depth``."""
    try:
        encoding = json.detect_encoding(raw)
        text = raw.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        raise JsonRejected("is not valid JSON (not UTF-8 text)") from None
    utf8 = raw if encoding == "utf-8" else text.encode("utf-8", "surrogatepass")
    if nesting_exceeds(utf8, max_depth):
        raise JsonRejected(f"nests arrays or objects deeper than {max_depth} levels")
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:  # cannot happen below the nesting limit; kept as a guard
        raise JsonRejected(f"nests arrays or objects deeper than {max_depth} levels") from None
    except ValueError:
        raise JsonRejected("is not valid JSON") from None


def nesting_exceeds(utf8: bytes, max_depth: int) -> bool:
    """True when the arrays/objects of the UTF-8 JSON text ``utf8`` nest deeper than ``max_depth``.

    Escaped backslashes and quotes are dropped first (escapes are read left to right, so
    ``\\\\`` then ``\\"`` is exact), then every string, then everything but brackets. For text that
    is not JSON the answer is only an estimate; the parser rejects that text anyway.
    """
    unescaped = utf8.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = _STRING.sub(b"", unescaped).translate(None, _NOT_BRACKET)
    if re.search(rb"[\[{]{%d}" % (max_depth + 1), brackets):
        return True  # the common attack, found without walking the brackets one by one
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > max_depth


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
