"""HTML from email: make it safe to display, and turn it into readable text.

``sanitize_html`` is the only thing between a sender's HTML and a reader's browser, so it
works from an allowlist (ammonia, through ``nh3``) rather than by removing known-bad
things. ``html_to_text`` is for places that need words, not markup: previews, the text
part of an outgoing HTML message, search.
"""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import nh3

__all__ = ["html_to_text", "sanitize_html"]

# The formatting vocabulary of real mail (newsletters are table layouts with <font> and
# <center>). Everything else is dropped with its text kept, except the tags below whose
# content is code or invisible metadata rather than something the sender meant to show.
_ALLOWED_TAGS = frozenset(
    {
        "a", "abbr", "acronym", "address", "article", "aside", "b", "bdi", "bdo", "big",
        "blockquote", "br", "caption", "center", "cite", "code", "col", "colgroup", "dd",
        "del", "details", "dfn", "div", "dl", "dt", "em", "figcaption", "figure", "font",
        "footer", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "i", "img", "ins",
        "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "samp", "section", "small", "span",
        "strike", "strong", "sub", "summary", "sup", "table", "tbody", "td", "tfoot", "th",
        "thead", "time", "tr", "tt", "u", "ul", "var", "wbr",
    }
)  # fmt: skip

_DROPPED_WITH_CONTENT = frozenset(
    {
        "script", "style", "title", "template", "noscript", "iframe", "frame", "frameset",
        "noframes", "object", "embed", "applet", "noembed", "xmp", "svg", "math", "head",
        "textarea", "select",
    }
)  # fmt: skip

# Presentational attributes only. No "class" or "id": without the sender's <style> block
# (always dropped) classes do nothing for the sender, but they could pick up the hosting
# page's own CSS, and ids can clobber the page's DOM.
_LAYOUT = {"align", "valign", "width", "height", "bgcolor", "border", "nowrap"}
_ALLOWED_ATTRIBUTES: dict[str, set[str]] = {
    "*": {"style", "dir", "lang", "title"},
    "a": {"href", "name"},
    "img": {"src", "alt", "width", "height", "border", "align", "hspace", "vspace"},
    "font": {"color", "face", "size"},
    "table": _LAYOUT | {"cellpadding", "cellspacing", "summary"},
    "td": _LAYOUT | {"colspan", "rowspan"},
    "th": _LAYOUT | {"colspan", "rowspan", "scope"},
    "tr": _LAYOUT,
    "tbody": _LAYOUT,
    "thead": _LAYOUT,
    "tfoot": _LAYOUT,
    "col": _LAYOUT | {"span"},
    "colgroup": _LAYOUT | {"span"},
    "div": {"align"},
    "p": {"align"},
    "hr": {"align", "width", "size", "noshade"},
    "ol": {"start", "type", "reversed"},
    "ul": {"type"},
    "li": {"value"},
    # No "cite" on blockquote/q: ammonia does not filter its URL scheme, so it would carry
    # a javascript: URL through, and nothing shows it to the reader anyway.
    "time": {"datetime"},
}

# cid: is how a message's HTML points at its own inline images (RFC 2392). data: is left
# out on purpose: the same list governs <a href>, where data:text/html is a script vector.
_URL_SCHEMES = frozenset({"http", "https", "mailto", "cid"})

# Layout and typography. Left out: position/z-index/top/left/transform (a message could
# draw over the reader's interface), behavior and -moz-binding (script in old engines),
# and anything whose job is to load an image or font from elsewhere. What is kept is
# still checked for overlaying values (_overlays).
_STYLE_PROPERTIES = frozenset(
    {
        "background", "background-color", "border", "border-bottom", "border-bottom-color",
        "border-bottom-style", "border-bottom-width", "border-collapse", "border-color",
        "border-left", "border-left-color", "border-left-style", "border-left-width",
        "border-radius", "border-right", "border-right-color", "border-right-style",
        "border-right-width", "border-spacing", "border-style", "border-top",
        "border-top-color", "border-top-style", "border-top-width", "border-width", "clear",
        "color", "direction", "display", "float", "font", "font-family", "font-size",
        "font-style", "font-variant", "font-weight", "height", "letter-spacing",
        "line-height", "list-style-type", "margin", "margin-bottom", "margin-left",
        "margin-right", "margin-top", "max-height", "max-width", "min-height", "min-width",
        "overflow", "padding", "padding-bottom", "padding-left", "padding-right",
        "padding-top", "table-layout", "text-align", "text-decoration", "text-indent",
        "text-transform", "vertical-align", "white-space", "width", "word-break",
        "word-spacing", "word-wrap",
    }
)  # fmt: skip

