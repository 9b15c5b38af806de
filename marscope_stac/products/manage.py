"""Finding and removing published products in a products catalog."""

from __future__ import annotations

import re
from pathlib import Path

from marscope_stac.core.errors import ConfigError
from marscope_stac.stac.catalog import OutputCatalog

__all__ = ["delete_product", "find_product"]

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")

PRODUCT_COLLECTIONS = ("queries",)
"""Collections whose items are query products (the ones that may be deleted)."""


def find_product(products: str | Path, product_id: str) -> Path:
    """The STAC item file of the query product ``product_id``.

    Raises:
        ConfigError: if the id is malformed or no such product is published.
    """
    if not _ID.fullmatch(product_id):
        raise ConfigError(f"{product_id!r} is not a product id")
    for collection in PRODUCT_COLLECTIONS:
        path = Path(products) / collection / product_id / f"{product_id}.json"
        if path.is_file():
            return path
    raise ConfigError(f"no product {product_id} in {products}")


def delete_product(products: str | Path, product_id: str) -> list[Path]:
    """Remove a query product from the catalog and delete its files; the files deleted.

    The catalog stays valid: the collection drops the item's link, and a product that another
    one is derived from (a composite's input) is refused.

    Raises:
        ConfigError: if there is no such product or another product is derived from it.
    """
    return OutputCatalog(products).remove(find_product(products, product_id))
