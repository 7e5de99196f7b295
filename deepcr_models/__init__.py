"""The crforge model zoo: trained cosmic-ray mask and inpaint networks.

A registry of published models with their weights and model cards, and ``load()`` and
``clean()`` for users who want to mask and inpaint cosmic rays in their own images.
"""
