"""napari-biomedparse: BiomedParse for napari, scripts and whole-slide images."""

__version__ = "0.1.0"
