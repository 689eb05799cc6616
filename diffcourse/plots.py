"""Small plotting helpers shared by the book's pages and the notebooks (book §2.1 onwards)."""
from __future__ import annotations

import html
import numbers

import torch

__all__ = ["tile", "show_digits", "html_table"]


def tile(x: torch.Tensor, ncol: int, pad_value: float = -1.0) -> torch.Tensor:
    """Images (N, 1, H, W) -> one (rows * (H + 2), ncol * (W + 2)) picture with 1-pixel gaps (book §2.1).

    A last row with fewer than ``ncol`` images is filled with ``pad_value``.
    """
    x = x.detach().float().cpu().clamp(-1, 1)
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected grey images (N, 1, H, W), got shape {tuple(x.shape)}")
    missing = (-len(x)) % ncol
    if missing:
        x = torch.cat([x, torch.full((missing, *x.shape[1:]), pad_value)])
    x = torch.nn.functional.pad(x, (1, 1, 1, 1), value=pad_value)[:, 0]     # (N, H+2, W+2)
    rows = [torch.cat(list(x[i:i + ncol]), dim=1) for i in range(0, len(x), ncol)]
    return torch.cat(rows, dim=0)


def show_digits(ax, x: torch.Tensor, ncol: int) -> None:
    """Draw images (N, 1, H, W) in [-1, 1] as one tiled picture on ``ax``, ink dark (book §2.1)."""
    ax.imshow(tile(x, ncol), cmap="gray_r", vmin=-1, vmax=1)
    ax.set_xticks([]), ax.set_yticks([])


def html_table(header: list[str], rows: list[list], caption: str | None = None):
    """A table of measured values as HTML for a book page (book §2.7, §3.6): numbers right-aligned.

    Rendered as a real table in the built book whatever the notebook's Markdown settings; cells are
    escaped, so ``<`` or ``|`` in a label shows as typed. Returns an ``IPython.display.HTML``.
    """
    from IPython.display import HTML

    def cell(value, tag: str) -> str:
        text = html.escape(str(value))
        numeric = isinstance(value, numbers.Number) or text.lstrip("+-−").replace(",", "").replace(".", "", 1)\
            .rstrip("%×").isdigit()
        return f"<{tag} style='text-align:{'right' if numeric and tag == 'td' else 'left'}'>{text}</{tag}>"

    head = "<tr>" + "".join(cell(h, "th") for h in header) + "</tr>"
    body = "".join("<tr>" + "".join(cell(v, "td") for v in row) + "</tr>" for row in rows)
    title = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return HTML(f"<table class='table'>{title}<thead>{head}</thead><tbody>{body}</tbody></table>")
