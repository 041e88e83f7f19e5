"""`DeliveryWorkerDep`: this process's webhook delivery worker, if it runs one."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from modelyard.deps import component
from modelyard.webhooks.delivery import DeliveryWorker

# None where delivery is turned off (the deliveries are then sent by other processes).
DeliveryWorkerDep = Annotated[DeliveryWorker | None, Depends(component("webhooks"))]
