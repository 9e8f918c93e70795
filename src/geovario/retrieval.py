"""Gallery retrieval: cached gallery embeddings and exact, memory-bounded top-k.

GeoCLIP's ``predict()`` runs the location encoder over the whole 100K gallery on every call
(~26 s on 2 CPU cores). The gallery embeddings depend only on the weights and the gallery, so they
are computed once, written beside the model (keyed by a hash of both), and memory-mapped after.
Top-k then streams the gallery in chunks, keeping a running top-k and a running log-sum-exp, so
the probabilities are the softmax over the *whole* gallery, as GeoCLIP computes them, while memory
stays O(batch x chunk) for a gallery of any size.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from geovario.atomic import reserve
from geovario.errors import GeovarioError, GeovarioWarning, ParameterError
from geovario.gps_embeddings import embed_batches, embed_locations
from geovario.model import GeoLocModel

CACHE_ENV = "GEOVARIO_CACHE_DIR"


def gallery_cache_key(weights_sha256: str, gallery: np.ndarray) -> str:
    """Changes when either the weights or any gallery coordinate changes."""
    digest = hashlib.sha256(weights_sha256.encode())
    digest.update(np.ascontiguousarray(gallery, dtype=np.float32).tobytes())
    return digest.hexdigest()[:20]


def _cache_dirs(model_dir: Path | None) -> list[Path]:
    dirs = []
    if os.environ.get(CACHE_ENV):
        dirs.append(Path(os.environ[CACHE_ENV]))
    if model_dir is not None:
        dirs.append(model_dir / "cache")
    dirs.append(Path.home() / ".cache" / "geovario" / "galleries")
    return dirs


def remove_stale_temporaries(folder: Path) -> None:
    """Half-written caches (``.gallery-*.npy.PID.tmp``) of processes that are gone: a kill during encoding leaves one."""
    for tmp in folder.glob(".gallery-*.npy.*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@torch.inference_mode()
def encode_gallery_to(
    path: Path, model: GeoLocModel, gallery: np.ndarray, batch_size: int = 8192, progress: bool = True
) -> None:
    """Stream unit location embeddings of ``gallery`` into an .npy at ``path`` (atomic rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(gallery), model.config.embed_dim))
    try:
        reserve(tmp)
        for start, embeddings in embed_batches(model, gallery, batch_size, normalize=True, device=model.logit_scale.device,
                                               progress=progress, desc="encoding gallery", leave=False):
            out[start : start + len(embeddings)] = embeddings
        out.flush()
        del out
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def cached_gallery_embeddings(
    model: GeoLocModel,
    gallery: np.ndarray,
    weights_sha256: str,
    model_dir: Path | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Memory-mapped (N, embed_dim) unit embeddings of the gallery, computing them on first use.

    Looks in ``$GEOVARIO_CACHE_DIR``, then ``<model_dir>/cache``, then ``~/.cache/geovario``; writes
    to the first of those that is writable.
    """
    name = f"gallery-{gallery_cache_key(weights_sha256, gallery)}.npy"
    candidates = _cache_dirs(model_dir)
    for folder in candidates:
        cached = folder / name
        if cached.is_file():
            try:
                emb = np.load(cached, mmap_mode="c")  # copy-on-write: torch may wrap it without a copy
            except (ValueError, OSError):
                emb = None
            problem = "unreadable" if emb is None else cache_problem(emb, model, gallery)
            if problem is None:
                return emb
            warnings.warn(f"{cached}: the gallery cache is not what its name claims ({problem}); encoding the gallery again",
                          GeovarioWarning, stacklevel=2)
            try:
                cached.unlink()
            except OSError:
                pass  # a read-only folder: the fresh cache goes to the next writable one
    errors = []
    for folder in candidates:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(folder)
            if (folder / name).is_file():
                continue  # the bad cache that could not be removed
            encode_gallery_to(folder / name, model, gallery, progress=progress)
            return np.load(folder / name, mmap_mode="c")
        except OSError as e:
            errors.append(f"{folder}: {e.strerror or e}")
    raise GeovarioError(f"cannot write the gallery cache anywhere ({'; '.join(errors)}); set ${CACHE_ENV}")


def cache_problem(embeddings: np.ndarray, model: GeoLocModel, gallery: np.ndarray, sample: int = 64) -> str | None:
    """Why a gallery cache does not hold the model's unit embeddings of the gallery, or None.

    Every row must be a finite unit vector (a zeroed or NaN-filled file fails here), and a sample of rows
    spread over the gallery must equal the model's embeddings of those locations: the cache checked against
    its key (the weights and the gallery) at the cost of encoding ``sample`` locations.
    """
    if embeddings.shape != (len(gallery), model.config.embed_dim):
        return f"shape {embeddings.shape}, expected {(len(gallery), model.config.embed_dim)}"
    for start in range(0, len(embeddings), 65536):
        norms = np.linalg.norm(np.asarray(embeddings[start : start + 65536], dtype=np.float32), axis=1)
        bad = ~(np.abs(norms - 1) <= 1e-3)  # NaN compares false, so it is bad too
        if bad.any():
            row = int(np.argmax(bad))
            return f"row {start + row} is not a unit vector (norm {norms[row]:.3g})"
    rows = np.unique(np.linspace(0, len(gallery) - 1, min(sample, len(gallery))).astype(np.int64))
    expected = embed_locations(model, gallery[rows], batch_size=len(rows), normalize=True, device=model.logit_scale.device)
    error = float(np.max(np.abs(np.asarray(embeddings[rows], dtype=np.float32) - expected)))
    if not error <= 1e-4:
        return f"rows differ from the model's embeddings of their locations by up to {error:.3g}"
    return None


def _chunk_rows(n_queries: int, budget_elements: int = 1 << 24) -> int:
    """Gallery rows per chunk so that the (queries x chunk) logit block stays near 64 MB of float32."""
    return max(1024, budget_elements // max(1, n_queries))


@torch.inference_mode()
def topk_softmax(
    queries: torch.Tensor,
    gallery_embeddings: np.ndarray | torch.Tensor,
    logit_scale: float,
    k: int,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact top-k of ``logit_scale * queries @ gallery.T`` with softmax over the whole gallery.

    ``queries`` are (B, D) unit embeddings; ``gallery_embeddings`` (N, D) unit embeddings, possibly
    a memory map. Returns (indices, probabilities, logits), each (B, k), best first; equal logits
    are ordered by gallery index so results are deterministic.
    """
    n = len(gallery_embeddings)
    if not 1 <= k <= n:
        raise ParameterError("top_k", f"must be between 1 and the gallery size {n}, got {k}")
    device = queries.device
    rows = chunk_rows or _chunk_rows(len(queries))
    scaled = queries * logit_scale  # the scale folded into the queries: one pass over (B, D), not over every logit
    best_logits = torch.full((len(queries), 0), float("-inf"), device=device)
    best_index = torch.zeros((len(queries), 0), dtype=torch.long, device=device)
    log_norm = torch.full((len(queries),), float("-inf"), device=device)
    for start in range(0, n, rows):
        block = gallery_embeddings[start : start + rows]
        if isinstance(block, np.ndarray):
            block = torch.from_numpy(np.ascontiguousarray(block))
        block = block.to(device=device, dtype=queries.dtype)
        logits = scaled @ block.T
        top = torch.topk(logits, min(k, logits.shape[1]), dim=1)
        # The block's log-sum-exp, shifted by its largest logit (topk's first): exp in place, no second max pass.
        largest = top.values[:, :1]
        log_norm = torch.logaddexp(log_norm, largest[:, 0] + logits.sub_(largest).exp_().sum(dim=1).log())
        best_logits = torch.cat([best_logits, top.values], dim=1)
        best_index = torch.cat([best_index, top.indices + start], dim=1)
        if best_logits.shape[1] > k:
            best_logits, best_index = _order(best_logits, best_index, k)
    best_logits, best_index = _order(best_logits, best_index, k)
    return best_index, torch.exp(best_logits - log_norm[:, None]), best_logits


def _order(logits: torch.Tensor, index: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the k best candidates per row: higher logit first, then lower gallery index."""
    by_index = torch.argsort(index, dim=1, stable=True)
    logits, index = logits.gather(1, by_index), index.gather(1, by_index)
    by_logit = torch.argsort(logits, dim=1, descending=True, stable=True)[:, :k]
    return logits.gather(1, by_logit), index.gather(1, by_logit)


def faiss_index(gallery_embeddings: np.ndarray, factory: str = "Flat"):
    """A FAISS inner-product index over the gallery (optional dependency: ``pip install geovario[faiss]``).

    "Flat" is exact; factory strings such as "HNSW32" or "IVF1024,Flat" trade exactness for speed on
    galleries of millions.
    """
    try:
        import faiss
    except ImportError:
        raise GeovarioError("FAISS retrieval needs the faiss-cpu package: pip install 'geovario[faiss]'") from None
    dim = gallery_embeddings.shape[1]
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise GeovarioError(f"bad FAISS index factory {factory!r} ({str(e).strip().splitlines()[0]})") from None
    if not index.is_trained:
        sample = np.asarray(gallery_embeddings[:: max(1, len(gallery_embeddings) // 100_000)], dtype=np.float32)
        try:
            index.train(np.ascontiguousarray(sample))
        except RuntimeError as e:  # e.g. IVF4096 on a gallery of a few thousand: fewer points than clusters
            raise GeovarioError(f"FAISS index {factory!r} cannot be trained on this gallery of {len(gallery_embeddings):,} "
                                f"locations ({str(e).strip().splitlines()[0][:200]}); use Flat or fewer clusters") from None
    rows = 65536  # added at a time (the gallery may be a memory map)
    for start in range(0, len(gallery_embeddings), rows):
        index.add(np.ascontiguousarray(gallery_embeddings[start : start + rows], dtype=np.float32))
    return index


def faiss_topk(index, queries: torch.Tensor, logit_scale: float, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k through a FAISS index. The probabilities are a softmax over the k candidates only: the
    whole-gallery normaliser would need every score, which is what FAISS avoids computing."""
    if not 1 <= k <= index.ntotal:
        raise ParameterError("top_k", f"must be between 1 and the gallery size {index.ntotal}, got {k}")
    scores, indices = index.search(np.ascontiguousarray(queries.detach().cpu().numpy(), dtype=np.float32), k)
    logits = torch.from_numpy(logit_scale * scores)
    return torch.from_numpy(indices.astype(np.int64)), logits.softmax(dim=1), logits
