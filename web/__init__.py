"""The operator's page (HTML, CSS, ES modules), shipped inside the installed package.

It is a package only so that a wheel carries it as ``crowdcount.web`` and the server finds
it through the import system, the same way in a checkout and in site-packages.
"""

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
