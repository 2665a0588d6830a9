"""The client's reads of backlog items: one item with its phase tasks, and the items seen lately."""

from __future__ import annotations

from urllib.parse import quote

from coherence_network.client_steering import SteeringCalls
from coherence_network.contract_items import ItemPage, ItemView
from coherence_network.endpoints import ITEM, ITEMS


class ItemCalls(SteeringCalls):
    """Mixed into ApiClient, which sends through its ``call``."""

    def get_item(self, item: str) -> ItemView:
        """The item named by its slug; ApiNotFound when no task names it."""
        return ItemView.model_validate(self.call(ITEM, item=quote(item, safe="")).json())

    def list_items(self, *, limit: int = 50, offset: int = 0) -> ItemPage:
        """Items touched last first."""
        return ItemPage.model_validate(self.call(ITEMS, params={"limit": limit, "offset": offset}).json())
