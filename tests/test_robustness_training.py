"""Fine-tuning inputs: a misspelt modality is refused with a suggestion, unlabelled training
data is warned about, a broken dataset.json says what is wrong (docs/guarantees.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_biomedparse.training.data import AnnotatedImage, load_folder


def _img(classes, modality="pathology"):
    rgb = np.full((*classes.shape, 3), 200, np.uint8)
    return AnnotatedImage(rgb, classes, {1: "nuclei"}, modality=modality, name="t")


def test_misspelt_modality_is_refused_with_a_suggestion():
    with pytest.raises(ValueError, match="unknown modality 'patholgy'. Did you mean 'pathology'"):
        _img(np.zeros((64, 64), int), modality="patholgy")
    _img(np.zeros((64, 64), int), modality="Fluorescence")  # any valid spelling passes


def test_all_zero_labels_warn_before_training():
    from napari_biomedparse.model import BiomedParseConfig
    from napari_biomedparse.training.finetune import finetune

    empty = [_img(np.zeros((64, 64), int))]
    with pytest.warns(UserWarning, match="every training label is 0"):
        finetune(BiomedParseConfig.tiny(), empty, steps=0, batch_size=1, tile_size=64)
    lab = np.zeros((64, 64), int)
    lab[10:20, 10:20] = 1
    two = AnnotatedImage(np.full((64, 64, 3), 200, np.uint8), lab, {1: "nuclei", 2: "stroma"})
    with pytest.warns(UserWarning, match=r"no labelled pixel for \['stroma'\]"):
        finetune(BiomedParseConfig.tiny(), [two], steps=0, batch_size=1, tile_size=64)


def test_dataset_json_with_bad_json_says_so(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "dataset.json").write_text('{"prompts": {"1": "nuclei"},}')
    with pytest.raises(ValueError, match="dataset.json is not valid JSON.*docs/finetuning.md"):
        load_folder(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps(["nuclei"]))
    with pytest.raises(ValueError, match="JSON object"):
        load_folder(tmp_path)
