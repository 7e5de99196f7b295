"""The dataset stage: a manifest of visits -> one HDF5 training set (``crforge dataset``)."""
