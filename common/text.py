"""Text from someone else's files, made safe to show: on a terminal and on a page.

A results folder travels; its strings (a host name, a version, a commit, a plan's skip reason) are
whatever its author wrote. Printed raw, an escape sequence retitles the window or clears the
screen; shown whole, a 60 MB string makes a page of hundreds of megabytes.
"""
from __future__ import annotations

import re

# C0 and C1 controls and DEL, the bidirectional overrides that reorder what a reader sees, and lone
# surrogates (a JSON escape that is no character: no terminal encoding can write one).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# The same less tab and newline, which a page shows as the white space they are.
_PAGE_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# What a page shows of one field: longer than any line the suite writes itself (a command line,
# an error naming a log file); the whole value stays in the JSON file.
PAGE_FIELD_CHARS = 500


def terminal(text: object) -> str:
    """`text` with every control character written as its escape (ESC as \\x1b, a newline as \\n):
    one field, one line, nothing the terminal acts on."""
    return _CONTROL.sub(_escaped, str(text))


def _escaped(match: re.Match) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def page_text(text: object) -> str:
    """`text` as a page may hold it: every control character but tab and newline written as its
    escape, as `terminal` writes it (a raw one is invalid in HTML, and a bidirectional override
    would reorder what the reader sees around it)."""
    return _PAGE_CONTROL.sub(_escaped, str(text))


def cap(text: str, limit: int = PAGE_FIELD_CHARS) -> str:
    """At most `limit` characters of `text`, and an ellipsis saying how long it is when cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters in all; the whole value is in the JSON file)"