# Even an allowed property can carry a function: url() (a request, or script in old
# engines), expression() (script in old IE). ammonia has already decoded CSS escapes and
# dropped comments by the time this sees a value, but it is matched loosely anyway.
_DANGEROUS_STYLE = re.compile(
    r"url\s*\(|expression|javascript|vbscript|behavior|binding|@import|\\|/\*|&#|<", re.I
)


# Allowed properties can still draw a message over the reader's interface: a negative
# margin or indent pulls it up or sideways over whatever surrounds it, and a huge or
# viewport-sized box (height: 99999px, 100vh, width: 300%) covers the screen. Such
# declarations are dropped one by one; the rest of the style stays.
# A number not inside a word or a #hex colour.
_NUMBER = re.compile(r"(?<![#\w.-])(-?)\s*(\d*\.?\d+)\s*([a-z%]*)", re.I)
# Rough CSS pixels per unit (font-relative units at the usual 16px); unitless numbers
# are line-height factors.
_PX_PER_UNIT = {
    "": 16.0, "px": 1.0, "pt": 4 / 3, "pc": 16.0, "in": 96.0, "cm": 96 / 2.54,
    "mm": 96 / 25.4, "q": 96 / 101.6, "em": 16.0, "rem": 16.0, "ex": 8.0, "ch": 8.0,
}  # fmt: skip
_MAX_PX = 2000.0
_UNITLESS_OK = frozenset({"font-weight"})


def _overlays(declaration: str) -> bool:
    prop, _, value = declaration.partition(":")
    prop = prop.strip().lower()
    for match in _NUMBER.finditer(value):
        sign, number, unit = match.group(1), float(match.group(2)), match.group(3).lower()
        if number == 0:
            continue
        if sign:
            return True  # negative: pulled out of its place
        if unit.startswith("v") or unit in {"dvh", "svh", "lvh"}:
            return True  # sized by the reader's window, not the message
        if unit == "%":
            if number > 100:
                return True
            continue
        if prop in _UNITLESS_OK and not unit:
            continue
        if number * _PX_PER_UNIT.get(unit, 16.0) > _MAX_PX:
            return True
    return False


def _drop_dangerous_style(element: str, attribute: str, value: str) -> str | None:
    if attribute != "style":
        return value
    if _DANGEROUS_STYLE.search(value):
        return None
    kept = [d.strip() for d in value.split(";") if d.strip() and not _overlays(d)]
    return ";".join(kept) if kept else None


_CLEANER_OPTIONS: dict[str, Any] = {
    "tags": set(_ALLOWED_TAGS),
    "clean_content_tags": set(_DROPPED_WITH_CONTENT),
    "attributes": _ALLOWED_ATTRIBUTES,
    "strip_comments": True,
    "link_rel": "noopener noreferrer",
    "url_schemes": set(_URL_SCHEMES),
    "filter_style_properties": set(_STYLE_PROPERTIES),
    # A relative URL would resolve against our own web origin, turning a click in a
    # message into a request to the application itself.
    "url_relative": "deny",
    "set_tag_attribute_values": {"a": {"target": "_blank"}},
}
_CLEANER = nh3.Cleaner(**_CLEANER_OPTIONS)
# The same rules plus a look at every style value. A Python callback per attribute
# doubles the cost of a clean, so it only runs when the first clean left a style with a
# function or an escape in it.
_STYLE_CHECKING_CLEANER = nh3.Cleaner(**_CLEANER_OPTIONS, attribute_filter=_drop_dangerous_style)


