"""The OpenStack provider: pods become Nova servers through openstacksdk."""
