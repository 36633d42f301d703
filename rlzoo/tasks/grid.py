"""Sample grids: each image with its caption underneath (the prompt, and a verdict or a score)."""
from __future__ import annotations

import io
import textwrap
from pathlib import Path

from torch import Tensor


def image_grid(images: Tensor, captions: list[str], path: Path, columns: int = 8, tile: int = 120,
               frames: list[tuple[int, int, int]] | None = None, lines: int = 4) -> None:
    """A PNG of (B, 3, H, W) images in [0, 1], each scaled to `tile` pixels (nearest neighbour, so
    small renders stay crisp), with its caption wrapped underneath; `frames` colours a border per
    image and the caption's first line."""
    from PIL import Image, ImageDraw

    from rlzoo.runs.files import atomic_write_bytes

    n = len(images)
    frame, line_height = (3 if frames else 0), 11
    cell_w, cell_h = tile + 2 * frame + 6, tile + 2 * frame + line_height * lines + 6
    rows = (n + columns - 1) // columns
    canvas = Image.new("RGB", (min(n, columns) * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        r, c = divmod(i, columns)
        x, y = c * cell_w + 3, r * cell_h + 3
        colour = frames[i] if frames else (0, 0, 0)
        if frames:
            draw.rectangle([x, y, x + tile + 2 * frame - 1, y + tile + 2 * frame - 1], fill=colour)
        pixels = images[i].float().cpu().clamp(0, 1).mul(255).byte().permute(1, 2, 0).numpy()
        canvas.paste(Image.fromarray(pixels).resize((tile, tile), Image.Resampling.NEAREST), (x + frame, y + frame))
        wrapped = textwrap.wrap(captions[i], width=max(8, (tile + 2 * frame) // 6))[:lines]
        for k, text in enumerate(wrapped):
            draw.text((x, y + tile + 2 * frame + 2 + k * line_height), text, fill=colour if k == 0 else (0, 0, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    atomic_write_bytes(Path(path), buffer.getvalue())
