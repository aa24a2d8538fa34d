"""Draw the HealthiVert icon: a sagittal column of three vertebral bodies, the middle one
wedge-compressed, with the dashed outline of its pseudo-healthy (pre-fracture) shape and the lost
height shaded between them.

Writes a 128x128 RGBA PNG to ``HealthiVert.png`` (Extensions Index catalogue icon, repository
root) and ``Resources/Icons/HealthiVert.png`` (module icon). Deterministic: no date or software
version in the PNG metadata, so re-running it changes nothing unless the drawing changes.

Usage (from anywhere): ``python scripts/make_icon.py [--show PATH]``
(``--show`` also writes an 8x enlarged copy for looking at the details.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch, Polygon  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = (ROOT / "HealthiVert.png", ROOT / "Resources" / "Icons" / "HealthiVert.png")
SIZE = 128  # pixels; the Extensions Index asks for 128x128

# Flat palette
BACKGROUND = "#1d3557"  # navy tile
BONE = "#edf2f4"  # healthy vertebral body
FRACTURED = "#f4a261"  # compressed body
LOSS = "#e63946"  # lost height
OUTLINE = "#8ecae6"  # pseudo-healthy outline

# Geometry in pixels, y up. Anterior is on the left, as in a sagittal view facing left.
X0, X1 = 16.0, 80.0  # anterior and posterior walls of the vertebral bodies
BODY_H = 28.0
TOP_Y0, MID_Y0, BOT_Y0 = 86.0, 50.0, 14.0  # inferior endplates of the three bodies
WEDGE_ANTERIOR_H, WEDGE_POSTERIOR_H = 10.0, 22.0  # heights of the compressed body
RADIUS = 6.0
CANAL = 8.0  # spinal canal between the bodies and the posterior elements


def _posterior_element(y0: float) -> list[tuple[float, float]]:
    """Pedicle, lamina and spinous process of the vertebra whose body starts at ``y0``, pointing
    posteriorly and caudally."""
    x = X1 + CANAL
    return [(x, y0 + 22), (x + 9, y0 + 21), (x + 23, y0 + 5), (x + 20, y0 + 1), (x + 8, y0 + 9), (x, y0 + 9)]


def _rounded_box(x0: float, y0: float, w: float, h: float, **kw) -> FancyBboxPatch:
    r = min(RADIUS, w / 2, h / 2)
    return FancyBboxPatch(
        (x0 + r, y0 + r), w - 2 * r, h - 2 * r, boxstyle=f"round,pad={r}", mutation_aspect=1, **kw
    )


def draw(path_list: list[Path], enlarged: Path | None = None) -> None:
    fig = plt.figure(figsize=(1, 1), dpi=SIZE)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, SIZE)
    ax.set_ylim(0, SIZE)
    ax.set_axis_off()
    fig.patch.set_alpha(0.0)

    # rounded tile
    ax.add_patch(
        FancyBboxPatch((14, 14), SIZE - 28, SIZE - 28, boxstyle="round,pad=10", fc=BACKGROUND, ec="none")
    )

    # posterior elements (all intact) and the healthy neighbours' bodies
    for y0 in (TOP_Y0, MID_Y0, BOT_Y0):
        ax.add_patch(Polygon(_posterior_element(y0), closed=True, fc=BONE, ec=BONE, lw=2.0, joinstyle="round"))
    for y0 in (TOP_Y0, BOT_Y0):
        ax.add_patch(_rounded_box(X0, y0, X1 - X0, BODY_H, fc=BONE, ec="none"))

    # compressed middle body: flat inferior endplate, superior endplate sloping down anteriorly;
    # both fills are clipped to the rounded pseudo-healthy outline
    healthy = _rounded_box(X0, MID_Y0, X1 - X0, BODY_H, fc="none", ec="none")
    ax.add_patch(healthy)
    ya, yp = MID_Y0 + WEDGE_ANTERIOR_H, MID_Y0 + WEDGE_POSTERIOR_H
    top = MID_Y0 + BODY_H
    lost = Polygon([(X0, ya), (X1, yp), (X1, top), (X0, top)], closed=True, fc=LOSS, alpha=0.75, ec="none")
    wedge = Polygon([(X0, MID_Y0), (X1, MID_Y0), (X1, yp), (X0, ya)], closed=True, fc=FRACTURED, ec="none")
    for patch in (lost, wedge):
        ax.add_patch(patch)
        patch.set_clip_path(healthy)

    # pseudo-healthy outline, dashed
    ax.add_patch(
        _rounded_box(X0, MID_Y0, X1 - X0, BODY_H, fc="none", ec=OUTLINE, lw=1.4, linestyle=(0, (2.2, 1.6)))
    )

    for path in path_list:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=SIZE, transparent=True, metadata={"Software": None})
    if enlarged is not None:
        fig.savefig(enlarged, dpi=SIZE * 8, transparent=True, metadata={"Software": None})
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show", type=Path, help="also write an 8x enlarged copy here")
    args = parser.parse_args(argv)
    draw(list(OUTPUTS), args.show)
    for p in OUTPUTS:
        print(p.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
