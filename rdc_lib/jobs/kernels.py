"""How the project starts notebook kernels (the main job and notebook sweeps, through papermill).

A kernel launched by jupyter_client talks to its client over local TCP sockets; ipykernel warns on
every start that this traffic is unencrypted. The cure is to encrypt it, not to hide the warning:
jupyter_client provisions CurveZMQ keys when the kernel manager's ``transport_encryption`` is
'auto' and the kernelspec declares ``supported_encryption: curve`` (ipykernel's does). Without
CurveZMQ in pyzmq the option is left out and the warning stays: then it names something to fix.
"""

from __future__ import annotations

from typing import Any

import zmq
from traitlets.config import Config

__all__ = ["papermill_kernel_options"]


def papermill_kernel_options() -> dict[str, Any]:
    """Extra keyword arguments for ``papermill.execute_notebook`` (passed on to nbclient): encrypted transport."""
    if not zmq.has("curve"):
        return {}
    return {"config": Config({"KernelManager": {"transport_encryption": "auto"}})}
