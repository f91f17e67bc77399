"""What a pod's image names in the memory provider.

An image is `memory:<name>` or the bare `<name>`: a name without whitespace, control characters,
"/" or ":". Anything else (empty, blank, `memory:` alone, a container image such as
docker.io/library/nginx:1.27) is INVALID_ARGUMENT. The pretend IaaS has every well-formed name,
unless it is given its images (`--images`): then a name it does not have is FAILED_PRECONDITION,
as a missing template or Glance image is on the other providers.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Final

from vmlet_contract import FailedPrecondition, InvalidArgument

__all__ = ["SCHEME", "check_image_exists", "image_name"]

SCHEME: Final = "memory:"

_NAME = re.compile(r"[^\s:/\x00-\x1f\x7f]+")


def image_name(image: str) -> str:
    """The name ``image`` gives; InvalidArgument when it is not of the memory provider's form."""
    name = image[len(SCHEME):] if image.startswith(SCHEME) else image
    if not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"image {image!r} does not name a memory image: use {SCHEME}<name> or the bare "
            "name (no whitespace, '/' or ':')"
        )
    return name


def check_image_exists(name: str, images: Collection[str]) -> None:
    """FailedPrecondition when ``images`` is given and does not hold ``name``."""
    if images and name not in images:
        raise FailedPrecondition(
            f"image {name!r} does not exist in the memory IaaS; it has {', '.join(sorted(images))}"
        )
