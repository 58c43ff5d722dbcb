"""Deployment weight maps: a model's weights as cells on an array's tiles.

`export_map` writes a map folder from a run. `deploy_map` programs a map onto an
array through the serial array protocol, reads it back, and writes a verify report
and a read-back map. `weights_from_map` rebuilds the state dictionary a map contains.
`format` describes the folder layout, and `tiles` where each weight sits.
"""

from memdeploy.weightmap.deploy import deploy_map
from memdeploy.weightmap.export import export_map
from memdeploy.weightmap.format import WeightMap, WeightMapError, read_map
from memdeploy.weightmap.load import is_map_dir, load_map, weights_from_map

__all__ = [
    "WeightMap",
    "WeightMapError",
    "deploy_map",
    "export_map",
    "is_map_dir",
    "load_map",
    "read_map",
    "weights_from_map",
]