# Cheap pre-test for _overlays: a negative number, three or more digits, or a unit
# whose small numbers are already large (viewport, percent, inch, centimetre).
_MAYBE_OVERLAY = re.compile(r"-\s*\.?\d|\d{3}|\d\s*(?:v|%|in|cm)", re.I)


def _has_suspicious_style(cleaned: str) -> bool:
    # ammonia's output quotes every attribute value with '"' and escapes '"' inside
    # it, so a style value runs exactly to the next '"'. Text that happens to read
    # ' style="' only costs the careful second clean.
    start = cleaned.find(' style="')
    while start >= 0:
        value_start = start + 8
        end = cleaned.find('"', value_start)
        if end < 0:
            return True
        value = cleaned[value_start:end]
        if "(" in value or "\\" in value or _MAYBE_OVERLAY.search(value):
            return True
        start = cleaned.find(' style="', end)
    return False


def sanitize_html(html: str) -> str:
    """Return ``html`` reduced to inert formatting, safe to insert into a page.

    Promises: no script of any kind survives (no ``<script>``, no ``on*`` handlers, no
    ``javascript:``/``data:``/other URL schemes in any attribute, however encoded), no
    frames, objects, forms, ``<meta>`` or ``<base>``, no ``id``/``class``, and inline
    ``style`` only with plain layout properties, never a ``url()`` and nothing that can
    overlay the reader's interface (no positioning or z-index, no negative margins or
    indents, no box larger than 2000px or the window or its container). Links keep
    ``http(s):``, ``mailto:`` and ``cid:`` targets and gain ``rel="noopener noreferrer"``
    and ``target="_blank"``; relative URLs are removed. Remote images are kept: deciding
    whether to load them is the reader's interface's business. Never raises for any
    ``str``.
    """
    if "<" not in html and "&" not in html:
        # Plain text needs no parse; this is the common case for short HTML bodies
        # that are really text.
        return html
    cleaned = _CLEANER.clean(html)
    if _has_suspicious_style(cleaned):
        cleaned = _STYLE_CHECKING_CLEANER.clean(html)
    return cleaned


# html_to_text lets ammonia do the HTML parsing too: html5ever parses broken markup the
# way browsers do (which html.parser does not), drops invisible content, and hands back
# well-formed markup with only the tags that shape text, which a regular expression can
# then walk safely. It is also several times faster than html.parser.
_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "caption", "center", "dd", "details", "div", "dl",
        "dt", "figcaption", "figure", "footer", "form", "header", "hr", "main", "nav", "ol",
        "section", "summary", "tbody", "tfoot", "thead", "tr", "ul",
    }
)  # fmt: skip
_PARAGRAPH_TAGS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "table", "pre"})
_TEXT_SHAPING_TAGS = _BLOCK_TAGS | _PARAGRAPH_TAGS | {"a", "br", "img", "li", "td", "th"}
_INVISIBLE_TAGS = frozenset(
    {
        "script", "style", "title", "template", "noscript", "iframe", "frame", "frameset",
        "noframes", "object", "embed", "applet", "noembed", "svg", "math", "head", "select",
    }
)  # fmt: skip
_TEXT_CLEANER = nh3.Cleaner(
    tags=set(_TEXT_SHAPING_TAGS),
    clean_content_tags=set(_INVISIBLE_TAGS),
    attributes={"a": {"href"}, "img": {"alt"}},
    strip_comments=True,
    link_rel=None,
    url_schemes={"http", "https", "mailto"},
)
# ammonia's output is serialised HTML5: lower-case tag names, attribute values always
# double-quoted with '"' escaped, and '<' in text always escaped. That is what makes
# this tokeniser exact rather than approximate.
_TOKEN = re.compile(r"<(/?)([a-z0-9]+)([^>]*)>|([^<]+)")
_ATTRIBUTE = re.compile(r'([a-z]+)="([^"]*)"')


