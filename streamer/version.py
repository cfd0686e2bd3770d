"""The one version number. pyproject.toml takes it from here (``dynamic = ["version"]``),
so ``crowdcount --version``, ``GET /api/health``, the OpenAPI document and the installed
package's metadata all say the same; CHANGELOG.md says what changed in each.

Why here and not read back from the package metadata: a source checkout can hold a stale
``crowdcount.egg-info`` that ``importlib.metadata`` finds first on ``sys.path``, which would
report an old version.
"""

from __future__ import annotations

VERSION = "0.2.0"
