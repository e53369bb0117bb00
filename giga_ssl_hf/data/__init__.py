"""Bundled sample data: CMU-1-Small-Region.svs, a real Aperio H&E crop from the OpenSlide public test data."""
