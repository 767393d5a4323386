"""Dataset importers: raw public datasets -> the ummkd dataset format (``ummkd data import KIND``).

``IMPORTERS`` maps each kind to a module exposing ``add_arguments(parser)`` (adds ``src``,
``--out``, ``--overwrite`` and the importer's own options) and ``run(args) -> Path`` (runs the
import, returns the output folder). Each module also has a plain function (``import_<kind>``) for
use from Python.
"""

from types import ModuleType

from ummkd.data.importers import alpnet, btcv, chaos, mmwhs, pairs, pnpadanet
from ummkd.data.importers.common import DatasetImportError

IMPORTERS: dict[str, ModuleType] = {
    "pairs": pairs,
    "mmwhs": mmwhs,
    "btcv": btcv,
    "chaos": chaos,
    "pnpadanet": pnpadanet,
    "alpnet": alpnet,
}

__all__ = ["IMPORTERS", "DatasetImportError"]
