"""Connecting to a Dask scheduler: the one way the project does it (embedding and queries)."""

from __future__ import annotations

import os
from typing import Any

from marscope_stac.core.errors import ConfigError

__all__ = ["connect_scheduler"]


def connect_scheduler(scheduler_address: str | None) -> Any:
    """A Dask client of the scheduler given (or ``DASK_SCHEDULER_ADDRESS``); None without one.

    Raises:
        ConfigError: in one line, for an address that is not one or cannot be reached.
    """
    if scheduler_address is not None and not scheduler_address.strip():
        raise ConfigError("--scheduler-address is empty; give tcp://host:8786, or leave it out")
    address = scheduler_address or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if not address:
        return None
    port = address.rsplit(":", 1)[-1] if "://" in address else ""
    if port.isdigit() and not 0 < int(port) < 65536:
        raise ConfigError(f"the scheduler address {address!r} has port {port}; ports are 1-65535")
    from distributed import Client

    try:
        return Client(address, timeout=10)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(
            f"cannot reach the Dask scheduler at {address}: {exc}; check the address"
        ) from exc
    except (ValueError, TypeError) as exc:  # not an address at all
        raise ConfigError(
            f"the scheduler address {address!r} (--scheduler-address or "
            f"DASK_SCHEDULER_ADDRESS) is not a Dask scheduler address ({exc}); give one like "
            "tcp://host:8786"
        ) from None
    except Exception as exc:  # the client's many other ways of not connecting
        raise ConfigError(
            f"cannot reach the Dask scheduler at {address!r} ({type(exc).__name__}: "
            f"{str(exc)[:120]}); check --scheduler-address or DASK_SCHEDULER_ADDRESS"
        ) from None
