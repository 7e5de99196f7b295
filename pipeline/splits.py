"""Fields and splits (pure functions): group visits by sky overlap, then split fields.

A *field* is a set of visits whose footprints overlap on the sky, whatever their
target names: two visits of the same patch of sky are one field, and a field is in
exactly one split, so no part of the sky is in both the training and the test set.

Footprints are lists of chip quadrilaterals in (RA, Dec) degrees, from each chip's
WCS. Two quadrilaterals are compared on a tangent plane at their mean position with
the separating-axis test (chips are convex).

Split assignment: an explicit split in the manifest wins; every visit of a field must
agree (else an error naming both visits); fields with no explicit split are shuffled
by seed within each field type and dealt so that every split gets at least one field
of each type when there are enough (``fractions`` gives the target shares).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from crforge.errors import InputError

__all__ = ["quads_overlap", "group_fields", "assign_splits", "DEFAULT_FRACTIONS"]

#: Default shares of fields per split.
DEFAULT_FRACTIONS = {"train": 0.6, "val": 0.15, "test": 0.25}


def _tangent(ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float) -> np.ndarray:
    ra, dec = np.radians(ra), np.radians(dec)
    a0, d0 = math.radians(ra0), math.radians(dec0)
    cosc = math.sin(d0) * np.sin(dec) + math.cos(d0) * np.cos(dec) * np.cos(ra - a0)
    x = np.cos(dec) * np.sin(ra - a0) / cosc
    y = (math.cos(d0) * np.sin(dec) - math.sin(d0) * np.cos(dec) * np.cos(ra - a0)) / cosc
    return np.degrees(np.c_[x, y])


def _sat_overlap(p: np.ndarray, q: np.ndarray) -> bool:
    for poly in (p, q):
        for i in range(len(poly)):
            edge = poly[(i + 1) % len(poly)] - poly[i]
            axis = np.array([-edge[1], edge[0]])
            a, b = p @ axis, q @ axis
            if a.max() < b.min() or b.max() < a.min():
                return False
    return True


def _unit(radec: np.ndarray) -> np.ndarray:
    """Unit vectors of ``[N, 2]`` (RA, Dec) degrees."""
    ra, dec = np.radians(radec[:, 0]), np.radians(radec[:, 1])
    return np.c_[np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)]


def quads_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two convex sky quadrilaterals (``[4, 2]`` RA/Dec degrees) overlap."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != (4, 2) or b.shape != (4, 2):
        raise InputError(f"quadrilaterals must be [4, 2] arrays, got {a.shape} and {b.shape}")
    corners = _unit(np.vstack([a, b]))
    v = corners.mean(axis=0)  # mean position on the sphere (RA wraps at 360)
    ra0 = math.degrees(math.atan2(v[1], v[0])) % 360
    dec0 = math.degrees(math.atan2(v[2], math.hypot(v[0], v[1])))
    if np.any(np.degrees(np.arccos(np.clip(corners @ (v / np.linalg.norm(v)), -1, 1))) > 30):
        return False  # far apart: cannot overlap (chips are arcminutes)
    pa = _tangent(a[:, 0], a[:, 1], ra0, dec0)
    pb = _tangent(b[:, 0], b[:, 1], ra0, dec0)
    return _sat_overlap(pa, pb)


def _candidate_pairs(names: list[str], footprints: Mapping[str, Sequence[np.ndarray]]) -> np.ndarray:
    """Index pairs ``i < j`` of visits whose bounding caps touch: only they can overlap.

    Each visit's cap is centred on the mean of its corners' unit vectors, with the
    angular radius of its farthest corner (chips are convex and small, so the cap holds
    them whole). A k-d tree on the centres finds the close pairs, so grouping costs
    about N log N rather than comparing every pair of visits (minutes at 500 visits,
    days at the archive's 100,000).
    """
    from scipy.spatial import cKDTree

    centres, radii = np.empty((len(names), 3)), np.empty(len(names))
    for i, n in enumerate(names):
        v = _unit(np.concatenate([np.asarray(q, float).reshape(-1, 2) for q in footprints[n]]))
        c = v.mean(axis=0)
        centres[i] = c / np.linalg.norm(c)
        radii[i] = np.arccos(np.clip(v @ centres[i], -1, 1)).max() + 1e-6  # margin: rounding
    reach = min(math.pi, 2 * radii.max())
    pairs = cKDTree(centres).query_pairs(2 * math.sin(reach / 2), output_type="ndarray")
    if len(pairs) == 0:
        return pairs.reshape(0, 2)
    i, j = np.sort(pairs, axis=1).T
    sep = np.arccos(np.clip(np.einsum("ij,ij->i", centres[i], centres[j]), -1, 1))
    keep = sep <= radii[i] + radii[j]
    return np.array(sorted(zip(i[keep].tolist(), j[keep].tolist())), dtype=int).reshape(-1, 2)


def group_fields(footprints: Mapping[str, Sequence[np.ndarray]], *, search: str = "tree") -> dict[str, int]:
    """Field id of every visit: connected components of footprint overlap.

    Parameters
    ----------
    footprints : mapping
        Visit name -> list of chip quadrilaterals (``[4, 2]`` RA/Dec degrees).
    search : {'tree', 'all-pairs'}
        Which pairs of visits to compare: those whose bounding caps a k-d tree finds
        close (the default), or every pair (N^2: the definition, for tests and
        benchmarks). Both give the same fields.

    Returns
    -------
    dict
        Visit name -> field id (0, 1, ... in order of the sorted visit names).
    """
    if search not in ("tree", "all-pairs"):
        raise InputError(f"search={search!r}: expected 'tree' or 'all-pairs'")
    names = sorted(footprints)
    parent = {n: n for n in names}

    def find(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    if search == "all-pairs":
        pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    else:
        pairs = _candidate_pairs(names, footprints) if names else ()
    for i, j in pairs:
        a, b = names[i], names[j]
        if find(a) == find(b):
            continue
        if any(quads_overlap(qa, qb) for qa in footprints[a] for qb in footprints[b]):
            parent[find(b)] = find(a)
    roots: dict[str, int] = {}
    out = {}
    for n in names:
        r = find(n)
        if r not in roots:
            roots[r] = len(roots)
        out[n] = roots[r]
    return out


def assign_splits(
    field_of: Mapping[str, int],
    field_type: Mapping[str, str],
    explicit: Mapping[str, str | None],
    seed: int = 0,
    fractions: Mapping[str, float] | None = None,
) -> dict[int, str]:
    """Split of every field.

    Parameters
    ----------
    field_of : mapping
        Visit -> field id.
    field_type : mapping
        Visit -> field type (a field takes the type of its first visit by name).
    explicit : mapping
        Visit -> explicit split or ``None``.
    seed : int
        Seed of the shuffle.
    fractions : mapping, optional
        Split -> share of fields; default :data:`DEFAULT_FRACTIONS`.

    Returns
    -------
    dict
        Field id -> split.

    Raises
    ------
    ValueError
        Two visits of one field with different explicit splits (naming both), or
        fractions that are not three non-negative shares summing to 1.
    """
    fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    if set(fractions) != {"train", "val", "test"} or any(v < 0 for v in fractions.values()) \
            or abs(sum(fractions.values()) - 1) > 1e-6:
        raise InputError(f"fractions={fractions!r}: expected train/val/test shares summing to 1")
    fixed: dict[int, tuple[str, str]] = {}
    for visit in sorted(field_of):
        s = explicit.get(visit)
        if not s:
            continue
        f = field_of[visit]
        if f in fixed and fixed[f][0] != s:
            other = fixed[f][1]
            raise InputError(
                f"visits {other!r} (split {fixed[f][0]}) and {visit!r} (split {s}) overlap on "
                f"the sky (field {f}) but their manifest splits differ")
        fixed.setdefault(f, (s, visit))
    out = {f: s for f, (s, _) in fixed.items()}
    ftype: dict[int, str] = {}
    for visit in sorted(field_of):
        ftype.setdefault(field_of[visit], field_type[visit])
    rng = np.random.default_rng(seed)
    order = ("train", "test", "val")
    for t in sorted(set(ftype.values())):
        free = sorted(f for f, ty in ftype.items() if ty == t and f not in out)
        if not free:
            continue
        perm = [free[i] for i in rng.permutation(len(free))]
        have = {s: sum(1 for f, s2 in out.items() if s2 == s and ftype[f] == t) for s in order}
        n_type = len(free) + sum(have.values())
        # first make sure every split holds one field of this type, then deal by share
        for s in order:
            if have[s] == 0 and perm and fractions[s] > 0 and len(perm) > 0:
                out[perm.pop(0)] = s
                have[s] += 1
        for f in perm:
            deficit = {s: fractions[s] * n_type - have[s] for s in order}
            s = max(order, key=lambda k: (deficit[k], -order.index(k)))
            out[f] = s
            have[s] += 1
    return out
