"""``--executor ray``: ``cluster.py`` connects, ``scheduler.py`` decides, ``actor.py`` embeds on the nodes and
``executor.py`` ties them to the run. Importing this package does not import Ray."""

from imgvec.pipeline.executors.ray.cluster import import_ray
from imgvec.pipeline.executors.ray.executor import RayExecutor
from imgvec.pipeline.executors.ray.scheduler import WORKER_DIED

__all__ = ["WORKER_DIED", "RayExecutor", "import_ray"]
