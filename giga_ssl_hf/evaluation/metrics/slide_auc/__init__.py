"""Makes setuptools package this folder regularly; ``evaluate`` loads ``slide_auc.py`` on its own."""
