"""The PNG plots the tools write (a training run's loss curve, the recipe's bits per
character): one way to make a figure and one way to save it.

A figure is a matplotlib `Figure` of its own with the Agg canvas, not one from pyplot, so
the process's matplotlib backend (a notebook's inline one, say) is left as it was; it is
laid out tightly and written atomically (`atomic_path`) at 100 dpi. matplotlib is imported
only when a figure is made.
"""
from llama_np.files.atomic import atomic_path


def new_figure(size):
    """An empty Figure of `size` (width, height) inches, on the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, png_path):
    """Lay `fig` out tightly and write it to `png_path` as a PNG, atomically."""
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
