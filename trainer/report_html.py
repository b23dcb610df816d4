"""Self-contained HTML pages (images inlined as base64 PNG, one inline style sheet, no script, no network)."""
from __future__ import annotations

import base64
import html
from pathlib import Path

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1.5em auto; max-width: 1200px;
       padding: 0 1em; color: #222; background: #fff; }
h1 { font-size: 1.6em; border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: .6em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #eee; } td.l, th.l { text-align: left; }
tr.flag td { background: #fdecea; }
.figs { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .85em; color: #555; }
.note { color: #555; font-size: .9em; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: .85em; }
"""


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def img(path: str | Path, caption: str = "", alt: str = "") -> str:
    """An ``<figure>`` with the PNG inlined as a data URI (the page stays one file)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt or caption or Path(path).stem)}">'
            f"{cap}</figure>")


def table(head: list[str], rows: list[list], left: int = 1, row_class: list[str] | None = None) -> str:
    """HTML table; the first ``left`` columns left-aligned; ``row_class`` per row (e.g. 'flag')."""
    def cell(tag, i, v):
        return f'<{tag} class="l">{esc(v)}</{tag}>' if i < left else f"<{tag}>{esc(v)}</{tag}>"

    out = ["<table>", "<tr>" + "".join(cell("th", i, h) for i, h in enumerate(head)) + "</tr>"]
    for k, r in enumerate(rows):
        cls = f' class="{esc(row_class[k])}"' if row_class and row_class[k] else ""
        out.append(f"<tr{cls}>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def page(title: str, sections: list[tuple[str, str]], intro: str = "") -> str:
    """A complete HTML document: ``<h1>title``, then one ``<h2>`` per ``(heading, html body)`` section."""
    body = [f"<h1>{esc(title)}</h1>"]
    if intro:
        body.append(f'<p class="note">{intro}</p>')
    for heading, content in sections:
        body.append(f"<h2>{esc(heading)}</h2>\n{content}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
