"""The archive stage: MAST queries through astroquery and verified downloads (``crforge query``, ``crforge fetch``)."""
