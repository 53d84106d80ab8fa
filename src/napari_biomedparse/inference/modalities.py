"""Imaging modalities, sites and the targets BiomedParse knows for each.

The nine BiomedParse modalities (CT, MRI, X-Ray, Pathology, Ultrasound, Endoscopy, Fundus,
Dermoscopy, OCT) plus two microscopy modalities (Fluorescence, Brightfield) that the official
v1 model does not cover and whose targets come from a model's own ``vocabulary`` metadata.

The official code keys its target lists (``BIOMED_OBJECTS``, ``utilities/constants.py``) and its
existence statistics (``target_dist.json``) by *image type*, a modality plus an anatomical site:
"CT-Abdomen", "MRI-FLAIR-Brain", "X-Ray-Chest", "Pathology"... Here an image type is an
:class:`ImageType` ``(modality, site)``; :func:`normalize_modality` accepts friendly names
("pathology", "ct", "x-ray", "fluorescence") as well as official image types ("CT-Abdomen").
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "BIOMED_OBJECTS",
    "CT_WINDOWS",
    "MODALITIES",
    "SITES",
    "ImageType",
    "is_in_vocabulary",
    "normalize_modality",
    "targets_for",
]

#: Canonical modality names, in the order of the BiomedParse paper, then microscopy.
MODALITIES: tuple[str, ...] = (
    "CT",
    "MRI",
    "X-Ray",
    "Pathology",
    "Ultrasound",
    "Endoscopy",
    "Fundus",
    "Dermoscopy",
    "OCT",
    "Fluorescence",
    "Brightfield",
)

#: CT intensity windows in Hounsfield units per site (official ``CT_WINDOWS``,
#: ``inference_utils/processing_utils.py``). "chest" is an alias of the lung window.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (-150.0, 250.0),
    "lung": (-1000.0, 1000.0),
    "pelvis": (-55.0, 200.0),
    "liver": (-25.0, 230.0),
    "colon": (-68.0, 187.0),
    "pancreas": (-100.0, 200.0),
}

#: Official targets per image type (``BIOMED_OBJECTS``, ``utilities/constants.py``, v1), order
#: as in the official file.
BIOMED_OBJECTS: dict[str, list[str]] = {
    "CT-Abdomen": [
        "postcava",
        "aorta",
        "right kidney",
        "left kidney",
        "duodenum",
        "pancreas",
        "liver",
        "spleen",
        "stomach",
        "gallbladder",
        "left adrenal gland",
        "right adrenal gland",
        "esophagus",
    ],
    "CT-Chest": ["nodule", "COVID-19 infection", "tumor"],
    "CT-Liver": ["vessel", "tumor"],
    "MRI-Abdomen": [
        "aorta",
        "postcava",
        "right kidney",
        "duodenum",
        "left kidney",
        "liver",
        "pancreas",
        "gallbladder",
        "stomach",
        "spleen",
        "left adrenal gland",
        "right adrenal gland",
        "esophagus",
    ],
    "MRI-Cardiac": ["left heart ventricle", "myocardium", "right heart ventricle"],
    "MRI-FLAIR-Brain": ["edema", "tumor core"],
    "MRI-T1-Gd-Brain": ["enhancing tumor", "non-enhancing tumor"],
    "Pathology": [
        "connective tissue cells",
        "inflammatory cells",
        "neoplastic cells",
        "epithelial cells",
    ],
    "X-Ray-Chest": ["left lung", "right lung"],
    "Ultrasound-Cardiac": ["left heart atrium", "left heart ventricle"],
    "Endoscopy": ["neoplastic polyp", "non-neoplastic polyp"],
    "Fundus": ["optic cup", "optic disc"],
    "Dermoscopy": ["lesion"],
    "OCT": ["edema"],
}

#: Sites per modality. For CT the site picks the intensity window (``CT_WINDOWS``); for every
#: modality it picks the official target list. A modality with one site uses it by default.
SITES: dict[str, tuple[str, ...]] = {
    "CT": ("abdomen", "chest", "lung", "liver", "pelvis", "colon", "pancreas"),
    "MRI": ("abdomen", "cardiac", "flair-brain", "t1-gd-brain"),
    "X-Ray": ("chest",),
    "Pathology": (),
    "Ultrasound": ("cardiac",),
    "Endoscopy": (),
    "Fundus": (),
    "Dermoscopy": (),
    "OCT": (),
    "Fluorescence": (),
    "Brightfield": (),
}

# official image type of (modality, site); sites without an official target list map to None
_OFFICIAL_TYPE: dict[tuple[str, str | None], str] = {
    ("CT", "abdomen"): "CT-Abdomen",
    ("CT", "chest"): "CT-Chest",
    ("CT", "lung"): "CT-Chest",
    ("CT", "liver"): "CT-Liver",
    ("MRI", "abdomen"): "MRI-Abdomen",
    ("MRI", "cardiac"): "MRI-Cardiac",
    ("MRI", "flair-brain"): "MRI-FLAIR-Brain",
    ("MRI", "t1-gd-brain"): "MRI-T1-Gd-Brain",
    ("X-Ray", "chest"): "X-Ray-Chest",
    ("Ultrasound", "cardiac"): "Ultrasound-Cardiac",
    ("Pathology", None): "Pathology",
    ("Endoscopy", None): "Endoscopy",
    ("Fundus", None): "Fundus",
    ("Dermoscopy", None): "Dermoscopy",
    ("OCT", None): "OCT",
}
_TYPE_TO_KEY = {v: k for k, v in _OFFICIAL_TYPE.items() if k != ("CT", "lung")}

_ALIASES: dict[str, str] = {
    "ct": "CT",
    "computed-tomography": "CT",
    "mri": "MRI",
    "mr": "MRI",
    "magnetic-resonance": "MRI",
    "x-ray": "X-Ray",
    "xray": "X-Ray",
    "radiography": "X-Ray",
    "cxr": "X-Ray",
    "pathology": "Pathology",
    "histology": "Pathology",
    "histopathology": "Pathology",
    "h&e": "Pathology",
    "he": "Pathology",
    "wsi": "Pathology",
    "ultrasound": "Ultrasound",
    "us": "Ultrasound",
    "echocardiography": "Ultrasound",
    "endoscopy": "Endoscopy",
    "colonoscopy": "Endoscopy",
    "fundus": "Fundus",
    "retina": "Fundus",
    "dermoscopy": "Dermoscopy",
    "dermatology": "Dermoscopy",
    "oct": "OCT",
    "optical-coherence-tomography": "OCT",
    "fluorescence": "Fluorescence",
    "fluo": "Fluorescence",
    "if": "Fluorescence",
    "immunofluorescence": "Fluorescence",
    "brightfield": "Brightfield",
    "bright-field": "Brightfield",
    "bf": "Brightfield",
}

_SITE_ALIASES: dict[str, str] = {
    "abdominal": "abdomen",
    "thorax": "chest",
    "heart": "cardiac",
    "flair": "flair-brain",
    "brain-flair": "flair-brain",
    "t1-gd": "t1-gd-brain",
    "t1gd": "t1-gd-brain",
    "brain-t1-gd": "t1-gd-brain",
}


class ImageType(NamedTuple):
    """A modality with an optional anatomical site, e.g. ``ImageType("CT", "abdomen")``."""

    modality: str
    site: str | None = None

    @property
    def official(self) -> str | None:
        """The official image type key ("CT-Abdomen", "Pathology", ...), or None if there is
        none (microscopy; CT pelvis/colon/pancreas windows; a multi-site modality without site)."""
        return _OFFICIAL_TYPE.get((self.modality, self.site))

    @property
    def window(self) -> tuple[float, float] | None:
        """CT window in HU for this site (None for other modalities or a CT without site)."""
        if self.modality != "CT" or self.site is None:
            return None
        return CT_WINDOWS["lung" if self.site == "chest" else self.site]

    def __str__(self) -> str:
        if self.official is not None:
            return self.official
        return self.modality if self.site is None else f"{self.modality}-{self.site}"


def _norm(text: str) -> str:
    return "-".join(str(text).strip().lower().replace("_", " ").replace("-", " ").split())


def _valid_names() -> str:
    types = ", ".join(sorted(_TYPE_TO_KEY))
    return f"modalities: {', '.join(MODALITIES)}; official image types: {types}"


def _normalize_site(modality: str, site: str | None) -> str | None:
    if site is None or site == "":
        sites = SITES[modality]
        return sites[0] if len(sites) == 1 else None
    s = _norm(site)
    s = _SITE_ALIASES.get(s, s)
    if s not in SITES[modality]:
        valid = ", ".join(SITES[modality]) or "none (this modality takes no site)"
        raise ValueError(f"unknown site {site!r} for modality {modality}; valid sites: {valid}")
    return s


def normalize_modality(name, site: str | None = None) -> ImageType:
    """Parse a modality name (friendly or official) and an optional site.

    Args:
        name: "pathology", "CT", "MRI", "X-Ray", "fluorescence", ... (case, spaces, "_" and
            "-" do not matter), an official image type such as "CT-Abdomen" or
            "MRI-FLAIR-Brain", or an :class:`ImageType`.
        site: anatomical site ("abdomen", "chest"/"lung", "liver", "pelvis", "colon",
            "pancreas" for CT; "abdomen", "cardiac", "flair-brain", "t1-gd-brain" for MRI...).
            A site given both in ``name`` and here must agree.

    Returns:
        ImageType(modality, site), the modality one of :data:`MODALITIES`, site lower case or
        None.

    Raises:
        ValueError: unknown modality or site (the message lists the valid ones).
    """
    if isinstance(name, ImageType):
        modality, name_site = name.modality, name.site
    else:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(
                f"modality must be a non-empty string; got {name!r}. Valid {_valid_names()}"
            )
        key = _norm(name)
        modality, name_site = None, None
        for official, (mod, s) in _TYPE_TO_KEY.items():
            if _norm(official) == key:
                modality, name_site = mod, s
                break
        if modality is None:
            if key in _ALIASES:
                modality = _ALIASES[key]
            else:
                # "ct abdomen", "mri cardiac", ...: modality word(s) then a site
                parts = key.split("-")
                for i in range(len(parts) - 1, 0, -1):
                    head, tail = "-".join(parts[:i]), "-".join(parts[i:])
                    if head in _ALIASES:
                        modality = _ALIASES[head]
                        name_site = _normalize_site(modality, tail)
                        break
        if modality is None:
            import difflib

            names = [*MODALITIES, *_TYPE_TO_KEY, *_ALIASES]
            close = difflib.get_close_matches(str(name).strip(), names, n=1, cutoff=0.6)
            close = close or difflib.get_close_matches(key, list(_ALIASES), n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown modality {name!r}.{hint} Valid {_valid_names()}")
    if site is not None and site != "":
        s = _normalize_site(modality, site)
        if name_site is not None and s != name_site and {s, name_site} != {"chest", "lung"}:
            raise ValueError(
                f"site {site!r} contradicts the site {name_site!r} in modality {name!r}"
            )
        name_site = s
    elif name_site is None:
        name_site = _normalize_site(modality, None)
    return ImageType(modality, name_site)


def _vocab_lookup(vocabulary: dict | None, image_type: ImageType) -> list[str] | None:
    """A model's vocabulary list for this image type (exact site first, then the modality)."""
    if not vocabulary:
        return None
    by_mod = []
    for key, prompts in vocabulary.items():
        try:
            it = normalize_modality(key)
        except ValueError:
            continue
        if it == image_type:
            return list(prompts)
        if it.modality == image_type.modality and (it.site is None or image_type.site is None):
            by_mod.append(list(prompts))
    if by_mod:
        return list(dict.fromkeys(p for lst in by_mod for p in lst))
    return None


