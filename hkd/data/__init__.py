"""Pedestrian datasets, image loading, training transforms and the SynthPed generator."""
