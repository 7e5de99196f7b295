"""The labelling stage: AstroDrizzle on a visit -> per-exposure CR and ignore masks (``crforge label``)."""
