"""``geovario data check --decode``: read and decode every image, in worker processes.

Listing a dataset finds missing files and refused archive members without reading any image.
Corrupt or truncated images, and archive members whose bytes do not survive a read (a bad zip
CRC, a shard cut short), show only when each one is read and decoded: this does that.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

from tqdm.auto import tqdm

from geovario.data.archives import load_image
from geovario.data.records import Dataset, Problem
from geovario.errors import GeovarioError


def _decode(image) -> str | None:
    try:
        load_image(image)
    except GeovarioError as e:
        return str(e)
    return None


def decode_problems(dataset: Dataset, workers: int = 1, progress: bool = True) -> list[Problem]:
    """One problem per record whose image cannot be read and decoded."""
    images = [record.image for record in dataset.records]
    problems = []
    with ProcessPoolExecutor(max(1, workers)) as pool, tqdm(total=len(images), unit="img", desc="decoding",
                                                               disable=None if progress else True) as bar:
        for record, why in zip(dataset.records, pool.map(_decode, images, chunksize=64)):
            bar.update(1)
            if why is None:
                continue
            if record.line:  # a CSV row: name the row, the message names the image
                problems.append(Problem(str(dataset.source), record.line, why, "bad image"))
            else:  # a record of an archive that carries its own labels
                problems.append(Problem(str(record.image), 0, why.removeprefix(f"{record.image}: "), "bad image"))
    return problems
