"""Class activation maps: fracture-classifier training and Grad-CAM++ heatmaps (HGAM input)."""
