"""Bridges to other geolocalization codebases' released weights."""
