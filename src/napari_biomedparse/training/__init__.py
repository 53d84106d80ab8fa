"""Fine-tuning BiomedParse on your own annotations (training layer).

Uses the model and inference layers; never imports napari. The public entry point is
:func:`napari_biomedparse.training.finetune.finetune` (also ``napari_biomedparse.finetune``).
"""
