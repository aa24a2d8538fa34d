"""Ground truth we can build: fractures simulated in real vertebrae, and procedural phantom spines.

``simulate``: compresses a healthy vertebra of a real case in CT and labels (wedge, biconcave,
crush; a requested measured loss) and keeps the exact pre-fracture truth; ``phantom``: healthy
thoracolumbar phantom spines (CT, labels, subregions) with known geometry; ``phantom_dataset``:
VerSe-like datasets of phantoms with simulated fractures and a grade file. Beside the grading
path: nothing a radiologist's click runs imports this package.
"""
