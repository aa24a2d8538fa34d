"""What is measured on a vertebral body against its pseudo-healthy version, and the grade.

``heights``: column heights, RHLV per third and overall, the axial height-loss map, the AP profile,
the Genant points and the abnormality score; ``grading``: the linear SVM (JSON parameters, numpy
prediction) and the transparent Genant rule; ``fracture_model``: the compression model that
deforms a body into a wedge, biconcave or crush fracture of a requested measured loss;
``counterfactuals``: a pseudo-healthy body shown at grades 0-3 with that model.
"""