def model_vocabulary(model) -> dict | None:
    """The ``vocabulary`` metadata of a model (or of a Predictor's model), or None."""
    if model is None:
        return None
    meta = getattr(model, "metadata", None)
    if meta is None:
        meta = getattr(getattr(model, "model", None), "metadata", None)
    return meta.get("vocabulary") if isinstance(meta, dict) else None


def targets_for(modality, site: str | None = None, model=None) -> list[str]:
    """Targets to recognise for a modality.

    Prefers the model's own ``metadata["vocabulary"]`` entry for the modality (a bundled model
    trained on other prompts, or microscopy), else the official ``BIOMED_OBJECTS`` list.

    Args:
        modality: anything :func:`normalize_modality` accepts.
        site: optional site.
        model: optional model (or Predictor) whose ``metadata["vocabulary"]`` is consulted.

    Returns:
        list of target names (prompts), in the official order.

    Raises:
        ValueError: the modality has no known targets (e.g. MRI without site, or microscopy
            with a model lacking a vocabulary); the message says what to pass.
    """
    it = normalize_modality(modality, site)
    vocab = _vocab_lookup(model_vocabulary(model), it)
    if vocab:
        return vocab
    if it.official is not None:
        return list(BIOMED_OBJECTS[it.official])
    if it.site is None and SITES[it.modality]:
        types = [t for (m, s), t in _OFFICIAL_TYPE.items() if m == it.modality and s is not None]
        raise ValueError(
            f"{it.modality} has targets per site; give site= one of "
            f"{', '.join(SITES[it.modality])} (official image types: {', '.join(sorted(set(types)))}), "
            "or pass the targets explicitly"
        )
    raise ValueError(
        f"no known targets for {it}: the official v1 lists cover "
        f"{', '.join(sorted(BIOMED_OBJECTS))}; for this modality pass targets=[...] explicitly "
        "or use a model whose metadata vocabulary lists prompts for it"
    )


def is_in_vocabulary(prompt: str, modality, site: str | None = None, model=None) -> bool:
    """Whether ``prompt`` is one of the known targets of the modality (case-insensitive).

    Known targets are the official ``BIOMED_OBJECTS`` of every image type of the modality (all
    sites when no site is given) plus the model's ``vocabulary`` for it. Free text outside this
    vocabulary is still allowed by the tasks; it is only flagged.
    """
    it = normalize_modality(modality, site)
    known: set[str] = set()
    for (mod, s), official in _OFFICIAL_TYPE.items():
        if mod == it.modality and (it.site is None or s == it.site):
            known.update(t.lower() for t in BIOMED_OBJECTS[official])
    vocab = _vocab_lookup(model_vocabulary(model), it)
    if vocab:
        known.update(t.lower() for t in vocab)
    return " ".join(str(prompt).lower().split()) in known
