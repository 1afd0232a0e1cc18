"""Class identity: which ImageNet-1K class each dataset class is, and which label a label-conditioned prior gives it.

A dataset's labels are its own order (sorted wnid folders, a `dataset.json` list); a released DiT or an ImageNet
teacher numbers the 1,000 ImageNet-1K classes in their own order. The two meet by name: a class named by its wnid
(n01440764) or by its unique ImageNet name (tench) is that ImageNet class. The table is timm's copy of ImageNet's
metadata, not one written here.
"""

from __future__ import annotations

import functools
import re
import unicodedata

from raydistill.errors import UserError

IMAGENET_CLASSES = 1000
_WNID = re.compile(r"^n\d{8}$")
# The longest file name ext4, XFS, APFS and NTFS all take, in bytes of UTF-8.
MAX_NAME_BYTES = 255


def _path_component_problem(name: str, suffix: str = "") -> str | None:
    """Why `name` (followed by `suffix`) cannot be one file or folder name on every common file system, or None."""
    if not name:
        return "is empty"
    if name in (".", ".."):
        return "is a relative folder reference"
    if "/" in name or "\\" in name:
        return "holds a path separator (/ or \\)"
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        return "holds a control character or an unpaired surrogate"
    if name != name.strip():
        return "starts or ends with whitespace"
    if len((name + suffix).encode("utf-8")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES - len(suffix)} bytes of UTF-8"
    return None


def check_class_names(names: list[str], where: str) -> None:
    """Rejects class names that cannot each become one folder at export, or that two classes share.

    Class names come from a dataset's files (`dataset.json`, folder names), so they are untrusted: a name such as
    "../x" would write outside the export folder, and "Cat" and "cat" are one folder on case-insensitive file systems.

    Args:
        names: the class names, in label order.
        where: the file or folder they were read from, for the message.

    Raises:
        UserError: a name is empty, ".", "..", holds a path separator or control character, starts or ends with
            whitespace, or is over MAX_NAME_BYTES; or two names are equal ignoring case.
    """
    first_of: dict[str, str] = {}
    for name in names:
        problem = _path_component_problem(name)
        if problem:
            raise UserError(f"class name {name!r} in {where} {problem}: rename the class there, since each class "
                            f"becomes a folder of that name")
        key = name.casefold()
        if key in first_of:
            same = "the same name" if first_of[key] == name else "the same name ignoring case"
            raise UserError(f"classes {first_of[key]!r} and {name!r} in {where} have {same}, which would merge them: "
                            f"rename one of them there")
        first_of[key] = name


def check_file_stem(stem: str, where: str) -> None:
    """Rejects an image id that cannot be the stem of one file name, `<stem>.png` (the rules of `check_class_names`).

    Args:
        stem: the id.
        where: the file it was read from, for the message.

    Raises:
        UserError: the id is empty, ".", "..", holds a path separator or control character, starts or ends with
            whitespace, or is too long for `<stem>.png` to fit in MAX_NAME_BYTES.
    """
    problem = _path_component_problem(stem, ".png")
    if problem:
        raise UserError(f"image id {stem!r} in {where} {problem}, so it cannot be a file name: give it another id")


@functools.lru_cache(maxsize=1)
def _imagenet_table() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(wnids, names) of ImageNet-1K in its label order; a name is the first lemma of the synset (tench)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    wnids = tuple(info.label_names())
    names = tuple(description.split(",")[0].strip() for description in info.label_descriptions())
    return wnids, names


@functools.lru_cache(maxsize=1)
def _imagenet_lookup() -> dict[str, int]:
    """wnid -> index, and lower-cased name -> index for the names that only one ImageNet class has."""
    wnids, names = _imagenet_table()
    lookup = {wnid: i for i, wnid in enumerate(wnids)}
    seen: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        seen.setdefault(name.lower(), []).append(i)
    lookup.update({name: indices[0] for name, indices in seen.items() if len(indices) == 1})
    return lookup


def imagenet_index(class_name: str) -> int | None:
    """The ImageNet-1K index of a class named by its wnid or by its unique ImageNet name, else None."""
    lookup = _imagenet_lookup()
    return lookup.get(class_name) if _WNID.match(class_name) else lookup.get(class_name.strip().lower())


def imagenet_indices(class_names: list[str]) -> list[int] | None:
    """Every class's ImageNet-1K index, or None unless all of them are ImageNet classes."""
    indices = [imagenet_index(name) for name in class_names]
    return None if any(i is None for i in indices) else indices


def display_name(class_name: str) -> str:
    """The name a person reads: an ImageNet wnid becomes its name (n01440764 -> tench), anything else is kept."""
    if _WNID.match(class_name):
        index = _imagenet_lookup().get(class_name)
        if index is not None:
            return _imagenet_table()[1][index]
    return class_name


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1K wnids in label order: the classes of a released DiT or of an ImageNet teacher."""
    return list(_imagenet_table()[0])


def prior_labels(class_names: list[str], prior_classes: list[str] | None, num_prior_classes: int, prior_name: str,
                 class_map: dict[str, int] | None = None) -> list[int]:
    """The label a label-conditioned prior is given for each dataset class.

    Args:
        class_names: the dataset's classes, in label order.
        prior_classes: the names of the prior's label slots (ImageNet-1K wnids for a released DiT, the training
            classes for a prior trained here), or None where the prior does not say.
        num_prior_classes: labels the prior knows, 0 .. num_prior_classes - 1.
        prior_name: the prior's spec, for messages.
        class_map: the user's mapping from dataset class name to prior label (`prior.class_map`); it wins.

    Returns:
        One prior label per dataset class.

    Raises:
        UserError: a class cannot be mapped, the map names a class the data does not have, or a label is outside
            the prior's classes.
    """
    hint = ("pass --set prior.class_map='{CLASS_NAME: PRIOR_LABEL, ...}' with a label for every class, or use a "
            "prior trained on this dataset's classes")
    if class_map is not None:
        unknown = sorted(set(class_map) - set(class_names))
        if unknown:
            raise UserError(f"prior.class_map names classes the data does not have: {unknown[:5]}; the data's "
                            f"classes are {class_names[:5]}{'...' if len(class_names) > 5 else ''}")
        outside = {name: label for name, label in class_map.items() if not 0 <= label < num_prior_classes}
        if outside:
            raise UserError(f"prior.class_map gives labels outside prior {prior_name!r}'s classes "
                            f"0..{num_prior_classes - 1}: {dict(list(outside.items())[:5])}")
        missing = [name for name in class_names if name not in class_map]
        if missing:
            raise UserError(f"prior.class_map has no label for classes {missing[:5]} ({len(missing)} in all): {hint}")
        return [class_map[name] for name in class_names]
    if prior_classes is None:
        raise UserError(f"prior {prior_name!r} does not say which class each of its {num_prior_classes} labels is, "
                        f"so the data's classes {class_names[:3]}... cannot be given to it: {hint}")
    if len(prior_classes) == IMAGENET_CLASSES and tuple(prior_classes) == _imagenet_table()[0]:
        labels = [imagenet_index(name) for name in class_names]
    else:
        slot = {name: i for i, name in enumerate(prior_classes)}
        labels = [slot.get(name) for name in class_names]
    missing = [name for name, label in zip(class_names, labels) if label is None]
    if missing:
        known = "ImageNet-1K wnids or names" if len(prior_classes) == IMAGENET_CLASSES else f"{prior_classes[:5]}..."
        raise UserError(f"classes {missing[:5]} ({len(missing)} of {len(class_names)}) are not classes of prior "
                        f"{prior_name!r} (it knows {known}): {hint}")
    return labels
