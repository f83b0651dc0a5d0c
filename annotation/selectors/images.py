"""Which images a caller may read: those linked to a project they are a member of, and no other."""

import re
from collections.abc import Iterator

from django.db.models.functions import Substr

from ..errors import NotFound
from ..models import Image, Judgement, Project, Prompt
from .export import Position

REF = re.compile(r"sha256:([0-9a-f]{64})")


def parse_ref(ref: object) -> str | None:
    """The hex digest of a "sha256:<64 lowercase hex>" reference, or None for anything else."""
    match = REF.fullmatch(ref) if isinstance(ref, str) else None
    return match.group(1) if match else None


def image_of_project(*, project: Project, ref: str) -> Image:
    """The image `ref` ("sha256:<hex>") of the project, or NotFound.

    An image that exists but belongs to other projects only is as absent as one that does not
    exist: no answer tells an outsider whether some project holds an image. Precondition: the
    caller may read the project (access_project).
    """
    sha = parse_ref(ref)
    image = (
        Image.objects.filter(pk=sha, projects__project=project).first() if sha is not None else None
    )
    if image is None:
        raise NotFound("image not found")
    return image


def images_judged_since(*, project: Project, since: str | None) -> Iterator[Image]:
    """Every image of the project's prompts that have a judgement after `since` (an export
    cursor), each once, in hash order.

    A superset of the images the rows of an export from the same `since` name: the rows stop at
    the export horizon (and a shape may leave judgements out); this does not. So a reader who
    fetches the rows first and the images second holds every image its rows name.
    """
    judged = Judgement.objects.filter(project=project).filter(Position.decode(since).after())
    # One query however many: Prompt.image is "sha256:<hex>", the hex starts at character 8.
    shas = (
        Prompt.objects.filter(
            project=project, image__startswith="sha256:", tasks__judgements__in=judged
        )
        .annotate(sha=Substr("image", 8))
        .values("sha")
    )
    # Linked to this project too: a prompt can only name such an image, and the check is free.
    images = Image.objects.filter(pk__in=shas, projects__project=project).order_by("pk")
    return images.iterator(chunk_size=2000)
