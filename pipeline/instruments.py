"""Instrument tables: everything crforge knows about an HST imager lives here.

Each imager is one :class:`Instrument` record in :data:`INSTRUMENTS`. The simulator,
the labelling stage and the mask functions read only these records, so supporting a
new imager means adding a table entry, not a code path.

Sources for the numbers (all approximate, chosen to make simulated data look like the
real thing, not to calibrate science data):

- ACS/WFC: ACS Instrument Handbook (detector and WFC chapters); gain 2.0 e-/DN,
  read noise 4-5 e- per amplifier after SM4, full well about 84,700 e-, 0.05"/pixel,
  two 4096x2048 chips separated by a gap of about 50 pixels (2.5").
  DQ bits: ACS Data Handbook (also docs/instruments.md).
- WFC3/UVIS: WFC3 Instrument Handbook (UVIS detector chapter); gain 1.55 e-/DN, read
  noise about 3.1 e-, full well about 63,000 e-, 0.0395"/pixel, two 4096x2051 chips
  separated by about 35 pixels (1.4"). DQ bits: WFC3 Data Handbook.
- PSF core FWHM by filter, the width of the simulator's core Gaussian (before pixel
  integration, beside its halo and wing; ``crforge.pipeline.simulate.sources``).
  ACS/WFC: fitted so that a star centred on a pixel has the sharpness of the TinyTim
  model PSF of the filter shipped with drizzlepac 3.11 (``drizzlepac/pars/psfs/acs/wfc``)
  convolved with the charge-diffusion kernel in its header: the same ratio of the four
  neighbouring pixels to the peak (0.40-0.51; 0.46 for F606W, which the core 1.69
  gives). The handbooks' encircled-energy FWHMs (1.9-2.1 pixels) used before made stars
  broader than real ones, and models trained on them took real stars for cosmic rays.
  WFC3/UVIS: the handbook's encircled-energy FWHM (about 0.067-0.08", 1.8-2.1 pixels).
- Sky: the handbooks' "average" zodiacal + earthshine sky in e-/s/pixel.
- ACS/HRC: ACS Instrument Handbook (HRC; the detector was lost in 2007): one
  1024x1024 chip of 21 um pixels, about 0.028"x0.025" (0.027" mean), read by
  amplifier C at CCDGAIN=2: 2.216 e-/DN and 4.71 e- (the values calacs wrote into
  ``ATODGNC``/``READNSEC`` of the real frame ``j8bt06nyq``), full well about
  155,000 e-, dark about 0.006 e-/s/pixel. Zeropoints: Sirianni et al. (2005, PASP 117,
  1049), AB. PSF FWHM: the handbook's 1.9-2.8 pixels from blue to red (the 25 mas
  pixels sample the PSF better than WFC's). Sky: WFC's per-arcsec^2 sky times the
  smaller pixel and HRC's lower throughput. DQ bits: calacs's (as WFC).
- STIS/CCD: STIS Instrument Handbook (CCD chapter) and Data Handbook: one 1024x1024
  chip of 21 um pixels, 0.05078"/pixel, ``ATODGAIN``/``READNSE`` in the primary header
  (CCDGAIN=1: 1.0 e-/DN; 3.99 e- in the real frame ``o4k19a010``), FLT images in
  COUNTS (DN), ``EXPTIME`` per imset in the SCI header (the primary has ``TEXPTIME``):
  a CR-split FLT file holds each exposure as one SCI/ERR/DQ imset, which AstroDrizzle
  splits into single files (``stsci.tools.check_files.splitStis``). Full well about
  144,000 e- (the 16-bit converter at gain 1 saturates at 65,535 e-), dark about 0.009
  e-/s/pixel, the 50CCD (clear) PSF about 2 pixels FWHM, AB zeropoint of 50CCD about
  26.4 (STIS IHB imaging chapter). DQ bits: calstis (STIS Data Handbook, table of
  data-quality flags), 8192 its CR rejection (ocrreject).
- WFPC2: WFPC2 Instrument and Data Handbooks: four 800x800 chips, PC1 at 0.0455"
  and WF2-4 at 0.0996"/pixel, 15 um pixels, c0f/c0m images in DN (counts) with the
  gain mode in ``ATODGAIN`` (7 or 15) and no read-noise keyword; the calibrated gains
  and read noise per chip are drizzlepac's ``wfpc2Data.WFPC2_GAINS`` (gain 7: 7.12,
  7.12, 6.90, 7.10 e-/DN; 5.24, 5.51, 5.22, 5.19 e-). Full well about 53,000 e-
  (A-to-D saturation at 4095 DN at gain 7: 28,700 e-), dark about 0.005 e-/s/pixel
  (drizzlepac's ``wfpc2Data`` uses the same). PSF cores 1.2-1.4 WF pixels (TinyTim's
  WF PSFs, pixel response included); the PC chip gets the same core in arcsec.
  Zeropoints: WFPC2 Data Handbook (AB, gain 7), approximate. DQ bits: the c1f/c1m
  data-quality file (WFPC2 Data Handbook table 3.3).
- Cosmic rays: about 1.2 events s^-1 cm^-2 on all imagers, the order of the rates
  Miles et al. (2021, ApJ 918, 86) measured over 1.2 billion HST cosmic rays; 15 um pixels; the sensitive silicon
  thickness sets the track length for a given incidence angle.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from crforge.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["Chip", "Instrument", "INSTRUMENTS", "get_instrument", "instrument_for_header", "instrument_for_mast",
           "DQConvention", "HST_DQ", "dq_convention", "normalise_unit", "to_electrons", "ACS_WFC", "WFC3_UVIS",
           "ACS_HRC", "STIS_CCD", "WFPC2"]


@dataclass(frozen=True)
class Chip:
    """One CCD chip as it appears in a calibrated (FLT/FLC) file.

    Parameters
    ----------
    extver : int
        ``EXTVER`` of the chip's SCI/ERR/DQ extensions.
    ccdchip : int
        The ``CCDCHIP`` keyword value of that extension.
    shape : tuple of int
        ``(ny, nx)`` of the chip's arrays.
    origin : tuple of float
        ``(y0, x0)`` of the chip's pixel (0, 0) in a common focal-plane frame in
        pixels (no distortion): used to lay the chips out on the sky.
    amps : str
        The amplifiers reading this chip, e.g. ``"AB"``; each half in x belongs to one.
    pixel_scale : float
        Arcsec per pixel of this chip when it differs from the instrument's (WFPC2's
        PC1); 0: the instrument's. ``origin`` is in the instrument's pixels.
    """

    extver: int
    ccdchip: int
    shape: tuple[int, int]
    origin: tuple[float, float]
    amps: str
    pixel_scale: float = 0.0


def _positive(header: Mapping, key: str) -> float:
    """``header[key]`` as a number > 0 (a gain of 0 is an amplifier that did not read)."""
    if key not in header:
        raise InputError(f"keyword {key} missing")
    try:
        v = float(header[key])
    except (TypeError, ValueError):
        raise InputError(f"{key}={header[key]!r} is not a number") from None
    if not v > 0:
        raise InputError(f"{key}={header[key]!r}, expected > 0 (this chip's amplifier)")
    return v


#: The simulator's defects -> DQ bits of calacs and calwf3.
_SIM_DQ_CALACS = {"hot": 16, "warm": 64, "bad_column": 128, "saturated": 256, "adc_saturated": 2048}


@dataclass(frozen=True)
class Instrument:
    """One HST imager: geometry, detector and DQ conventions.

    Parameters
    ----------
    name : str
        ``"<INSTRUME>/<DETECTOR>"``, e.g. ``"ACS/WFC"``.
    instrume, detector : str
        The primary header's ``INSTRUME`` and ``DETECTOR`` values.
    chips : tuple of Chip
        The chips, in extension order.
    pixel_scale : float
        Arcsec per pixel.
    pixel_size_um : float
        Physical pixel pitch in microns (for the cosmic-ray rate per cm^2).
    depletion_um : float
        Sensitive silicon thickness in microns (sets CR track lengths).
    gain : dict
        e-/DN per amplifier (``ATODGN<amp>``).
    readnoise : dict
        e- per amplifier (``READNSE<amp>``).
    full_well : float
        Full-well depth in e-; above it, charge bleeds along columns.
    adc_max_dn : float
        Largest value of the analogue-to-digital converter in DN.
    dark_rate : float
        Mean dark current in e-/s/pixel (``MEANDARK`` is this times ``EXPTIME``).
    cr_rate : float
        Cosmic-ray events per second per cm^2.
    dq_bits : dict
        DQ bit value -> meaning.
    bad_bits : int
        DQ bits that make a pixel unusable for training (ignore bit 1).
    saturation_bits : int
        DQ bits of saturation (ignore bit 2, grown).
    nodata_bits : int
        DQ bits of lost or fill data (ignore bit 4).
    cr_bits : int
        DQ bits the HST pipeline and AstroDrizzle use for cosmic rays. They are never
        bad pixels: a CR is exactly what the labels must keep.
    fwhm_pix : dict
        Typical PSF FWHM in pixels by filter.
    sky_rate : dict
        Typical sky in e-/s/pixel by filter.
    zeropoint : dict
        AB magnitude giving 1 e-/s, by filter (for the simulator's luminosity functions).
    filter_keywords : tuple of str
        Primary keywords that name the filter (``FILTER1``/``FILTER2`` on ACS).
    default_filter : str
        Filter used when none is given.
    extra_primary : dict
        Further primary keywords a file of this imager carries (simulator only).
    exptime_keyword, exptime_ext : str
        The keyword holding an exposure's time and where it is: ``"PRIMARY"`` (ACS,
        WFC3, WFPC2) or ``"SCI"`` (STIS: one ``EXPTIME`` per imset; its primary has the
        total ``TEXPTIME``).
    gain_keyword, readnoise_keyword : str
        Primary-header keywords of the gain (e-/DN) and read noise (e-); ``{amp}`` is
        replaced by each amplifier letter (ACS/WFC3: ``ATODGN{amp}``, ``READNSE{amp}``),
        a keyword without it holds one value for every chip (STIS: ``ATODGAIN``,
        ``READNSE``). An empty ``readnoise_keyword`` means the file carries none and
        the table's ``readnoise`` is used (WFPC2).
    units : tuple of str
        The ``BUNIT`` values of this imager's calibrated SCI arrays that crforge reads
        (``ELECTRONS``, ``ELECTRONS/S``, ``COUNTS``); see :func:`to_electrons`.
    sim_bunit : str
        The unit the simulator writes (what the imager's calibrated files are in).
    packing : str
        ``"file"``: one exposure per file, its chips the SCI EXTVERs (ACS, WFC3,
        WFPC2's c0m); ``"imsets"``: every SCI EXTVER of a file is another exposure of
        the instrument's one chip (a STIS CR-split or repeated FLT).
    products : tuple of str
        File suffixes of a visit's calibrated exposures, in order of preference
        (``flc`` before ``flt``; WFPC2 ``c0m``). ``crforge query`` and ``crforge
        fetch`` take these product types from MAST (``archive.products`` orders those
        of them it names), each with the files ``dq_files`` pairs it with
        (:meth:`companions`: WFPC2's ``c1m``).
    exposure_keywords : tuple of str
        Keywords AstroDrizzle reads from the header that holds the exposure time
        (``exptime_ext``) besides it: STIS's ``stisExt2PrimKw`` copies ``DATE-OBS``,
        ``EXPSTART`` and ``EXPEND`` of each imset into its primary and fails without them.
    sim_dq : dict
        The DQ bit the simulator sets for each defect it makes: ``hot``, ``warm``,
        ``bad_column``, ``saturated`` (full well), ``adc_saturated`` (the bits the
        imager's pipeline uses for them; STIS has no warm-pixel or A-to-D bit and
        flags both saturations 256).
    default_bunit : str
        The unit of SCI arrays without ``BUNIT`` (WFPC2's c0f/c0m carry none: DN).
    extensions : tuple of str
        The extensions every chip has (``SCI``, ``ERR``, ``DQ``; WFPC2 has no ``ERR``).
    sci_keywords : tuple of str
        Keywords every SCI extension must have (ACS, WFC3, STIS: ``EXPNAME``,
        ``MEANDARK``, ``NGOODPIX``; WFPC2's groups have none of them).
    dq_files : dict
        Suffix of an image file -> suffix of the file holding its DQ arrays, for
        imagers that keep them apart (WFPC2: ``c0f`` -> ``c1f``, ``c0m`` -> ``c1m``);
        :func:`crforge.pipeline.fitsfile.open_exposure` attaches them as ``DQ``.
    gain_modes : dict
        For an imager whose gain keyword holds a gain *mode* (WFPC2's ``ATODGAIN`` 7 or
        15): mode -> amplifier -> calibrated ``(gain, read noise)``.
    chip_keyword : str
        The SCI keyword holding a chip's number (``CCDCHIP``; WFPC2: ``DETECTOR``).
    always_refine : bool
        Label every visit on the minimum stack with crforge's refinement, whatever
        its exposure count (``label.refine_max_exposures`` is for the others). WFPC2:
        drizzlepac 3.11's ``driz_cr`` takes WFPC2's read noise in DN for electrons and
        flags about 7% of the sky pixels of every chip as cosmic rays.
    refine_deriv_factor, refine_grow_factor : float
        Multiply the refinement's gradient weight (``LabelConfig.refine_deriv_scale``)
        and grow threshold (``refine_snr[1]``) on this imager: the [label] values were
        set on ACS/WFC, whose sharp PSF leaves the largest interpolation errors on
        stars. 1 but for ACS/HRC and STIS/CCD, whose PSFs of about 2 pixels leave
        smaller interpolation errors (measured: docs/instruments.md, "Label defaults
        per imager").
    drizzle_stem : str
        How AstroDrizzle names an exposure's products (``<stem>_sci<n>_crmask.fits``):
        ``"rootname"`` (the file name up to its last ``_``: ACS, WFC3, STIS) or
        ``"filename"`` (the whole name without ``.fits``: WFPC2's ``<root>_c0m``).
    header_amps : str
        Amplifiers whose gain and read-noise keywords every file of the imager
        carries, 0 for those that did not read (ACS/HRC: ``ABCD``, read by C alone;
        AstroDrizzle averages the non-zero ones and wants all four). Empty: ``amps``.
    rootname_letter : str
        First letter of the imager's rootnames (``j`` ACS, ``i`` WFC3, ``o`` STIS, ``u``
        WFPC2).
    mast_instruments : tuple of str
        MAST's ``instrument_name`` values of the imager (``crforge query``); empty:
        ``name``. WFPC2's observations are listed as ``WFPC2/WFC`` or ``WFPC2/PC``
        after the chip the target was placed on, both holding all four chips.
    clean_dq_bit : int
        DQ bit ``crforge clean`` sets on the cosmic rays it finds: one the
        instrument's calibration pipeline and AstroDrizzle never set, so that it
        cannot be confused with their flags (DQ is int16 in HST files: 32768 is not
        available). ACS/WFC: 16384 (unassigned in calacs, ``acsdq.h``). WFC3/UVIS: 8
        (calwf3's "masked by occulting bar", which WFC3 has none of; 16384 is its
        ghost/crosstalk flag, 8192 its CR rejection, 4096 AstroDrizzle's CRs).
        ACS/HRC: 16384 (calacs, as WFC). STIS/CCD: 64 (calstis "reserved", never
        set). WFPC2: 16384 (the c1m/c1f bits stop at 1024; 4096 is AstroDrizzle's).
    """

    name: str
    instrume: str
    detector: str
    chips: tuple[Chip, ...]
    pixel_scale: float
    pixel_size_um: float
    depletion_um: float
    gain: Mapping[str, float]
    readnoise: Mapping[str, float]
    full_well: float
    adc_max_dn: float
    dark_rate: float
    cr_rate: float
    dq_bits: Mapping[int, str]
    bad_bits: int
    saturation_bits: int
    nodata_bits: int
    cr_bits: int
    fwhm_pix: Mapping[str, float]
    sky_rate: Mapping[str, float]
    zeropoint: Mapping[str, float]
    filter_keywords: tuple[str, ...] = ("FILTER",)
    default_filter: str = "F606W"
    extra_primary: Mapping[str, object] = field(default_factory=dict)
    clean_dq_bit: int = 16384
    exptime_keyword: str = "EXPTIME"
    exptime_ext: str = "PRIMARY"
    gain_keyword: str = "ATODGN{amp}"
    readnoise_keyword: str = "READNSE{amp}"
    units: tuple[str, ...] = ("ELECTRONS", "ELECTRONS/S")
    sim_bunit: str = "ELECTRONS"
    packing: str = "file"
    products: tuple[str, ...] = ("flc", "flt")
    exposure_keywords: tuple[str, ...] = ()
    sim_dq: Mapping[str, int] = field(default_factory=lambda: MappingProxyType(_SIM_DQ_CALACS))
    default_bunit: str = ""
    extensions: tuple[str, ...] = ("SCI", "ERR", "DQ")
    sci_keywords: tuple[str, ...] = ("EXPNAME", "MEANDARK", "NGOODPIX")
    dq_files: Mapping[str, str] = field(default_factory=dict)
    gain_modes: Mapping[float, Mapping[str, tuple[float, float]]] = field(default_factory=dict)
    chip_keyword: str = "CCDCHIP"
    always_refine: bool = False
    refine_deriv_factor: float = 1.0
    refine_grow_factor: float = 1.0
    drizzle_stem: str = "rootname"
    header_amps: str = ""
    rootname_letter: str = "j"
    mast_instruments: tuple[str, ...] = ()

    def chip(self, extver: int) -> Chip:
        """Return the chip with ``EXTVER`` ``extver``.

        Raises
        ------
        ValueError
            If the instrument has no such chip.
        """
        for c in self.chips:
            if c.extver == extver:
                return c
        raise InputError(
            f"extver={extver!r}: {self.name} has chips "
            f"{[c.extver for c in self.chips]}"
        )

    def _by_filter(self, table: Mapping[str, float], filt: str) -> float:
        if not isinstance(filt, str):
            raise TypeError(f"filter must be a str, got {filt!r}")
        try:
            return table[filt.upper()]
        except KeyError:
            raise InputError(f"filter={filt!r}: {self.name} table knows {sorted(table)}") from None

    def fwhm(self, filt: str) -> float:
        """PSF FWHM in pixels for filter ``filt``.

        Raises
        ------
        ValueError
            If the filter is not in the table.
        """
        return self._by_filter(self.fwhm_pix, filt)

    def zp(self, filt: str) -> float:
        """AB magnitude that gives 1 e-/s in filter ``filt`` (``ValueError`` if unknown)."""
        return self._by_filter(self.zeropoint, filt)

    def sky(self, filt: str) -> float:
        """Typical sky in e-/s/pixel for filter ``filt`` (``ValueError`` if unknown)."""
        return self._by_filter(self.sky_rate, filt)

    @property
    def amps(self) -> str:
        """All amplifier letters, in order."""
        return "".join(sorted(self.gain))

    def chip_gain_readnoise(self, extver: int) -> tuple[float, float]:
        """Mean gain (e-/DN) and read noise (e-) of the amplifiers of one chip."""
        c = self.chip(extver)
        g = sum(self.gain[a] for a in c.amps) / len(c.amps)
        r = sum(self.readnoise[a] for a in c.amps) / len(c.amps)
        return g, r

    def gain_keywords(self, chip: Chip) -> dict[str, str]:
        """Amplifier -> primary keyword of its gain, for the amplifiers of ``chip``."""
        return {a: self.gain_keyword.format(amp=a) for a in chip.amps}

    def readnoise_keywords(self, chip: Chip) -> dict[str, str]:
        """Amplifier -> primary keyword of its read noise (empty: the file has none)."""
        if not self.readnoise_keyword:
            return {}
        return {a: self.readnoise_keyword.format(amp=a) for a in chip.amps}

    def header_gains(self, header: Mapping) -> tuple[dict[str, float], dict[str, float]]:
        """Gain (e-/DN) and read noise (e-) per amplifier from a primary header.

        The table's keywords (or, for a gain mode, the table's calibrated values of
        that mode); each must be a number > 0.

        Raises
        ------
        InputError
            A keyword missing, not a number, not > 0, or an unknown gain mode;
            the message names the keyword.
        """
        gains, rns = {}, {}
        for chip in self.chips:
            for a, key in self.gain_keywords(chip).items():
                gains[a] = _positive(header, key)
            rn_keys = self.readnoise_keywords(chip)
            for a in chip.amps:
                rns[a] = _positive(header, rn_keys[a]) if rn_keys else self.readnoise[a]
        if self.gain_modes:
            mode = next(iter(gains.values()))
            if mode not in self.gain_modes:
                raise InputError(f"{self.gain_keyword}={mode!r}: a gain mode of {self.name} is one of "
                                 f"{sorted(self.gain_modes)}")
            gains = {a: self.gain_modes[mode][a][0] for a in gains}
            rns = {a: self.gain_modes[mode][a][1] for a in rns}
        return gains, rns

    @property
    def mast_names(self) -> tuple[str, ...]:
        """MAST's ``instrument_name`` values of this imager."""
        return self.mast_instruments or (self.name,)

    def companions(self, product: str) -> tuple[str, ...]:
        """Suffixes of the files an exposure's ``product`` file needs beside it (its DQ file).

        >>> WFPC2.companions("c0m"), ACS_WFC.companions("flc")
        (('c1m',), ())
        """
        kind = str(product).lower()
        return (self.dq_files[kind],) if kind in self.dq_files else ()

    @property
    def archive_kinds(self) -> tuple[str, ...]:
        """File types ``crforge query``/``fetch`` take from MAST: the products, then their
        companions (WFPC2: ``c0m``, ``c0f``, ``c1m``, ``c1f``)."""
        return tuple(dict.fromkeys(tuple(self.products)
                                   + tuple(c for k in self.products for c in self.companions(k))))

    def bits_of(self, *meanings: str) -> int:
        """OR of the DQ bits whose meaning contains any of ``meanings``."""
        out = 0
        for bit, text in self.dq_bits.items():
            if any(m in text for m in meanings):
                out |= bit
        return out


#: The DQ bits the calibration pipelines of ACS, WFC3 and STIS share (their handbooks):
#: bad detector pixels, saturation (full well, A-to-D), no data, and the cosmic-ray bits
#: of AstroDrizzle and the pipeline's own rejection. One definition for every record that
#: follows them and for :data:`HST_DQ`.
_PIPELINE_BAD = 1 | 2 | 4 | 8 | 16 | 32 | 128 | 512 | 1024
_PIPELINE_SATURATED = 256 | 2048
_PIPELINE_NODATA = 1 | 2
_PIPELINE_CR = 4096 | 8192

_ACS_DQ = {
    1: "lost data (decompression/transmission)",
    2: "fill data",
    4: "bad detector pixel or vignetted",
    8: "masked by aperture feature",
    16: "hot pixel",
    32: "unstable (CTE tail) pixel",
    64: "warm pixel",
    128: "bad column",
    256: "full-well saturation",
    512: "bad pixel in reference file",
    1024: "charge trap",
    2048: "A-to-D saturation",
    4096: "cosmic ray (AstroDrizzle)",
    8192: "cosmic ray (calacs/ACSREJ)",
    16384: "user flag",
}

_UVIS_DQ = dict(_ACS_DQ)
_UVIS_DQ.update({
    32: "CTE tail",
    128: "bad bias",
    512: "bad flat",
    8192: "cosmic ray (image combination)",
    16384: "ghost/crosstalk",
})

ACS_WFC = Instrument(
    name="ACS/WFC",
    instrume="ACS",
    detector="WFC",
    # SCI,1 is WFC2 (CCDCHIP=2, bottom of the focal plane as laid out here is SCI,2):
    # the order of extensions in a real FLC file.
    chips=(
        Chip(extver=1, ccdchip=2, shape=(2048, 4096), origin=(2048.0 + 50.0, 0.0), amps="CD"),
        Chip(extver=2, ccdchip=1, shape=(2048, 4096), origin=(0.0, 0.0), amps="AB"),
    ),
    pixel_scale=0.05,
    pixel_size_um=15.0,
    depletion_um=13.0,
    gain={"A": 2.02, "B": 1.89, "C": 2.02, "D": 1.99},
    readnoise={"A": 4.35, "B": 3.75, "C": 4.05, "D": 5.05},
    full_well=84700.0,
    adc_max_dn=65535.0,
    dark_rate=0.01,
    cr_rate=1.2,
    dq_bits=MappingProxyType(_ACS_DQ),
    bad_bits=_PIPELINE_BAD,
    saturation_bits=_PIPELINE_SATURATED,
    nodata_bits=_PIPELINE_NODATA,
    cr_bits=_PIPELINE_CR,
    # the simulator's core FWHM that gives the TinyTim PSFs' sharpness (see the docstring)
    fwhm_pix={"F435W": 1.77, "F475W": 1.64, "F555W": 1.67, "F606W": 1.69, "F625W": 1.53,
              "F775W": 1.64, "F814W": 1.70, "F850LP": 1.86},
    sky_rate={"F435W": 0.03, "F475W": 0.06, "F555W": 0.06, "F606W": 0.10, "F625W": 0.08,
              "F775W": 0.08, "F814W": 0.09, "F850LP": 0.05},
    zeropoint={"F435W": 25.66, "F475W": 26.06, "F555W": 25.72, "F606W": 26.50, "F625W": 25.91,
               "F775W": 25.66, "F814W": 25.94, "F850LP": 24.84},
    filter_keywords=("FILTER1", "FILTER2"),
    default_filter="F606W",
    extra_primary={"FILTER2": "CLEAR2L"},
    clean_dq_bit=16384,
)

WFC3_UVIS = Instrument(
    name="WFC3/UVIS",
    instrume="WFC3",
    detector="UVIS",
    chips=(
        Chip(extver=1, ccdchip=2, shape=(2051, 4096), origin=(0.0, 0.0), amps="CD"),
        Chip(extver=2, ccdchip=1, shape=(2051, 4096), origin=(2051.0 + 35.0, 0.0), amps="AB"),
    ),
    pixel_scale=0.0395,
    pixel_size_um=15.0,
    depletion_um=15.0,
    gain={"A": 1.56, "B": 1.56, "C": 1.56, "D": 1.56},
    readnoise={"A": 3.10, "B": 3.10, "C": 3.05, "D": 3.15},
    full_well=63000.0,
    adc_max_dn=65535.0,
    dark_rate=0.0015,
    cr_rate=1.2,
    dq_bits=MappingProxyType(_UVIS_DQ),
    bad_bits=_PIPELINE_BAD,
    saturation_bits=_PIPELINE_SATURATED,
    nodata_bits=_PIPELINE_NODATA,
    cr_bits=_PIPELINE_CR,
    fwhm_pix={"F275W": 2.1, "F336W": 1.9, "F438W": 1.8, "F475W": 1.8, "F555W": 1.8,
              "F606W": 1.8, "F814W": 2.0},
    sky_rate={"F275W": 0.003, "F336W": 0.005, "F438W": 0.02, "F475W": 0.05, "F555W": 0.06,
              "F606W": 0.1, "F814W": 0.07},
    zeropoint={"F275W": 24.13, "F336W": 24.67, "F438W": 24.83, "F475W": 25.69, "F555W": 25.83,
               "F606W": 26.08, "F814W": 25.09},
    filter_keywords=("FILTER",),
    default_filter="F606W",
    clean_dq_bit=8,
    rootname_letter="i",
)

ACS_HRC = Instrument(
    name="ACS/HRC",
    instrume="ACS",
    detector="HRC",
    chips=(Chip(extver=1, ccdchip=1, shape=(1024, 1024), origin=(0.0, 0.0), amps="C"),),
    pixel_scale=0.027,
    pixel_size_um=21.0,
    depletion_um=13.0,
    gain={"C": 2.216},
    readnoise={"C": 4.71},
    full_well=155000.0,
    adc_max_dn=65535.0,
    dark_rate=0.006,
    cr_rate=1.2,
    dq_bits=MappingProxyType(_ACS_DQ),
    bad_bits=_PIPELINE_BAD,
    saturation_bits=_PIPELINE_SATURATED,
    nodata_bits=_PIPELINE_NODATA,
    cr_bits=_PIPELINE_CR,
    fwhm_pix={"F250W": 1.9, "F330W": 1.9, "F435W": 1.9, "F475W": 1.9, "F555W": 2.0, "F606W": 2.0,
              "F625W": 2.1, "F775W": 2.4, "F814W": 2.5, "F850LP": 2.8},
    sky_rate={"F250W": 0.0005, "F330W": 0.001, "F435W": 0.006, "F475W": 0.012, "F555W": 0.012,
              "F606W": 0.02, "F625W": 0.016, "F775W": 0.013, "F814W": 0.015, "F850LP": 0.007},
    zeropoint={"F250W": 23.80, "F330W": 24.10, "F435W": 25.19, "F475W": 25.62, "F555W": 25.26,
               "F606W": 25.89, "F625W": 25.38, "F775W": 24.95, "F814W": 25.13, "F850LP": 24.30},
    filter_keywords=("FILTER1", "FILTER2"),
    default_filter="F606W",
    extra_primary={"FILTER2": "CLEAR2S"},
    clean_dq_bit=16384,
    header_amps="ABCD",
    rootname_letter="j",
    # as STIS/CCD (a PSF of 2 pixels as well): 2-exposure globular clusters 0.9496-0.9595
    # -> 0.956-0.965 recall above 5 sigma, 68-97 -> 51-69 false labels per million
    refine_deriv_factor=0.5,
    refine_grow_factor=1.155,
)

_STIS_DQ = {
    1: "Reed-Solomon decoding error",
    2: "lost data replaced by fill",
    4: "bad detector pixel or beyond aperture",
    8: "masked by occulting bar",
    16: "hot pixel",
    32: "large blemish",
    64: "reserved",
    128: "overscan",
    256: "saturated",
    512: "bad pixel in reference file",
    1024: "small blemish",
    2048: "background rejected in extraction",
    4096: "cosmic ray (AstroDrizzle)",
    8192: "cosmic ray (calstis/ocrreject)",
    16384: "extracted flux not CTI corrected",
}

STIS_CCD = Instrument(
    name="STIS/CCD",
    instrume="STIS",
    detector="CCD",
    chips=(Chip(extver=1, ccdchip=1, shape=(1024, 1024), origin=(0.0, 0.0), amps="D"),),
    pixel_scale=0.05078,
    pixel_size_um=21.0,
    depletion_um=13.0,
    gain={"D": 1.0},
    readnoise={"D": 3.99},
    full_well=144000.0,
    adc_max_dn=65535.0,
    dark_rate=0.009,
    cr_rate=1.2,
    dq_bits=MappingProxyType(_STIS_DQ),
    bad_bits=_PIPELINE_BAD,
    saturation_bits=256,
    nodata_bits=_PIPELINE_NODATA,
    cr_bits=_PIPELINE_CR,
    fwhm_pix={"CLEAR": 2.0, "F28X50LP": 2.2},
    sky_rate={"CLEAR": 0.05, "F28X50LP": 0.03},
    zeropoint={"CLEAR": 26.4, "F28X50LP": 25.0},
    filter_keywords=("FILTER",),
    default_filter="CLEAR",
    clean_dq_bit=64,
    exptime_ext="SCI",
    exposure_keywords=("DATE-OBS", "EXPSTART", "EXPEND"),
    sim_dq=MappingProxyType({"hot": 16, "warm": 16, "bad_column": 4, "saturated": 256, "adc_saturated": 256}),
    gain_keyword="ATODGAIN",
    readnoise_keyword="READNSE",
    units=("COUNTS",),
    sim_bunit="COUNTS",
    packing="imsets",
    products=("flt",),
    rootname_letter="o",
    # gradient weight 0.4 -> 0.2, grow threshold 2.25 -> 2.6 sigma: 2-exposure globular
    # clusters reach 95% recall above 5 sigma (0.942-0.949 before) with fewer false labels
    refine_deriv_factor=0.5,
    refine_grow_factor=1.155,
)

_WFPC2_DQ = {
    1: "Reed-Solomon decoding error",
    2: "calibration file defect",
    4: "permanent camera defect",
    8: "A-to-D saturation",
    16: "missing data",
    32: "bad pixel",
    128: "permanent charge trap",
    256: "questionable pixel",
    512: "unrepaired warm pixel",
    1024: "repaired warm pixel",
    4096: "cosmic ray (AstroDrizzle)",
}

WFPC2 = Instrument(
    name="WFPC2",
    instrume="WFPC2",
    detector="",
    # the c0m/c0f groups: PC1 then WF2-WF4, each 800x800 (the L-shaped mosaic is
    # laid out here as four tiles in WF pixels, not rotated; the PC's 0.0455" pixels
    # cover 364 WF pixels)
    chips=(
        Chip(extver=1, ccdchip=1, shape=(800, 800), origin=(0.0, 0.0), amps="1", pixel_scale=0.0455),
        Chip(extver=2, ccdchip=2, shape=(800, 800), origin=(0.0, 800.0 + 10.0), amps="2"),
        Chip(extver=3, ccdchip=3, shape=(800, 800), origin=(800.0 + 10.0, 800.0 + 10.0), amps="3"),
        Chip(extver=4, ccdchip=4, shape=(800, 800), origin=(800.0 + 10.0, 0.0), amps="4"),
    ),
    pixel_scale=0.0996,
    pixel_size_um=15.0,
    depletion_um=10.0,
    gain={"1": 7.12, "2": 7.12, "3": 6.90, "4": 7.10},
    readnoise={"1": 5.24, "2": 5.51, "3": 5.22, "4": 5.19},
    full_well=53000.0,
    adc_max_dn=4095.0,
    dark_rate=0.005,
    cr_rate=1.2,
    dq_bits=MappingProxyType(_WFPC2_DQ),
    bad_bits=1 | 2 | 4 | 16 | 32 | 128,
    saturation_bits=8,
    nodata_bits=1 | 16,
    cr_bits=4096,
    # in WF pixels, charge diffusion included (TinyTim's WF PSFs: 1.2-1.5 pixels); the
    # PC chip gets the same core in arcsec (2.6-3.3 of its pixels: broader than the
    # real PC's, a simplification of one core per imager)
    fwhm_pix={"F300W": 1.2, "F439W": 1.2, "F450W": 1.2, "F555W": 1.25, "F606W": 1.25, "F675W": 1.3,
              "F702W": 1.3, "F814W": 1.4},
    sky_rate={"F300W": 0.002, "F439W": 0.005, "F450W": 0.02, "F555W": 0.03, "F606W": 0.06,
              "F675W": 0.04, "F702W": 0.05, "F814W": 0.04},
    zeropoint={"F300W": 21.3, "F439W": 22.0, "F450W": 23.3, "F555W": 24.1, "F606W": 24.9,
               "F675W": 24.0, "F702W": 24.3, "F814W": 23.9},
    filter_keywords=("FILTNAM1", "FILTNAM2"),
    default_filter="F555W",
    clean_dq_bit=16384,
    gain_keyword="ATODGAIN",
    readnoise_keyword="",
    sim_dq=MappingProxyType({"hot": 32, "warm": 512, "bad_column": 4, "saturated": 8, "adc_saturated": 8}),
    units=("COUNTS",),
    sim_bunit="COUNTS",
    default_bunit="COUNTS",
    extensions=("SCI", "DQ"),
    sci_keywords=(),
    dq_files=MappingProxyType({"c0f": "c1f", "c0m": "c1m"}),
    gain_modes=MappingProxyType({
        7.0: MappingProxyType({"1": (7.12, 5.24), "2": (7.12, 5.51), "3": (6.90, 5.22), "4": (7.10, 5.19)}),
        15.0: MappingProxyType({"1": (13.99, 7.02), "2": (14.50, 7.84), "3": (13.95, 6.99),
                                "4": (13.95, 8.32)})}),
    extra_primary={"ATODGAIN": 7.0, "MODE": "FULL"},
    exposure_keywords=("MODE", "DARKTIME"),
    chip_keyword="DETECTOR",
    always_refine=True,
    drizzle_stem="filename",
    products=("c0m", "c0f"),
    rootname_letter="u",
    mast_instruments=("WFPC2/WFC", "WFPC2/PC"),
)

#: All known imagers by name.
INSTRUMENTS: Mapping[str, Instrument] = MappingProxyType(
    {i.name: i for i in (ACS_WFC, WFC3_UVIS, ACS_HRC, STIS_CCD, WFPC2)}
)


def get_instrument(name: str) -> Instrument:
    """Look an imager up by name (``"ACS/WFC"``; case-insensitive, ``_`` or ``-`` ok).

    Raises
    ------
    TypeError
        If ``name`` is not a string.
    ValueError
        If the name is not in :data:`INSTRUMENTS`.
    """
    if not isinstance(name, str):
        raise TypeError(f"instrument name must be a str, got {name!r}")
    key = name.strip().upper().replace("_", "/").replace("-", "/")
    if key in INSTRUMENTS:
        return INSTRUMENTS[key]
    raise InputError(f"instrument={name!r}: known imagers are {sorted(INSTRUMENTS)}")


def instrument_for_mast(name: object) -> Instrument | None:
    """The imager MAST's ``instrument_name`` names (``"WFPC2/PC"`` -> WFPC2), or ``None``."""
    key = str(name or "").strip().upper()
    for inst in INSTRUMENTS.values():
        if key in (n.upper() for n in inst.mast_names):
            return inst
    return None


def instrument_for_header(header: Mapping) -> Instrument:
    """The imager a primary FITS header belongs to (``INSTRUME``/``DETECTOR``).

    Raises
    ------
    ValueError
        If the keywords are missing or name an imager not in the table.
    """
    inst = str(header.get("INSTRUME", "")).strip().upper()
    det = str(header.get("DETECTOR", "")).strip().upper()
    if inst in INSTRUMENTS and not INSTRUMENTS[inst].detector:
        return INSTRUMENTS[inst]  # WFPC2: DETECTOR is the chip number, not a camera
    if not inst or not det:
        raise InputError("primary header: INSTRUME and DETECTOR are required")
    return get_instrument(f"{inst}/{det}")


#: BUNIT spellings -> crforge's unit names.
_UNIT_ALIASES = {"ELECTRONS": "ELECTRONS", "ELECTRON": "ELECTRONS", "ELECTRONS/S": "ELECTRONS/S",
                 "ELECTRONS/SEC": "ELECTRONS/S", "ELECTRON/S": "ELECTRONS/S", "COUNTS": "COUNTS",
                 "DN": "COUNTS", "COUNT": "COUNTS"}


def normalise_unit(bunit: object) -> str:
    """``BUNIT`` in crforge's spelling (``ELECTRONS``, ``ELECTRONS/S``, ``COUNTS``; else upper case)."""
    key = str(bunit).strip().upper().replace(" ", "")
    return _UNIT_ALIASES.get(key, key)


def to_electrons(bunit: str, *, exptime: float, gain: float) -> float:
    """Factor from a SCI array in ``bunit`` to electrons.

    ``ELECTRONS`` 1, ``ELECTRONS/S`` the exposure time, ``COUNTS`` (DN) the gain.

    Raises
    ------
    InputError
        Another unit.
    """
    unit = normalise_unit(bunit)
    if unit == "ELECTRONS":
        return 1.0
    if unit == "ELECTRONS/S":
        return float(exptime)
    if unit == "COUNTS":
        return float(gain)
    raise InputError(f"BUNIT={bunit!r}: expected ELECTRONS, ELECTRONS/S or COUNTS")


@dataclass(frozen=True)
class DQConvention:
    """Which DQ bits make a pixel unusable, for an imager without a table entry.

    Has the four attributes :func:`crforge.pipeline.masks.ignore_mask` reads from an
    :class:`Instrument`.
    """

    name: str
    bad_bits: int
    saturation_bits: int
    nodata_bits: int
    cr_bits: int


#: The DQ bits the HST calibration pipelines share (calacs for WFC, HRC and SBC, calwf3,
#: calstis): bad 1-32, 128, 512, 1024; saturated 256 (full well) and 2048 (A-to-D);
#: no data 1, 2; cosmic rays 4096, 8192 (labels, never defects).
HST_DQ = DQConvention("HST", bad_bits=_PIPELINE_BAD, saturation_bits=_PIPELINE_SATURATED,
                      nodata_bits=_PIPELINE_NODATA, cr_bits=_PIPELINE_CR)


def dq_convention(header: Mapping) -> Instrument | DQConvention:
    """The DQ bits of the imager a primary header names: its table entry, else :data:`HST_DQ`.

    A frame of an imager crforge has no table for (ACS/HRC, STIS/CCD) still has its bad
    and saturated pixels ignored: the ignore mask never depends on crforge knowing the
    imager.
    """
    try:
        return instrument_for_header(header)
    except InputError:
        logger.info("INSTRUME/DETECTOR %r/%r not in the instrument table: the HST pipelines' DQ bits",
                    header.get("INSTRUME"), header.get("DETECTOR"))
        return HST_DQ
