"""The ``[archive]`` table: settings of the archive stage (standard library only)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from crforge.errors import InputError
from crforge.pipeline.names import ARCHIVE_PRODUCTS

__all__ = ["ArchiveConfig", "checked_config"]


@dataclass
class ArchiveConfig:
    """Settings of the archive stage (the ``[archive]`` table).

    Parameters
    ----------
    server : str
        MAST base URL; empty: ``astroquery.mast.conf.server`` (https://mast.stsci.edu,
        or what the user's astroquery configuration says).
    cloud : bool
        Download from MAST's cloud (S3) copies. Not supported: crforge downloads from
        MAST over HTTPS, where it verifies sizes and resumes (must stay ``false``).
    products : tuple of str
        Product types in order of preference (``flc``: CTE-corrected, ``flt``).
    min_exposures : int
        Visits with fewer exposures are left out of queries, and fail when fewer
        were fetched (AstroDrizzle labels need at least 2).
    partial_visits : bool
        Label a visit from its verified exposures when some could not be fetched
        (at least ``min_exposures``); ``false`` (default): the visit fails.
    pagesize : int
        Rows per MAST page (astroquery asks for every page).
    concurrency : int
        Downloads at once.
    retries : int
        Further attempts of a file after a 5xx, a timeout or a broken connection.
    backoff : float
        Seconds before the first retry, doubled for each further one.
    max_backoff : float
        Longest wait between attempts (seconds).
    timeout : float
        Seconds to connect, and seconds without a byte before a transfer is given up
        (and retried).
    chunk_size : int
        Bytes per read while downloading.
    """

    server: str = ""
    cloud: bool = False
    products: tuple[str, ...] = ("flc", "flt")
    min_exposures: int = 2
    partial_visits: bool = False
    pagesize: int = 50000
    concurrency: int = 4
    retries: int = 4
    backoff: float = 1.0
    max_backoff: float = 60.0
    timeout: float = 60.0
    chunk_size: int = 1 << 20

    def validate(self) -> None:
        """Raise :class:`~crforge.errors.InputError` naming a bad parameter and its value."""
        if self.cloud:
            raise InputError("archive.cloud=True: cloud (S3) downloads are not supported; crforge "
                             "downloads from MAST over HTTPS, where it verifies sizes and resumes")
        if self.server and not re.match(r"^https?://[^/\s]+", self.server):
            raise InputError(f"archive.server={self.server!r}: expected an http(s):// URL or empty")
        prods = tuple(p.lower() for p in self.products)
        if not prods or any(p not in ARCHIVE_PRODUCTS for p in prods) or len(set(prods)) != len(prods):
            raise InputError(f"archive.products={self.products!r}: expected distinct values from "
                             f"{ARCHIVE_PRODUCTS}, in order of preference")
        for name, lo in (("min_exposures", 1), ("pagesize", 1), ("concurrency", 1),
                         ("retries", 0), ("chunk_size", 1024)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise InputError(f"archive.{name}={v!r}: expected an integer >= {lo}")
        for name in ("backoff", "max_backoff", "timeout"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise InputError(f"archive.{name}={v!r}: expected seconds >= 0")
        if self.timeout <= 0:
            raise InputError(f"archive.timeout={self.timeout!r}: expected seconds > 0")

    def mast_server(self) -> str:
        """The MAST base URL in use (no trailing slash)."""
        if self.server:
            return self.server.rstrip("/")
        from astroquery.mast import conf

        return str(conf.server).rstrip("/")


def checked_config(cfg: ArchiveConfig | None) -> ArchiveConfig:
    """``cfg`` (the defaults when ``None``), validated.

    Raises
    ------
    TypeError
        ``cfg`` is not an :class:`ArchiveConfig`.
    crforge.errors.InputError
        A bad value (:meth:`ArchiveConfig.validate`).
    """
    cfg = ArchiveConfig() if cfg is None else cfg
    if not isinstance(cfg, ArchiveConfig):
        raise TypeError(f"cfg must be an ArchiveConfig, got {type(cfg).__name__}")
    cfg.validate()
    return cfg
