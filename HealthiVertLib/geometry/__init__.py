"""Geometry of the spine: ordered vertebrae, the spine curve, local frames and vertebral bodies.

``spine`` lists the vertebrae of a label map cranial to caudal and extracts their bodies on demand
(:class:`SpineBodies`); ``straighten`` fits the smooth centroid curve with twist-free local frames
and maps 1 mm blocks to and from the input grid; ``body`` resamples one vertebral body into its
local frame (subregion labels or geometric de-pedicle) and builds a body from column heights;
``reference`` reproduces the published HealthiVert-GAN straightened crops bit for bit.
Millimetres and LPS world coordinates throughout.
"""
