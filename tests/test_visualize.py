"""Pictures: wrapped labels that are never cut off, and image grids that refuse latents."""

import pytest
import torch
from matplotlib.text import Text

from gas_solver.errors import ConfigError
from gas_solver.visualize import (
    LABEL_WIDTH,
    comparison_figure,
    image_grid,
    save_comparison_grid,
    wrap_label,
)

LONG = "GAS-4 runs/a/very/long/folder/name/of/a/training/run/" * 3 + "solver.safetensors"


@pytest.mark.parametrize(
    "text",
    [LONG, "teacher", "", "x" * 200, "unipc:nfe=4,order=3,variant=bh1,grid=logsnr", "a b " * 40],
)
@pytest.mark.parametrize("width", [1, 7, 30])
def test_wrap_label_keeps_every_character_within_the_width(text, width):
    lines = wrap_label(text, width)
    assert lines and all(len(line) <= width for line in lines)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")


def test_wrap_label_breaks_paths_after_separators():
    assert wrap_label("GS-4 runs/train/solver.safetensors", 12) == [
        "GS-4 runs/",
        "train/",
        "solver.safet",  # no separator inside: cut at the width
        "ensors",
    ]
    assert wrap_label("teacher") == ["teacher"]
    assert all(len(line) <= LABEL_WIDTH for line in wrap_label(LONG)) and len(wrap_label(LONG)) > 1


def test_comparison_figure_shows_long_labels_whole():
    images = torch.rand(8, 3, 16, 16) * 2 - 1
    fig = comparison_figure({"teacher": images, LONG: images, "ddim:nfe=4": images})
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        box = fig.bbox
        titles = [ax.get_title(loc="left") for ax in fig.axes]
        assert titles[0] == "teacher" and titles[2] == "ddim:nfe=4"
        assert titles[1].count("\n") >= 1 and titles[1].replace("\n", "") == LONG  # wrapped
        texts = [t for t in fig.findobj(Text) if t.get_text() in titles]
        assert len(texts) == len(titles)
        for text in texts:  # every label lies inside the picture: nothing is cut
            extent = text.get_window_extent(renderer)
            assert box.x0 <= extent.x0 and extent.x1 <= box.x1, text.get_text()
            assert box.y0 <= extent.y0 and extent.y1 <= box.y1, text.get_text()
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_comparison_grid_is_written(tmp_path):
    path = save_comparison_grid({LONG: torch.zeros(4, 1, 8, 8)}, tmp_path / "c.png")
    assert path.is_file() and path.stat().st_size > 0


def test_image_grid_refuses_latents():
    with pytest.raises(ConfigError, match="decode latent samples first"):
        image_grid(torch.zeros(2, 4, 8, 8))