def _collapse_spaces(text: str, *, leading: bool) -> str:
    # str.split() rather than a regex: several times faster on the long text runs of
    # real mail. It also folds non-breaking and other Unicode spaces, which suits plain
    # text (layout made of &nbsp; means nothing there).
    words = text.split()
    if not words:
        return " " if leading and text else ""
    collapsed = " ".join(words)
    if leading and text[0].isspace():
        collapsed = " " + collapsed
    if text[-1].isspace():
        collapsed += " "
    return collapsed


class _TextBuilder:
    """Accumulates text with the line-break rules a browser's rendering implies."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pending_breaks = 0  # line breaks owed before the next visible text
        self.at_line_start = True

    def text(self, text: str, *, preformatted: bool = False) -> None:
        if not preformatted:
            text = _collapse_spaces(text, leading=not (self.at_line_start or self.pending_breaks))
        if not text:
            return
        if self.pending_breaks:
            if self.parts:
                # Spaces before a line break are invisible in a browser.
                self.parts[-1] = self.parts[-1].rstrip(" ")
                self.parts.append("\n" * self.pending_breaks)
            self.pending_breaks = 0
        self.parts.append(text)
        self.at_line_start = text.endswith("\n")

    def line_break(self, count: int) -> None:
        # Breaks are only owed, not written, so that runs of block tags give one blank
        # line rather than a stack of them, and none at the start or end.
        self.pending_breaks = max(self.pending_breaks, count)
        self.at_line_start = True

    def forced_break(self) -> None:
        # <br> is the one break that stacks: <br><br> is a deliberate blank line.
        self.pending_breaks += 1
        self.at_line_start = True

    def cell(self) -> None:
        if not self.at_line_start and not self.pending_breaks:
            self.parts.append("\t")
            self.at_line_start = True

    def result(self) -> str:
        return "".join(self.parts).rstrip()


def html_to_text(html: str) -> str:
    """Return the words of ``html`` as plain text a person can read.

    Block elements and ``<br>`` become line breaks, paragraphs and headings blank lines,
    list items ``- `` bullets, table cells tab-separated; entities are decoded; scripts,
    styles, the head and other invisible content are dropped; an http(s)/mailto link
    whose text does not show its target gets it appended as `` <url>``; an image shows
    its alt text in brackets. Whitespace is collapsed as a browser would, except inside
    ``<pre>``. Never raises for any ``str``: broken markup is read the way a browser
    would read it.
    """
    builder = _TextBuilder()
    pre_depth = 0
    link_href: str | None = None
    link_start = 0
    for match in _TOKEN.finditer(_TEXT_CLEANER.clean(html)):
        closing, tag, attributes, text = match.groups()
        if text is not None:
            builder.text(unescape(text), preformatted=pre_depth > 0)
        elif tag in _PARAGRAPH_TAGS:
            builder.line_break(2)
            if tag == "pre":
                pre_depth = max(0, pre_depth + (-1 if closing else 1))
        elif tag in _BLOCK_TAGS:
            builder.line_break(1)
        elif tag == "br":
            builder.forced_break()
        elif tag == "li":
            builder.line_break(1)
            if not closing:
                builder.text("- ")
        elif tag in ("td", "th"):
            if not closing:
                builder.cell()
        elif tag == "a" and not closing:
            href = dict(_ATTRIBUTE.findall(attributes)).get("href")
            link_href = unescape(href).strip() if href else None
            link_start = len(builder.parts)
        elif tag == "a" and link_href:
            shown = "".join(builder.parts[link_start:])
            target = link_href[7:] if link_href.lower().startswith("mailto:") else link_href
            # A link whose text already shows its address reads fine as it is.
            if shown.strip() and target not in shown:
                builder.text(f" <{target}>")
            link_href = None
        elif tag == "img":
            alt = unescape(dict(_ATTRIBUTE.findall(attributes)).get("alt", "")).strip()
            if alt:
                builder.text(f"[{alt}]")
    return builder.result()
