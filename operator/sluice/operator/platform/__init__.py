"""The Kubernetes platform of the ModelDeployment rollout loop, one module per responsibility.

- `modeldeployment.py`: `KubePlatform`, the Platform the loop drives (routing in memory, the order of writes);
- `children.py`: applying, caching, pruning and reading back the children;
- `readiness.py`: readiness from the live children and pods (reads only);
- `checks.py`: model URI reachability and GPU capacity;
- `status.py` and `events.py`: the status subresource, operator conditions, bad input, and Events.
"""

from sluice.operator.platform.modeldeployment import KubePlatform, desired_from
from sluice.operator.platform.status import (
    BACKEND_AVAILABLE,
    INSUFFICIENT_GPU,
    MODEL_REACHABLE,
    SPEC_VALID,
    BadInput,
    StatusWriter,
    put_condition,
)

__all__ = [
    "BACKEND_AVAILABLE",
    "INSUFFICIENT_GPU",
    "MODEL_REACHABLE",
    "SPEC_VALID",
    "BadInput",
    "KubePlatform",
    "StatusWriter",
    "desired_from",
    "put_condition",
]
