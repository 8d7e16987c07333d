"""User text shown inside Streamlit Markdown: run names, layer names, link parameters, file names, error messages.

Streamlit renders every `st.markdown`, `st.caption`, `st.info`/`warning`/`error`/`success`, `st.toast`, header and
widget label as Markdown with its own directives (`:red[...]`, `:material/icon:`), maths (`$...$`), links and
images. A run named `![x](http://host/a.png)` would load that image in every viewer's browser. `plain` escapes every
ASCII punctuation character (CommonMark's backslash escapes), so the text shows as written and nothing in it is
markup. Bare addresses (`http://host`, `www.host`, `a@host`) are made into links after escapes are resolved, and so
are `:emoji:` codes; an invisible word joiner (U+2060) before such a `:` or `@`, and after `www`, stops them. No
Streamlit here: pages call `plain` where they put user text into a Markdown string.
"""

from __future__ import annotations

import re

_PUNCTUATION = re.compile(r"[!-/:-@\[-`{-~]")  # every ASCII punctuation character: each may start markup
_WORD_UNDERSCORE = re.compile(r"(?<=[A-Za-z0-9])_(?=[A-Za-z0-9])")
_AUTOLINK = re.compile(r"(?<=[A-Za-z0-9])(?=[:@])|(?<=www)(?=\.)", re.IGNORECASE)  # where a bare link or :code: starts
JOINER = "\u2060"  # WORD JOINER: no width, no glyph


def plain(text: object, limit: int = 300) -> str:
    """`text` escaped for Markdown, on one line (newlines and runs of spaces become one space), at most `limit`
    characters before escaping. An underscore inside a word (`dense_1`) stays as it is: CommonMark never reads it as
    emphasis, so layer names read the same in the page and in its source."""
    words = " ".join(str(text).split())
    if len(words) > limit:
        words = words[: limit - 1] + "…"
    words = _AUTOLINK.sub(JOINER, words)
    inner = {match.start() for match in _WORD_UNDERSCORE.finditer(words)}
    return _PUNCTUATION.sub(lambda match: match.group() if match.start() in inner else "\\" + match.group(), words)


_CODE_SPAN = re.compile(r"`([^`\n]+)`")


def plain_with_code(text: object, limit: int = 4000) -> str:
    """`text` as `plain` makes it, except that its `code spans` (how core's messages quote layer names and flags)
    stay code spans. A code span's content is never markup, so only its delimiters need care: they are made longer
    than any run of backticks inside it."""
    words = " ".join(str(text).split())
    if len(words) > limit:
        words = words[: limit - 1] + "…"
    parts, last = [], 0
    for match in _CODE_SPAN.finditer(words):
        parts += [_spaced(words[last : match.start()], limit), code(match.group(1))]
        last = match.end()
    parts.append(_spaced(words[last:], limit))
    return "".join(parts)


def _spaced(text: str, limit: int) -> str:
    """`plain(text)` with the spaces it had at either end, which `plain` trims."""
    lead = " " if text[:1] == " " else ""
    trail = " " if text[-1:] == " " and text.strip() else ""
    return lead + plain(text, limit) + trail


def code(text: str) -> str:
    """`text` as a Markdown code span, whatever backticks it holds."""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"
