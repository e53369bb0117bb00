"""The text of the Hub cards (``${name}`` fields filled by :func:`giga_ssl_hf.hub.cards.fill_template`).

A package only so that setuptools ships these files as its package data (``setup.cfg``); it holds no code.
"""
