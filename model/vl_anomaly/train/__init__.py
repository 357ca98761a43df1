"""Training of the vision-language head (Cityscapes + COCO outlier exposure). Nothing in the inference path
imports this package."""
