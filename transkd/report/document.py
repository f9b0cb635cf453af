"""A report as a list of blocks, rendered to Markdown and to one self-contained HTML page.

Both renderings come from the same blocks so they say the same thing; HTML embeds each figure as
a base64 data URI, so the page is a single file with no external reference.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# --------------------------------------------------------------------------- the document

@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str  # plain text; `backticks` mark code


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    numeric: set[int] = field(default_factory=set)  # right-aligned columns


@dataclass
class Figure:
    path: Path  # absolute; rendered relative to the report (Markdown) or embedded (HTML)
    caption: str


@dataclass
class Collapsed:
    summary: str
    text: str
    language: str = "yaml"


Block = Heading | Paragraph | Bullets | Table | Figure | Collapsed


def render_markdown(blocks: Sequence[Block], base: Path) -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            out.append(block.text)
        elif isinstance(block, Bullets):
            out.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, Table):
            cells = [[c.replace("|", "\\|") for c in row] for row in [block.header, *block.rows]]
            rule = ["---:" if i in block.numeric else "---" for i in range(len(block.header))]
            out.append("\n".join("| " + " | ".join(row) + " |" for row in [cells[0], rule, *cells[1:]]))
        elif isinstance(block, Figure):
            relative = Path(block.path).relative_to(base).as_posix()
            out.append(f"![{Path(block.path).stem}]({relative})\n\n*{block.caption}*")
        elif isinstance(block, Collapsed):
            out.append(f"<details><summary>{html.escape(block.summary)}</summary>\n\n"
                       f"```{block.language}\n{block.text.rstrip()}\n```\n\n</details>")
    return "\n\n".join(out) + "\n"


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; }
figure img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #555; }
code { background: #f4f4f4; padding: 0 0.2em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
details { margin: 0.5em 0 1em; }
summary { cursor: pointer; }
""".strip()


def _inline_html(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def render_html(blocks: Sequence[Block], title: str) -> str:
    """One HTML page with every figure inlined as a base64 data URI (no external references)."""
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{html.escape(title)}</title>", f"<style>\n{_STYLE}\n</style>", "</head>", "<body>"]
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{_inline_html(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            out.append(f"<p>{_inline_html(block.text)}</p>")
        elif isinstance(block, Bullets):
            out.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in block.items) + "</ul>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{_inline_html(c)}</th>" for c in block.header)
            rows = "".join(
                "<tr>" + "".join(f'<td class="num">{_inline_html(c)}</td>' if i in block.numeric
                                 else f"<td>{_inline_html(c)}</td>" for i, c in enumerate(row)) + "</tr>"
                for row in block.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Figure):
            data = base64.b64encode(Path(block.path).read_bytes()).decode("ascii")
            out.append(f'<figure><img alt="{html.escape(Path(block.path).stem)}" '
                       f'src="data:image/png;base64,{data}"><figcaption>{_inline_html(block.caption)}'
                       "</figcaption></figure>")
        elif isinstance(block, Collapsed):
            out.append(f"<details><summary>{html.escape(block.summary)}</summary>"
                       f"<pre><code>{html.escape(block.text.rstrip())}</code></pre></details>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"
