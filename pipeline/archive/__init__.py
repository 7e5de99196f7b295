"""The archive stage: MAST queries through astroquery and verified downloads (``crforge query``, ``crforge fetch``).

``crforge query`` finds visits by criteria, or resolves the rows of a manifest, and
writes a manifest with the exposures' rootnames and product sizes; ``crforge fetch``
downloads a manifest's exposures into ``<work>/raw/<visit>/``; ``crforge dataset``
does both for the archive visits of its manifest that are not on disk yet.

Modules, each importing only those above it:

- :mod:`~crforge.pipeline.archive.config`: the ``[archive]`` table (standard library only);
- :mod:`~crforge.pipeline.archive.visits`: exposures and visits, grouped from MAST's rows (pure);
- :mod:`~crforge.pipeline.archive.query`: the astroquery calls (criteria, manifest rows);
- :mod:`~crforge.pipeline.archive.download`: verified, resumable, retried HTTP downloads;
- :mod:`~crforge.pipeline.archive.manifests`: CSV manifests written and resolved;
- :mod:`~crforge.pipeline.archive.prepare`: a manifest's archive visits on disk, ready to label.
"""
