"""The static map: a matplotlib scatter plot of the 2-D projection, as PNG bytes.

Drawn on a bare :class:`~matplotlib.figure.Figure` with the Agg canvas, never through pyplot,
so no global backend or figure state is touched (and no display is needed).
"""

from __future__ import annotations

import io

import numpy as np

# Distinct colours for the first 20 clusters (matplotlib's tab20, dark shades first); more
# clusters get evenly spaced hues.
_TAB20 = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#c7c7c7",
    "#dbdb8d",
    "#9edae5",
)
UNCLUSTERED = "#9a9a9a"
LEGEND_MAX = 20


def palette(k: int) -> list[str]:
    """``k`` distinct colours as #rrggbb, the same in the interactive and the static map."""
    if k <= len(_TAB20):
        return list(_TAB20[:k])
    import colorsys

    # The golden-ratio hue walk keeps neighbouring cluster numbers apart in colour.
    return [
        "#{:02x}{:02x}{:02x}".format(
            *(round(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.85))
        )
        for i in range(k)
    ]


def map_png(
    xy: np.ndarray,
    numbers: np.ndarray,
    legend: list[tuple[int, str, str]],
    title: str,
) -> bytes:
    """The map as a PNG (no metadata chunks).

    Args:
        xy: points in [0, 1]^2.
        numbers: each point's cluster number (0 = not clustered).
        legend: (number, name, colour) of every cluster, in legend order.
        title: drawn above the plot.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # The axes fit the points (aspect kept): the figure takes the shape of the map.
    low = xy.min(axis=0) if len(xy) else np.zeros(2)
    high = xy.max(axis=0) if len(xy) else np.ones(2)
    span = np.maximum(high - low, 1e-6)
    margin = 0.03 * span.max()
    height = float(np.clip(7.5 * span[1] / span[0], 3.0, 9.0))
    fig = Figure(figsize=(7.5, height), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    size = float(np.clip(3000 / max(len(xy), 1), 2, 30))
    for number, name, colour in legend:
        rows = numbers == number
        if rows.any():
            # "$" would start matplotlib's math mode: a label is text, nothing else.
            label = name.replace("$", r"\$")
            ax.scatter(xy[rows, 0], xy[rows, 1], s=size, c=colour, label=label, linewidths=0)
    ax.set_title(title.replace("$", r"\$"))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlim(low[0] - margin, high[0] + margin)
    ax.set_ylim(low[1] - margin, high[1] + margin)
    ax.set_aspect("equal", adjustable="box")
    if 1 < len(legend) <= LEGEND_MAX:
        ax.legend(
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
            fontsize=8,
            frameon=False,
            markerscale=max(1.0, 20 / size) ** 0.5,
        )
    fig.tight_layout()
    buffer = io.BytesIO()
    # metadata=None entries drop matplotlib's Software tag (a URL) from the PNG.
    # bbox_inches="tight": the legend beside the axes is part of the image, never clipped.
    fig.savefig(buffer, format="png", metadata={"Software": None}, bbox_inches="tight")
    return buffer.getvalue()
