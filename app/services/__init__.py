"""Thin services between the pages and ``hkd``: settings, model loading, images, cached compute."""
