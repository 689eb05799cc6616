"""diffcourse.animation: jshtml animations with no remote stylesheet and no icon font."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.animation import FuncAnimation  # noqa: E402

from diffcourse.animation import show, to_html  # noqa: E402


def _anim(frames=3):
    fig, ax = plt.subplots(figsize=(1, 1))
    (line,) = ax.plot([0, 1], [0, 0])
    return FuncAnimation(fig, lambda i: line.set_ydata([i, i]) or (line,), frames=frames)


def test_matplotlib_player_still_loads_a_cdn_stylesheet():
    """The reason the module exists: if matplotlib stops doing this, the module can go."""
    raw = _anim().to_jshtml()
    assert "https://" in raw and "font-awesome" in raw, "matplotlib's jshtml no longer links a CDN stylesheet"


def test_html_fetches_nothing_remote_and_keeps_every_control():
    html = to_html(_anim(frames=4))
    assert "http://" not in html and "https://" not in html, "the animation HTML still references a remote host"
    assert 'class="fa' not in html, "an icon-font class is left; it would render as an empty box offline"
    for title in ("Play", "Pause", "Next frame", "Previous frame", "First frame", "Last frame", "Play backwards"):
        assert f'title="{title}"' in html, f"the player lost its {title!r} button"
    assert html.count("data:image/png;base64") >= 4, "expected one embedded PNG per frame (4 frames)"


def test_show_returns_displayable_html_and_closes_the_figure():
    anim = _anim()
    n_before = len(plt.get_fignums())
    out = show(anim)
    assert "<button" in out.data and "https://" not in out.data
    assert len(plt.get_fignums()) == n_before - 1, "show() should close the animation's figure"
