"""The ``generator`` engine: HealthiVert-GAN pseudo-healthy synthesis behind the engine interface.

For one target vertebra (method specification section 5, in millimetres):

1. sagittal and coronal slices through the target's neighbourhood in its local frame
   (``slices.sample_slab``), over the central 4/5 of the body's LR (sagittal) and AP (coronal)
   extent, every ``slice_step_mm``;
2. iterative synthesis per view: the nearest neighbour above, then the one below, then the
   target; each pass hides that vertebra behind its band, runs the generator on **all slices of
   the view in one batch** (one forward pass per view and pass, both stages inside it) and
   rebuilds the slices with SHRM (the synthesized vertebra never shorter than the current one,
   the context pushed apart); the next pass sees the result;
3. 2.5D fusion: the target's synthesized labels (fine mask >= 0.5, as the reference) and CTs of
   both views are resampled onto the target's 1 mm block and averaged where both views cover a
   voxel; the largest connected part is the pseudo-healthy body;
4. the pseudo-healthy occupancy (a column is never shorter than the measured one) and the
   pseudo-healthy CT on the target's grid (HU where the synthesis changed the image: the restored
   vertebra and the context SHRM moved; NaN elsewhere, so the original CT stays untouched).

The engine needs the CT (``attach`` hands it the case); on a mask-only case it refuses with
``EngineUnavailable``. Weights that cannot be loaded raise ``HealthiVertError``: it never runs
with random weights. Research use only, not for diagnosis.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...geometry.body import VertebralBody, largest_component
from ..base import EngineUnavailable, HealthyPrediction, Neighbour
from ...errors import HealthiVertError
from ...processes import decided_threads
from . import slices as gd
from .devices import choose_device
from .networks import Generator, model_to_hu
from ...io.images import check_looks_like_ct
from ...io.resources import WEIGHTS_DIR

DEFAULT_WEIGHTS = WEIGHTS_DIR / "generator_default.safetensors"
DEFAULT_SLICE_STEP_PX = 2  # slices every 2 pixels (3 mm at 1.5 mm): the speed / coverage trade-off
NEEDS_CT = (
    "the generator engine synthesizes the vertebra from the CT image and needs it: pass --ct, or use "
    "--engine context, which works on the labels alone"
)


def load_model(weights: str | Path | None, device: torch.device) -> tuple[Generator, dict[str, Any], str]:
    """(generator in eval mode, model card, description) from our .safetensors or a published .pth.

    The published ``latest_net_G.pth`` (HealthiVert-GAN authors) is read without unpickling
    objects; it was trained on sagittal slices with a fixed 40 mm band, so it runs that way.
    """
    from .weights import load_generator, load_reference_checkpoint, read_model_card

    path = Path(weights) if weights else DEFAULT_WEIGHTS
    if weights is None and not path.exists():
        raise HealthiVertError(
            f"The default generator weights are missing ({path.name}); reinstall healthivert, or pass "
            "--weights with a .safetensors file from 'healthivert train-generator' or the authors' latest_net_G.pth."
        )
    if path.suffix in (".pth", ".pt"):
        model = load_reference_checkpoint(path, device=device)
        card = {"kind": "generator", "extra": {"views": ["sagittal"], "band": "fixed"},
                "notice": "Published HealthiVert-GAN weights (authors' checkpoint); research use only."}
        return model, card, f"published checkpoint {path.name}"
    if path.suffix != ".safetensors":
        raise HealthiVertError(f"Generator weights must be a .safetensors file (or the authors' .pth); got {path.name}.")
    model = load_generator(path, device=device)
    try:
        card = json.loads(read_model_card(path).to_json())
    except HealthiVertError:
        card = {"kind": "generator", "extra": {}}
    return model, card, path.name


class GeneratorEngine:
    """HealthiVert-GAN synthesis (2.5D, iterative, SHRM) as a pseudo-healthy engine."""

    name = "generator"

    def __init__(
        self,
        weights: str | Path | None = None,
        device: str | None = None,
        iterative: bool = True,
        slice_step_mm: float | None = None,
        views: tuple[str, ...] | None = None,
        hgam: bool | str | Path = True,
    ) -> None:
        if (threads := decided_threads()) is not None:  # processes.set_threads decided for this process
            torch.set_num_threads(threads)
        self.device_choice = choose_device(device)  # auto: a GPU only when a test kernel runs on it
        self.device = self.device_choice.device
        self.model, self.card, self.weights_name = load_model(weights, self.device)
        cfg = self.model.config
        if abs(cfg.spacing_mm[0] - cfg.spacing_mm[1]) > 1e-6:
            raise HealthiVertError("The generator weights use anisotropic pixels, which this engine does not support.")
        self.size = tuple(cfg.image_size)
        self.spacing = float(cfg.spacing_mm[0])
        extra = self.card.get("extra") or {}
        self.views = tuple(views or extra.get("views") or gd.VIEWS)
        self.fixed_band_px = cfg.band_px if extra.get("band") == "fixed" else None
        self.slice_step = float(slice_step_mm or DEFAULT_SLICE_STEP_PX * self.spacing)
        self.iterative = iterative
        self.classifier, self.hgam_status = self._hgam_classifier(weights, extra.get("hgam_classifier"), hgam)
        self._ct: gd.CTSampler | None = None

    @property
    def notes(self) -> list[str]:
        """One line each for the report: the device (and why, on a fall-back), the weights, HGAM."""
        return [self.device_choice.note, f"weights: {self.weights_name}", self.hgam_status]

    def _hgam_classifier(self, weights: str | Path | None, name: str | None, hgam: bool | str | Path):
        """(HGAM fracture classifier, status sentence), ``hgam.load_hgam``: the classifier named in the
        model card (a file beside the weights), else the shipped one, else (or with ``hgam=False``)
        None: the documented no-HGAM path (attention 1 everywhere)."""
        from .hgam import load_hgam

        named = (Path(weights) if weights else DEFAULT_WEIGHTS).parent / name if name else None
        return load_hgam(hgam, self.model.config, self.device, named=named)

    @property
    def ct_reach_mm(self) -> float:
        """How far from a vertebra's centroid the engine may read the CT (mm): the canvas's half diagonal
        plus room for the slice positions and the canvas centred on the body rather than the centroid."""
        return 0.5 * math.hypot(*self.size) * self.spacing + 60.0

    def attach(self, case) -> None:
        """Give the engine the case's CT (``io.case.Case``); None for a mask-only case.

        A CT that is not in Hounsfield units (a label map passed as the CT) is refused."""
        if case.ct is not None:
            check_looks_like_ct(case.ct, (getattr(case, "paths", None) or {}).get("ct"))
        self._ct = gd.CTSampler(case.ct) if case.ct is not None else None

    @torch.inference_mode()
    def predict(self, target: VertebralBody, neighbours: list[Neighbour]) -> HealthyPrediction:
        if self._ct is None:
            raise EngineUnavailable(NEEDS_CT)
        members = gd.neighbourhood_members(target, "target", neighbours, self.spacing, fixed_band_px=self.fixed_band_px)
        fused_occ, fused_hu, weight, hu_weight = (np.zeros(target.block.shape, np.float32) for _ in range(4))
        synthesized = {}
        for view in self.views:
            positions = gd.slice_positions(target, view, self.slice_step)
            slab = gd.sample_slab(self._ct, target, members, view, positions, self.size, self.spacing)
            seg, hu, touched, done = self._synthesize(slab, members)
            synthesized.update(done)
            occ_v, hu_v, w_v = _to_block(target, slab, seg, np.where(touched, hu, np.nan))
            fused_occ += occ_v * w_v
            fused_hu += np.nan_to_num(hu_v) * w_v
            hu_weight += np.isfinite(hu_v) * w_v
            weight += w_v
        covered = weight > 0
        occupancy = np.where(covered, fused_occ / np.maximum(weight, 1e-6), target.occupancy).astype(np.float32)
        occupancy = largest_component(occupancy)  # stray pixels of lateral slices are not the body
        ct = np.where(covered & (hu_weight > 0), fused_hu / np.maximum(hu_weight, 1e-6), np.nan).astype(np.float32)
        short = occupancy.sum(axis=0) < target.occupancy.sum(axis=0)
        occupancy[:, short] = target.occupancy[:, short]  # never shorter than the measured column
        hgam = self.classifier is not None and "sagittal" in self.views
        context = [{"level": m.level, "offset": m.offset, "resynthesized": m.level in synthesized, "hgam": hgam}
                   for m in members[1:] if m.band_px]
        return HealthyPrediction(occupancy=occupancy, context=context, ct=ct)

    def _synthesize(self, slab: gd.Slab, members: list[gd.Member]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
        """Iterative passes on one view: the target's synthesized label (0/1; the original label in
        slices that could not be synthesized), the slices' HU after the last pass, where they
        changed (synthesized or moved by SHRM), and the neighbours re-synthesized."""
        hu, labels = slab.hu.copy(), slab.labels.copy()
        touched = np.zeros(hu.shape, bool)
        passes = [m for m in members[1:] if m.band_px] if self.iterative else []
        seg = (labels == 1).astype(np.float32)
        done = {}
        for m in passes + [members[0]]:
            min_area = gd.MIN_TARGET_MM2 if m.index == 1 else gd.MIN_NEIGHBOUR_MM2
            hid = gd.hide(hu, labels, m.index, m.band_px, self.spacing, min_area)
            sel = np.flatnonzero(hid.valid)
            if len(sel) == 0:
                continue
            attention = self._attention(hu[sel], hid, sel) if slab.view == "sagittal" else None
            out = self.forward(gd.window(hid.hu[sel]), hid.mask[sel], slab.ratios[sel], attention)
            gen_hu = model_to_hu(out["fine_ct"], self.model.config.hu_window)
            comp = gd.shrm_compose(hu[sel], labels[sel], gen_hu, out["fine_seg"], hid.x1[sel], hid.x2[sel],
                                   out["fine_height_mm"] / self.spacing, m.index)
            hu[sel], labels[sel] = comp.hu, comp.labels
            touched[sel] = gd.take_rows(touched[sel], comp.source) | comp.moved[:, :, None]
            if m.index == 1:
                seg[sel] = comp.seg >= 0.5  # the synthesized label, as the reference (binarized fine_seg)
            else:
                done[m.level] = True
        return seg, hu, touched, done

    def _attention(self, hu: np.ndarray, hid: gd.Hidden, sel: np.ndarray) -> np.ndarray | None:
        """HGAM (spec 3): Grad-CAM++ of the fracture classifier on the current, unhidden sagittal
        slices, moved with the context like the CT, fed as 1 - CAM (1 in the band). Recomputed at
        every pass, so it follows the geometry the previous passes changed (reference defect 11)."""
        if self.classifier is None:
            return None
        from .hgam import grad_cam_pp

        with torch.inference_mode(False):
            x = torch.from_numpy(gd.window(hu))[:, None].to(self.device)
            cam = grad_cam_pp(self.classifier, x)[:, 0].detach().cpu().numpy()
        return 1.0 - hid_subset(hid, sel).shift(cam, fill=0.0)

    def forward(self, ct: np.ndarray, mask: np.ndarray, ratios: np.ndarray,
                attention: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """One batched generator pass over slices (n, H, W) -> numpy outputs (n, H, W) and (n,).

        ``attention``: the HGAM map 1 - CAM per slice, or None for the no-HGAM path."""
        dev = self.device
        x = torch.from_numpy(np.ascontiguousarray(ct, np.float32))[:, None].to(dev)
        m = torch.from_numpy(np.ascontiguousarray(mask, np.float32))[:, None].to(dev)
        r = torch.from_numpy(np.asarray(ratios, np.float32)).to(dev)
        a = None if attention is None else torch.from_numpy(np.ascontiguousarray(attention, np.float32))[:, None].to(dev)
        out = self.model(x, m, r, a)
        return {
            "fine_ct": out.fine_ct[:, 0].float().cpu().numpy(),
            "fine_seg": out.fine_seg[:, 0].float().cpu().numpy(),
            "fine_height_mm": out.fine_height_mm.float().cpu().numpy(),
        }


def hid_subset(hid: gd.Hidden, sel: np.ndarray) -> gd.Hidden:
    """The rows of ``hid`` for the slices ``sel``."""
    return gd.Hidden(*(getattr(hid, f)[sel] for f in ("hu", "labels", "mask", "x1", "x2", "top", "band", "valid", "source")))


def _to_block(target: VertebralBody, slab: gd.Slab, seg: np.ndarray, hu: np.ndarray):
    """Resample a view's slices onto the target's block: (soft mask, HU, coverage weight 0/1).

    The slices are aligned with the target's frame (rows along s, columns and slices along u or
    v), so the resampling is separable: linear interpolation along each axis in turn.
    """
    block = target.block
    s, u, v = (block.axis(k) for k in range(3))
    pos = slab.positions
    step = float(pos[1] - pos[0]) if len(pos) > 1 else 1.0
    k_axis, c_axis, k_of, c_of = (v, u, 2, 1) if slab.view == "sagittal" else (u, v, 1, 2)
    kk = (k_axis - pos[0]) / step
    rr = (s - slab.rows[0]) / slab.spacing
    cc = (c_axis - slab.cols[0]) / slab.spacing

    def resample(image: np.ndarray) -> np.ndarray:
        out = _lerp(_lerp(_lerp(image, kk, 0), rr, 1), cc, 2)
        return np.moveaxis(out, [0, 1, 2], [k_of, 0, c_of])  # -> block order (s, u, v)

    inside = (((kk >= -0.5) & (kk <= len(pos) - 0.5))[:, None, None] & ((rr >= 0) & (rr <= seg.shape[1] - 1))[None, :, None]
              & ((cc >= 0) & (cc <= seg.shape[2] - 1))[None, None, :])
    inside = np.moveaxis(inside, [0, 1, 2], [k_of, 0, c_of])
    finite = np.isfinite(hu)
    values = resample(np.where(finite, hu, 0.0).astype(np.float32))
    weight = resample(finite.astype(np.float32))
    hu_block = np.where(inside & (weight >= 0.5), values / np.maximum(weight, 1e-6), np.nan)
    return resample(seg) * inside, hu_block, inside.astype(np.float32)


def _lerp(a: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``a`` at fractional indices ``coords`` along ``axis`` (edges clamped)."""
    x = np.clip(coords, 0, a.shape[axis] - 1)
    i0 = np.minimum(np.floor(x).astype(int), a.shape[axis] - 2) if a.shape[axis] > 1 else np.zeros(len(x), int)
    w = (x - i0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = len(x)
    w = w.reshape(shape)
    lo = np.take(a, i0, axis=axis)
    hi = np.take(a, np.minimum(i0 + 1, a.shape[axis] - 1), axis=axis)
    return lo * (1 - w) + hi * w
