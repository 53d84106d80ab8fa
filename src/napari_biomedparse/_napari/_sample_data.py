"""Sample data that ships with the package (see ``napari_biomedparse/data/README.md``)."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"


def sample_path(name: str) -> Path:
    """Path of a bundled sample file (``hgsc_nest.jpg``, ``stardist_img2d.tif``,
    ``cmu_small_region.svs``)."""
    path = DATA / name
    if not path.exists():
        raise FileNotFoundError(f"bundled sample {name} is missing from {DATA}")
    return path


def hgsc_nest():
    """H&E field, 1500 x 1500 RGB (high-grade serous ovarian carcinoma)."""
    from skimage.io import imread

    img = imread(sample_path("hgsc_nest.jpg"))
    return [
        (img, {"name": "hgsc_nest", "rgb": True, "metadata": {"modality": "Pathology"}}, "image")
    ]


def stardist_nuclei():
    """Fluorescence nuclei, 512 x 512 uint16 (2018 Data Science Bowl)."""
    import tifffile

    img = tifffile.imread(sample_path("stardist_img2d.tif"))
    kwargs = {
        "name": "stardist_nuclei",
        "colormap": "gray",
        "metadata": {"modality": "Fluorescence"},
    }
    return [(img, kwargs, "image")]


def cmu_small_region():
    """A small Aperio slide (2220 x 2967 px, 0.499 um/px) as a lazy multiscale layer."""
    from ._reader import slide_layer_data

    data, kwargs, kind = slide_layer_data(str(sample_path("cmu_small_region.svs")))
    kwargs["metadata"]["modality"] = "Pathology"
    return [(data, kwargs, kind)]
