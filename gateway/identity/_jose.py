"""The one import of authlib's JOSE implementation.

authlib >= 1.6 warns on import that `authlib.jose` will move to `joserfc` in
authlib 2.0. The warning is silenced here, once, rather than printed at every
start. `authlib.deprecate` installs an "always" filter for its warning class
when first imported, so it is imported before our "ignore" filter goes on top.
"""

from __future__ import annotations

import warnings

from authlib.deprecate import AuthlibDeprecationWarning  # type: ignore[import-untyped]

with warnings.catch_warnings():
    warnings.simplefilter("ignore", AuthlibDeprecationWarning)
    from authlib.jose import JoseError, JsonWebKey, JsonWebSignature, Key, jwt  # type: ignore[import-untyped]

__all__ = ["JoseError", "JsonWebKey", "JsonWebSignature", "Key", "jwt"]
