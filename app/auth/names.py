"""The one rule for the names of people: token holders (`jumpscope users add`) and raters.

A name is plain: ASCII letters, digits and `.`, `_`, `-`, 1 to 64 characters. So no rater is
called `=1+1` (a formula in a spreadsheet of ratings), U+202E + `admin` (text shown backwards),
or a Unicode look-alike of someone else's name.
"""

from __future__ import annotations

import re

NAME_MAX_CHARS = 64
NAME_RULE = f"ASCII letters, digits and . _ - only, 1 to {NAME_MAX_CHARS} characters"
"""The rule, as error messages and forms say it."""

NAME_PATTERN = rf"^[A-Za-z0-9._-]{{1,{NAME_MAX_CHARS}}}$"
"""The rule as a regular expression (for OpenAPI documents and HTML `pattern` attributes)."""

_PLAIN = re.compile(NAME_PATTERN.removeprefix("^").removesuffix("$"))


def is_plain_name(name: str) -> bool:
    """Whether `name` follows the rule (the whole of it: no surrounding spaces either)."""
    return _PLAIN.fullmatch(name) is not None


def check_name(name: str) -> str:
    """`name` itself when it follows the rule, else ValueError saying the rule (and the name, safely quoted)."""
    if not is_plain_name(name):
        shown = ascii(name[:40] + ("..." if len(name) > 40 else ""))
        raise ValueError(f"a name may hold {NAME_RULE}; got {shown}")
    return name
