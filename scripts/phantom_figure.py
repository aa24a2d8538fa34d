"""Figure of a phantom spine: mid-sagittal CT, vertebra labels over it, coronal CT.

Usage (from the repository root):

    python scripts/phantom_figure.py --out docs/phantom.png [--levels T1-L5] [--spacing 1] [--seed 0]
    python scripts/phantom_figure.py --ct CASE_ct.nii.gz --seg CASE_seg.nii.gz --out fig.png

Without ``--ct``/``--seg`` a phantom is generated with HealthiVertLib.truth.phantom.make_phantom.
Images of any orientation are first resampled onto an LPS-aligned 1 mm grid.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def _to_lps(image: sitk.Image, spacing: float, interpolator, default: float) -> sitk.Image:
    """``image`` resampled on an identity-direction grid covering it."""
    size = np.array(image.GetSize())
    corners = np.array([[x, y, z] for x in (0, size[0] - 1) for y in (0, size[1] - 1) for z in (0, size[2] - 1)], float)
    world = np.array([image.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners])
    lo, hi = world.min(axis=0), world.max(axis=0)
    out_size = [int(np.ceil((hi[k] - lo[k]) / spacing)) + 1 for k in range(3)]
    return sitk.Resample(image, out_size, sitk.Transform(), interpolator, lo.tolist(), [spacing] * 3,
                         np.eye(3).ravel().tolist(), default, image.GetPixelID())


def draw(ct: sitk.Image, seg: sitk.Image, out: Path, title: str = "") -> None:
    """Write the three-panel PNG for a CT and its VerSe label map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    ct_lps = _to_lps(ct, 1.0, sitk.sitkLinear, -1024.0)
    seg_lps = _to_lps(seg, 1.0, sitk.sitkNearestNeighbor, 0)
    ct_a = sitk.GetArrayFromImage(ct_lps)  # (z, y, x), z increasing = superior
    seg_a = sitk.GetArrayFromImage(seg_lps)
    zz, yy, xx = np.nonzero(seg_a)
    ix = int(np.median(xx))
    sag_ct, sag_seg = ct_a[::-1, :, ix], seg_a[::-1, :, ix]  # rows superior -> inferior, columns anterior -> posterior
    # curved coronal reformat: on every axial row, the plane 12 mm behind the front of the vertebral bodies
    front = np.full(ct_a.shape[0], np.nan)
    for z in np.unique(zz):
        front[z] = yy[zz == z].min()
    rows = np.arange(ct_a.shape[0])
    known = np.isfinite(front)
    body_y = np.interp(rows, rows[known], front[known]) + 12
    body_y = np.clip(np.rint(np.convolve(np.pad(body_y, 7, mode="edge"), np.ones(15) / 15, mode="valid")), 0,
                     ct_a.shape[1] - 1).astype(int)
    cor_ct = ct_a[rows, body_y, :][::-1, ::-1]  # radiological: patient's right on the left of the image
    window = dict(cmap="gray", vmin=-400, vmax=1000, interpolation="nearest")
    rng = np.random.default_rng(3)
    colours = ListedColormap(np.vstack([[0, 0, 0, 0], np.c_[rng.uniform(0.2, 1, (40, 3)), np.full(40, 0.55)]]))
    fig, axes = plt.subplots(1, 3, figsize=(9.0, 6.0), dpi=80)
    axes[0].imshow(sag_ct, **window)
    axes[0].set_title("mid-sagittal CT")
    axes[1].imshow(sag_ct, **window)
    axes[1].imshow(np.where(sag_seg > 0, sag_seg % 40 + 1, 0), cmap=colours, vmin=0, vmax=40, interpolation="nearest")
    axes[1].set_title("VerSe labels")
    axes[2].imshow(cor_ct, **window)
    axes[2].set_title("coronal CT (curved)")
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--ct", type=Path)
    parser.add_argument("--seg", type=Path)
    parser.add_argument("--levels", default="T1-L5")
    parser.add_argument("--spacing", type=float, nargs="+", default=[1.0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.ct and args.seg:
        draw(sitk.ReadImage(str(args.ct)), sitk.ReadImage(str(args.seg)), args.out, title=args.ct.name)
        return 0
    from HealthiVertLib.truth.phantom import make_phantom

    phantom = make_phantom(args.levels, spacing=args.spacing, seed=args.seed)
    spacing = "×".join(f"{s:g}" for s in phantom.params["spacing_mm"])
    draw(phantom.ct, phantom.seg, args.out,
         title=f"HealthiVert phantom {phantom.params['levels']}, {spacing} mm, seed {args.seed} (synthetic)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
