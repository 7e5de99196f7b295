"""A local stand-in for MAST: the endpoints astroquery calls, in MAST's JSON shapes.

:class:`FakeMast` is an HTTP server (``http.server.ThreadingHTTPServer`` in a thread,
on ``127.0.0.1``, port 0) that answers exactly what ``astroquery.mast.Observations``
asks for when crforge finds and fetches HST exposures, and nothing else:

==========================================================  =============================
request                                                     what it answers
==========================================================  =============================
``POST /portal/Mashup/Mashup.asmx/columnsconfig``           the column configuration of
  body ``colConfigId=Mast.Caom.Cone`` or                    the CAOM observation table
  ``colConfigId=Mast.Caom.Products``                        or of the product table
``POST /api/v0/invoke``, body ``request=<Mashup JSON>``     ``{"status", "msg", "data",
  with ``service`` ``Mast.Caom.Filtered``                   "fields", "paging"}``: the
  (``params.filters``: discrete values, ``freeText``        observations matching every
  wildcards, ``{"min", "max"}`` ranges)                     filter, paged by ``pagesize``
``POST /api/v0/invoke`` with ``Mast.Caom.Products``         the products of the listed
  (``params.obsid``: comma-separated obsids)                ``obsid`` values
``HEAD /api/v0.1/Download/file?uri=mast:HST/product/<f>``   size, ``Accept-Ranges: bytes``
``GET  /api/v0.1/Download/file?uri=mast:HST/product/<f>``   the file; ``Range: bytes=a-``
                                                            gives ``206`` + Content-Range
==========================================================  =============================

Every request is recorded in :attr:`FakeMast.log`; any other request (another path,
Mashup service or column configuration) is answered ``501`` and recorded in
:attr:`FakeMast.unimplemented`, so astroquery raises and the test fixture fails: the
set of endpoints above is the set astroquery really uses (``tests/test_archive.py``
asserts it from the log).

The observation and product rows copy MAST's columns (``obs_collection``,
``instrument_name``, ``filters``, ``proposal_id``, ``obs_id``, ``obsid``, ... and
``dataURI``, ``productFilename``, ``productSubGroupDescription``, ``size``,
``parent_obsid``, ...). A visit added with :meth:`FakeMast.add_visit` appears the way
an ACS association does on MAST: one observation (``<ipppss>010``) whose products are
the members' FLC, FLT and RAW files, the association's ASN and DRC files, and the
HST pipeline's own HAP copies (``hst_<pid>_<obset>_..._flc.fits``, in a separate HAP
observation), which crforge must not take for the exposures. Only the member FLC (or
FLT) files have content; asking for anything else is a 404 like a missing product.
A WFPC2 visit (``product="c0m"``) appears as WFPC2's exposures do on MAST: one
observation per exposure (``obs_id`` its rootname in capitals, no association),
``instrument_name`` ``WFPC2/WFC`` or ``WFPC2/PC`` after the aperture's camera
(alternating here), each with its ``c0m`` (science) and ``c1m`` (DQ) served and the
``d0m``, ``c3m`` and the later reprocessing's ``flt`` listed only.

Faults, per file (:meth:`FakeMast.set_fault`): ``truncate`` (Content-Length of the
whole range, then the connection closes after half of it), ``short`` (no
Content-Length, a clean end after half: only a size check notices), ``wrong_size``
(the product table lists a size that is not the file's), ``error500`` (HTTP 500),
``stall`` (half the body, then silence longer than any client timeout), ``missing``
(listed, but 404). ``times`` says how many requests of that file the fault hits
(``-1``: all).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["FakeMast", "Fault", "ENDPOINTS", "FAULT_KINDS"]

#: What the server implements (method, path, Mashup service or columns config).
ENDPOINTS = (
    "POST /portal/Mashup/Mashup.asmx/columnsconfig Mast.Caom.Cone",
    "POST /portal/Mashup/Mashup.asmx/columnsconfig Mast.Caom.Products",
    "POST /api/v0/invoke Mast.Caom.Filtered",
    "POST /api/v0/invoke Mast.Caom.Products",
    "HEAD /api/v0.1/Download/file",
    "GET /api/v0.1/Download/file",
)

FAULT_KINDS = ("truncate", "short", "wrong_size", "error500", "stall", "missing")

COLUMNS_PATH = "/portal/Mashup/Mashup.asmx/columnsconfig"
INVOKE_PATH = "/api/v0/invoke"
DOWNLOAD_PATH = "/api/v0.1/Download/file"

# The CAOM observation columns as MAST's columnsconfig describes them (trimmed to the
# columns the rows carry; ``separator`` marks multi-valued columns).
_CAOM_COLUMNS = {
    "_selected_": {"text": "selected", "add": True, "type": "boolean", "hidden": True},
    "intentType": {"text": "Observation Type", "vot.datatype": "char"},
    "obs_collection": {"text": "Mission", "separator": ";", "vot.datatype": "char"},
    "provenance_name": {"text": "Provenance Name", "vot.datatype": "char"},
    "instrument_name": {"text": "Instrument", "vot.datatype": "char"},
    "project": {"text": "Project", "separator": ";", "vot.datatype": "char"},
    "filters": {"text": "Filters", "separator": ";", "vot.datatype": "char"},
    "wavelength_region": {"text": "Waveband", "separator": ";", "vot.datatype": "char"},
    "target_name": {"text": "Target Name", "vot.datatype": "char"},
    "target_classification": {"text": "Target Classification", "separator": ";",
                              "vot.datatype": "char"},
    "obs_id": {"text": "Observation ID", "vot.datatype": "char"},
    "s_ra": {"text": "RA", "vot.datatype": "double"},
    "s_dec": {"text": "Dec", "vot.datatype": "double"},
    "dataproduct_type": {"text": "Product Type", "vot.datatype": "char"},
    "proposal_pi": {"text": "Principal Investigator", "vot.datatype": "char"},
    "calib_level": {"text": "Calibration Level", "vot.datatype": "int"},
    "t_min": {"text": "Start Time", "vot.datatype": "double"},
    "t_max": {"text": "End Time", "vot.datatype": "double"},
    "t_exptime": {"text": "Exposure Length", "vot.datatype": "double"},
    "em_min": {"text": "Min. Wavelength", "vot.datatype": "double"},
    "em_max": {"text": "Max. Wavelength", "vot.datatype": "double"},
    "obs_title": {"text": "Observation Title", "vot.datatype": "char"},
    "t_obs_release": {"text": "Release Date", "vot.datatype": "double"},
    "proposal_id": {"text": "Proposal ID", "vot.datatype": "char"},
    "proposal_type": {"text": "Proposal Type", "vot.datatype": "char"},
    "sequence_number": {"text": "Sequence Number", "vot.datatype": "int"},
    "s_region": {"vot.datatype": "char"},
    "jpegURL": {"vot.datatype": "char"},
    "dataURL": {"text": "Data URL", "vot.datatype": "string"},
    "dataRights": {"text": "Data Rights", "type": "string"},
    "mtFlag": {"text": "Moving Target", "type": "boolean"},
    "srcDen": {"text": "Associated Catalogs", "vot.datatype": "float"},
    "obsid": {"text": "Product Group ID", "vot.datatype": "long"},
    "objID": {"text": "Object ID", "vot.datatype": "long"},
}
# field types of the JSON result (MAST writes "string", "float", "int", "boolean")
_CAOM_FIELDS = [
    ("intentType", "string"), ("obs_collection", "string"), ("provenance_name", "string"),
    ("instrument_name", "string"), ("project", "string"), ("filters", "string"),
    ("wavelength_region", "string"), ("target_name", "string"),
    ("target_classification", "string"), ("obs_id", "string"), ("s_ra", "float"),
    ("s_dec", "float"), ("dataproduct_type", "string"), ("proposal_pi", "string"),
    ("calib_level", "int"), ("t_min", "float"), ("t_max", "float"), ("t_exptime", "float"),
    ("em_min", "float"), ("em_max", "float"), ("obs_title", "string"),
    ("t_obs_release", "float"), ("proposal_id", "string"), ("proposal_type", "string"),
    ("sequence_number", "int"), ("s_region", "string"), ("jpegURL", "string"),
    ("dataURL", "string"), ("dataRights", "string"), ("mtFlag", "boolean"),
    ("srcDen", "float"), ("obsid", "string"), ("objID", "string"), ("_selected_", "boolean"),
]
_PRODUCT_COLUMNS = {
    "_selected_": {"text": "selected", "add": True, "type": "boolean", "hidden": True},
    "obsID": {"text": "Product Group ID", "vot.datatype": "char"},
    "obs_collection": {"text": "Mission", "vot.datatype": "char"},
    "dataproduct_type": {"text": "Product Type", "vot.datatype": "char"},
    "obs_id": {"text": "Observation ID", "vot.datatype": "char"},
    "description": {"text": "Description", "vot.datatype": "char"},
    "type": {"text": "Type", "vot.datatype": "char"},
    "dataURI": {"text": "Data URI", "vot.datatype": "char"},
    "productType": {"text": "Product Type", "vot.datatype": "char"},
    "productGroupDescription": {"text": "Product Group", "vot.datatype": "char"},
    "productSubGroupDescription": {"text": "Product Subgroup", "vot.datatype": "char"},
    "productDocumentationURL": {"text": "Documentation", "vot.datatype": "char"},
    "project": {"text": "Project", "vot.datatype": "char"},
    "prvversion": {"text": "Pipeline Version", "vot.datatype": "char"},
    "proposal_id": {"text": "Proposal ID", "vot.datatype": "char"},
    "productFilename": {"text": "Filename", "vot.datatype": "char"},
    "size": {"text": "Size", "vot.datatype": "long"},
    "parent_obsid": {"text": "Parent Product Group ID", "vot.datatype": "char"},
    "dataRights": {"text": "Data Rights", "vot.datatype": "char"},
    "calib_level": {"text": "Calibration Level", "vot.datatype": "int"},
    "filters": {"text": "Filters", "vot.datatype": "char"},
}
_PRODUCT_FIELDS = [
    ("obsID", "string"), ("obs_collection", "string"), ("dataproduct_type", "string"),
    ("obs_id", "string"), ("description", "string"), ("type", "string"), ("dataURI", "string"),
    ("productType", "string"), ("productGroupDescription", "string"),
    ("productSubGroupDescription", "string"), ("productDocumentationURL", "string"),
    ("project", "string"), ("prvversion", "string"), ("proposal_id", "string"),
    ("productFilename", "string"), ("size", "int"), ("parent_obsid", "string"),
    ("dataRights", "string"), ("calib_level", "int"), ("filters", "string"),
    ("_selected_", "boolean"),
]
_COLUMN_CONFIGS = {"Mast.Caom.Cone": _CAOM_COLUMNS, "Mast.Caom.Products": _PRODUCT_COLUMNS}


@dataclass
class Fault:
    """A fault the server injects into the transfers of one file.

    Parameters
    ----------
    kind : str
        One of :data:`FAULT_KINDS`.
    times : int
        Requests of this file (HEAD or GET for ``error500``; GET for ``truncate``,
        ``short``, ``stall``) the fault hits before the file is served normally;
        ``-1``: every request. ``wrong_size`` and ``missing`` always apply.
    size_delta : int
        ``wrong_size``: listed size minus the file's size.
    """

    kind: str
    times: int = 1
    size_delta: int = 1000
    hits: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"kind={self.kind!r}: expected one of {FAULT_KINDS}")

    def fire(self) -> bool:
        """Whether this request is hit (counts it)."""
        if self.times >= 0 and self.hits >= self.times:
            return False
        self.hits += 1
        return True


@dataclass
class Request:
    """One request the server received."""

    method: str
    path: str
    what: str = ""           # Mashup service, columns config id or product file name
    range: str | None = None
    status: int = 0
    body_bytes: int = 0      # bytes of file content sent (downloads)

    @property
    def endpoint(self) -> str:
        """``METHOD path [service]`` as in :data:`ENDPOINTS`."""
        if self.path == DOWNLOAD_PATH:
            return f"{self.method} {self.path}"
        return f"{self.method} {self.path} {self.what}".rstrip()


@dataclass
class _Product:
    row: dict
    content: bytes | None = None


def _observation_row(*, proposal_id: int, filter: str, instrument: str, target: str,
                     classification: str, t_min: float, ra: float, dec: float, exptime: float) -> dict:
    """The cells an association's observation rows share (MAST's CAOM columns)."""
    return {"intentType": "science", "obs_collection": "HST", "instrument_name": instrument,
            "filters": filter, "wavelength_region": "OPTICAL", "target_name": target,
            "target_classification": classification, "s_ra": ra, "s_dec": dec,
            "dataproduct_type": "image", "proposal_pi": "Fake", "t_min": t_min,
            "t_max": t_min + 0.1, "t_exptime": exptime, "em_min": 500.0, "em_max": 700.0,
            "obs_title": f"fake program {proposal_id}", "t_obs_release": t_min + 365,
            "proposal_id": str(proposal_id), "proposal_type": "GO", "sequence_number": None,
            "s_region": f"POLYGON ICRS {ra} {dec} {ra + 0.05} {dec} {ra + 0.05} {dec + 0.05}",
            "jpegURL": None, "dataURL": None, "dataRights": "PUBLIC", "mtFlag": False,
            "srcDen": 5000.0, "objID": None, "_selected_": None}


class FakeMast:
    """The fake MAST server (see the module docstring).

    Parameters
    ----------
    executing_polls : int
        How many times each Mashup request is first answered ``{"status":
        "EXECUTING"}`` (MAST's long polling, which astroquery repeats until
        ``COMPLETE``).
    stall_seconds : float
        How long a ``stall`` fault keeps the connection silent (stopping the
        server ends it at once).
    """

    def __init__(self, *, executing_polls: int = 1, stall_seconds: float = 30.0) -> None:
        self.executing_polls = executing_polls
        self.stall_seconds = stall_seconds
        self.observations: list[dict] = []
        self._products: list[_Product] = []
        self.faults: dict[str, Fault] = {}
        self.log: list[Request] = []
        self.unimplemented: list[str] = []
        self._bytes_sent: Counter = Counter()
        self.chunk_bytes = 1 << 20
        self.chunk_delay = 0.0       # seconds between chunks: slow transfers overlap
        self.active = 0              # file bodies being sent now
        self.max_active = 0          # ... at most, since the last reset
        self._polls: Counter = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._next_obsid = 24000000
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ content

    def _obsid(self) -> str:
        self._next_obsid += 1
        return str(self._next_obsid)

    def add_visit(self, visit_dir: str | Path, *, proposal_id: int, filter: str,
                  instrument: str = "ACS/WFC", target: str = "", classification: str = "",
                  product: str = "flc", t_min: float = 57000.0, ra: float = 150.0,
                  dec: float = 2.2) -> list[str]:
        """Publish the ``*_flc.fits`` files of a simulated visit as one association.

        Parameters
        ----------
        visit_dir : path-like
            A directory written by :func:`crforge.pipeline.simulate.simulate_visit`; its
            rootnames (``ipppssoot``) give the obset (``ss``).
        proposal_id : int
            ``proposal_id`` of the observation rows.
        filter, instrument, target, classification : str
            ``filters``, ``instrument_name``, ``target_name``,
            ``target_classification`` of the rows.
        product : str
            ``flc``: the members' FLC files are served (FLT and RAW only listed);
            ``flt``: an instrument without FLC: FLT served, no FLC listed; ``c0m``:
            WFPC2, each exposure's c0m and c1m served (see the module docstring).
        t_min, ra, dec : float
            Start (MJD) and position of the observation.

        Returns
        -------
        list of str
            The served file names (``<rootname>_<product>.fits``).
        """
        # a simulated STIS visit is one CR-split *_flt.fits (its rootname the association's)
        files = (sorted(Path(visit_dir).glob("*_flc.fits")) or sorted(Path(visit_dir).glob("*_flt.fits"))
                 or sorted(Path(visit_dir).glob("*_c0m.fits")))
        if not files:
            raise ValueError(f"{visit_dir}: no *_flc.fits, *_flt.fits or *_c0m.fits files")
        if product not in ("flc", "flt", "c0m"):
            raise ValueError(f"product={product!r}: expected 'flc', 'flt' or 'c0m'")
        roots = [f.name.split("_")[0] for f in files]
        asn = roots[0][:6] + "010"
        obset = roots[0][4:6]
        from astropy.io import fits

        heads = [fits.getheader(f) for f in files]  # a STIS CR-split's primary has the total TEXPTIME
        exptime = sum(float(h.get("EXPTIME", h.get("TEXPTIME"))) for h in heads)
        common = _observation_row(proposal_id=proposal_id, filter=filter, instrument=instrument,
                                  target=target, classification=classification, t_min=t_min,
                                  ra=ra, dec=dec, exptime=exptime)
        if product == "c0m":
            return self._add_wfpc2(common, files)
        calib = {"WFC3": "CALWF3", "STIS": "CALSTIS"}.get(instrument.split("/")[0], "CALACS")
        obsid = self._add_observation(common, calib, "HST", asn)
        hap = f"hst_{proposal_id}_{obset}_{instrument.replace('/', '_').lower()}_{filter.lower()}_"
        hap_id = hap + roots[0][:6]
        hap_obsid = self._add_observation(common, "HAP", "HAP", hap_id)
        served = []
        for f, root in zip(files, roots):
            data = f.read_bytes()
            served.append(self._add_member(common, obsid, root, data, product))
            self._add_product(common, hap_obsid, hap_id, f"{hap}{root[:8]}_{product}.fits",
                              product.upper(), "SCIENCE", len(data), None, project="HAP")
        self._add_product(common, obsid, asn, f"{asn}_asn.fits", "ASN", "AUXILIARY", 11520)
        self._add_product(common, obsid, asn, f"{asn}_drc.fits", "DRC", "SCIENCE", 3 * len(data))
        return served

    def _add_wfpc2(self, common: dict, files: list[Path]) -> list[str]:
        """WFPC2 exposures: an observation each, c0m and c1m served (see the module docstring)."""
        served = []
        for i, f in enumerate(files):
            root = f.name.split("_")[0]
            camera = "WFPC2/PC" if i % 2 else "WFPC2/WFC"
            cells = {**common, "instrument_name": camera}
            obsid = self._add_observation(cells, "CALWP2", "HST", root.upper())
            c0m, c1m = f.read_bytes(), f.with_name(f"{root}_c1m.fits").read_bytes()
            self._add_product(cells, obsid, root, f"{root}_c0m.fits", "C0M", "SCIENCE", len(c0m), c0m, "CALWP2")
            self._add_product(cells, obsid, root, f"{root}_c1m.fits", "C1M", "AUXILIARY", len(c1m), c1m, "CALWP2")
            self._add_product(cells, obsid, root, f"{root}_d0m.fits", "D0M", "SCIENCE", len(c0m) // 2,
                              project="CALWP2")
            self._add_product(cells, obsid, root, f"{root}_c3m.fits", "C3M", "AUXILIARY", 28800, project="CALWP2")
            self._add_product(cells, obsid, root, f"{root}_flt.fits", "FLT", "SCIENCE", 3 * len(c0m),
                              project="CALWP2")
            served.append(f"{root}_c0m.fits")
        return served

    def _add_observation(self, common: dict, provenance: str, project: str, obs_id: str) -> str:
        """List an observation (with the visit's ``common`` cells); return its obsid."""
        obsid = self._obsid()
        self.observations.append({**common, "provenance_name": provenance, "project": project,
                                  "obs_id": obs_id, "calib_level": 3, "obsid": obsid,
                                  "objID": obsid})
        return obsid

    def _add_member(self, common: dict, obsid: str, root: str, data: bytes, product: str) -> str:
        """List one member's FLC, FLT and RAW files, serving ``data`` as its ``product``
        file (``flt``: an instrument without FLC, none listed); return that file's name."""
        if product == "flc":
            self._add_product(common, obsid, root, f"{root}_flc.fits", "FLC", "SCIENCE", len(data), data)
            self._add_product(common, obsid, root, f"{root}_flt.fits", "FLT", "SCIENCE", len(data) - 2880)
        else:
            self._add_product(common, obsid, root, f"{root}_flt.fits", "FLT", "SCIENCE", len(data), data)
        self._add_product(common, obsid, root, f"{root}_raw.fits", "RAW", "SCIENCE", len(data) // 2)
        return f"{root}_{product}.fits"

    def _add_product(self, common: dict, parent: str, obs_id: str, name: str, sub: str, ptype: str,
                     size: int, content: bytes | None = None, project: str = "CALACS") -> None:
        """List a product of observation ``parent`` (served when it has ``content``)."""
        self._products.append(_Product(row={
            "obsID": parent, "obs_collection": "HST", "dataproduct_type": "image",
            "obs_id": obs_id, "description": f"DADS {sub} file", "type": "S",
            "dataURI": f"mast:HST/product/{name}", "productType": ptype,
            "productGroupDescription": "Minimum Recommended Products" if sub in ("FLC", "DRC") else None,
            "productSubGroupDescription": sub, "productDocumentationURL": None,
            "project": project, "prvversion": "10.3.5", "proposal_id": common["proposal_id"],
            "productFilename": name, "size": size, "parent_obsid": parent,
            "dataRights": "PUBLIC", "calib_level": 2 if sub != "RAW" else 1,
            "filters": common["filters"], "_selected_": None}, content=content))

    def product_row(self, name: str) -> dict:
        """The product row of a file (as listed, faults applied)."""
        for p in self._products:
            if p.row["productFilename"] == name:
                return self._listed(p)
        raise KeyError(name)

    def content(self, name: str) -> bytes:
        """The bytes served for a file."""
        for p in self._products:
            if p.row["productFilename"] == name and p.content is not None:
                return p.content
        raise KeyError(name)

    def _listed(self, p: _Product) -> dict:
        row = dict(p.row)
        fault = self.faults.get(row["productFilename"])
        if fault is not None and fault.kind == "wrong_size":
            row["size"] = row["size"] + fault.size_delta
        return row

    def set_fault(self, name: str, kind: str, times: int = 1, **kw) -> Fault:
        """Inject a fault into the transfers of file ``name`` (see :class:`Fault`)."""
        self.content(name)  # KeyError for a file that is not served
        fault = Fault(kind, times, **kw)
        with self._lock:
            self.faults[name] = fault
        return fault

    def reset(self) -> None:
        """Forget faults, the request log and the byte counts (content stays)."""
        with self._lock:
            self.faults.clear()
            self.log.clear()
            self.unimplemented.clear()
            self._bytes_sent.clear()
            self._polls.clear()
            self.chunk_bytes = 1 << 20
            self.chunk_delay = 0.0
            self.max_active = self.active

    @property
    def bytes_sent(self) -> Counter:
        """File-body bytes sent, per file, once no body is being sent any more.

        A handler counts a chunk after writing it, so a client can hold the whole body
        before the count does: wait (at most 10 s) until every body's handler is done.
        """
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            with self._lock:
                if self.active == 0:
                    return Counter(self._bytes_sent)
            time.sleep(0.005)
        with self._lock:
            return Counter(self._bytes_sent)

    def endpoints(self) -> set[str]:
        """The endpoints (as in :data:`ENDPOINTS`) that were requested."""
        with self._lock:
            return {r.endpoint for r in self.log}

    def requests_for(self, name: str) -> list[Request]:
        """The download requests of one file."""
        with self._lock:
            return [r for r in self.log if r.path == DOWNLOAD_PATH and r.what == name]

    # ------------------------------------------------------------------ server

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: the value for ``astroquery.mast.conf.server``."""
        if self._httpd is None:
            raise RuntimeError("server not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> "FakeMast":
        """Start serving in a daemon thread."""
        fake = self

        class Handler(_Handler):
            server_state = fake

        self._stop.clear()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fakemast",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (ends stalled connections)."""
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "FakeMast":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ Mashup

    def _match(self, row: dict, flt: dict, columns: dict) -> bool:
        name = flt.get("paramName")
        if name not in columns:
            raise _Unimplemented(f"filter on unknown column {name!r}")
        value = row.get(name)
        values = flt.get("values", [])
        if values and isinstance(values[0], dict):  # continuous: [{"min": a, "max": b}]
            if value is None:
                return False
            return any(float(v["min"]) <= float(value) <= float(v["max"]) for v in values)
        if value is None:
            return False
        sep = flt.get("separator") or columns[name].get("separator")
        parts = [p.strip().lower() for p in (str(value).split(sep) if sep else [str(value)])]
        if any(str(v).strip().lower() in parts for v in values):
            return True
        free = flt.get("freeText")
        if free:
            rx = re.compile("^" + ".*".join(re.escape(t) for t in free.lower().split("%")) + "$")
            return any(rx.match(p) for p in parts + [str(value).lower()])
        return False

    def _invoke(self, req: dict) -> dict:
        service = req.get("service")
        params = req.get("params", {})
        if service == "Mast.Caom.Filtered":
            if set(params) - {"columns", "filters"} or params.get("columns", "*") != "*":
                # e.g. query_criteria_count asks for columns COUNT_BIG(*)
                raise _Unimplemented(f"Mast.Caom.Filtered params {sorted(params)} "
                                     f"columns={params.get('columns')!r}")
            rows = [r for r in self.observations
                    if all(self._match(r, f, _CAOM_COLUMNS) for f in params.get("filters", []))]
            fields = _CAOM_FIELDS
        elif service == "Mast.Caom.Products":
            if set(params) != {"obsid"}:
                raise _Unimplemented(f"Mast.Caom.Products params {sorted(params)}")
            wanted = [o.strip() for o in str(params["obsid"]).split(",") if o.strip()]
            rows = [self._listed(p) for o in wanted for p in self._products
                    if p.row["parent_obsid"] == o]
            fields = _PRODUCT_FIELDS
        else:
            raise _Unimplemented(f"Mashup service {service!r}")
        size = int(req.get("pagesize") or 50000)
        page = int(req.get("page") or 1)
        pages = max(1, -(-len(rows) // size))
        chunk = rows[(page - 1) * size: page * size]
        return {"status": "COMPLETE", "msg": "",
                "fields": [{"name": n, "type": t} for n, t in fields],
                "data": chunk,
                "paging": {"page": page, "pageSize": size, "pagesFiltered": pages,
                           "rows": len(chunk), "rowsFiltered": len(rows), "rowsTotal": len(rows)}}


class _Unimplemented(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    server_state: FakeMast
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args) -> None:  # quiet: the test log is self.server_state.log
        pass

    # -- helpers

    def _record(self, what: str = "", status: int = 0, rng: str | None = None) -> Request:
        rec = Request(self.command, urlsplit(self.path).path, what, rng, status)
        with self.server_state._lock:
            self.server_state.log.append(rec)
        return rec

    def _send(self, status: int, body: bytes, ctype: str = "application/json",
              extra: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, doc) -> None:
        self._send(status, json.dumps(doc).encode())

    def _unimplemented(self, what: str = "") -> None:
        msg = f"fakemast: not implemented: {self.command} {urlsplit(self.path).path} {what}".rstrip()
        with self.server_state._lock:
            self.server_state.unimplemented.append(msg)
        self._record(what, 501)
        # drain the body so the connection stays usable
        self._send(501, json.dumps({"status": "ERROR", "msg": msg}).encode())

    def _body(self) -> str:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n).decode() if n else ""

    # -- methods

    def do_POST(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        body = self._body()
        form = parse_qs(body, keep_blank_values=True)
        if path == COLUMNS_PATH:
            cid = (form.get("colConfigId") or [""])[0]
            if cid not in _COLUMN_CONFIGS:
                return self._unimplemented(cid)
            self._record(cid, 200)
            return self._json(200, _COLUMN_CONFIGS[cid])
        if path == INVOKE_PATH:
            try:
                req = json.loads((form.get("request") or ["{}"])[0])
            except json.JSONDecodeError:
                return self._unimplemented("(request is not JSON)")
            service = str(req.get("service"))
            if req.get("format") not in ("json", None):
                return self._unimplemented(f"{service} format={req.get('format')!r}")
            state = self.server_state
            key = (req.get("cacheBreaker"), req.get("page"), service)
            with state._lock:
                state._polls[key] += 1
                polls = state._polls[key]
            if polls <= state.executing_polls and service in ("Mast.Caom.Filtered", "Mast.Caom.Products"):
                self._record(service, 200)
                return self._json(200, {"status": "EXECUTING", "msg": "", "data": [], "fields": []})
            try:
                doc = state._invoke(req)
            except _Unimplemented as exc:
                return self._unimplemented(f"{service} ({exc})")
            self._record(service, 200)
            return self._json(200, doc)
        return self._unimplemented()

    def do_HEAD(self) -> None:  # noqa: N802
        self._download(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._download(head=False)

    def _download(self, head: bool) -> None:
        parts = urlsplit(self.path)
        if parts.path != DOWNLOAD_PATH:
            return self._unimplemented()
        uri = unquote((parse_qs(parts.query).get("uri") or [""])[0])
        if not uri.startswith("mast:HST/product/"):
            return self._unimplemented(f"uri={uri!r}")
        name = uri.rsplit("/", 1)[-1]
        state = self.server_state
        rec = self._record(name, 0, self.headers.get("Range"))
        with state._lock:
            fault = state.faults.get(name)
        try:
            data = state.content(name)
        except KeyError:
            data = None
        kind = fault.kind if fault else None
        if data is None or kind == "missing":
            rec.status = 404
            return self._send(404, b"File not found", "text/plain", head=head)
        if kind == "error500" and fault.fire():
            rec.status = 500
            return self._send(500, b'{"error": "Internal Server Error"}', head=head)
        extra = {"Accept-Ranges": "bytes", "Content-Disposition": f"attachment; filename={name}"}
        span = self._range(rec, len(data), extra, head)
        if span is None:
            return None  # 416 sent
        body = data[span[0]:span[1] + 1]
        if head:
            return self._send(rec.status, body, "application/octet-stream", extra, head=True)
        cut = None
        if kind in ("truncate", "short", "stall") and fault.fire():
            cut = max(1, len(body) // 2)
        self._send_headers(rec.status, extra, None if kind == "short" and cut is not None else len(body))
        self._stream(rec, body, cut, stall=kind == "stall")
        return None

    def _range(self, rec: Request, total: int, extra: dict, head: bool) -> tuple[int, int] | None:
        """The first and last byte asked for (the whole file without ``Range``), the
        status in ``rec`` and ``Content-Range`` in ``extra``; ``None`` when answered 416."""
        if not rec.range:
            rec.status = 200
            return 0, total - 1
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rec.range.strip())
        start = int(m.group(1)) if m else total
        end = min(int(m.group(2)) if m and m.group(2) else total - 1, total - 1)
        if start >= total or start > end:
            rec.status = 416
            self._send(416, b"", "text/plain", {"Content-Range": f"bytes */{total}"}, head)
            return None
        rec.status = 206
        extra["Content-Range"] = f"bytes {start}-{end}/{total}"
        return start, end

    def _send_headers(self, status: int, extra: dict, length: int | None) -> None:
        """The headers of a file body; without ``length`` the body ends when the
        connection closes (HTTP/1.1 allows it: the ``short`` fault)."""
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        for k, v in extra.items():
            self.send_header(k, v)
        if length is None:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _stream(self, rec: Request, body: bytes, cut: int | None, stall: bool) -> None:
        """Send ``body`` (its first ``cut`` bytes, then close or, ``stall``, fall silent)
        in chunks, counting the bytes and the transfers under way."""
        state = self.server_state
        sent = 0
        view = memoryview(body)
        limit = len(body) if cut is None else cut
        with state._lock:
            state.active += 1
            state.max_active = max(state.max_active, state.active)
        try:
            try:
                while sent < limit:
                    n = min(state.chunk_bytes, limit - sent)
                    self.wfile.write(view[sent:sent + n])
                    sent += n
                    with state._lock:
                        state._bytes_sent[rec.what] += n
                        rec.body_bytes += n
                    if state.chunk_delay:
                        time.sleep(state.chunk_delay)
                self.wfile.flush()
            finally:
                with state._lock:
                    state.active -= 1
            if cut is not None:
                if stall:
                    # silence: the client's read timeout has to notice
                    state._stop.wait(state.stall_seconds)
                self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
