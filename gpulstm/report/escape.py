"""Text from a results file (machine names, benchmark names, parameters, skip reasons) is
data, never markup: these functions make any string safe to show on a terminal (rich), in
Markdown, in HTML and in a matplotlib label. Every renderer of the report goes through them.

- :func:`printable`: control characters, escape sequences and invisible format characters
  (ESC, CR, BEL, bidi overrides, ...) are written as ``\\x1b``-style escapes; a newline as a space.
- :func:`markdown`: :func:`printable` plus a backslash before every ASCII punctuation
  character Markdown gives a meaning to (CommonMark allows the escape before any of them;
  an underscore inside a word has none).
- :func:`rich_text`: a ``rich.text.Text`` (never parsed as rich markup, so ``[/]`` is text).
- :func:`html_text`: :func:`printable` plus HTML escaping (quotes included).
- :func:`mpl_label`: :func:`printable` with ``$`` escaped (matplotlib's mathtext).
"""
from __future__ import annotations

import html
import re

# what Markdown (GitHub's) reads as markup; '_' only where it can open or close emphasis
# (not inside a word: lstm_fb1 stays as written); ( ) > ! + mean nothing once [ ] < are escaped
# and no line starts with file text
_MARKDOWN_SPECIAL = re.compile(r"([\\`*{}\[\]<#|~&$]|(?<!\w)_|_(?!\w))")


def printable(text) -> str:
    """``str(text)`` with every non-printable character (``str.isprintable``) escaped."""
    s = str(text).replace("\r\n", " ").replace("\n", " ")
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in s)


def markdown(text) -> str:
    return _MARKDOWN_SPECIAL.sub(r"\\\1", printable(text))


def html_text(text) -> str:
    return html.escape(printable(text), quote=True)


def rich_text(text, style: str = ""):
    from rich.text import Text
    return Text(printable(text), style=style)


def mpl_label(text) -> str:
    return printable(text).replace("$", r"\$")
