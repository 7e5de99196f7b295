"""The ``[simulate]`` table: how to simulate one visit (standard library only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from crforge.errors import InputError
from crforge.pipeline.instruments import Instrument, get_instrument
from crforge.pipeline.names import FIELD_TYPES

__all__ = ["SimulateConfig", "base36"]


@dataclass
class SimulateConfig:
    """How to simulate one visit.

    Parameters
    ----------
    instrument : str
        Imager in :data:`crforge.pipeline.instruments.INSTRUMENTS`.
    field_type : str
        One of ``extragalactic``, ``globular_cluster``, ``resolved_galaxy``.
    filter : str
        Filter name; must be in the instrument's tables. Empty: the instrument default.
    n_exposures : int
        Exposures in the visit (>= 1; AstroDrizzle labels need >= 2).
    exptime : float
        Seconds per exposure.
    chip_shape : tuple of int, optional
        ``(ny, nx)`` of every chip; ``None`` keeps the full-size chips.
    seed : int
        Seed of everything random: same config, same files.
    dither : str
        ``box`` (ACS-WFC-DITHER-BOX), ``line`` (ACS-WFC-DITHER-LINE) or ``none``
        (CR-split at one pointing).
    density : float
        Multiplies the number of stars and galaxies of the field type.
    cr_rate : float, optional
        Cosmic rays per s per cm^2; ``None`` takes the instrument's.
    hot_fraction, warm_fraction : float
        Fraction of pixels that are hot (DQ 16) or warm (DQ 64).
    n_bad_columns : int
        Bad columns per full-size chip (DQ 128); scaled with the chip width.
    ra, dec, orient : float
        Pointing of the first exposure (degrees).
    proposal_id : int
        Written as ``PROPOSID``; also names the visit.
    obset_id : str
        Two characters naming the visit within the proposal.
    target : str
        ``TARGNAME``; empty: a name from the field type and seed.
    psf_scale : tuple of float
        ``(low, high)``: each visit's PSF core is the instrument table's FWHM times a
        factor drawn uniformly in this range (focus and breathing, position on the
        detector), so that the networks see sharper and broader stars than the
        table's typical one; ``(1, 1)`` keeps it.
    psf_jitter : float
        Standard deviation of a further per-exposure factor on the PSF width (jitter,
        breathing within a visit).
    psf_ellipticity : float
        Largest ``1 - fwhm_minor / fwhm_major`` of a visit's PSF (drawn uniformly,
        along y or x).
    cr_diffusion : tuple of float
        ``(low, high)``: the Gaussian sigma (pixels) that spreads each cosmic-ray
        deposit, drawn per visit (about 0.45 for the 15 um pixels of ACS/WFC and
        WFC3/UVIS, 0.3 for the 21 um pixels of ACS/HRC and STIS/CCD, where real
        cosmic rays are sharper).
    cr_charge : tuple of float
        ``(low, high)``: every cosmic-ray deposit of a visit is multiplied by a factor
        drawn in this range (thicker or thinner silicon than the table's, other
        detectors: the real cosmic rays of ACS/HRC carry about twice the charge of
        ACS/WFC's median event).
    pointing_error : float
        Per-axis rms (pixels) of each exposure's pointing error: the header WCS of an
        exposure says it points ``(dy, dx)`` further than it does, with ``dy`` and
        ``dx`` drawn from a normal distribution of this width (its own random stream;
        the true error is in the truth file). 0 (the default) writes headers that
        are exact, as before; ~0.1 is typical of the relative pointing of real
        exposures within a visit (the label stage's alignment corrects it).
    """

    instrument: str = "ACS/WFC"
    field_type: Literal["extragalactic", "globular_cluster", "resolved_galaxy"] = "extragalactic"
    filter: str = ""
    n_exposures: int = 4
    exptime: float = 500.0
    chip_shape: tuple[int, ...] | None = None
    seed: int = 0
    dither: Literal["box", "line", "none"] = "box"
    density: float = 1.0
    cr_rate: float | None = None
    hot_fraction: float = 0.002
    warm_fraction: float = 0.01
    n_bad_columns: int = 4
    ra: float = 150.0
    dec: float = 2.2
    orient: float = 0.0
    proposal_id: int = 99000
    obset_id: str = "01"
    target: str = ""
    psf_scale: tuple[float, float] = (0.9, 1.15)
    psf_jitter: float = 0.02
    psf_ellipticity: float = 0.1
    cr_diffusion: tuple[float, float] = (0.25, 0.45)
    cr_charge: tuple[float, float] = (1.0, 1.0)
    pointing_error: float = 0.0

    def validate(self) -> Instrument:
        """Check the values; return the instrument record.

        Raises
        ------
        InputError
            Naming the parameter and its value.
        """
        inst = get_instrument(self.instrument)
        if self.field_type not in FIELD_TYPES:
            raise InputError(f"field_type={self.field_type!r}: expected one of {FIELD_TYPES}")
        if not isinstance(self.n_exposures, int) or self.n_exposures < 1:
            raise InputError(f"n_exposures={self.n_exposures!r}: expected an int >= 1")
        if not self.exptime > 0:
            raise InputError(f"exptime={self.exptime!r}: expected seconds > 0")
        shape = self.chip_shape
        if shape is not None and (len(shape) != 2 or not all(isinstance(n, int) for n in shape)
                                  or min(shape) < 32):
            raise InputError(f"chip_shape={shape!r}: expected (ny, nx), each an int >= 32")
        if self.dither not in ("box", "line", "none"):
            raise InputError(f"dither={self.dither!r}: expected box, line or none")
        if self.density < 0:
            raise InputError(f"density={self.density!r}: expected >= 0")
        if self.cr_rate is not None and not self.cr_rate >= 0:
            raise InputError(f"cr_rate={self.cr_rate!r}: expected events/s/cm^2 >= 0")
        if not isinstance(self.n_bad_columns, int) or self.n_bad_columns < 0:
            raise InputError(f"n_bad_columns={self.n_bad_columns!r}: expected an int >= 0")
        for name in ("hot_fraction", "warm_fraction"):
            v = getattr(self, name)
            if not 0 <= v < 0.5:
                raise InputError(f"{name}={v!r}: expected a fraction in [0, 0.5)")
        if len(str(self.obset_id)) != 2:
            raise InputError(f"obset_id={self.obset_id!r}: expected two characters")
        if not isinstance(self.filter, str):
            raise InputError(f"filter={self.filter!r}: expected a filter name such as 'F606W'")
        inst.fwhm(self.filter or inst.default_filter)
        self._validate_optics()
        return inst

    def _validate_optics(self) -> None:
        for name, lo_min in (("psf_scale", 0.3), ("cr_diffusion", 0.05), ("cr_charge", 0.1)):
            lo, hi = getattr(self, name)
            if not lo_min <= lo <= hi:
                raise InputError(f"{name}={getattr(self, name)!r}: expected (low, high) with "
                                 f"{lo_min} <= low <= high")
        if not 0 <= self.psf_jitter < 0.3:
            raise InputError(f"psf_jitter={self.psf_jitter!r}: expected a fraction in [0, 0.3)")
        if not 0 <= self.pointing_error <= 5:
            raise InputError(f"pointing_error={self.pointing_error!r}: expected an rms in pixels in [0, 5]")
        if not 0 <= self.psf_ellipticity < 0.5:
            raise InputError(f"psf_ellipticity={self.psf_ellipticity!r}: expected a value in [0, 0.5)")

    @property
    def visit_name(self) -> str:
        """Six-character visit id, HST style: instrument letter, program, obset."""
        letter = get_instrument(self.instrument).rootname_letter
        return f"{letter}{base36(self.proposal_id, 3)}{str(self.obset_id).lower()}"

    @property
    def rootnames(self) -> list[str]:
        """The exposures' rootnames, in order (the data-set stage checks that no two visits share one)."""
        return [f"{self.visit_name}{e + 1:02d}q" for e in range(self.n_exposures)]


def base36(n: int, width: int) -> str:
    """``n`` modulo ``36**width`` in ``width`` lower-case base-36 digits (HST rootname style)."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    n = int(n) % 36**width
    out = ""
    for _ in range(width):
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out
