"""Building partition bundles (torch, controller machine only): datasets, cuts, builders, cartography."""
