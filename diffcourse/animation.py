"""Animations that play in the static book with no internet and no kernel (every chapter's motion figures).

matplotlib's ``Animation.to_jshtml`` embeds the frames and a small player in the page, but its
player loads its button icons from a font CDN. :func:`to_html` returns the same player with that
stylesheet removed and the icons drawn as plain Unicode symbols, so a page works offline and
fetches nothing from another host (the book's tests check that of every page).
"""
from __future__ import annotations

import re

__all__ = ["to_html", "show"]

# matplotlib's icon class -> a symbol every common font has
_ICONS = {
    "fa fa-minus": "\u2212",                       # decrease speed
    "fa fa-fast-backward": "|\u25c0\u25c0",        # first frame
    "fa fa-step-backward": "|\u25c0",              # previous frame
    "fa fa-play fa-flip-horizontal": "\u25c0",     # play backwards
    "fa fa-pause": "\u275a\u275a",                 # pause
    "fa fa-play": "\u25b6",                        # play
    "fa fa-step-forward": "\u25b6|",               # next frame
    "fa fa-fast-forward": "\u25b6\u25b6|",         # last frame
    "fa fa-plus": "+",                             # increase speed
}
_CDN_STYLESHEET = re.compile(r'<link rel="stylesheet"\s+href="https?://[^"]*font-awesome[^"]*">\s*')
_ICON = re.compile(r'<i class="(fa [^"]+)"></i>')


def to_html(anim, default_mode: str = "loop") -> str:
    """The animation as self-contained HTML: frames, player, no remote stylesheet, no icon font.

    ``anim``: a ``matplotlib.animation.Animation``; ``default_mode``: "loop", "once" or "reflect".
    Raises ``ValueError`` if matplotlib's player changed so that an icon has no replacement.
    """
    html = _CDN_STYLESHEET.sub("", anim.to_jshtml(default_mode=default_mode))

    def symbol(match: re.Match) -> str:
        if match.group(1) not in _ICONS:
            raise ValueError(f"unknown player icon {match.group(1)!r}; add it to diffcourse.animation._ICONS")
        return f'<span class="anim-icon">{_ICONS[match.group(1)]}</span>'

    return _ICON.sub(symbol, html)


def show(anim, default_mode: str = "loop"):
    """Display ``anim`` in a notebook or book page (an ``IPython.display.HTML``) and close its figure."""
    import matplotlib.pyplot as plt
    from IPython.display import HTML

    html = to_html(anim, default_mode)
    plt.close(anim._fig)
    return HTML(html)
