"""Input and output of files: images, label numbering, grade files, plain JSON, atomic writes.

The lowest layer: ``images`` reads and validates CT and label maps (NIfTI, NRRD, MetaImage) and
compares grids; ``labels`` names vertebra levels and detects a label map's numbering (VerSe,
TotalSegmentator, nnU-Net ``dataset.json``); ``case`` bundles one case's inputs (:class:`Case`,
:func:`load_case`); ``grades`` reads VerSe grade files (``vertebra_data.json``); ``files`` writes
atomically; ``jsonable`` turns numpy values into plain JSON; ``sample`` locates the bundled sample.
Nothing here knows about vertebral bodies or grading.
"""
