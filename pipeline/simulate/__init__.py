"""Simulated HST visits with injected cosmic rays and their truth (``crforge simulate``)."""
