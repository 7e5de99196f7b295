"""The HDF5 training-set file: its schema, its one writer, its reader and its validator."""
